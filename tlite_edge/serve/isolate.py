"""The model in a child process, for ``serve --rpc``: a lost RPC worker costs one request, not the server.

llama.cpp's RPC client calls abort() when a worker's connection breaks (ggml-rpc.cpp has no error
path), so the engine that uses workers lives in a child process. The parent keeps the HTTP side:
a request goes to the child as one JSON line on its stdin, its events (start, text, end, error) come
back as JSON lines on a pipe of their own (llama.cpp may print on stdout). When the child dies, the
request in flight gets a 503 ``worker_lost``, ``/health`` names the workers that are down, and the
next request starts a new child once every worker answers again. The child watches its own
connections to the workers (a peek, which the worker does not see) and exits as soon as one is
closed, so an idle server notices a lost worker too and never sends a request down a dead line.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from tlite_edge.errors import TliteError
from tlite_edge.runtime.rpc import Endpoint, down_workers, parse_endpoints, probe, reachable
from tlite_edge.serve.pool import Job, TokenInfo
from tlite_edge.serve.protocol import ApiError, Request
from tlite_edge.serve.shape import Usage

if TYPE_CHECKING:
    from collections.abc import Callable

WATCH_SECONDS = 0.5  # how often the child checks its connections to the workers
RETRY_AFTER = "5"


def _lost(down: list[str], detail: str = "") -> ApiError:
    who = ", ".join(down) if down else "an RPC worker"
    extra = f" (llama.cpp: {detail})" if detail else ""
    return ApiError(
        503,
        f"lost the RPC worker {who}{extra}; the server reconnects on the next request once it is back",
        code="worker_lost",
        headers={"Retry-After": RETRY_AFTER},
    )


class _Stopper:
    """What ``Job.cancel`` calls ``stop()`` on: tells the child to stop the reply."""

    def __init__(self, engine: IsolatedEngine, job_id: int) -> None:
        self.engine, self.job_id = engine, job_id

    def stop(self) -> None:
        self.engine.send({"op": "stop", "id": self.job_id})


class IsolatedEngine:
    """Stands in the pool for an Engine; generation happens in the child (``run_job``)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.endpoints: list[Endpoint] = parse_endpoints(",".join(spec["rpc"]))
        self.proc: subprocess.Popen[bytes] | None = None
        self.events: Any = None
        self.lock = threading.Lock()  # one request at a time, and (re)starts under it
        self.write_lock = threading.Lock()
        self.settings: Any = None
        self.lost_detail = ""
        self.jobs = 0  # requests sent, the id of the latest

    # ---- the child process ----------------------------------------------------------------------

    def start(self) -> None:
        """Probe the workers (one line for one that is down), start the child, wait for its model."""
        for ep in self.endpoints:
            probe(ep)
        read, write = os.pipe()
        env = dict(os.environ, GGML_NO_BACKTRACE="1")
        cmd = [sys.executable, "-m", "tlite_edge.serve.isolate", str(write), json.dumps(self.spec)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=sys.stderr.fileno(), pass_fds=(write,), env=env
        )
        os.close(write)
        self.events = os.fdopen(read, encoding="utf-8")
        line = self.events.readline()
        ready = json.loads(line) if line else {"kind": "failed", "message": "the model process died"}
        if ready["kind"] != "ready":
            self._reap()
            raise TliteError(None, ready.get("message", "the model process failed"))
        self.settings = SimpleNamespace(**ready["settings"])
        self.lost_detail = ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _reap(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        if self.events is not None:
            self.events.close()
        self.proc, self.events = None, None

    def send(self, message: dict[str, Any]) -> None:
        with self.write_lock:
            proc = self.proc
            if proc is None or proc.stdin is None or proc.poll() is not None:
                return
            try:
                proc.stdin.write((json.dumps(message) + "\n").encode())
                proc.stdin.flush()
            except OSError:
                pass  # the child is gone: its events pipe ends, run_job reports it

    # ---- what the pool and the app use ----------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return int(self.settings.n_ctx)

    @property
    def warnings(self) -> list[str]:
        return list(self.settings.warnings)

    def status(self) -> dict[str, Any]:
        """For /health: each worker up or not, whether the model process runs; ok only if all are.

        While the child runs, its connections are the proof (it exits when one breaks); a worker busy
        with a client must not be probed (its accept queue is one connection deep)."""
        running = self.alive()
        workers = [{"endpoint": str(ep), "up": running or reachable(ep, 0.5)} for ep in self.endpoints]
        ok = all(w["up"] for w in workers)
        return {"ok": ok, "rpc": workers, "model_process": "running" if self.alive() else "stopped"}

    def run_job(self, job: Job) -> None:
        """The request in the child; ApiError 503 ``worker_lost`` when the child or a worker is gone."""
        with self.lock:
            if not self.alive():
                self._reap()
                try:
                    self.start()
                except TliteError as exc:
                    raise ApiError(
                        503, str(exc), code="worker_lost", headers={"Retry-After": RETRY_AFTER}
                    ) from None
            self.jobs += 1
            with job._lock:
                job.reply = _Stopper(self, self.jobs)  # type: ignore[assignment]
                cancelled = bool(job.outcome.cancelled)
            if job.req.logprobs is not None:
                job.outcome.logprobs = []
            self.send({"op": "generate", "id": self.jobs, "req": asdict(job.req)})
            if cancelled:
                self.send({"op": "stop", "id": self.jobs})
            for line in self.events:
                event = json.loads(line)
                kind = event["kind"]
                if kind == "start":
                    job._emit("start", int(event["prompt"]))
                elif kind == "text":
                    job.outcome.text += event["text"]
                    job._emit("text", event["text"])
                elif kind == "logprobs":
                    infos = [_token_info(t) for t in event["tokens"]]
                    job.outcome.logprobs = (job.outcome.logprobs or []) + infos
                    job._emit("logprobs", infos)
                elif kind == "end":
                    job.outcome.finish = event["finish"]
                    job.outcome.usage = Usage(*event["usage"])
                    job.outcome.first_token = event.get("first_token")
                    job._emit("end", job.outcome)
                    return
                elif kind == "error":
                    raise ApiError(
                        event["status"], event["message"], code=event["code"], param=event["param"]
                    )
                elif kind == "lost":
                    self.lost_detail = event["message"].rpartition(": ")[2]
            self._reap()
            raise _lost([str(ep) for ep in down_workers(self.endpoints)], self.lost_detail)

    def close(self) -> None:
        with self.write_lock:
            if self.proc is not None and self.proc.stdin is not None:
                self.proc.stdin.close()
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self._reap()


def _token_info(t: list[Any]) -> TokenInfo:
    """A TokenInfo from its JSON form (bytes as hex)."""
    top = tuple((text, bytes.fromhex(data), lp) for text, data, lp in t[3])
    return TokenInfo(t[0], bytes.fromhex(t[1]), t[2], top)


def _token_json(t: TokenInfo) -> list[Any]:
    return [t.text, t.data.hex(), t.logprob, [[text, data.hex(), lp] for text, data, lp in t.top]]


def _request(fields: dict[str, Any]) -> Request:
    """The Request the parent sent (JSON turned the tuples into lists)."""
    fields["logit_bias"] = tuple(tuple(pair) for pair in fields.get("logit_bias", ()))
    return Request(**fields)


class PipeJob(Job):
    """A Job in the child: the same generation, its events written as JSON lines."""

    def __init__(self, req: Request, write: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(req, None)  # type: ignore[arg-type]
        self.write = write

    def _emit(self, kind: str, value: object) -> None:
        if kind == "start":
            self.write({"kind": kind, "prompt": value})
        elif kind == "text":
            self.write({"kind": kind, "text": value})
        elif kind == "logprobs":
            self.write({"kind": kind, "tokens": [_token_json(t) for t in value]})  # type: ignore[attr-defined]
        elif kind == "end":
            usage = self.outcome.usage or Usage()
            self.write(
                {
                    "kind": kind,
                    "finish": self.outcome.finish,
                    "usage": [usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens],
                    "first_token": self.outcome.first_token,
                }
            )
        elif kind == "error":
            assert isinstance(value, ApiError)
            fields = {
                "status": value.status,
                "message": value.message,
                "code": value.code,
                "param": value.param,
            }
            self.write({"kind": kind, **fields})


def worker_sockets(endpoints: list[Endpoint]) -> dict[str, socket.socket]:
    """This process's connections to the workers (llama.cpp's), as duplicated socket objects."""
    peers = {(socket.gethostbyname(ep.host), ep.port): str(ep) for ep in endpoints}
    found: dict[str, socket.socket] = {}
    fds = [int(f) for f in os.listdir("/proc/self/fd")] if os.path.isdir("/proc/self/fd") else range(3, 4096)
    for fd in fds:
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            peer = sock.getpeername() if sock.family == socket.AF_INET else None
        except OSError:
            peer = None
        if peer in peers:
            found[peers[peer]] = sock
        else:
            sock.close()
    return found


def _closed(sock: socket.socket) -> bool:
    """Whether the peer closed the connection (a peek: nothing is taken from llama.cpp's stream)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _watch(lines: dict[str, socket.socket], write: Callable[[dict[str, Any]], None]) -> None:
    from tlite_edge.runtime.rpc_ggml import EXIT_WORKER_LOST

    while True:
        time.sleep(WATCH_SECONDS)
        lost = [name for name, sock in lines.items() if _closed(sock)]
        if lost:
            write({"kind": "lost", "message": f"connection to {', '.join(lost)} closed"})
            os._exit(EXIT_WORKER_LOST)


def child(fd: int, spec: dict[str, Any]) -> int:
    """The child: load the engine on the workers, then answer requests from stdin until it closes."""
    from tlite_edge.runtime.engine import Engine
    from tlite_edge.runtime.rpc_ggml import on_abort

    out = os.fdopen(fd, "w", encoding="utf-8")
    lock = threading.Lock()

    def write(event: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(event, ensure_ascii=False) + "\n")
            out.flush()

    on_abort(lambda message: write({"kind": "lost", "message": message}))
    try:
        engine = Engine.load(
            spec["model"],
            ctx=spec["ctx"],
            threads=spec["threads"],
            rpc=parse_endpoints(",".join(spec["rpc"])),
            tensor_split=spec["tensor_split"],
            speculative=spec.get("speculative", True),
        )
    except TliteError as exc:
        write({"kind": "failed", "message": str(exc)})
        return 2
    write({"kind": "ready", "settings": engine.settings.as_dict()})
    lines = worker_sockets(parse_endpoints(",".join(spec["rpc"])))
    threading.Thread(target=_watch, args=(lines, write), name="rpc-watch", daemon=True).start()
    current: PipeJob | None = None
    current_id = 0
    runner: threading.Thread | None = None
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "generate":
            if runner is not None:
                runner.join()
            current, current_id = PipeJob(_request(command["req"]), write), command["id"]
            runner = threading.Thread(target=current.run, args=(engine,), daemon=True)
            runner.start()
        elif command["op"] == "stop" and current is not None and command["id"] == current_id:
            current.cancel("stopped")
    if runner is not None:
        runner.join()
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(child(int(sys.argv[1]), json.loads(sys.argv[2])))
