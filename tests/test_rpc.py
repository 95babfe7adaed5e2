"""llama.cpp RPC workers on loopback: the layers split over two workers and this process give the same
greedy reply as a local run; a worker down at start is one line; a worker killed mid-reply costs
that request (a 503) and not the server, which reconnects once the worker is back; the worker's
memory as our protocol probe reads it equals what llama.cpp's own RPC client reads."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import make_looping, run_cli
from servers import Server

from tlite_edge.runtime.rpc import Endpoint, probe, reachable

GIB = 2**30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rpc_build() -> bool:
    from tlite_edge.runtime.rpc_ggml import has_rpc

    return has_rpc()


pytestmark = pytest.mark.skipif(
    not _rpc_build(), reason="llama-cpp-python built without -DGGML_RPC=on (see README set-up)"
)


class Worker:
    """``tlite-edge worker`` on a loopback port (restartable on the same port)."""

    def __init__(self, *args: str) -> None:
        self.port, self.args = _free_port(), args
        self.endpoint = Endpoint("127.0.0.1", self.port)
        self.start()

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "tlite_edge",
            "worker",
            "--port",
            str(self.port),
            "--threads",
            "1",
            *self.args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 60
        while not reachable(self.endpoint, 0.5):
            assert self.proc.poll() is None and time.monotonic() < end, self.proc.stderr.read()
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> list[Worker]:
    cache = tmp_path_factory.mktemp("rpc-cache")
    pool = [Worker(), Worker("--mem", "1.5", "--cache", str(cache))]
    pool[1].cache = cache
    yield pool
    for w in pool:
        w.kill()


def _rpc(workers: list[Worker]) -> str:
    return ",".join(str(w.endpoint) for w in workers)


def test_public_bind_refused_without_insecure() -> None:
    r = run_cli("worker", "--host", "0.0.0.0", "--port", str(_free_port()))
    assert r.returncode == 2 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert "refusing to listen on 0.0.0.0" in line and "no authentication" in line and "--insecure" in line


def test_worker_down_at_start_is_one_line(bf16_gguf: Path, workers: list[Worker]) -> None:
    dead = f"127.0.0.1:{_free_port()}"
    for verb in (("run", bf16_gguf, "привет"), ("serve", bf16_gguf, "--port", "0")):
        r = run_cli(*verb, "--rpc", f"{workers[0].endpoint},{dead}")
        assert r.returncode == 2, r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert f"RPC worker {dead} is down" in line, line


def test_split_over_two_workers_matches_local(bf16_gguf: Path, workers: list[Worker]) -> None:
    args = (
        "run",
        bf16_gguf,
        "Расскажи о себе",
        "--temp",
        "0",
        "--max-tokens",
        "24",
        "--json",
        "--ctx",
        "256",
    )
    local = run_cli(*args)
    split = run_cli(*args, "--rpc", _rpc(workers), "--tensor-split", "1,1,1")
    # the second worker got the output layer: llama.cpp sends weights over 10 MiB by hash first and the
    # worker's --cache keeps them (the first worker's layer is proved in the next test: it is needed)
    assert max(f.stat().st_size for f in workers[1].cache.iterdir()) > 10 * 2**20
    assert local.returncode == 0 and split.returncode == 0, split.stderr
    a, b = json.loads(local.stdout), json.loads(split.stdout)
    assert b["settings"]["rpc"] == [str(w.endpoint) for w in workers]
    assert a["settings"]["rpc_layers"] == 0 and b["settings"]["rpc_layers"] > 0  # 2/3 of the layers away
    assert b["generated_tokens"] == a["generated_tokens"] == 24
    assert b["answer"] == a["answer"]


@pytest.fixture(scope="module")
def looping(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_looping(tmp_path_factory, " и снова", seed=31)


def test_run_ends_in_one_line_when_a_worker_dies(looping: Path, workers: list[Worker]) -> None:
    cmd = [sys.executable, "-m", "tlite_edge", "run", str(looping), "раз", "--temp", "0", "--ctx", "4096",
           "--max-tokens", "4000", "--rpc", _rpc(workers), "--tensor-split", "1,1,1"]  # fmt: skip
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout is not None and "и снова" in run.stdout.read(40)  # generating, layer 1 on worker 0
    workers[0].kill()
    try:
        err = run.communicate(timeout=60)[1]
        assert run.returncode == 3, err  # not llama.cpp's abort(): one line, exit code 3
        (line,) = err.strip().splitlines()
        assert line.startswith(f"tlite-edge run: error: lost the RPC worker {workers[0].endpoint} "), line
    finally:
        run.kill()
        workers[0].start()


def test_worker_memory_agrees_with_llama_cpp_client(workers: list[Worker]) -> None:
    mem_worker = workers[1]
    info = probe(mem_worker.endpoint)
    assert info.devices[0][0] == int(1.5 * GIB)  # --mem
    # llama.cpp's own RPC client (a separate process: it aborts on a broken connection)
    code = (
        "import sys; from tlite_edge.runtime.rpc import Endpoint; "
        "from tlite_edge.runtime.rpc_ggml import register_workers, _REGISTERED, device_memory; "
        f"ep = Endpoint('127.0.0.1', {mem_worker.port}); register_workers([ep]); "
        "print(*device_memory(_REGISTERED[ep][0]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert tuple(map(int, out.stdout.split())) == info.devices[0]
    r = run_cli("doctor", "--rpc", _rpc(workers), "--json")
    report = json.loads(r.stdout)
    assert [w["endpoint"] for w in report["rpc"]] == [str(w.endpoint) for w in workers]
    assert report["rpc"][1]["free"] == int(1.5 * GIB) and report["rpc_backend"] is True
    assert report["memory_kind"] == "RAM + 2 RPC worker(s)"


def test_serve_survives_a_worker_killed_mid_reply(looping: Path, workers: list[Worker]) -> None:
    model = looping
    server = Server(model, "--rpc", _rpc(workers), "--ctx", "4096", "--tensor-split", "1,1,0")
    name = model.name.removesuffix(".gguf")
    body = {
        "model": name,
        "messages": [{"role": "user", "content": "раз"}],
        "max_tokens": 4000,
        "temperature": 0,
    }
    try:
        status, _, health = server.request("GET", "/health")
        assert status == 200 and [w["up"] for w in health["rpc"]] == [True, True]
        answer: dict = {}
        thread = threading.Thread(
            target=lambda: answer.update(r=server.request("POST", "/v1/chat/completions", body))
        )
        thread.start()
        end = time.monotonic() + 30
        while server.request("GET", "/health")[2]["slots"]["busy"] == 0:
            assert time.monotonic() < end
            time.sleep(0.02)
        time.sleep(0.2)
        workers[1].kill()
        thread.join(60)
        status, headers, err = answer["r"]
        assert status == 503 and err["error"]["code"] == "worker_lost", err
        assert str(workers[1].endpoint) in err["error"]["message"] and "retry-after" in headers
        status, _, health = server.request("GET", "/health")
        assert status == 503 and health["status"] == "degraded"
        assert [w["up"] for w in health["rpc"]] == [True, False] and health["model_process"] == "stopped"
        status, _, err = server.request("POST", "/v1/chat/completions", dict(body, max_tokens=8))
        assert status == 503 and err["error"]["code"] == "worker_lost"  # still down: refused at once
        assert server.proc.poll() is None
        workers[1].start()  # back on the same port: the next request reconnects
        again = dict(body, max_tokens=8, logprobs=True, top_logprobs=1)  # logprobs cross the pipe too
        status, _, ok = server.request("POST", "/v1/chat/completions", again)
        assert status == 200 and "и снова" in ok["choices"][0]["message"]["content"], ok
        tokens = ok["choices"][0]["logprobs"]["content"]
        assert "".join(t["token"] for t in tokens) == ok["choices"][0]["message"]["content"]
        assert len(tokens) == ok["usage"]["completion_tokens"] == 8
        assert server.request("GET", "/health")[0] == 200
    finally:
        assert server.stop() == 0
