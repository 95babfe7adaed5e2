"""How much RAM a GGUF needs to run: weights + KV cache at a context length + compute buffers."""

from __future__ import annotations

from typing import Any

from gguf import Keys

KV_BYTES = 2  # llama.cpp's default f16 K and V cache
BATCH = 512  # llama.cpp's default logical batch: logits and activations are sized by it


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
    return weights_bytes + kv_cache_bytes(meta, ctx) + compute_bytes(meta, ctx)
