"""HF Llama tensor names -> GGUF names, expected shapes, q/k permutation, output types."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as QT

from tlite_edge.checkpoint.hfconfig import LlamaConfig
from tlite_edge.checkpoint.shards import Checkpoint
from tlite_edge.errors import TliteError

# (HF name, GGUF name, shape key, heads to permute for RoPE); "{i}" is the layer number.
TENSOR_TABLE: tuple[tuple[str, str, str, str | None], ...] = (
    ("model.embed_tokens.weight", "token_embd.weight", "vocab,hidden", None),
    ("model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight", "hidden", None),
    ("model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight", "q,hidden", "n_heads"),
    ("model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight", "kv,hidden", "n_kv_heads"),
    ("model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight", "kv,hidden", None),
    ("model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight", "hidden,q", None),
    ("model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight", "hidden", None),
    ("model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight", "ffn,hidden", None),
    ("model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight", "ffn,hidden", None),
    ("model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight", "hidden,ffn", None),
    ("model.norm.weight", "output_norm.weight", "hidden", None),
    ("lm_head.weight", "output.weight", "vocab,hidden", None),
)
# Buffers some exports carry that GGUF does not need.
IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")

# --outtype -> (GGML type for matrices, general.file_type)
OUTTYPES: dict[str, tuple[QT, int]] = {
    "bf16": (QT.BF16, 32),
    "f16": (QT.F16, 1),
    "f32": (QT.F32, 0),
    "q8_0": (QT.Q8_0, 7),
}


@dataclass(frozen=True)
class TensorPlan:
    """One tensor to write: source, GGUF name, HF shape, heads to permute, output type."""

    src: str
    dst: str
    shape: tuple[int, ...]
    permute_heads: int | None
    qtype: QT


def _dims(cfg: LlamaConfig) -> dict[str, int]:
    return {
        "vocab": cfg.vocab_size,
        "hidden": cfg.hidden_size,
        "q": cfg.n_heads * cfg.head_dim,
        "kv": cfg.n_kv_heads * cfg.head_dim,
        "ffn": cfg.ffn_size,
    }


def out_type(shape: tuple[int, ...], matrix_type: QT) -> QT:
    """Norms and vectors stay F32; Q8_0 needs rows divisible by 32 (else F16)."""
    if len(shape) == 1:
        return QT.F32
    if matrix_type == QT.Q8_0 and shape[-1] % 32:
        return QT.F16
    return matrix_type


def plan_tensors(cfg: LlamaConfig, ckpt: Checkpoint, outtype: str) -> list[TensorPlan]:
    """Every tensor in llama.cpp order, checked against config.json; unknown or missing ones fail."""
    dims = _dims(cfg)
    matrix_type = OUTTYPES[outtype][0]
    plans: list[TensorPlan] = []
    seen: set[str] = set()
    for layer in [None, *range(cfg.n_layers)]:
        for hf, gg, shape_key, heads in TENSOR_TABLE:
            if ("{i}" in hf) == (layer is None):
                continue
            src, dst = hf.format(i=layer), gg.format(i=layer)
            if src == "lm_head.weight" and cfg.tie_embeddings and src not in ckpt.tensors:
                continue
            if src not in ckpt.tensors:
                raise TliteError(ckpt.folder, f"tensor {src!r} is missing from the checkpoint")
            info = ckpt.tensors[src]
            expected = tuple(dims[k] for k in shape_key.split(","))
            if info.shape != expected:
                raise TliteError(
                    info.path,
                    f"tensor {src!r} has shape {list(info.shape)}, config.json implies {list(expected)}",
                )
            if info.dtype not in ("BF16", "F16", "F32"):
                raise TliteError(
                    info.path,
                    f"tensor {src!r} has unsupported dtype {info.dtype} (BF16, F16, F32 are supported)",
                )
            n_heads = getattr(cfg, heads) if heads else None
            plans.append(TensorPlan(src, dst, info.shape, n_heads, out_type(info.shape, matrix_type)))
            seen.add(src)
    extra = sorted(n for n in ckpt.tensors if n not in seen and not IGNORED.fullmatch(n))
    if extra:
        raise TliteError(
            ckpt.tensors[extra[0]].path, f"unexpected tensor {extra[0]!r} for {cfg.architecture}"
        )
    return plans


def permute_rows(block: np.ndarray, head_dim: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp interleaved RoPE order, for whole heads in ``block``."""
    rows, cols = block.shape
    heads = rows // head_dim
    return block.reshape(heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(rows, cols)
