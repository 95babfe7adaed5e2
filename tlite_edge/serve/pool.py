"""N engines working at once, a bounded queue in front of them, generation in worker threads.

A request takes a free slot (with the prompt cache on, the one whose KV cache it reuses best:
``slots.choose``) or waits in the queue, first come first served (full queue: 503 with Retry-After);
its reply runs in a thread and streams pieces to the event loop; the slot goes back to the pool only
when that thread has finished, so a stopped or abandoned reply never leaves a slot half used.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tlite_edge.errors import TliteError
from tlite_edge.runtime.types import reply_budget
from tlite_edge.serve.metrics import ServeMetrics
from tlite_edge.serve.protocol import ApiError, Request
from tlite_edge.serve.shape import Usage
from tlite_edge.serve.slots import Slot, choose, prompt_ids
from tlite_edge.serve.stops import StopMatcher

if TYPE_CHECKING:
    from tlite_edge.runtime import Engine, Reply
    from tlite_edge.runtime.sampler import TokenLogprob

# runtime finish reason -> OpenAI finish reason
FINISH = {"stop": "stop", "length": "length", "stopped": "stop"}
SERVICE_EWMA = 0.2  # weight of the newest request in the average service time (for Retry-After)
# A client's next turn can arrive while the thread of its previous reply, whose answer it has read,
# is still closing: wait this long for that slot rather than go to another one.
ENDING_WAIT = 1.0


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
    first_token: float | None = None  # seconds from the reply's start to its first sampled token
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
        self.ended = False  # the answer is complete (set before the client can see its end)
        self.queue_seconds = 0.0
        self.slot = -1  # the slot it runs on

    def cancel(self, why: str) -> None:
        """Stop the generation (safe from the loop while the thread runs)."""
        with self._lock:
            self.outcome.cancelled = self.outcome.cancelled or why
            if self.reply is not None:
                self.reply.stop()

    def _emit(self, kind: str, value: object) -> None:
        if kind in ("end", "error"):
            self.ended = True
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
        stats = reply.stats
        cached = max(0, stats.prompt_tokens - stats.evaluated_tokens) if stats.time_to_first_token else 0
        self.outcome.usage = Usage(stats.prompt_tokens, stats.generated_tokens, cached)
        if stats.time_to_first_token:  # 0: stopped while reading the prompt
            self.outcome.first_token = stats.time_to_first_token
        if self.outcome.tool_calls and self.outcome.finish == "stop":
            self.outcome.finish = "tool_calls"
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
    """The slots, the queue in front of them and the worker threads."""

    def __init__(self, engines: list[Engine], max_queue: int, prompt_cache: bool = True) -> None:
        self.engines, self.max_queue, self.prompt_cache = engines, max_queue, prompt_cache
        self.slots = [Slot(i, engine) for i, engine in enumerate(engines)]
        self.waiters: deque[asyncio.Future[Slot]] = deque()  # first come, first served
        self.waiting = 0
        self.jobs: set[Job] = set()
        self.service_seconds = 1.0
        self.metrics = ServeMetrics()
        self._released = asyncio.Event()  # set (and replaced) whenever a slot is released
        self.executor = ThreadPoolExecutor(max_workers=len(engines), thread_name_prefix="generate")
        # extra /health fields and whether the server can answer ("ok"), e.g. the RPC workers' state
        self.health: Callable[[], dict[str, Any]] | None = None

    @property
    def busy(self) -> int:
        return sum(slot.busy for slot in self.slots)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead, served N at a time."""
        ahead = self.waiting + self.busy
        return max(1, math.ceil(self.service_seconds * ahead / len(self.engines)))

    async def _prompt(self, req: Request) -> np.ndarray | None:
        """The request's prompt ids for choosing a slot (None: no choice to make, or it does not build;
        then the reply itself reports why)."""
        if not self.prompt_cache or len(self.slots) == 1:
            return None
        loop = asyncio.get_running_loop()
        try:  # any engine's vocabulary will do; tokenizing is safe next to a running decode
            return await loop.run_in_executor(None, prompt_ids, self.slots[0].engine, req)
        except Exception:
            return None

    async def submit(self, req: Request, deadline: float) -> Job:
        """Take a slot (or refuse: full queue, or no slot before the deadline) and start the job."""
        t0 = time.monotonic()
        prompt = await self._prompt(req)
        slot = await self._take(prompt, deadline) or await self._wait(deadline)
        loop = asyncio.get_running_loop()
        job = Job(req, loop)
        job.queue_seconds, job.slot = time.monotonic() - t0, slot.index
        slot.job = job
        self.jobs.add(job)
        future = loop.run_in_executor(self.executor, self._run, slot, job)
        future.add_done_callback(
            lambda f: self._release(slot, job, time.monotonic() - t0 - job.queue_seconds)
        )
        return job

    async def _take(self, prompt: np.ndarray | None, deadline: float) -> Slot | None:
        """The best free slot for ``prompt`` (None: none is free). A slot whose reply has ended but
        whose thread is still closing counts as free: it is waited for (at most ``ENDING_WAIT``)."""
        end = min(deadline, time.monotonic() + ENDING_WAIT)
        while True:
            free = [s for s in self.slots if not s.busy]
            ending = [s for s in self.slots if s.busy and s.job is not None and s.job.ended]
            if not free:
                return None
            left = end - time.monotonic()
            slot, _ = choose(free + ending if prompt is not None and left > 0 else free, prompt)
            if not slot.busy:
                slot.busy = True
                return slot
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._released.wait(), left)

    async def _wait(self, deadline: float) -> Slot:
        """Queue for the next slot released (it arrives busy, already ours)."""
        if self.waiting >= self.max_queue:
            raise self._busy(
                f"all {len(self.engines)} slots are busy and the queue ({self.max_queue}) is full"
            )
        waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self.waiting += 1
        try:
            await asyncio.wait({waiter}, timeout=max(deadline - time.monotonic(), 0.001))
        except BaseException:
            self._abandon(waiter)
            raise
        finally:
            self.waiting -= 1
        if not waiter.done():
            self._abandon(waiter)
            raise self._busy("no slot became free within the server's time limit")
        return waiter.result()

    def _abandon(self, waiter: asyncio.Future[Slot]) -> None:
        """A waiter that gave up: a slot handed to it meanwhile goes on (a slot must never get lost)."""
        if waiter.done() and not waiter.cancelled():
            self._hand_over(waiter.result())
        else:
            waiter.cancel()
            if waiter in self.waiters:
                self.waiters.remove(waiter)

    def _run(self, slot: Slot, job: Job) -> None:
        if not self.prompt_cache and hasattr(slot.engine, "clear_kv"):  # check_config: not with --rpc
            slot.engine.clear_kv()
        job.run(slot.engine)

    def _release(self, slot: Slot, job: Job, seconds: float) -> None:
        self.jobs.discard(job)
        self.service_seconds += SERVICE_EWMA * (seconds - self.service_seconds)
        usage, first = job.outcome.usage, job.outcome.first_token
        if usage is not None:
            ttft = None if first is None else job.queue_seconds + first
            self.metrics.generation(usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens, ttft)
        slot.used, slot.job = time.monotonic(), None
        slot.remember(self.prompt_cache, None if usage is None else usage.prompt_tokens)
        self._hand_over(slot)
        self._released.set()
        self._released = asyncio.Event()

    def _hand_over(self, slot: Slot) -> None:
        """Give a released slot to the first live waiter, else mark it free."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        slot.busy = False

    def _busy(self, message: str) -> ApiError:
        return ApiError(503, message, code="server_busy", headers={"Retry-After": str(self.retry_after())})

    def gauges(self) -> dict[str, tuple[str, float]]:
        """The /metrics gauges, now."""
        return {
            "queue_depth": ("Requests waiting for a slot.", self.waiting),
            "queue_max": ("Most requests that may wait for a slot.", self.max_queue),
            "slots_busy": ("Slots generating a reply.", self.busy),
            "slots_total": ("Slots (engines).", len(self.slots)),
        }

    def stop_all(self, why: str = "shutdown") -> None:
        for job in list(self.jobs):
            job.cancel(why)

    def close(self, on_engine: Callable[[Engine], None] | None = None) -> None:
        """Stop every reply, wait for the threads, free the engines."""
        self.stop_all()
        self.executor.shutdown(wait=True)
        for engine in self.engines:
            (on_engine or (lambda e: e.close()))(engine)
