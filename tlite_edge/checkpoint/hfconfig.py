"""``config.json`` / ``generation_config.json`` of a Hugging Face checkpoint (Llama, Qwen2, Qwen3)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlite_edge.errors import TliteError


@dataclass(frozen=True)
class ArchSpec:
    """What one HF architecture becomes in GGUF and which config variants llama.cpp runs for it."""

    gguf: str  # general.architecture
    rope_scaling: tuple[str, ...]  # rope_scaling types llama.cpp applies to it (besides "default")
    free_head_dim: bool = False  # head_dim may differ from hidden_size / num_attention_heads


# HF architecture -> its GGUF form. llama.cpp's qwen2 graph needs head_dim * heads == hidden; qwen3
# takes an explicit head_dim.
ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec("llama", ("linear", "llama3")),
    "Qwen2ForCausalLM": ArchSpec("qwen2", ("linear", "yarn")),
    "Qwen3ForCausalLM": ArchSpec("qwen3", ("linear", "yarn"), free_head_dim=True),
}
# HF architecture -> GGUF architecture this converter writes.
SUPPORTED_ARCHITECTURES = {hf: spec.gguf for hf, spec in ARCHITECTURES.items()}
# config.json switches that change the model in ways llama.cpp's graphs do not follow: key -> why.
REFUSED_SWITCHES = {
    "use_sliding_window": "sliding-window attention is not run by llama.cpp for this architecture",
}


def read_json(path: Path, *, required: bool = True) -> dict[str, Any]:
    """Read a JSON object; a missing optional file gives ``{}``; anything bad is a TliteError."""
    if not path.is_file():
        if required:
            raise TliteError(path, "missing")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TliteError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TliteError(path, "not a JSON object")
    return data


@dataclass(frozen=True)
class ModelConfig:
    """The hyper-parameters the converter needs, taken from ``config.json``."""

    path: Path
    architecture: str  # the HF class name; ``gguf_arch`` is what the GGUF file says
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_size: int
    vocab_size: int
    context_length: int
    rope_theta: float
    rms_eps: float
    head_dim: int
    tie_embeddings: bool
    rope_scaling: dict[str, Any] | None
    torch_dtype: str | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def gguf_arch(self) -> str:
        return ARCHITECTURES[self.architecture].gguf


LlamaConfig = ModelConfig  # the name the Llama-only converter used


# Upper bounds far above any real Llama-family checkpoint: an absurd value is a damaged or hostile
# config, refused before anything is allocated from it.
LIMITS = {
    "hidden_size": 1 << 16,
    "num_attention_heads": 1 << 10,
    "num_key_value_heads": 1 << 10,
    "num_hidden_layers": 1 << 10,
    "intermediate_size": 1 << 18,
    "vocab_size": 1 << 22,
    "max_position_embeddings": 1 << 24,
    "head_dim": 1 << 12,
}


def _int(cfg: dict[str, Any], key: str, path: Path, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if key not in cfg and default is None:
        raise TliteError(path, f"missing key {key!r}")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise TliteError(path, f"{key} must be a positive integer, got {value!r}")
    if value > LIMITS.get(key, value):
        raise TliteError(path, f"{key} = {value} is absurd (limit {LIMITS[key]})")
    return value


def _float(cfg: dict[str, Any], key: str, path: Path, default: float) -> float:
    value = cfg.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1e12:
        raise TliteError(path, f"{key} must be a positive number, got {value!r}")
    return float(value)


# rope_scaling type -> its numeric parameters (each must be a positive number when present).
ROPE_SCALING = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": (
        "factor",
        "original_max_position_embeddings",
        "attention_factor",
        "extrapolation_factor",
        "beta_fast",
        "beta_slow",
    ),
}
# rope_scaling type -> parameters it cannot do without.
ROPE_SCALING_REQUIRED = {
    "linear": ("factor",),
    "llama3": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings"),
}


def _check_rope_scaling(scaling: object, path: Path, spec: ArchSpec) -> None:
    if not isinstance(scaling, dict):
        raise TliteError(path, "rope_scaling must be an object or null")
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind != "default" and kind not in spec.rope_scaling:
        supported = ", ".join(spec.rope_scaling)
        raise TliteError(path, f"rope_scaling type {kind!r} is not supported ({supported})")
    for key in ROPE_SCALING[kind]:
        if key in ROPE_SCALING_REQUIRED.get(kind, ()) and key not in scaling:
            raise TliteError(path, f"rope_scaling type {kind!r} needs a {key}")
        if key in scaling:
            _float(scaling, key, path, 0.0)
    if kind == "llama3" and scaling.get("high_freq_factor", 4.0) <= scaling.get("low_freq_factor", 1.0):
        raise TliteError(path, "rope_scaling high_freq_factor must exceed low_freq_factor")


def load_config(folder: Path) -> ModelConfig:
    """Load and validate ``config.json``; only supported architectures pass."""
    path = folder / "config.json"
    cfg = read_json(path)
    archs = cfg.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and len(archs) == 1 else None
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise TliteError(path, f"architecture {archs!r} is not supported (supported: {supported})")
    spec = ARCHITECTURES[arch]
    for key, why in REFUSED_SWITCHES.items():
        if cfg.get(key) is True:
            raise TliteError(path, f"{key} is true: {why}")
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, list) and set(layer_types) - {"full_attention"}:
        raise TliteError(
            path, f"layer_types {sorted(set(layer_types))}: only full_attention layers are supported"
        )
    hidden = _int(cfg, "hidden_size", path)
    heads = _int(cfg, "num_attention_heads", path)
    kv_heads = _int(cfg, "num_key_value_heads", path, heads)
    head_dim = _int(cfg, "head_dim", path) if cfg.get("head_dim") is not None else hidden // heads
    fixed = not spec.free_head_dim or cfg.get("head_dim") is None  # else head_dim stands on its own
    if fixed and (hidden % heads or head_dim * heads != hidden) or heads % kv_heads:
        raise TliteError(path, f"inconsistent heads: hidden {hidden}, heads {heads}, kv heads {kv_heads}")
    scaling = cfg.get("rope_scaling")
    if scaling is not None:
        _check_rope_scaling(scaling, path, spec)
    return ModelConfig(
        path=path,
        architecture=arch,
        hidden_size=hidden,
        n_layers=_int(cfg, "num_hidden_layers", path),
        n_heads=heads,
        n_kv_heads=kv_heads,
        ffn_size=_int(cfg, "intermediate_size", path),
        vocab_size=_int(cfg, "vocab_size", path),
        context_length=_int(cfg, "max_position_embeddings", path, 8192),
        rope_theta=_float(cfg, "rope_theta", path, 10000.0),
        rms_eps=_float(cfg, "rms_norm_eps", path, 1e-5),
        head_dim=head_dim,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        rope_scaling=scaling,
        torch_dtype=cfg.get("torch_dtype"),
        raw=cfg,
    )
