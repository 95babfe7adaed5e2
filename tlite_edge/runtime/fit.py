"""How much memory a GGUF needs to run, and which quantization level and context fit a machine.

RAM needed = weights + KV cache at a context length + compute buffers; weights of a level that is
not made yet come from its bits per weight.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, Keys

from tlite_edge.quant.profiles import Profile

# T-lite-instruct-0.1 (Llama-3-8B shape): what a missing MODEL stands for.
TLITE_PARAMS = 8_030_261_248
TLITE_META: dict[str, Any] = {
    Keys.General.ARCHITECTURE: "llama",
    Keys.LLM.CONTEXT_LENGTH.format(arch="llama"): 8192,
    Keys.LLM.BLOCK_COUNT.format(arch="llama"): 32,
    Keys.LLM.EMBEDDING_LENGTH.format(arch="llama"): 4096,
    Keys.LLM.FEED_FORWARD_LENGTH.format(arch="llama"): 14336,
    Keys.Attention.HEAD_COUNT.format(arch="llama"): 32,
    Keys.Attention.HEAD_COUNT_KV.format(arch="llama"): 8,
    Keys.LLM.VOCAB_SIZE.format(arch="llama"): 128256,
}
# Whole-file bits per weight on Llama-3-8B (file size × 8 / parameters): our profiles' files as measured
# in BENCHMARKS.md, else llama.cpp's mixes (DESIGN.md §6, published Llama-3-8B GGUFs). IQ4_XS and IQ2_M
# are ours (IQ2_M keeps the token embedding at Q4_K). Other file types: the base GGML type's bits.
BITS_PER_WEIGHT: dict[str, float] = {
    "ALL_F32": 32.0,
    "MOSTLY_F16": 16.0,
    "MOSTLY_BF16": 16.0,
    "MOSTLY_Q8_0": 8.52,
    "MOSTLY_Q6_K": 6.57,
    "MOSTLY_Q5_K_M": 5.70,
    "MOSTLY_Q5_K_S": 5.57,
    "MOSTLY_Q4_K_M": 4.90,
    "MOSTLY_Q4_K_S": 4.67,
    "MOSTLY_IQ4_XS": 4.47,
    "MOSTLY_Q3_K_L": 4.30,
    "MOSTLY_Q3_K_M": 4.00,
    "MOSTLY_IQ3_M": 3.77,
    "MOSTLY_Q3_K_S": 3.65,
    "MOSTLY_Q2_K": 3.17,
    "MOSTLY_IQ2_M": 3.01,
}
KV_BYTES = 2  # llama.cpp's default f16 K and V cache
BATCH = 512  # llama.cpp's default logical batch: logits and activations are sized by it
HEADROOM = 0.85  # use at most this share of the memory that is free
MIN_CTX = 512


def kv_cache_bytes(meta: dict[str, Any], ctx: int) -> int:
    """K and V for every layer at ``ctx`` tokens."""
    arch = meta.get(Keys.General.ARCHITECTURE, "llama")
    layers = int(meta[Keys.LLM.BLOCK_COUNT.format(arch=arch)])
    heads = int(meta[Keys.Attention.HEAD_COUNT.format(arch=arch)])
    kv_heads = int(meta.get(Keys.Attention.HEAD_COUNT_KV.format(arch=arch)) or heads)
    head_dim = int(
        meta.get(Keys.Attention.KEY_LENGTH.format(arch=arch))
        or meta[Keys.LLM.EMBEDDING_LENGTH.format(arch=arch)] // heads
    )
    return 2 * layers * ctx * kv_heads * head_dim * KV_BYTES


def compute_bytes(meta: dict[str, Any], ctx: int) -> int:
    """Logits for one batch plus the attention scores and activations of one batch (upper estimate)."""
    arch = meta.get(Keys.General.ARCHITECTURE, "llama")
    vocab = int(meta.get(Keys.LLM.VOCAB_SIZE.format(arch=arch)) or 0)
    hidden = int(meta[Keys.LLM.EMBEDDING_LENGTH.format(arch=arch)])
    ffn = int(meta.get(Keys.LLM.FEED_FORWARD_LENGTH.format(arch=arch)) or 4 * hidden)
    heads = int(meta[Keys.Attention.HEAD_COUNT.format(arch=arch)])
    return 4 * BATCH * (vocab + 4 * hidden + 2 * ffn + heads * min(ctx, BATCH * 8))


def ram_needed(weights_bytes: int, meta: dict[str, Any], ctx: int) -> int:
    """Memory to run a model with ``weights_bytes`` of weights at ``ctx`` tokens of context."""
    return weights_bytes + kv_cache_bytes(meta, ctx) + compute_bytes(meta, ctx)


def bits_per_weight(ftype: str) -> float:
    """Bits per weight of a llama.cpp file type (``MOSTLY_Q4_K_M``), measured or from its base GGML type."""
    if ftype in BITS_PER_WEIGHT:
        return BITS_PER_WEIGHT[ftype]
    base = re.sub(r"^(MOSTLY|ALL)_", "", ftype)
    for name in (base, re.sub(r"_(S|M|L|XS)$", "", base)):
        if name in GGMLQuantizationType.__members__:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
            return 8 * size / block
    return 16.0


def weights_bytes(profile: Profile, n_params: int) -> int:
    return math.ceil(bits_per_weight(profile.ftype) * n_params / 8)


@dataclass
class Fit:
    """One profile on one machine at one context."""

    profile: str
    bits_per_weight: float
    weights: int
    ram_needed: int
    fits: bool  # within HEADROOM of the free memory
    tight: bool  # fits only without the headroom

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def model_context(meta: dict[str, Any]) -> int:
    arch = meta.get(Keys.General.ARCHITECTURE, "llama")
    return int(meta.get(Keys.LLM.CONTEXT_LENGTH.format(arch=arch)) or 4096)


def profile_fits(
    profiles: dict[str, Profile], n_params: int, meta: dict[str, Any], ctx: int, available: int
) -> list[Fit]:
    """Every profile, largest first, with the memory it needs at ``ctx`` and whether it fits."""
    rows = []
    for profile in profiles.values():
        weights = weights_bytes(profile, n_params)
        need = ram_needed(weights, meta, ctx)
        rows.append(
            Fit(
                profile.name,
                bits_per_weight(profile.ftype),
                weights,
                need,
                need <= available * HEADROOM,
                available * HEADROOM < need <= available,
            )
        )
    return sorted(rows, key=lambda f: -f.bits_per_weight)


def recommend(fits: list[Fit]) -> Fit | None:
    """The largest profile that fits with headroom."""
    return next((f for f in fits if f.fits), None)


def context_for_memory(weights: int, meta: dict[str, Any], ctx: int, available: int) -> int:
    """``ctx`` halved until weights + KV cache + buffers fit the free memory (never below MIN_CTX)."""
    while ctx > MIN_CTX and ram_needed(weights, meta, ctx) > available * HEADROOM:
        ctx = max(MIN_CTX, ctx // 2)
    return ctx
