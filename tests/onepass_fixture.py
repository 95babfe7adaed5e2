"""A T-lite-structured checkpoint small enough to quantize at every level in seconds: 32 layers and
GQA 4 like T-lite, hidden 256 (k-quants apply), an odd feed-forward width (ffn_down rows take the
fallback types) and the Llama-3 tokenizer cut to its first 768 tokens plus the 256 special ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tlite_edge.samples.standin import (
    UPSTREAM_TEMPLATE,
    StandinShape,
    bf16,
    llama_config,
    standin_tokenizer,
    standin_weights,
    write_json,
    write_safetensors,
)

BASE = 768  # ordinary tokens kept
SPECIAL = 128000  # where Llama-3's special tokens start
SHAPE = StandinShape(hidden=256, layers=32, heads=4, kv_heads=1, ffn=32, vocab=BASE + 256, context=2048)
# 8 layers (the layer rules still split them) and ffn_down rows of 48: no 32-block type fits, F16 does.
SHORT = StandinShape(hidden=256, layers=8, heads=4, kv_heads=1, ffn=48, vocab=BASE + 256, context=2048)


def small_tokenizer() -> dict[str, Any]:
    """Llama-3's tokenizer.json with ids < BASE, the merges among them, and the special tokens moved
    down to BASE.. (same pre-tokenizer, so the same llama-bpe label)."""
    tok = standin_tokenizer()
    vocab = {t: i for t, i in tok["model"]["vocab"].items() if i < BASE}
    merges = []
    for m in tok["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    tok["model"]["vocab"], tok["model"]["merges"] = vocab, merges
    for t in tok["added_tokens"]:
        t["id"] = t["id"] - SPECIAL + BASE
    return tok


def write_small_tlite(out: Path, seed: int = 3, shape: StandinShape = SHAPE) -> Path:
    """The checkpoint folder at ``out`` (bf16, one shard)."""
    out.mkdir(parents=True, exist_ok=True)
    weights = standin_weights(shape, seed)
    write_safetensors(out / "model.safetensors", {n: bf16(w) for n, w in weights.items()})
    write_json(out / "config.json", llama_config(shape, bos=BASE, eos=BASE + 9))
    tok = small_tokenizer()
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    write_json(
        out / "tokenizer_config.json",
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "model_max_length": shape.context,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": {
                str(t["id"]): {"content": t["content"], "special": True} for t in tok["added_tokens"]
            },
            "chat_template": UPSTREAM_TEMPLATE,
        },
    )
    return out
