"""An independent float64 numpy forward pass of Hugging Face Qwen2 / Qwen3 checkpoint folders.

Written from the Qwen equations and the HF tensor layout only (nothing from ``tlite_edge``); the
Llama reference supplies the parts the families share (weights, RMSNorm, rotate-half RoPE, SwiGLU,
causal GQA attention). Qwen2 adds q/k/v projection biases; Qwen3 has no biases but RMS-normalises
every query and key head over head_dim (its own weight, shared by all heads) before the rotary
embedding, and may take a head_dim that is not hidden / heads. Both rotate halves (NEOX RoPE), which
is what the HF rows already encode: no permutation anywhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from reference_llama import ReferenceLlama, rms_norm, rotate_half


class ReferenceQwen(ReferenceLlama):
    """Float64 Qwen2/Qwen3 forward pass (biases and q/k norms whenever the checkpoint holds them)."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__(folder)
        self.qk_norm = "model.layers.0.self_attn.q_norm.weight" in self.w
        self.bias = "model.layers.0.self_attn.q_proj.bias" in self.w
        assert self.qk_norm != self.bias, "a Qwen2 checkpoint has biases, a Qwen3 one q/k norms"

    def _attention(self, x: np.ndarray, p: str, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        n, d = x.shape[0], self.head_dim

        def heads(proj: str, count: int) -> np.ndarray:  # [n, hidden] -> [count, n, d]
            y = x @ self._p(f"{p}self_attn.{proj}_proj.weight").T
            if self.bias:
                y = y + self._p(f"{p}self_attn.{proj}_proj.bias")
            return y.reshape(n, count, d).transpose(1, 0, 2)

        q, k, v = heads("q", self.n_heads), heads("k", self.n_kv_heads), heads("v", self.n_kv_heads)
        if self.qk_norm:
            q = rms_norm(q, self._p(f"{p}self_attn.q_norm.weight"), self.eps)
            k = rms_norm(k, self._p(f"{p}self_attn.k_norm.weight"), self.eps)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = self.n_heads // self.n_kv_heads
        k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        out = (probs @ v).transpose(1, 0, 2).reshape(n, self.n_heads * d)
        return out @ self._p(f"{p}self_attn.o_proj.weight").T
