"""How much RAM a GGUF needs to run: weights + KV cache at a context length + compute buffers."""

from __future__ import annotations

from typing import Any

KV_BYTES = 2  # llama.cpp's default f16 K and V cache
BATCH = 512  # llama.cpp's default logical batch: logits and activations are sized by it


def kv_cache_bytes(meta: dict[str, Any], ctx: int) -> int:
    """K and V for every layer at ``ctx`` tokens."""
    arch = meta.get("general.architecture", "llama")
    layers = int(meta[f"{arch}.block_count"])
    heads = int(meta[f"{arch}.attention.head_count"])
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv") or heads)
    head_dim = int(meta.get(f"{arch}.attention.key_length") or meta[f"{arch}.embedding_length"] // heads)
    return 2 * layers * ctx * kv_heads * head_dim * KV_BYTES


def compute_bytes(meta: dict[str, Any], ctx: int) -> int:
    """Logits for one batch plus the attention scores and activations of one batch (upper estimate)."""
    arch = meta.get("general.architecture", "llama")
    vocab = int(meta.get(f"{arch}.vocab_size") or 0)
    hidden = int(meta[f"{arch}.embedding_length"])
    ffn = int(meta.get(f"{arch}.feed_forward_length") or 4 * hidden)
    heads = int(meta[f"{arch}.attention.head_count"])
    return 4 * BATCH * (vocab + 4 * hidden + 2 * ffn + heads * min(ctx, BATCH * 8))


def ram_needed(weights_bytes: int, meta: dict[str, Any], ctx: int) -> int:
    return weights_bytes + kv_cache_bytes(meta, ctx) + compute_bytes(meta, ctx)
