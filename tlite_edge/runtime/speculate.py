"""Prompt-lookup speculative decoding: more than one reply token per model step when the reply copies.

The drafter matches the last few tokens (an n-gram) against the prompt and the reply so far and
proposes the tokens that followed the most recent match; ``decode_all`` evaluates the last kept token
and the drafts in one batch with logits at every position. The reply then samples at those positions in
order with its own sampler chain and keeps a draft only while the sampled token equals it (the first
mismatch's sampled token is kept too), so the samplers see exactly the tokens they would have seen one
step at a time: greedy output is the same and sampled output follows the same distribution.
A batch is only sent where it pays: ``StepCosts`` times the steps and picks how many drafts to verify
from the reply's acceptance so far (none when a plain step is expected to be faster).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence

import llama_cpp
import numpy as np

MAX_NGRAM = 4  # longest suffix looked up
MIN_NGRAM = 2  # shortest: a one-token match predicts too little to pay for a batch
MAX_DRAFT = 8  # tokens proposed per step
MIN_DRAFT = 2  # a shorter draft is not worth a batch: decode one token as usual


WINDOW = 5  # timings kept per batch size; its cost is their (low) median, so one hiccup does not count
RETRY = 16  # after this many drafts declined on cost alone, verify some anyway: timings stay current
EXPLORE_P = 0.5  # ... where drafts have been holding at least this often
PRIOR_ACCEPTED, PRIOR_REJECTED = 3, 1  # a reply starts out expecting 3 of 4 drafts to hold


class StepCosts:
    """Seconds per model step by batch size (1: a plain one-token step), learned as replies run and kept
    by the engine: what verifying k drafts costs depends on the model and machine (on a 2-core CPU a
    2-token batch cost 1.6 one-token steps, a 4-token batch about the same). Each size's cost is the low
    median of its last ``WINDOW`` timings, and while drafts hold every ``RETRY``-th one declined on cost
    is verified anyway, so slow timings (a page fault, another process) cannot turn speculation off."""

    def __init__(self) -> None:
        self.samples: dict[int, deque[float]] = {}
        self.declined = 0

    def record(self, size: int, seconds: float) -> None:
        self.samples.setdefault(size, deque(maxlen=WINDOW)).append(seconds)

    def cost(self, size: int) -> float | None:
        """Seconds for a step of ``size`` tokens (None: not timed yet)."""
        timings = self.samples.get(size)
        return statistics.median_low(timings) if timings else None

    def best_draft(self, n_drafts: int, p: float) -> int:
        """How many of ``n_drafts`` drafted tokens to verify in one batch: the count with the most expected
        tokens per second when each draft holds with probability ``p`` until the first miss (a batch of
        1 + k yields 1 + p + … + p^k tokens), or 0 when a plain step is expected to be faster. A plain step
        is timed first; a batch size not timed yet counts as cheap as a plain step, so it gets tried."""
        t1 = self.cost(1)
        if t1 is None:
            return 0
        best, best_rate, gain = 0, 0.0, 1.0
        for k in range(1, n_drafts + 1):
            gain += p**k
            rate = gain / (self.cost(k + 1) or t1)
            if k >= MIN_DRAFT and rate > best_rate:
                best, best_rate = k, rate
        if best_rate > 1.0 / t1:
            return best
        if best and p >= EXPLORE_P:  # drafts hold, only the timings say no: re-time the nearest size
            self.declined += 1
            if self.declined % RETRY == 0:
                return best
        return 0


class DraftModel:
    """A small model with the same vocabulary that drafts greedily (``--draft``); its KV cache follows
    the reply by longest common prefix, so rejected drafts are dropped on the next call."""

    def __init__(self, llm: llama_cpp.Llama, n_vocab: int) -> None:
        self.llm, self.n_vocab = llm, n_vocab

    def draft(self, ids: np.ndarray, k: int) -> list[int]:
        llm, n = self.llm, len(ids)
        held = min(llm.n_tokens, n - 1)
        same = np.asarray(llm.input_ids[:held]) == ids[:held]
        keep = held if same.all() else int(np.argmin(same))
        llm._ctx.kv_cache_seq_rm(-1, keep, -1)
        llm.n_tokens = keep
        out: list[int] = []
        llm.eval(ids[keep:].tolist())
        while True:
            logits = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
            out.append(int(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax()))
            if len(out) == k or llm.n_tokens + 1 >= llm.n_ctx():
                return out
            llm.eval(out[-1:])


class Drafter:
    """The prompt and the reply so far, and drafts looked up in them (or made by a draft model).

    Lookups cost O(1) per token: every n-gram (``MIN_NGRAM`` … ``MAX_NGRAM`` tokens) is indexed by where
    it ends, the latest occurrence winning, once ``MIN_DRAFT`` tokens have followed it."""

    def __init__(self, prompt: Sequence[int], capacity: int, model: DraftModel | None = None) -> None:
        self.ids = np.zeros(len(prompt) + capacity + 1, dtype=np.int32)
        self.ids[: len(prompt)] = prompt
        self.seq: list[int] = [int(t) for t in prompt]  # the same tokens, for cheap slicing and hashing
        self.n = len(prompt)
        self.model = model
        self.ends: dict[tuple[int, ...], int] = {}
        for end in range(MIN_NGRAM, self.n - MIN_DRAFT + 1):
            self._index(end)

    def _index(self, end: int) -> None:
        seq = self.seq
        for size in range(MIN_NGRAM, min(MAX_NGRAM, end) + 1):
            self.ends[tuple(seq[end - size : end])] = end

    def push(self, token: int) -> None:
        if self.n < len(self.ids):
            self.ids[self.n] = token
            self.seq.append(int(token))
            self.n += 1
            if self.n - MIN_DRAFT >= MIN_NGRAM:
                self._index(self.n - MIN_DRAFT)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the longest matching
        suffix (``MAX_NGRAM`` down to ``MIN_NGRAM`` tokens) followed by ``MIN_DRAFT`` tokens at least;
        [] when there is none."""
        n, seq = self.n, self.seq
        if self.model is not None:
            return self.model.draft(self.ids[:n], k)
        for size in range(min(MAX_NGRAM, n - 1), MIN_NGRAM - 1, -1):
            end = self.ends.get(tuple(seq[n - size : n]))
            if end is not None:
                return seq[end : min(end + k, n)]
        return []


def decode_all(llm: llama_cpp.Llama, tokens: Sequence[int]) -> None:
    """Decode ``tokens`` after what the KV cache holds in one batch, with logits at every position
    (output ``i`` is the distribution after ``tokens[i]``)."""
    llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
    n_past = llm.n_tokens
    llm._batch.set_batch(batch=tokens, n_past=n_past, logits_all=True)
    llm._ctx.decode(llm._batch)
    llm.input_ids[n_past : n_past + len(tokens)] = tokens
    llm.n_tokens += len(tokens)
    llm._requires_eval = False


def truncate(llm: llama_cpp.Llama, n: int) -> None:
    """Forget the KV cache past ``n`` tokens (rejected drafts); the next turn re-evaluates its last token."""
    if llm.n_tokens > n:
        llm._ctx.kv_cache_seq_rm(-1, n, -1)
        llm.n_tokens = n
        llm._requires_eval = True
