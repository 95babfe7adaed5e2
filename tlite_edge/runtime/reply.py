"""One streamed assistant reply: evaluate the prompt's uncached tail, then sample a token at a position,
check drafted tokens in one batch where speculation finds them, stream whole UTF-8 characters.

A ``Reply`` belongs to a conversation (``chat.Chat``, seen here only through ``Conversation``): it
reads the engine from it and, when stop() aborts the prompt, takes its turn back out of the history.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import llama_cpp
import numpy as np

from tlite_edge.runtime.parts import Part, ReplyParser, Utf8Stream
from tlite_edge.runtime.sampler import Sampler, TokenLogprob
from tlite_edge.runtime.speculate import (
    MAX_DRAFT,
    MIN_DRAFT,
    PRIOR_ACCEPTED,
    PRIOR_REJECTED,
    Drafter,
    decode_all,
    truncate,
)
from tlite_edge.runtime.types import Message, ReplyStats, Sampling

if TYPE_CHECKING:
    from tlite_edge.runtime.engine import Engine

NO_ABORT = llama_cpp.ggml_abort_callback()  # a NULL callback


class Conversation(Protocol):
    """What a reply uses of its chat: the engine, the history, the first message still in the window."""

    engine: Engine
    messages: list[Message]
    start: int


class Reply:
    """A streamed assistant reply. Iterate for the answer's text pieces (``parts()`` for thinking and
    tool calls as well); ``stop()`` ends it after the current piece."""

    def __init__(
        self,
        chat: Conversation,
        prompt: list[int],
        max_tokens: int,
        sampling: Sampling,
        t0: float,
        parser: ReplyParser | None = None,
    ):
        self.chat = chat
        self.prompt = prompt
        self.sampling = sampling
        self.max_tokens = max_tokens
        self.raw = Message("assistant", "", [])  # the text as generated, tags and all
        self.message = Message("assistant", "", self.raw.tokens)  # what the history keeps
        self.stats = ReplyStats(prompt_tokens=len(prompt))
        self.parser = parser
        self.single_call = False  # stop after the first tool call (parallel_tool_calls=False)
        self._t0 = t0
        self._stop = False
        engine = chat.engine
        seed = sampling.seed if sampling.seed is not None else engine.settings.seed
        self.sampler = Sampler(engine.vocab, engine.n_vocab, sampling, seed)
        # one entry per reply token (``message.tokens``) when sampling.logprobs is set
        self.logprobs: list[TokenLogprob] | None = [] if sampling.logprobs is not None else None
        # speculative decoding: the drafter, and the last verified batch (its first KV position, drafts,
        # and the output sampled last)
        on = engine.settings.speculative and max_tokens > 1
        self.drafter = Drafter(prompt, max_tokens, engine.draft_model) if on else None
        self._batch: tuple[int, list[int], int] | None = None
        self._rejected = 0  # batches that ended on a draft the model did not take
        self._gen = self._parse()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            part = next(self._gen)
            if part.kind == "content":
                return part.text

    def parts(self) -> Iterator[Part]:
        """The reply as tagged pieces: "reasoning", "content", and "tool_call" (an OpenAI call)."""
        return self._gen

    @property
    def text(self) -> str:
        """The answer (without the thinking and the tool-call blocks)."""
        return self.message.content

    @property
    def reasoning(self) -> str:
        """The thinking (``<think>`` block) of the reply; empty when there was none."""
        return self.message.reasoning or ""

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls in OpenAI's shape (``id``, ``type``, ``function.name``/``arguments``)."""
        return self.message.tool_calls or []

    @property
    def done(self) -> bool:
        return bool(self.stats.finish_reason)

    def stop(self) -> None:
        """Ask the reply to end; safe from another thread or a signal handler. While the prompt is
        still being read this aborts it (on CPU) and takes the turn back out of the chat."""
        self._stop = True

    def close(self) -> None:
        """End now (a consumer that stopped iterating); the partial reply stays in the history."""
        self._gen.close()
        self.stats.finish_reason = self.stats.finish_reason or "stopped"

    def result(self) -> str:
        """Run to the end and return the answer."""
        for _ in self._gen:
            pass
        return self.text

    def _parse(self) -> Iterator[Part]:
        """The generated text through the parser (if any), recorded in ``message`` as it goes."""
        run = self._run()
        try:
            for raw in run:
                for part in self.parser.feed(raw) if self.parser else [Part("content", raw)]:
                    self._record(part)
                    yield part
                    if part.kind == "tool_call" and self.single_call:
                        self.stop()
            for part in self.parser.flush() if self.parser else []:
                self._record(part)
                yield part
        finally:
            run.close()
            for part in self.parser.flush() if self.parser else []:  # closed early: keep what was held
                self._record(part)

    def _record(self, part: Part) -> None:
        msg = self.message
        if part.kind == "content":
            msg.content += part.text
        elif part.kind == "reasoning":
            msg.reasoning = (msg.reasoning or "") + part.text
        elif part.call is not None:
            msg.tool_calls = [*(msg.tool_calls or []), part.call]

    def _run(self) -> Iterator[str]:
        engine, stats, msg = self.chat.engine, self.stats, self.raw
        ctx = engine.llm._ctx.ctx
        llama_cpp.llama_perf_context_reset(ctx)
        utf8 = Utf8Stream()
        t_first = 0.0
        # While the prompt is read, stop() aborts llama_decode (CPU backends check between graph nodes):
        # a long prompt need not finish before Ctrl-C takes effect. Off once tokens come (no per-token cost).
        abort = llama_cpp.ggml_abort_callback(lambda _data: self._stop)
        llama_cpp.llama_set_abort_callback(ctx, abort, None)
        try:
            if not self._read_prompt():
                return
            token = self.sample_at(-1)
            while True:
                now = time.perf_counter()
                if not t_first:
                    t_first = now
                    llama_cpp.llama_set_abort_callback(ctx, NO_ABORT, None)
                    self._read_prompt_perf(now)
                else:
                    stats._decodes += 1
                    stats.generation_seconds = now - t_first
                if engine.is_eog(token):
                    stats.finish_reason = "stop"
                    if self.logprobs:
                        self.logprobs.pop()  # the end of turn is not part of the reply
                    break
                msg.tokens.append(token)  # type: ignore[union-attr]
                stats.generated_tokens += 1
                piece = utf8.feed(engine.token_bytes(token))
                msg.content += piece
                if piece:
                    yield piece
                if self._stop and not utf8.pending:  # never stop inside a character
                    stats.finish_reason = "stopped"
                    break
                if stats.generated_tokens >= self.max_tokens:
                    stats.finish_reason = "length"
                    break
                token = self._next(token)
            tail = utf8.flush()
            msg.content += tail
            if tail:
                yield tail
        finally:
            llama_cpp.llama_set_abort_callback(ctx, NO_ABORT, None)
            if self._batch is not None:  # the KV cache keeps what a step-by-step reply would have
                truncate(engine.llm, self._batch[0] + self._batch[2] + 1)
            if not stats.finish_reason:  # closed by the consumer
                stats.finish_reason = "stopped"
                msg.content += utf8.flush()
            self.sampler.close()

    # ---- the two steps of decoding: evaluate tokens, then sample at one of their positions --------

    def evaluate(self, tokens: Sequence[int]) -> None:
        """Decode ``tokens`` after what the KV cache holds (in batches); logits come for the last one."""
        if tokens:
            self.chat.engine.llm.eval(tokens)

    def _next(self, token: int) -> int:
        """The token after ``token`` (kept): from the last verified batch while its drafts hold, else
        after decoding ``token`` (with a draft when one is found)."""
        engine, stats = self.chat.engine, self.stats
        llm, costs = engine.llm, engine.step_costs
        if self.drafter is None:
            self.evaluate([token])
            return self.sample_at(-1)
        self.drafter.push(token)
        if self._batch is not None:
            base, drafts, idx = self._batch
            if idx < len(drafts) and drafts[idx] == token:  # the draft holds: its output is ready
                stats.accepted += 1
                self._batch = (base, drafts, idx + 1)
                return self.sample_at(idx + 1)
            self._rejected += idx < len(drafts)
            truncate(llm, base + idx + 1)  # drop the rejected drafts
            self._batch = None
        # a draft may cover only tokens the reply can still take after the next one
        room = min(MAX_DRAFT, self.max_tokens - stats.generated_tokens - 1)
        drafts = self.drafter.draft(room) if room >= MIN_DRAFT else []
        if len(drafts) >= MIN_DRAFT:
            held = stats.accepted + PRIOR_ACCEPTED
            drafts = drafts[: costs.best_draft(len(drafts), held / (held + self._rejected + PRIOR_REJECTED))]
        else:
            drafts = []
        t0 = time.perf_counter()
        if drafts:
            self._batch = (llm.n_tokens, drafts, 0)
            decode_all(llm, [token, *drafts])
            stats.drafted += len(drafts)
            out = self.sample_at(0)
        else:
            self.evaluate([token])
            out = self.sample_at(-1)
        costs.record(1 + len(drafts), time.perf_counter() - t0)
        return out

    def sample_at(self, idx: int) -> int:
        """The token drawn from output ``idx`` of the last evaluation (-1: its last token), accepted by
        the samplers; its log-probabilities go to ``logprobs`` when they are asked for."""
        ctx = self.chat.engine.llm._ctx.ctx
        token = self.sampler.sample(ctx, idx)
        if self.logprobs is not None:
            self.logprobs.append(self.sampler.logprob(ctx, idx, token))
        return token

    def _cached_prefix(self) -> list[int]:
        """Keep the KV cache's longest prefix of the prompt; return the prompt tokens still to evaluate
        (at least the last one, for fresh logits, unless the cache ends exactly there already)."""
        llm, prompt = self.chat.engine.llm, self.prompt
        n = min(llm.n_tokens, len(prompt))
        same = np.asarray(llm.input_ids[:n]) == np.asarray(prompt[:n], dtype=np.intc)
        common = n if same.all() else int(np.argmin(same))
        if common == len(prompt) == llm.n_tokens and not llm._requires_eval:
            return []  # the logits of the last decode are those of the prompt's last token
        keep = common - 1 if common == len(prompt) else common
        if keep > 0 and llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            llm.n_tokens = keep
        else:
            llm.reset()
            keep = 0
        llm._requires_eval = True
        return prompt[keep:]

    def _read_prompt(self) -> bool:
        """Evaluate the prompt's uncached tail; False when stop() aborted it (the turn is then taken back)."""
        try:
            self.evaluate(self._cached_prefix())
            return True
        except RuntimeError as exc:
            if not (self._stop and "returned 2" in str(exc)):  # llama_decode: 2 = aborted
                raise
            llama_cpp.llama_synchronize(self.chat.engine.llm._ctx.ctx)  # settles the perf counters
            self._read_prompt_perf(time.perf_counter())
            self.stats.time_to_first_token = 0.0
            self.stats.finish_reason = "stopped"
            messages = self.chat.messages
            if messages and messages[-1] is self.message:  # nothing was said: forget the turn
                del messages[-2:]
                self.chat.start = min(self.chat.start, len(messages))
            return False

    def _read_prompt_perf(self, now: float) -> None:
        """Prompt tokens llama.cpp evaluated for this turn (perf counters were reset at its start)."""
        perf = llama_cpp.llama_perf_context(self.chat.engine.llm._ctx.ctx)
        # llama.cpp reports a count of 0 as 1; a zero time tells the two apart.
        batched = perf.n_p_eval if perf.t_p_eval_ms > 0 else 0
        single = perf.n_eval if perf.t_eval_ms > 0 else 0
        self.stats.evaluated_tokens = batched + single
        self.stats.prompt_seconds = (perf.t_p_eval_ms + perf.t_eval_ms) / 1000
        self.stats.time_to_first_token = now - self._t0
