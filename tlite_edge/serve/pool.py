"""N engines working at once, a bounded queue in front of them, generation in worker threads.

A request takes a free engine or waits in the queue (full queue: 503 with Retry-After); its reply
runs in a thread and streams pieces to the event loop; the engine goes back to the pool only when
that thread has finished, so a stopped or abandoned reply never leaves a slot half used.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlite_edge.errors import TliteError
from tlite_edge.runtime.types import reply_budget
from tlite_edge.serve.protocol import ApiError, Request, Usage

if TYPE_CHECKING:
    from tlite_edge.runtime import Engine, Reply
    from tlite_edge.runtime.sampler import TokenLogprob

# runtime finish reason -> OpenAI finish reason
FINISH = {"stop": "stop", "length": "length", "stopped": "stop"}
SERVICE_EWMA = 0.2  # weight of the newest request in the average service time (for Retry-After)


def _failure(stop: str) -> list[int]:
    """KMP failure table: for each prefix length k, the longest proper border of ``stop[:k]``."""
    table, k = [0] * (len(stop) + 1), 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = table[k]
        if stop[i] == stop[k]:
            k += 1
        table[i + 1] = k
    return table


class StopMatcher:
    """Streams text through, holding back what could be the start of a stop sequence.

    One automaton per stop sequence (Knuth-Morris-Pratt): each generated character is looked at a
    constant number of times (amortized), so a long stop string costs time linear in the text.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.held = stops, ""
        self.tables = [_failure(s) for s in stops]
        self.states = [0] * len(stops)  # per stop: how many of its first characters end the text so far

    def _step(self, i: int, ch: str) -> int:
        stop, table, k = self.stops[i], self.tables[i], self.states[i]
        if k == len(stop):
            k = table[k]
        while k and stop[k] != ch:
            k = table[k]
        if stop[k] == ch:
            k += 1
        self.states[i] = k
        return k

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to send, whether a stop sequence was found: nothing after it is sent)."""
        text = self.held + piece
        if not self.stops:
            return text, False
        base = len(self.held)
        for j, ch in enumerate(piece):
            ends = [len(s) for i, s in enumerate(self.stops) if self._step(i, ch) == len(s)]
            if ends:
                self.held = ""
                return text[: base + j + 1 - max(ends)], True
        keep = max(self.states)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


@dataclass(frozen=True)
class TokenInfo:
    """A sent token with its log-probability and the most likely alternatives, as text and bytes."""

    text: str
    data: bytes
    logprob: float
    top: tuple[tuple[str, bytes, float], ...] = ()


def token_infos(engine: Engine, entries: list[TokenLogprob]) -> list[TokenInfo]:
    def named(t: int) -> tuple[str, bytes]:
        data = engine.token_bytes(t)
        return data.decode("utf-8", errors="replace"), data

    return [TokenInfo(*named(e.token), e.logprob, tuple((*named(t), lp) for t, lp in e.top)) for e in entries]


@dataclass
class Outcome:
    """How a generation ended."""

    finish: str = ""  # OpenAI finish reason
    usage: Usage | None = None
    text: str = ""
    cancelled: str = ""  # why the server stopped it: "disconnect", "timeout"
    logprobs: list[TokenInfo] | None = None  # per token sent, when the request asked for them
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] | None = None


class Job:
    """One request's generation: runs in a worker thread, talks to the loop through a queue."""

    def __init__(self, req: Request, loop: asyncio.AbstractEventLoop) -> None:
        self.req, self.loop = req, loop
        self.events: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self.outcome = Outcome()
        self.reply: Reply | None = None
        self._lock = threading.Lock()
        self.done = threading.Event()  # the thread has finished (the outcome is complete)
        self.queue_seconds = 0.0

    def cancel(self, why: str) -> None:
        """Stop the generation (safe from the loop while the thread runs)."""
        with self._lock:
            self.outcome.cancelled = self.outcome.cancelled or why
            if self.reply is not None:
                self.reply.stop()

    def _emit(self, kind: str, value: object) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def run(self, engine: Engine) -> None:
        """The worker thread: start the reply, stream it, report the end (or an ApiError)."""
        try:
            run_job = getattr(engine, "run_job", None)  # an engine in a child process (serve --rpc)
            if run_job is not None:
                run_job(self)
            else:
                self._generate(engine)
        except ApiError as exc:
            self._emit("error", exc)
        except Exception as exc:  # llama.cpp failed: a 500 for this request, the server goes on
            self._emit("error", ApiError(500, f"generation failed: {type(exc).__name__}: {exc}"))
        finally:
            self.done.set()

    def _generate(self, engine: Engine) -> None:
        reply = start_reply(engine, self.req)
        with self._lock:
            self.reply = reply
            if self.outcome.cancelled:
                reply.stop()
        self._emit("start", len(reply.prompt))
        matcher = StopMatcher(self.req.stop)
        found = False
        seen = 0  # reply.logprobs entries taken so far
        pending: list[TokenInfo] = []  # their tokens' text is not sent yet (held by the stop matcher)
        if reply.logprobs is not None:
            self.outcome.logprobs = []

        def send(text: str) -> None:
            nonlocal pending
            if self.outcome.logprobs is not None:
                self.outcome.logprobs += pending
                self._emit("logprobs", pending)
                pending = []
            self.outcome.text += text
            self._emit("text", text)

        try:
            for part in reply.parts():
                if reply.logprobs is not None:
                    pending += token_infos(engine, reply.logprobs[seen:])
                    seen = len(reply.logprobs)
                if part.kind == "reasoning":
                    pending = []  # logprobs cover the answer's tokens only
                    self.outcome.reasoning += part.text
                    self._emit("reasoning", part.text)
                    continue
                if part.kind == "tool_call":
                    pending = []
                    self.outcome.tool_calls = [*(self.outcome.tool_calls or []), part.call]
                    self._emit("tool_call", part.call)
                    continue
                text, found = matcher.feed(part.text)
                if text:
                    send(text)
                if found:
                    break
        finally:
            reply.close()
        tail = "" if found else matcher.flush()
        if reply.logprobs is not None and not found:
            pending += token_infos(engine, reply.logprobs[seen:])
        if tail or pending:
            send(tail)
        self.outcome.finish = "stop" if found else FINISH[reply.stats.finish_reason or "stopped"]
        if self.outcome.tool_calls and self.outcome.finish == "stop":
            self.outcome.finish = "tool_calls"
        self.outcome.usage = Usage(reply.stats.prompt_tokens, reply.stats.generated_tokens)
        self._emit("end", self.outcome)

    async def stream(self, deadline: float) -> AsyncIterator[tuple[str, object]]:
        """Events until "end" or "error"; past the deadline the reply is stopped and a 504 raised."""
        while True:
            left = deadline - time.monotonic()
            try:
                kind, value = await asyncio.wait_for(self.events.get(), max(left, 0.001))
            except asyncio.TimeoutError:
                self.cancel("timeout")
                raise ApiError(
                    504, "the request took longer than the server's time limit", code="timeout"
                ) from None
            yield kind, value
            if kind in ("end", "error"):
                return


def start_reply(engine: Engine, req: Request) -> Reply:
    """The runtime reply for a chat or completion request, checked against the context."""
    from tlite_edge.runtime.chat import Chat

    t0 = time.perf_counter()
    n_ctx = engine.n_ctx
    if req.kind == "chat":
        options: dict[str, Any] = {"think": req.think, "tools": req.tools, "tool_choice": req.tool_choice}
        try:
            chat = Chat.from_messages(
                engine, req.messages, **options, parallel_tool_calls=req.parallel_tool_calls
            )
        except TliteError as exc:
            param = "tool_choice" if "tool_choice" in exc.message else "tools"
            raise ApiError(400, exc.message, code="invalid_value", param=param) from None
        prompt = chat.prompt_for(None)
    else:
        chat = Chat(engine)
        prompt = engine.tokenize(req.prompt, special=False)
        if engine.add_bos:
            prompt.insert(0, engine.bos)
        if not prompt:
            raise ApiError(400, "prompt is empty", code="invalid_value", param="prompt")
    if reply_budget(n_ctx, len(prompt), req.max_tokens) < (req.max_tokens or 1):
        want = f" + {req.max_tokens} max_tokens" if req.max_tokens else ""
        raise ApiError(
            400,
            f"the context is {n_ctx} tokens, the request needs {len(prompt)} prompt tokens{want}",
            code="context_length_exceeded",
            param="messages" if req.kind == "chat" else "prompt",
        )
    seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
    wrong = [t for t, _ in req.logit_bias if t >= engine.n_vocab]
    if wrong:
        raise ApiError(
            400,
            f"logit_bias: token {wrong[0]} is not in the vocabulary (0..{engine.n_vocab - 1})",
            code="invalid_value",
            param="logit_bias",
        )
    sampling = engine.sampling.with_(
        temp=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        repeat_penalty=req.repetition_penalty,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        logit_bias=req.logit_bias,
        grammar=req.grammar,
        logprobs=req.logprobs,
        seed=seed,
        max_tokens=reply_budget(n_ctx, len(prompt), req.max_tokens or engine.sampling.max_tokens),
    )
    if req.kind == "chat":
        try:
            return chat.respond(**sampling.as_dict())
        except TliteError as exc:  # a forced tool_choice without grammar support
            raise ApiError(400, exc.message, code="invalid_value", param="tool_choice") from None
    return chat.complete(prompt, sampling, t0=t0)


class Pool:
    """The engines, the queue in front of them and the worker threads."""

    def __init__(self, engines: list[Engine], max_queue: int) -> None:
        self.engines, self.max_queue = engines, max_queue
        self.free: asyncio.Queue[Engine] | None = None
        self.waiting = 0
        self.jobs: set[Job] = set()
        self.service_seconds = 1.0
        self.executor = ThreadPoolExecutor(max_workers=len(engines), thread_name_prefix="generate")
        # extra /health fields and whether the server can answer ("ok"), e.g. the RPC workers' state
        self.health: Callable[[], dict[str, Any]] | None = None

    def _free(self) -> asyncio.Queue[Engine]:
        if self.free is None:  # made on first use, inside the server's event loop
            self.free = asyncio.Queue()
            for engine in self.engines:
                self.free.put_nowait(engine)
        return self.free

    @property
    def busy(self) -> int:
        return len(self.engines) - self._free().qsize()

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead, served N at a time."""
        ahead = self.waiting + self.busy
        return max(1, math.ceil(self.service_seconds * ahead / len(self.engines)))

    async def submit(self, req: Request, deadline: float) -> Job:
        """Wait for an engine (or refuse: full queue, or no slot before the deadline) and start the job."""
        free = self._free()
        if free.empty() and self.waiting >= self.max_queue:
            raise self._busy(
                f"all {len(self.engines)} slots are busy and the queue ({self.max_queue}) is full"
            )
        t0 = time.monotonic()
        self.waiting += 1
        getter = asyncio.ensure_future(free.get())  # not wait_for: an engine must never get lost
        try:
            await asyncio.wait({getter}, timeout=max(deadline - t0, 0.001))
        except BaseException:
            if getter.done() and not getter.cancelled():
                free.put_nowait(getter.result())
            getter.cancel()
            raise
        finally:
            self.waiting -= 1
        if not getter.done():
            getter.cancel()
            raise self._busy("no slot became free within the server's time limit")
        engine = getter.result()
        loop = asyncio.get_running_loop()
        job = Job(req, loop)
        job.queue_seconds = time.monotonic() - t0
        self.jobs.add(job)
        future = loop.run_in_executor(self.executor, job.run, engine)
        future.add_done_callback(
            lambda f: self._release(engine, job, time.monotonic() - t0 - job.queue_seconds)
        )
        return job

    def _release(self, engine: Engine, job: Job, seconds: float) -> None:
        self.jobs.discard(job)
        self.service_seconds += SERVICE_EWMA * (seconds - self.service_seconds)
        self._free().put_nowait(engine)

    def _busy(self, message: str) -> ApiError:
        return ApiError(503, message, code="server_busy", headers={"Retry-After": str(self.retry_after())})

    def stop_all(self, why: str = "shutdown") -> None:
        for job in list(self.jobs):
            job.cancel(why)

    def close(self, on_engine: Callable[[Engine], None] | None = None) -> None:
        """Stop every reply, wait for the threads, free the engines."""
        self.stop_all()
        self.executor.shutdown(wait=True)
        for engine in self.engines:
            (on_engine or (lambda e: e.close()))(engine)
