"""An independent float64 numpy forward pass of a Hugging Face Llama checkpoint folder.

Written from the Llama equations and the HF tensor layout only; it deliberately imports nothing from
``tlite_edge`` so that it can check the converter rather than repeat it. It reads ``config.json`` and
the safetensors shards itself, keeps the q/k weights in HF's (unpermuted) row order and applies RoPE
in HF's rotate-half convention.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# safetensors dtype -> numpy dtype of the stored elements (BF16 is read as raw uint16 bits)
_STORED = {"BF16": np.dtype("<u2"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4")}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one ``.safetensors`` file as float32 (exact for BF16, F16 and F32)."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    header.pop("__metadata__", None)
    base = 8 + header_len
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        stored = _STORED[entry["dtype"]]
        start, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        count = math.prod(shape)
        assert end - start == count * stored.itemsize, name
        data = np.frombuffer(raw, dtype=stored, count=count, offset=base + start)
        if entry["dtype"] == "BF16":
            data = (data.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = data.astype(np.float32).reshape(shape)
    return tensors


def load_weights(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of the checkpoint: sharded (index.json), single-file, or the one shard present."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    weights: dict[str, np.ndarray] = {}
    for name in files:
        weights.update(read_safetensors(folder / name))
    return weights


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


class ReferenceLlama:
    """Float64 Llama forward pass over a HF checkpoint folder (weights kept as float32 in memory)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        cfg = json.loads((self.folder / "config.json").read_text(encoding="utf-8"))
        scaling = cfg.get("rope_scaling")
        if scaling and (scaling.get("rope_type") or scaling.get("type")) != "default":
            raise NotImplementedError(f"rope_scaling {scaling!r} is not modelled by the reference")
        self.n_layers: int = cfg["num_hidden_layers"]
        self.n_heads: int = cfg["num_attention_heads"]
        self.n_kv_heads: int = cfg.get("num_key_value_heads", self.n_heads)
        self.head_dim: int = cfg.get("head_dim") or cfg["hidden_size"] // self.n_heads
        self.eps: float = float(cfg["rms_norm_eps"])
        self.theta: float = float(cfg.get("rope_theta", 10000.0))
        self.w = load_weights(self.folder)
        if "lm_head.weight" not in self.w and cfg.get("tie_word_embeddings", False):
            self.w["lm_head.weight"] = self.w["model.embed_tokens.weight"]

    def _p(self, name: str) -> np.ndarray:
        return self.w[name].astype(np.float64)

    def _rope(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        d = self.head_dim
        inv_freq = self.theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        freqs = np.outer(np.arange(n, dtype=np.float64), inv_freq)  # [n, d/2]
        emb = np.concatenate([freqs, freqs], axis=-1)  # [n, d]
        return np.cos(emb), np.sin(emb)

    def _attention(self, x: np.ndarray, p: str, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        n, d = x.shape[0], self.head_dim

        def heads(proj: str, count: int) -> np.ndarray:  # [n, count*d] -> [count, n, d]
            return (x @ self._p(f"{p}self_attn.{proj}_proj.weight").T).reshape(n, count, d).transpose(1, 0, 2)

        q, k, v = heads("q", self.n_heads), heads("k", self.n_kv_heads), heads("v", self.n_kv_heads)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = self.n_heads // self.n_kv_heads  # query head h reads KV head h // group
        k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)  # [heads, n, n]
        scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        out = (probs @ v).transpose(1, 0, 2).reshape(n, self.n_heads * d)
        return out @ self._p(f"{p}self_attn.o_proj.weight").T

    def _mlp(self, x: np.ndarray, p: str) -> np.ndarray:
        gate = x @ self._p(f"{p}mlp.gate_proj.weight").T
        up = x @ self._p(f"{p}mlp.up_proj.weight").T
        return (silu(gate) * up) @ self._p(f"{p}mlp.down_proj.weight").T

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits [n_tokens, vocab] (float64) for ``token_ids`` at positions 0..n-1."""
        ids = np.asarray(token_ids, dtype=np.int64)
        x = self.w["model.embed_tokens.weight"][ids].astype(np.float64)
        cos, sin = self._rope(len(ids))
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            x = x + self._attention(rms_norm(x, self._p(p + "input_layernorm.weight"), self.eps), p, cos, sin)
            x = x + self._mlp(rms_norm(x, self._p(p + "post_attention_layernorm.weight"), self.eps), p)
        x = rms_norm(x, self._p("model.norm.weight"), self.eps)
        return x @ self._p("lm_head.weight").T
