"""llama.cpp's native sampler chain for one reply: logit bias, penalties, top-k/top-p/min-p, temperature,
a seeded draw (greedy at temperature 0), a GBNF grammar, and the model's log-probabilities.

Penalties count the reply's own tokens (the last ``PENALTY_LAST_N``), as OpenAI's presence and
frequency penalties do. Log-probabilities are the model's raw distribution at that position
(log-softmax of the logits, before any penalty, bias, grammar or temperature), as OpenAI reports them.
With a grammar, the grammar first looks only at the best-scored tokens (after bias and penalties) and
goes over the whole vocabulary only when too few of them are legal for the draw to be exact: the same
token as a full pass, without its cost on a 128k vocabulary.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import llama_cpp
import numpy as np

from tlite_edge.errors import TliteError
from tlite_edge.runtime.types import Sampling

PENALTY_LAST_N = 64  # llama.cpp's (and llama-server's) default window for penalties
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its log-probability and the ``top`` alternatives (token, logprob), best first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class Sampler:
    """The samplers of one reply on one vocabulary; ``sample(ctx, idx)`` picks and accepts a token."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p, n_vocab: int, s: Sampling, seed: int) -> None:
        self.n_vocab, self.top_n = n_vocab, s.logprobs
        self._keep: list[object] = []  # ctypes buffers the samplers point into
        self.grammar = None
        pre = []  # what changes logits before the grammar: bias, penalties
        if s.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(s.logit_bias))(*s.logit_bias)
            self._keep.append(biases)
            pre.append(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(s.logit_bias), biases))
        if (s.repeat_penalty, s.frequency_penalty, s.presence_penalty) != (1.0, 0.0, 0.0):
            # llama.cpp's C function takes (last_n, repeat, freq, present); llama-cpp-python's binding
            # still declares an n_vocab first, which the C side reads as last_n: pass the window twice.
            pre.append(
                llama_cpp.llama_sampler_init_penalties(
                    PENALTY_LAST_N, PENALTY_LAST_N, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
                )
            )
        if s.temp <= 0:
            post = [llama_cpp.llama_sampler_init_greedy()]
            self.need = 1  # legal tokens among the best that make the pick exact
        else:
            post = [
                llama_cpp.llama_sampler_init_top_k(s.top_k),
                llama_cpp.llama_sampler_init_top_p(s.top_p, 1),
                llama_cpp.llama_sampler_init_min_p(s.min_p, 1),
                llama_cpp.llama_sampler_init_temp(s.temp),
                llama_cpp.llama_sampler_init_dist(seed),
            ]
            self.need = s.top_k if 0 < s.top_k <= TIERS[-1] // 2 else n_vocab
        # greedy with nothing before it: numpy's argmax over the logits picks the same token (the first
        # of equal maxima, as llama.cpp's greedy sampler) without building a 128k candidate array
        self.argmax = s.temp <= 0 and not pre and s.grammar is None
        if s.grammar is None:
            self.pre, self.post = None, _chain(pre + post)
            return
        self.pre, self.post = (_chain(pre) if pre else None), _chain(post)
        self.grammar = llama_cpp.llama_sampler_init_grammar(vocab, s.grammar.encode("utf-8"), b"root")
        if not self.grammar:
            self.close()
            raise TliteError(None, "the grammar does not parse (GBNF with a root rule named root)")
        self._full = _Candidates(n_vocab)
        self._full.view["id"] = np.arange(n_vocab, dtype=np.int32)
        self._sub = _Candidates(TIERS[-1])

    def logits(self, ctx: llama_cpp.llama_context_p, idx: int) -> np.ndarray:
        """The model's logits at output ``idx`` of the last decode (a view, valid until the next one)."""
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, idx), shape=(self.n_vocab,))

    def logprob(self, ctx: llama_cpp.llama_context_p, idx: int, token: int) -> TokenLogprob:
        """``token``'s log-probability at output ``idx`` and the ``top_n`` most likely tokens there."""
        z = self.logits(ctx, idx).astype(np.float64)
        z -= z.max()
        z -= math.log(float(np.exp(z).sum()))
        top: tuple[tuple[int, float], ...] = ()
        if self.top_n:
            best = np.argpartition(-z, self.top_n - 1)[: self.top_n]
            best = best[np.argsort(-z[best], kind="stable")]
            top = tuple((int(t), float(z[t])) for t in best)
        return TokenLogprob(token, float(z[token]), top)

    def sample(self, ctx: llama_cpp.llama_context_p, idx: int) -> int:
        """Draw the token at output ``idx`` of the last decode and accept it into every sampler."""
        if self.argmax:
            return int(np.argmax(self.logits(ctx, idx)))
        if self.grammar is None:
            return int(llama_cpp.llama_sampler_sample(self.post, ctx, idx))
        full = self._full
        full.view["logit"] = self.logits(ctx, idx)
        full.reset(self.n_vocab)
        if self.pre is not None:
            llama_cpp.llama_sampler_apply(self.pre, full.ref)
        token = None
        if self.need <= TIERS[-1] // 2:
            # The grammar only over the best-scored tokens: exact once ``need`` of them are legal
            # (the draw keeps the best ``need`` at most), else the whole vocabulary.
            logit = full.view["logit"]
            order = np.argpartition(-logit, TIERS[-1])[: TIERS[-1]]
            order = order[np.argsort(-logit[order], kind="stable")]
            for m in TIERS:
                sub = self._sub
                sub.view[:m] = full.view[order[:m]]
                sub.reset(m)
                llama_cpp.llama_sampler_apply(self.grammar, sub.ref)
                if np.count_nonzero(np.isfinite(sub.view["logit"][:m])) >= self.need:
                    token = _pick(self.post, sub)
                    break
        if token is None:
            llama_cpp.llama_sampler_apply(self.grammar, full.ref)
            token = _pick(self.post, full)
        for smpl in (self.grammar, self.pre, self.post):
            if smpl is not None:
                llama_cpp.llama_sampler_accept(smpl, token)
        return token

    def close(self) -> None:
        for name in ("pre", "post", "grammar"):
            smpl = getattr(self, name, None)
            if smpl:
                llama_cpp.llama_sampler_free(smpl)
            setattr(self, name, None)

    def __del__(self) -> None:
        self.close()


TIERS = (64, 1024)  # how many of the best tokens the grammar looks at before the whole vocabulary


class _Candidates:
    """A llama_token_data_array over a buffer of ``size`` entries, with a numpy view of them."""

    def __init__(self, size: int) -> None:
        self.data = (llama_cpp.llama_token_data * size)()
        self.view = np.ctypeslib.as_array(self.data)
        self.array = llama_cpp.llama_token_data_array(self.data, size, -1, False)
        self.ref = ctypes.byref(self.array)

    def reset(self, size: int) -> None:
        a = self.array
        a.data, a.size, a.selected, a.sorted = self.data, size, -1, False


def _chain(samplers: list[llama_cpp.llama_sampler_p]) -> llama_cpp.llama_sampler_p:
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for smpl in samplers:
        llama_cpp.llama_sampler_chain_add(chain, smpl)
    return chain


def _pick(chain: llama_cpp.llama_sampler_p, cur: _Candidates) -> int:
    llama_cpp.llama_sampler_apply(chain, cur.ref)
    return int(cur.array.data[cur.array.selected].id)
