"""GGUF metadata for a checkpoint: general.*, <arch>.* hyper-parameters and tokenizer.ggml.*."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFValueType as VT
from gguf import Keys

from tlite_edge.checkpoint.hfconfig import ModelConfig
from tlite_edge.checkpoint.tokenizer import Vocab
from tlite_edge.errors import TliteError
from tlite_edge.gguf.keys import SPECIAL_TOKEN_KEYS
from tlite_edge.gguf.writer import GGUFLayout

FINETUNES = ("instruct", "chat", "it", "base")
NAME_RE = re.compile(
    rf"^(?P<base>.+?)(?:-(?P<finetune>{'|'.join(FINETUNES)}))?(?:-v?(?P<version>\d+(?:\.\d+)*))?$", re.I
)


@dataclass(frozen=True)
class ModelNames:
    """``general.name`` and its parts, e.g. T-lite-instruct-0.1 = T-lite + instruct + 0.1."""

    name: str
    basename: str
    finetune: str | None
    version: str | None
    size_label: str


def size_label(n_params: int) -> str:
    """8_030_261_248 -> "8B", 135_000_000 -> "135M"."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n_params >= scale:
            value = n_params / scale
            return (
                f"{value:.0f}{unit}"
                if value >= 10 or value.is_integer()
                else f"{value:.1f}{unit}".replace(".0", "")
            )
    return str(n_params)


def model_names(name: str, n_params: int) -> ModelNames:
    m = NAME_RE.match(name)
    assert m is not None  # the pattern accepts any non-empty name
    return ModelNames(name, m["base"], m["finetune"], m["version"], size_label(n_params))


@dataclass(frozen=True)
class CardFacts:
    """What the source's model card front-matter says about licence and languages."""

    license: str | None = None
    languages: tuple[str, ...] = ()


def card_facts(folder: Path) -> CardFacts:
    """``license:`` and ``language:`` (scalar or list) from the source README.md front-matter."""
    readme = folder / "README.md"
    if not readme.is_file():
        return CardFacts()
    front = re.match(r"^---\r?\n(.*?)\r?\n---", readme.read_text(encoding="utf-8", errors="replace"), re.S)
    if not front:
        return CardFacts()
    lic = re.search(r"^license:\s*['\"]?([\w.\-]+)", front[1], re.M)
    lang = re.search(r"^language:[ \t]*(\S.*)?\n?((?:[ \t]*-[ \t]*\S+\n?)*)", front[1], re.M)
    langs: tuple[str, ...] = ()
    if lang:
        inline = (lang[1] or "").strip("[] ")
        items = [x for x in re.split(r"[,\s]+", inline) if x] + re.findall(r"-[ \t]*(\S+)", lang[2] or "")
        langs = tuple(x.strip("'\"") for x in items)
    return CardFacts(lic[1] if lic else None, langs)


def llama3_rope_factors(cfg: ModelConfig) -> np.ndarray:
    """Per-frequency RoPE divisors for ``rope_type: llama3`` (written as ``rope_freqs.weight``)."""
    rs = cfg.rope_scaling or {}
    factor = float(rs.get("factor", 8.0))
    low, high = float(rs.get("low_freq_factor", 1.0)), float(rs.get("high_freq_factor", 4.0))
    old_ctx = float(rs.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, mid))
    return out.astype(np.float32)


# rope_scaling type -> (GGUF key, rope_scaling field, required) written for it; llama3 instead writes
# the rope_freqs tensor.
ROPE_SCALING_KEYS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "linear": ((Keys.Rope.SCALING_FACTOR, "factor", True),),
    "yarn": (
        (Keys.Rope.SCALING_FACTOR, "factor", True),
        (Keys.Rope.SCALING_ORIG_CTX_LEN, "original_max_position_embeddings", True),
        (Keys.Rope.SCALING_YARN_EXT_FACTOR, "extrapolation_factor", False),
        (Keys.Rope.SCALING_YARN_ATTN_FACTOR, "attention_factor", False),
        (Keys.Rope.SCALING_YARN_BETA_FAST, "beta_fast", False),
        (Keys.Rope.SCALING_YARN_BETA_SLOW, "beta_slow", False),
    ),
}


def rope_scaling_keys(cfg: ModelConfig, layout: GGUFLayout) -> np.ndarray | None:
    """Write rope-scaling keys; return the ``rope_freqs`` tensor when the scheme needs one."""
    rs = cfg.rope_scaling
    if not rs:
        return None
    kind = rs.get("rope_type") or rs.get("type")
    arch = cfg.gguf_arch
    if kind in ROPE_SCALING_KEYS:
        layout.add(Keys.Rope.SCALING_TYPE.format(arch=arch), VT.STRING, kind)
        for key, field_name, required in ROPE_SCALING_KEYS[kind]:
            if required or field_name in rs:
                vtype = VT.UINT32 if key == Keys.Rope.SCALING_ORIG_CTX_LEN else VT.FLOAT32
                value = int(rs[field_name]) if vtype == VT.UINT32 else float(rs[field_name])
                layout.add(key.format(arch=arch), vtype, value)
        return None
    if kind == "llama3":
        return llama3_rope_factors(cfg)
    if kind == "default":
        return None
    raise TliteError(cfg.path, f"rope_scaling type {kind!r} is not supported (linear, llama3)")


def add_model_metadata(
    layout: GGUFLayout, cfg: ModelConfig, names: ModelNames, file_type: int, card: CardFacts
) -> None:
    arch = cfg.gguf_arch
    general: list[tuple[str, VT, object]] = [
        (Keys.General.ARCHITECTURE, VT.STRING, arch),
        (Keys.General.TYPE, VT.STRING, "model"),
        (Keys.General.NAME, VT.STRING, names.name),
        (Keys.General.BASENAME, VT.STRING, names.basename),
        (Keys.General.FINETUNE, VT.STRING, names.finetune),
        (Keys.General.VERSION, VT.STRING, names.version),
        (Keys.General.SIZE_LABEL, VT.STRING, names.size_label),
        (Keys.General.LICENSE, VT.STRING, card.license),
    ]
    for key, vtype, value in general:
        if value is not None:
            layout.add(key, vtype, value)
    if card.languages:
        layout.add(Keys.General.LANGUAGES, VT.ARRAY, list(card.languages), VT.STRING)
    hparams = (
        (Keys.LLM.VOCAB_SIZE, VT.UINT32, cfg.vocab_size),
        (Keys.LLM.CONTEXT_LENGTH, VT.UINT32, cfg.context_length),
        (Keys.LLM.EMBEDDING_LENGTH, VT.UINT32, cfg.hidden_size),
        (Keys.LLM.BLOCK_COUNT, VT.UINT32, cfg.n_layers),
        (Keys.LLM.FEED_FORWARD_LENGTH, VT.UINT32, cfg.ffn_size),
        (Keys.Rope.DIMENSION_COUNT, VT.UINT32, cfg.head_dim),
        (Keys.Attention.KEY_LENGTH, VT.UINT32, cfg.head_dim),
        (Keys.Attention.VALUE_LENGTH, VT.UINT32, cfg.head_dim),
        (Keys.Attention.HEAD_COUNT, VT.UINT32, cfg.n_heads),
        (Keys.Attention.HEAD_COUNT_KV, VT.UINT32, cfg.n_kv_heads),
        (Keys.Rope.FREQ_BASE, VT.FLOAT32, cfg.rope_theta),
        (Keys.Attention.LAYERNORM_RMS_EPS, VT.FLOAT32, cfg.rms_eps),
    )
    for key, vtype, value in hparams:
        layout.add(key.format(arch=arch), vtype, value)
    layout.add(Keys.General.FILE_TYPE, VT.UINT32, file_type)
    layout.add(Keys.General.QUANTIZATION_VERSION, VT.UINT32, 2)


def add_tokenizer_metadata(layout: GGUFLayout, vocab: Vocab, chat_template: str) -> None:
    layout.add(Keys.Tokenizer.MODEL, VT.STRING, "gpt2")
    layout.add(Keys.Tokenizer.PRE, VT.STRING, vocab.pre)
    layout.add(Keys.Tokenizer.LIST, VT.ARRAY, vocab.tokens, VT.STRING)
    layout.add(Keys.Tokenizer.TOKEN_TYPE, VT.ARRAY, vocab.token_types, VT.INT32)
    layout.add(Keys.Tokenizer.MERGES, VT.ARRAY, vocab.merges, VT.STRING)
    special = (("bos", vocab.bos_id), ("eos", vocab.eos_id), ("eot", vocab.eot_id), ("padding", vocab.pad_id))
    for role, value in special:
        if value is not None:
            layout.add(SPECIAL_TOKEN_KEYS[role], VT.UINT32, value)
    # Raw text gets exactly one BOS from the runtime; the template writes its own BOS, which
    # llama-cpp-python and llama-server recognise so that chat prompts never get two.
    layout.add(Keys.Tokenizer.ADD_BOS, VT.BOOL, vocab.bos_id is not None and vocab.add_bos)
    layout.add(Keys.Tokenizer.ADD_EOS, VT.BOOL, False)
    layout.add(Keys.Tokenizer.CHAT_TEMPLATE, VT.STRING, chat_template)
