"""llama.cpp's per-tensor type choice for a quantization level, as data.

Ported from ``src/llama-quant.cpp`` of the llama.cpp that llama-cpp-python vendors (the quantizer
``llama_model_quantize`` runs): which tensors are quantized, the mixture rules per level (``RULES``,
first match wins, like upstream's if/else chain), the later bumps (``BUMPS``), user overrides, and
the fallback types for rows that are not a multiple of the block size (``FALLBACK``). Tensors are
visited in llama.cpp's order (non-layer tensors by name, then layer by layer, names sorted), and
the position counters advance exactly where upstream's do. Architecture-specific rows for models
the converter never writes (Falcon, GLM5-next, BailingMoE3, MXFP4 MoE) are left out; ``supported``
says whether a level can be planned here at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT

from tlite_edge.quant.profiles import Profile

# llama_ftype_get_default_type: the level's base type (the LLAMA_FTYPE_ name without the prefix).
DEFAULT_TYPE: dict[str, QT] = {
    "ALL_F32": QT.F32, "MOSTLY_F16": QT.F16, "MOSTLY_BF16": QT.BF16,
    "MOSTLY_Q4_0": QT.Q4_0, "MOSTLY_Q4_1": QT.Q4_1, "MOSTLY_Q5_0": QT.Q5_0, "MOSTLY_Q5_1": QT.Q5_1,
    "MOSTLY_Q8_0": QT.Q8_0, "MOSTLY_Q2_K": QT.Q2_K, "MOSTLY_Q2_K_S": QT.Q2_K,
    "MOSTLY_Q3_K_S": QT.Q3_K, "MOSTLY_Q3_K_M": QT.Q3_K, "MOSTLY_Q3_K_L": QT.Q3_K,
    "MOSTLY_Q4_K_S": QT.Q4_K, "MOSTLY_Q4_K_M": QT.Q4_K, "MOSTLY_Q5_K_S": QT.Q5_K,
    "MOSTLY_Q5_K_M": QT.Q5_K, "MOSTLY_Q6_K": QT.Q6_K,
    "MOSTLY_IQ2_XXS": QT.IQ2_XXS, "MOSTLY_IQ2_XS": QT.IQ2_XS, "MOSTLY_IQ2_S": QT.IQ2_XS,
    "MOSTLY_IQ2_M": QT.IQ2_S, "MOSTLY_IQ3_XS": QT.IQ3_S, "MOSTLY_IQ3_XXS": QT.IQ3_XXS,
    "MOSTLY_IQ1_S": QT.IQ1_S, "MOSTLY_IQ1_M": QT.IQ1_M, "MOSTLY_IQ4_NL": QT.IQ4_NL,
    "MOSTLY_IQ4_XS": QT.IQ4_XS, "MOSTLY_IQ3_S": QT.IQ3_S, "MOSTLY_IQ3_M": QT.IQ3_S,
}  # fmt: skip
UNQUANTIZED = {QT.F32, QT.F16, QT.BF16}
ALL = frozenset(DEFAULT_TYPE)
IQ2_GROUP = frozenset(f"MOSTLY_{t}" for t in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"))


def _f(*names: str) -> frozenset[str]:
    return frozenset(f"MOSTLY_{n}" for n in names)


# tensor_get_category: (substring or exact name, category); attn_qkv/attn_kv_b count as attn_v.
CATEGORIES: tuple[tuple[str, str, bool], ...] = (
    ("output.weight", "output", True),
    ("token_embd.weight", "token_embd", True),
    ("per_layer_token_embd.weight", "token_embd", True),
    ("attn_qkv.weight", "attn_v", False),
    ("attn_kv_b.weight", "attn_v", False),
    ("attn_v.weight", "attn_v", False),
    ("attn_k.weight", "attn_k", False),
    ("attn_q.weight", "attn_q", False),
    ("attn_output.weight", "attn_output", False),
    ("ffn_up", "ffn_up", False),
    ("ffn_gate", "ffn_gate", False),
    ("ffn_down", "ffn_down", False),
)
COUNTED = ("attn_v", "ffn_down", "ffn_gate", "ffn_up")  # categories with a position counter
# tensor_allows_quantization: name pieces that keep a tensor as it is (those our architectures can have).
KEEP_SUBSTRINGS = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
                   "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "attn_rel_b.weight",
                   ".position_embd", ".rel_pos", ".patch_embd", ".patch_merger")  # fmt: skip
KEEP_NAMES = ("position_embd.weight", "token_types.weight")


@dataclass(frozen=True)
class Facts:
    """What a rule may ask about one tensor."""

    i: int  # position among its category's tensors (attn_v) or layer (ffn_*)
    n: int  # how many attn_v tensors, or layers
    n_gqa: int
    n_expert: int
    has_imatrix: bool
    ncols: int
    default: QT
    model_70b: bool
    current: QT


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


CONDITIONS: dict[str, Callable[[Facts], bool]] = {
    "gqa4": lambda f: f.n_gqa >= 4,
    "gqa4_or_experts4": lambda f: f.n_gqa >= 4 or f.n_expert >= 4,
    "experts8": lambda f: f.n_expert == 8,
    "not_experts8": lambda f: f.n_expert != 8,
    "imatrix": lambda f: f.has_imatrix,
    "no_imatrix": lambda f: not f.has_imatrix,
    "first_two": lambda f: f.i < 2,
    "first_four": lambda f: f.i < 4,
    "first_eighth": lambda f: f.i < f.n // 8,
    "first_sixteenth": lambda f: f.i < f.n // 16,
    "middle": lambda f: f.n // 8 <= f.i < 7 * f.n // 8,
    "more_bits": lambda f: use_more_bits(f.i, f.n),
    "first_eighth_or_experts8_more_bits": lambda f: (
        f.i < f.n // 8 or (f.n_expert == 8 and use_more_bits(f.i, f.n))
    ),
    "rows_not_blocks": lambda f: f.ncols % GGML_QUANT_SIZES[f.default][0] != 0,
    "default_not_q8_0": lambda f: f.default != QT.Q8_0,
    "model_70b": lambda f: f.model_70b,
    "q3_k_or_q4_k": lambda f: f.current in (QT.Q3_K, QT.Q4_K),
}  # fmt: skip


@dataclass(frozen=True)
class Rule:
    """In ``category`` at one of ``ftypes``, when every condition holds: use ``to`` (None: the level's
    default type). The first matching rule ends the search."""

    category: str
    ftypes: frozenset[str]
    to: QT | None
    when: tuple[str, ...] = ()


R = Rule
RULES: tuple[Rule, ...] = (
    # the output matrix (and a tied token embedding)
    R("output", ALL, QT.Q8_0, ("rows_not_blocks",)),
    R("output", _f("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"), QT.Q5_K),
    R("output", ALL, QT.Q6_K, ("default_not_q8_0",)),
    R("output", ALL, None),
    # token embedding
    R("token_embd", _f("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"), QT.Q2_K),
    R("token_embd", _f("IQ2_S", "IQ2_M", "IQ3_XXS"), QT.IQ3_S),
    R("token_embd", ALL, None),
    # the 1-2 bit levels
    R("attn_v", IQ2_GROUP, QT.Q4_K, ("gqa4_or_experts4",)),
    R("attn_v", _f("IQ2_S", "IQ2_M"), QT.IQ3_S),
    R("attn_v", IQ2_GROUP, QT.Q2_K),
    R("attn_k", IQ2_GROUP, QT.Q4_K, ("experts8",)),
    R("ffn_down", _f("IQ2_S", "IQ2_M"), QT.IQ3_S, ("first_eighth",)),
    R("ffn_down", IQ2_GROUP, QT.Q2_K, ("first_eighth",)),
    R("attn_output", IQ2_GROUP, QT.Q5_K, ("experts8",)),
    R("attn_output", _f("IQ1_S", "IQ1_M"), QT.IQ2_XXS),
    R("attn_output", _f("IQ2_S", "IQ2_M"), QT.IQ3_S),
    R("*", IQ2_GROUP, None),
    # attention V
    R("attn_v", _f("Q2_K"), QT.Q4_K, ("gqa4",)),
    R("attn_v", _f("Q2_K"), QT.Q3_K),
    R("attn_v", _f("Q2_K_S"), QT.Q4_K, ("gqa4",)),
    R("attn_v", _f("IQ3_XXS"), QT.Q4_K, ("gqa4",)),
    R("attn_v", _f("IQ3_XXS"), QT.IQ3_S, ("no_imatrix",)),
    R("attn_v", _f("IQ3_XXS"), QT.IQ3_XXS),
    R("attn_v", _f("IQ3_XS", "IQ3_S"), QT.Q4_K, ("gqa4",)),
    R("attn_v", _f("IQ3_M"), QT.Q4_K),
    R("attn_v", _f("Q3_K_M"), QT.Q5_K, ("first_two",)),
    R("attn_v", _f("Q3_K_M"), QT.Q4_K),
    R("attn_v", _f("Q3_K_L"), QT.Q5_K),
    R("attn_v", _f("IQ4_NL", "IQ4_XS"), QT.Q5_K, ("gqa4",)),
    R("attn_v", _f("Q4_K_M", "Q5_K_M"), QT.Q6_K, ("more_bits",)),
    R("attn_v", _f("Q4_K_S"), QT.Q5_K, ("first_four",)),
    # attention K and Q
    R("attn_k", ALL, QT.Q8_0, ("experts8",)),
    R("attn_k", _f("IQ3_XS"), QT.IQ3_XXS),
    R("attn_k", _f("IQ3_XXS"), QT.IQ2_S),
    R("attn_q", _f("IQ3_XS"), QT.IQ3_XXS),
    R("attn_q", _f("IQ3_XXS"), QT.IQ2_S),
    # feed-forward down
    R("ffn_down", _f("Q2_K"), QT.Q3_K),
    R("ffn_down", _f("Q2_K_S"), QT.Q4_K, ("first_eighth",)),
    R("ffn_down", _f("Q2_K_S"), None),
    R("ffn_down", _f("IQ3_XXS"), QT.Q4_K, ("no_imatrix", "first_eighth")),
    R("ffn_down", _f("IQ3_XXS"), QT.Q3_K, ("no_imatrix",)),
    R("ffn_down", _f("Q3_K_M"), QT.Q5_K, ("first_sixteenth",)),
    R("ffn_down", _f("Q3_K_M"), QT.Q4_K),
    R("ffn_down", _f("IQ3_M"), QT.Q4_K, ("first_eighth_or_experts8_more_bits",)),
    R("ffn_down", _f("Q3_K_L"), QT.Q5_K),
    R("ffn_down", _f("Q4_K_M"), QT.Q6_K, ("more_bits",)),
    R("ffn_down", _f("Q4_K_M"), None),
    R("ffn_down", _f("IQ4_NL", "IQ4_XS"), QT.Q5_K, ("first_eighth", "no_imatrix")),
    R("ffn_down", _f("Q5_K_M"), QT.Q6_K, ("more_bits",)),
    R("ffn_down", _f("Q4_K_S"), QT.Q5_K, ("first_eighth",)),
    R("ffn_down", _f("Q4_0"), QT.Q4_1, ("imatrix", "first_eighth")),
    R("ffn_down", _f("Q5_0"), QT.Q5_1, ("imatrix", "first_eighth")),
    # attention output
    R(
        "attn_output",
        _f(
            "Q2_K",
            "IQ3_XS",
            "IQ3_XXS",
            "Q3_K_S",
            "Q3_K_M",
            "IQ4_NL",
            "Q4_K_S",
            "Q4_K_M",
            "IQ3_S",
            "IQ3_M",
            "IQ4_XS",
        ),
        QT.Q5_K,
        ("experts8",),
    ),  # fmt: skip
    R("attn_output", ALL, None, ("experts8",)),
    R("attn_output", _f("Q2_K"), QT.Q3_K),
    R("attn_output", _f("IQ3_XXS"), QT.IQ3_S),
    R("attn_output", _f("Q3_K_M", "IQ3_M"), QT.Q4_K),
    R("attn_output", _f("Q3_K_L"), QT.Q5_K),
    # feed-forward gate and up
    R("ffn_gate", _f("IQ3_XS"), QT.IQ3_XXS, ("middle",)),
    R("ffn_up", _f("IQ3_XS"), QT.IQ3_XXS, ("middle",)),
)
# Applied in order after RULES to attention V outside the 1-2 bit levels (each may replace the type).
BUMPS: tuple[Rule, ...] = (
    R("attn_v", ALL - IQ2_GROUP, QT.Q5_K, ("model_70b", "q3_k_or_q4_k")),
    R("attn_v", ALL - IQ2_GROUP, QT.Q8_0, ("experts8",)),
)
# tensor_type_fallback: a type whose block does not divide the row -> a 32-block type (else F16).
FALLBACK: dict[QT, QT] = {
    **dict.fromkeys(
        (QT.IQ1_S, QT.IQ1_M, QT.IQ2_XXS, QT.IQ2_XS, QT.IQ2_S, QT.IQ3_XXS, QT.IQ3_S, QT.IQ4_XS), QT.IQ4_NL
    ),
    **dict.fromkeys((QT.Q2_K, QT.Q3_K, QT.TQ1_0, QT.TQ2_0), QT.Q4_0),
    QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0,
}  # fmt: skip
# tensor_requires_imatrix: types that are garbage without one (Q2_K only inside a Q2_K_S file).
NEEDS_IMATRIX = {QT.IQ3_XXS, QT.IQ2_XXS, QT.IQ2_XS, QT.IQ2_S, QT.IQ1_M, QT.IQ1_S}
# LLM_TYPE_70B (the only model size the rules ask about): architecture -> (layers, needs GQA).
SEVENTY_B: dict[str, tuple[int, bool]] = {"llama": (80, True), "qwen2": (80, False)}


@dataclass(frozen=True)
class ModelShape:
    """The hyper-parameters the rules read (llama.cpp's hparams)."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def model_70b(self) -> bool:
        layers, gqa = SEVENTY_B.get(self.arch, (0, False))
        return self.n_layer == layers and self.n_expert != 8 and (not gqa or self.n_head != self.n_head_kv)


@dataclass(frozen=True)
class TensorChoice:
    name: str
    qtype: QT
    needs_imatrix: bool


def supported(profile: Profile, model: ModelShape) -> str | None:
    """Why this level cannot be planned by these rules (None: it can)."""
    if f"{profile.ftype}" not in DEFAULT_TYPE:
        return f"file type {profile.ftype} has rules this port leaves out"
    if model.arch not in ("llama", "qwen2", "qwen3") or model.n_expert > 1:
        return f"{model.arch} models with {model.n_expert} experts have rules this port leaves out"
    return None


def llama_order(names: Sequence[str]) -> list[str]:
    """llama.cpp's tensor order (its loader's weight map): non-layer tensors first, then by layer,
    names sorted within each."""

    def key(name: str) -> tuple[int, str]:
        m = re.match(r"blk\.(\d+)\.", name)
        return (int(m[1]) if m else -1, name)

    return sorted(names, key=key)


def category(name: str) -> str:
    for piece, cat, exact in CATEGORIES:
        if (name == piece) if exact else (piece in name):
            return cat
    return "other"


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """tensor_allows_quantization for our architectures (``shape`` is numpy order)."""
    return (
        len(shape) >= 2
        and name.endswith("weight")
        and name not in KEEP_NAMES
        and not any(piece in name for piece in KEEP_SUBSTRINGS)
    )


def _match(rules: Sequence[Rule], cat: str, ftype: str, facts: Facts) -> Rule | None:
    for rule in rules:
        if (
            rule.category in (cat, "*")
            and ftype in rule.ftypes
            and all(CONDITIONS[c](facts) for c in rule.when)
        ):
            return rule
    return None


def fallback(qtype: QT, ncols: int) -> QT:
    """A type whose block divides ``ncols`` (llama.cpp's tensor_type_fallback)."""
    block = GGML_QUANT_SIZES[qtype][0]
    if ncols % block == 0:
        return qtype
    if qtype in FALLBACK:
        qtype = FALLBACK[qtype]
    elif block > 32:
        raise ValueError(f"no fallback type for {qtype.name}")
    return qtype if ncols % GGML_QUANT_SIZES[qtype][0] == 0 else QT.F16


def choose_types(
    tensors: Sequence[tuple[str, tuple[int, ...], QT]],
    profile: Profile,
    model: ModelShape,
    has_imatrix: bool,
) -> list[TensorChoice]:
    """The type of every tensor (name, numpy shape, source type) at ``profile``, in llama.cpp's order."""
    ftype = profile.ftype
    default = DEFAULT_TYPE[ftype]
    by_name = {name: (shape, qtype) for name, shape, qtype in tensors}
    order = llama_order(list(by_name))
    tied = "output.weight" not in by_name
    counts = {c: model.n_layer for c in COUNTED}
    counts["attn_v"] = sum(category(n) == "attn_v" for n in order)
    seen = dict.fromkeys(COUNTED, 0)
    overrides = [(re.compile(p), t) for p, t in profile.overrides]
    out = []
    for name in order:
        shape, src = by_name[name]
        cat = category(name)
        qtype = src
        if quantizable(name, shape):
            qtype = _choose(
                name, shape[-1], cat, tied, default, profile, model, has_imatrix, seen, counts, overrides
            )
        needs = name not in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight") and (
            qtype in NEEDS_IMATRIX or (qtype == QT.Q2_K and ftype == "MOSTLY_Q2_K_S")
        )
        out.append(TensorChoice(name, qtype, needs))
    return out


def _choose(
    name: str,
    ncols: int,
    cat: str,
    tied: bool,
    default: QT,
    profile: Profile,
    model: ModelShape,
    has_imatrix: bool,
    seen: dict[str, int],
    counts: dict[str, int],
    overrides: list[tuple[re.Pattern[str], QT]],
) -> QT:
    """llama_tensor_get_type for one quantizable tensor (advances the position counters)."""
    if profile.token_embedding_type is not None and cat == "token_embd":
        return profile.token_embedding_type
    if profile.output_type is not None and cat == "output":
        return profile.output_type
    if default in UNQUANTIZED:
        return default
    manual = next((t for p, t in overrides if p.search(name)), None)
    if manual is not None:
        return fallback(manual, ncols)
    effective = "output" if cat == "output" or (tied and cat == "token_embd") else cat
    if effective == "output" and profile.output_type is not None:
        qtype = profile.output_type
    else:
        facts = Facts(
            i=seen.get(cat, 0), n=counts.get(cat, 0), n_gqa=model.n_gqa, n_expert=model.n_expert,
            has_imatrix=has_imatrix, ncols=ncols, default=default, model_70b=model.model_70b, current=default,
        )  # fmt: skip
        rule = _match(RULES, effective, profile.ftype, facts)
        qtype = default if rule is None or rule.to is None else rule.to
        if effective == "attn_v":
            for bump in BUMPS:
                if _match((bump,), effective, profile.ftype, replace(facts, current=qtype)):
                    qtype = bump.to or qtype
    if cat in seen:
        seen[cat] += 1
    return fallback(qtype, ncols)
