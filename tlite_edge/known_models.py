"""Known models as data: one TOML file per model in ``models/`` (shipped as ``tlite_edge.models``).

Each file holds what the pipeline needs to know beyond the checkpoint itself: Hub ids, architecture,
template family, end-of-turn and end-of-generation tokens (by text), whether BOS is added, recommended
levels and sampling, the shape (for ``doctor``), licence link, intended-use caution, known upstream
quirks with the fix applied, and where the facts come from. A bad file is one line naming it and the field.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from tlite_edge.checkpoint.hfconfig import ARCHITECTURES
from tlite_edge.errors import TliteError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Template families: how a model's chat turns look (the Ollama TEMPLATE is chosen by it).
TEMPLATE_FAMILIES = ("llama3", "chatml", "chatml-think")
# Field -> (type, required). Lists hold strings.
FIELDS: dict[str, tuple[type, bool]] = {
    "name": (str, True),
    "hub_ids": (list, True),
    "architecture": (str, True),
    "template_family": (str, True),
    "end_of_turn": (str, True),
    "end_of_generation": (list, True),
    "add_bos": (bool, True),
    "recommended_levels": (list, True),
    "license_url": (str, True),
    "caution": (str, True),
    "shape": (dict, True),
    "sources": (list, True),
    "license": (str, False),
    "base_model": (str, False),
    "default": (bool, False),
    "sampling": (dict, False),
    "quirks": (list, False),
    "unconfirmed": (list, False),
}
SHAPE_FIELDS: dict[str, type] = {
    "hidden": int,
    "layers": int,
    "heads": int,
    "kv_heads": int,
    "head_dim": int,
    "ffn": int,
    "vocab": int,
    "context": int,
    "tied": bool,
    "qkv_bias": bool,
    "qk_norm": bool,
}
# Sampling field -> (type, lowest, highest). The first five have general.sampling.* GGUF keys.
SAMPLING_FIELDS: dict[str, tuple[type, float, float]] = {
    "temp": (float, 0.0, 5.0),
    "top_p": (float, 0.0, 1.0),
    "top_k": (int, 0, 1000),
    "min_p": (float, 0.0, 1.0),
    "repeat_penalty": (float, 0.5, 3.0),
    "presence_penalty": (float, -2.0, 2.0),
}


@dataclass(frozen=True)
class Shape:
    """Hyper-parameters of the full model (what ``doctor`` sizes without a file)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    context: int
    tied: bool
    qkv_bias: bool
    qk_norm: bool

    @property
    def n_params(self) -> int:
        """Weights counted as the converter writes them (embeddings, every layer, output head)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = self.hidden * (q + 2 * kv) + q * self.hidden
        attn += (q + 2 * kv) if self.qkv_bias else 0
        attn += 2 * self.head_dim if self.qk_norm else 0
        layer = attn + 3 * self.hidden * self.ffn + 2 * self.hidden
        head = 0 if self.tied else self.vocab * self.hidden
        return self.vocab * self.hidden + self.layers * layer + self.hidden + head


@dataclass(frozen=True)
class Quirk:
    what: str
    fix: str


@dataclass(frozen=True)
class KnownModel:
    name: str
    hub_ids: tuple[str, ...]
    architecture: str
    template_family: str
    end_of_turn: str
    end_of_generation: tuple[str, ...]
    add_bos: bool
    recommended_levels: tuple[str, ...]
    license_url: str
    caution: str
    shape: Shape | None  # None only for ``generic_model``
    sources: tuple[str, ...]
    license: str | None = None
    base_model: str | None = None
    default: bool = False
    sampling: dict[str, float] = field(default_factory=dict)
    quirks: tuple[Quirk, ...] = ()
    unconfirmed: tuple[str, ...] = ()
    path: Path | None = None

    @property
    def hub_id(self) -> str:
        return self.hub_ids[0] if self.hub_ids else ""

    @property
    def gguf_arch(self) -> str:
        return ARCHITECTURES[self.architecture].gguf

    def gguf_meta(self) -> dict[str, Any]:
        """The GGUF hyper-parameter keys ``runtime.fit`` sizes a model by."""
        from gguf import Keys

        arch, s = self.gguf_arch, self.shape
        assert s is not None, "a generic model has no shape"
        return {
            Keys.General.ARCHITECTURE: arch,
            Keys.General.NAME: self.name,
            Keys.LLM.CONTEXT_LENGTH.format(arch=arch): s.context,
            Keys.LLM.BLOCK_COUNT.format(arch=arch): s.layers,
            Keys.LLM.EMBEDDING_LENGTH.format(arch=arch): s.hidden,
            Keys.LLM.FEED_FORWARD_LENGTH.format(arch=arch): s.ffn,
            Keys.Attention.HEAD_COUNT.format(arch=arch): s.heads,
            Keys.Attention.HEAD_COUNT_KV.format(arch=arch): s.kv_heads,
            Keys.Attention.KEY_LENGTH.format(arch=arch): s.head_dim,
            Keys.LLM.VOCAB_SIZE.format(arch=arch): s.vocab,
        }


def _strings(value: list[Any], where: Path, key: str, *, empty: bool = False) -> tuple[str, ...]:
    if not all(isinstance(v, str) and v for v in value) or (not value and not empty):
        raise TliteError(where, f"{key} must be a list of non-empty strings")
    return tuple(value)


def _shape(data: dict[str, Any], where: Path) -> Shape:
    unknown = sorted(set(data) - set(SHAPE_FIELDS))
    if unknown:
        raise TliteError(where, f"shape.{unknown[0]}: unknown field (known: {', '.join(SHAPE_FIELDS)})")
    for key, kind in SHAPE_FIELDS.items():
        value = data.get(key)
        if value is None:
            raise TliteError(where, f"shape.{key}: missing")
        if type(value) is not kind or (kind is int and value <= 0):
            raise TliteError(where, f"shape.{key} must be a positive {kind.__name__}, got {value!r}")
    if data["heads"] % data["kv_heads"]:
        raise TliteError(where, f"shape.kv_heads {data['kv_heads']} does not divide heads {data['heads']}")
    return Shape(**data)


def _sampling(data: dict[str, Any], where: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in data.items():
        if key not in SAMPLING_FIELDS:
            raise TliteError(where, f"sampling.{key}: unknown field (known: {', '.join(SAMPLING_FIELDS)})")
        kind, low, high = SAMPLING_FIELDS[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or (kind is int and not isinstance(value, int)) or not low <= value <= high:
            raise TliteError(
                where, f"sampling.{key} must be a {kind.__name__} in [{low:g}, {high:g}], got {value!r}"
            )
        out[key] = kind(value)
    return out


def _quirks(items: list[Any], where: Path) -> tuple[Quirk, ...]:
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"what", "fix"}:
            raise TliteError(where, f"quirks[{i}] must be a table with exactly 'what' and 'fix'")
        if not all(isinstance(v, str) and v.strip() for v in item.values()):
            raise TliteError(where, f"quirks[{i}]: 'what' and 'fix' must be non-empty strings")
        out.append(Quirk(item["what"], item["fix"]))
    return tuple(out)


def level_names() -> set[str]:
    """Names of the built-in quantization profiles (their file stems)."""
    folder = resources.files("tlite_edge.quant_profiles")
    return {p.name.removesuffix(".toml").upper() for p in folder.iterdir() if p.name.endswith(".toml")}


def parse_model(data: dict[str, Any], where: Path) -> KnownModel:
    """Validate one model file's table; every problem names the file and the field."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise TliteError(where, f"{unknown[0]}: unknown field (known: {', '.join(FIELDS)})")
    for key, (kind, required) in FIELDS.items():
        if key not in data:
            if required:
                raise TliteError(where, f"{key}: missing")
            continue
        if not isinstance(data[key], kind):
            raise TliteError(where, f"{key} must be a {kind.__name__}, got {type(data[key]).__name__}")
    if data["name"] != where.stem:
        raise TliteError(where, f"name {data['name']!r} must equal the file name {where.stem!r}")
    if data["architecture"] not in ARCHITECTURES:
        raise TliteError(where, f"architecture {data['architecture']!r} is not one the converter supports")
    if data["template_family"] not in TEMPLATE_FAMILIES:
        raise TliteError(where, f"template_family must be one of {', '.join(TEMPLATE_FAMILIES)}")
    eog = _strings(data["end_of_generation"], where, "end_of_generation")
    if data["end_of_turn"] not in eog:
        raise TliteError(where, "end_of_generation must include end_of_turn")
    levels = tuple(v.upper() for v in _strings(data["recommended_levels"], where, "recommended_levels"))
    if missing := sorted(set(levels) - level_names()):
        raise TliteError(where, f"recommended_levels: {missing[0]} is not a built-in level")
    if not data["license_url"].startswith("https://"):
        raise TliteError(where, "license_url must be an https:// link")
    hub_ids = _strings(data["hub_ids"], where, "hub_ids")
    if bad := [h for h in hub_ids if h.count("/") != 1]:
        raise TliteError(where, f"hub_ids: {bad[0]!r} is not owner/name")
    return KnownModel(
        name=data["name"],
        hub_ids=hub_ids,
        architecture=data["architecture"],
        template_family=data["template_family"],
        end_of_turn=data["end_of_turn"],
        end_of_generation=eog,
        add_bos=data["add_bos"],
        recommended_levels=levels,
        license_url=data["license_url"],
        caution=" ".join(data["caution"].split()),
        shape=_shape(data["shape"], where),
        sources=_strings(data["sources"], where, "sources"),
        license=data.get("license"),
        base_model=data.get("base_model"),
        default=data.get("default", False),
        sampling=_sampling(data.get("sampling", {}), where),
        quirks=_quirks(data.get("quirks", []), where),
        unconfirmed=_strings(data.get("unconfirmed", []), where, "unconfirmed", empty=True),
        path=where,
    )


def read_model_file(path: Path) -> KnownModel:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TliteError(path, f"cannot read model file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise TliteError(path, f"not valid TOML ({exc})") from None
    return parse_model(data, path)


def model_files() -> list[Path]:
    folder = resources.files("tlite_edge.models")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml"))


def load_models(files: list[Path] | None = None) -> dict[str, KnownModel]:
    """Every model file, by name; exactly one is the default and no Hub id belongs to two models."""
    models: dict[str, KnownModel] = {}
    owner: dict[str, str] = {}
    for path in model_files() if files is None else files:
        model = read_model_file(path)
        for hub_id in model.hub_ids:
            if hub_id.lower() in owner:
                raise TliteError(path, f"hub_ids: {hub_id} is also in {owner[hub_id.lower()]}")
            owner[hub_id.lower()] = model.name
        models[model.name] = model
    if len([m for m in models.values() if m.default]) != 1:
        raise TliteError("models", "exactly one model file must say default = true")
    return models


@cache
def known_models() -> dict[str, KnownModel]:
    """The built-in model files (read once)."""
    return load_models()


def default_model() -> KnownModel:
    return next(m for m in known_models().values() if m.default)


def find_model(ref: str | None) -> KnownModel | None:
    """The known model a Hub id, model name or folder name refers to (case-insensitive), else None."""
    if not ref:
        return None
    key = ref.strip().rstrip("/").lower()
    for model in known_models().values():
        names = {model.name.lower(), *(h.lower() for h in model.hub_ids)}
        if key in names or key.rsplit("/", 1)[-1] == model.name.lower():
            return model
    return None


# GGUF architecture -> HF architecture and template family of a model no data file describes.
GENERIC = {
    "llama": ("LlamaForCausalLM", "llama3"),
    "qwen2": ("Qwen2ForCausalLM", "chatml"),
    "qwen3": ("Qwen3ForCausalLM", "chatml-think"),
}


def generic_model(name: str, gguf_arch: str, base_model: str) -> KnownModel:
    """What a release card and a Modelfile say about a model without a data file: its architecture's
    template family, a pointer to the upstream card for licence and intended use, no sampling."""
    hf_arch, family = GENERIC.get(gguf_arch, GENERIC["llama"])
    eot = "<|eot_id|>" if family == "llama3" else "<|im_end|>"
    return KnownModel(
        name=name,
        hub_ids=(base_model,) if base_model else (),
        architecture=hf_arch,
        template_family=family,
        end_of_turn=eot,
        end_of_generation=(eot,),
        add_bos=family == "llama3",
        recommended_levels=("Q4_K_M",),
        license_url=f"https://huggingface.co/{base_model}"
        if base_model.count("/") == 1
        else "its model card",
        caution=f"Read the upstream model card{f' of {base_model}' if base_model else ''} for its intended "
        "use and limits before putting it in front of users.",
        shape=None,
        sources=(),
    )


def require_model(ref: str) -> KnownModel:
    """Like ``find_model`` but one clear line listing the known names when nothing matches."""
    model = find_model(ref)
    if model is None:
        raise TliteError(ref, f"not a known model (known: {', '.join(known_models())})")
    return model
