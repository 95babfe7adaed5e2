"""Compact reference distributions: the top-k log-probabilities and the log of the remaining mass.

For every scored position the reference keeps the ``k`` most likely token ids, their log-probabilities
and ``log(1 - sum of those k probabilities)`` (computed as the log-sum-exp of the other logits, so it
stays exact when the rest is tiny). KL divergence is then computed over k + 1 outcomes: the k tokens
and one "rest" bin holding all other tokens.

Approximation bound. Write P, Q for the reference and candidate distributions, K for the top-k set,
R_P = P(not K) and R_Q = Q(not K). Splitting the sum over the vocabulary gives exactly::

    KL(P || Q) = KL_k+1(P || Q) + R_P * KL(P(. | not K) || Q(. | not K))

The second term is >= 0, so the stored form never over-states the divergence, and it can miss at most
``R_P`` times the divergence of the two tails; ``tail_mass`` (mean R_P) is reported with every run so
the size of what is folded into the rest bin is visible (k = 64 on a trained model leaves a few %).
Perplexity and top-1 agreement use the full candidate logits and the reference's own top-1, so they
are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_TOP_K = 64


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _rest_logp(logp: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """log of the probability mass outside ``idx`` (per row), -inf when nothing is left."""
    masked = logp.copy()
    np.put_along_axis(masked, idx, -np.inf, axis=1)
    top = masked.max(axis=1)
    finite = np.isfinite(top)
    safe = np.where(finite, top, 0.0)
    with np.errstate(divide="ignore"):
        rest = safe + np.log(np.exp(masked - safe[:, None]).sum(axis=1))
    return np.where(finite, rest, -np.inf)


@dataclass
class TopK:
    """The compact form of one block of positions: ``idx`` [n, k] int32 (most likely first),
    ``logp`` [n, k] and ``rest`` [n] float64, ``target`` [n] int32 (the next token) and ``nll`` [n]."""

    idx: np.ndarray
    logp: np.ndarray
    rest: np.ndarray
    target: np.ndarray
    nll: np.ndarray

    FIELDS = ("idx", "logp", "rest", "target", "nll")

    @classmethod
    def from_logits(cls, logits: np.ndarray, target: np.ndarray, k: int) -> TopK:
        logp = log_softmax(logits)
        k = min(k, logp.shape[1])
        idx = np.argpartition(-logp, k - 1, axis=1)[:, :k] if k < logp.shape[1] else np.argsort(-logp)
        order = np.argsort(-np.take_along_axis(logp, idx, axis=1), axis=1, kind="stable")
        idx = np.take_along_axis(idx, order, axis=1).astype(np.int32)
        target = np.asarray(target, dtype=np.int32)
        return cls(
            idx,
            np.take_along_axis(logp, idx, axis=1),
            _rest_logp(logp, idx),
            target,
            -logp[np.arange(len(target)), target],
        )

    def save(self, path: str) -> None:
        np.savez(path, **{f: getattr(self, f) for f in self.FIELDS})

    @classmethod
    def load(cls, path: str) -> TopK:
        with np.load(path, allow_pickle=False) as data:
            return cls(*(data[f] for f in cls.FIELDS))


@dataclass
class Scores:
    """Per-position results of a candidate against the reference."""

    kld: np.ndarray
    top1: np.ndarray  # bool: candidate's most likely token == reference's
    nll: np.ndarray  # candidate's negative log-likelihood of the next token
    ref_tail: np.ndarray  # reference probability outside its top-k


def score(ref: TopK, logits: np.ndarray) -> Scores:
    """Candidate logits [n, vocab] against a reference block."""
    logq = log_softmax(logits)
    q_k = np.take_along_axis(logq, ref.idx.astype(np.int64), axis=1)
    q_rest = _rest_logp(logq, ref.idx.astype(np.int64))
    p_rest = np.exp(ref.rest)
    with np.errstate(invalid="ignore"):
        rest_term = np.where(p_rest > 0, p_rest * (ref.rest - q_rest), 0.0)
    kld = (np.exp(ref.logp) * (ref.logp - q_k)).sum(axis=1) + rest_term
    rows = np.arange(len(ref.target))
    return Scores(
        kld=kld,
        top1=logq.argmax(axis=1) == ref.idx[:, 0],
        nll=-logq[rows, ref.target],
        ref_tail=p_rest,
    )


def exact_kld(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Full-vocabulary KL(P || Q) per row (what the top-k form approximates from below)."""
    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=1)
