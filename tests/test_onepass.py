"""One-pass ``convert -q``: every level written straight from the checkpoint must equal, byte for
byte, what llama.cpp's ``llama_model_quantize`` writes from the BF16 file (the reference), and the
per-tensor types must equal llama.cpp's own choice (its dry run) on T-lite's real shape."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFValueType
from onepass_fixture import SHAPE, SHORT, write_small_tlite

from tlite_edge.fsutil import sidecar_path
from tlite_edge.gguf.writer import GGUFLayout
from tlite_edge.gguf_build.build import convert, prepare
from tlite_edge.gguf_build.onepass import convert_levels
from tlite_edge.quant.llama_log import capture_log
from tlite_edge.quant.profiles import Profile, load_profiles, parse_profile
from tlite_edge.quant.quantize import build_params, quantize
from tlite_edge.quant.type_rules import ModelShape, choose_types

NAME = "Small-T"
BUILTIN = load_profiles()
# A user profile that uses every field the rules read: output and embedding types, overrides.
CUSTOM = parse_profile(
    {
        "name": "CUSTOM",
        "ftype": "MOSTLY_Q4_K_M",
        "description": "test",
        "target": "test",
        "requires_imatrix": False,
        "output_type": "q8_0",
        "token_embedding_type": "q5_k",
        "overrides": {r"blk\.1[0-9]\.attn_v": "q8_0", "ffn_down": "q6_k", r"attn_q\.": "iq4_xs"},
    },
    Path("custom.toml"),
)


def fake_imatrix(dims: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Positive per-column importance for every blk.* matrix and the output (as llama-imatrix has);
    ``dims`` are numpy shapes (rows first)."""
    rng = np.random.default_rng(5)
    wanted = [n for n, ne in dims.items() if len(ne) > 1 and (n.startswith("blk.") or n == "output.weight")]
    return {n: (0.05 + rng.random(dims[n][-1])).astype(np.float32) for n in wanted}


def first_difference(ours: Path, ref: Path) -> str:
    """Where two GGUFs differ, read with gguf-py's reader (metadata, then tensors)."""
    a, b = GGUFReader(ours), GGUFReader(ref)
    keys_a = [(f.name, f.types, bytes(f.parts[-1])) for f in a.fields.values()]
    keys_b = [(f.name, f.types, bytes(f.parts[-1])) for f in b.fields.values()]
    if keys_a != keys_b:
        return f"metadata differs: {[k[0] for k in keys_a][-4:]} vs {[k[0] for k in keys_b][-4:]}"
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        if (ta.name, ta.tensor_type) != (tb.name, tb.tensor_type):
            return f"{ta.name} {ta.tensor_type.name} vs {tb.name} {tb.tensor_type.name}"
        if bytes(ta.data) != bytes(tb.data):
            return f"{ta.name} ({ta.tensor_type.name}) bytes differ"
    return "padding differs"


@pytest.fixture(scope="session")
def small_tlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_tlite(tmp_path_factory.mktemp("small-tlite") / NAME)


@pytest.fixture(scope="session")
def short_tlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_tlite(tmp_path_factory.mktemp("short-tlite") / NAME, shape=SHORT)


def reference(source: Path, out: Path, profile: Profile, imatrix: dict[str, np.ndarray] | None) -> Path:
    """llama.cpp's output for ``profile`` from our BF16 file of ``source`` (converted once into ``out``)."""
    bf16 = out / f"{NAME}-BF16.gguf"
    if not bf16.exists():
        convert(source, name=NAME, out_dir=out, verify=False)
    result = quantize(bf16, profile, out / profile.output_name(NAME), imatrix=imatrix, threads=2)
    assert result.path is not None
    return result.path


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["32-layers-plain", "8-layers-imatrix"])
def test_every_level_equals_llama_quantize(
    small_tlite: Path, short_tlite: Path, tmp_path: Path, with_imatrix: bool
) -> None:
    """All built-in profiles (and a custom one with overrides) in one pass: whole files identical,
    each output passing the tokenizer/template self-check. 32 layers without an importance matrix;
    8 layers (cheaper, same rules) with one, where no row type fits ffn_down but F16."""
    profiles = [p for p in BUILTIN.values() if with_imatrix or not p.requires_imatrix]
    source = short_tlite if with_imatrix else small_tlite
    if with_imatrix:
        profiles.append(CUSTOM)
    (ref_dir := tmp_path / "ref").mkdir()
    with prepare(source, name=NAME) as prep:
        dims = {n: shape for n, shape, _, _ in prep.layout.tensors}
        imatrix = fake_imatrix(dims) if with_imatrix else None
        results, verified, warnings = convert_levels(
            prep, profiles, tmp_path / "one", imatrix=imatrix, threads=2
        )
    assert not warnings
    for profile, result, lines in zip(profiles, results, verified, strict=True):
        ref = reference(source, ref_dir, profile, imatrix)
        assert result.path is not None
        assert result.path.read_bytes() == ref.read_bytes(), (
            f"{profile.name}: {first_difference(result.path, ref)}"
        )
        assert any(line.startswith("tokenizer parity") for line in lines)
        assert sidecar_path(result.path).read_text().split()[0] == result.sha256
    # the fixtures reach the fallbacks: ffn_down rows (32 wide) take a 32-block type, (48 wide) F16
    types = {t.name: t.tensor_type for t in GGUFReader(results[-1].path).tensors}
    if with_imatrix:
        assert SHORT.ffn % 32 and types["blk.0.ffn_down.weight"] == QT.F16
    else:
        assert SHAPE.ffn % 256 == 32 and types["blk.0.ffn_down.weight"] in (QT.Q5_0, QT.Q8_0, QT.IQ4_NL)


def dry_run_types(path: Path, profile: Profile, imatrix: dict[str, np.ndarray] | None) -> dict[str, str]:
    """llama.cpp's own per-tensor type choice: the log of ``llama_model_quantize``'s dry run."""
    import ctypes

    import llama_cpp

    params, keep = build_params(profile, imatrix, 1, dry_run=True)
    types: dict[str, str] = {}
    current: list[str] = []

    def on_line(level: int, line: str) -> None:
        if m := re.match(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*\], type =\s*(\w+),(.*)", line.strip()):
            moved = re.search(r"\((\w+)\)\s*$", m[3])
            types[m[1]] = (moved[1] if moved else m[2]).upper()
            current.append(m[1])

    with capture_log(on_line):
        rc = llama_cpp.llama_model_quantize(str(path).encode(), b"/dev/null", ctypes.byref(params))
    del keep
    assert rc == 0
    return types


def sparse_gguf(path: Path, shape: ModelShape, hidden: int, ffn: int, vocab: int, tied: bool) -> list:
    """A BF16 GGUF header with the tensors of a Llama model of this shape; the data is a hole."""
    layout = GGUFLayout()
    arch = shape.arch
    layout.add("general.architecture", GGUFValueType.STRING, arch)
    for key, value in {
        "block_count": shape.n_layer,
        "context_length": 8192,
        "embedding_length": hidden,
        "feed_forward_length": ffn,
        "attention.head_count": shape.n_head,
        "attention.head_count_kv": shape.n_head_kv,
        "vocab_size": vocab,
    }.items():
        layout.add(f"{arch}.{key}", GGUFValueType.UINT32, value)
    layout.add(f"{arch}.attention.layer_norm_rms_epsilon", GGUFValueType.FLOAT32, 1e-5)
    kv = hidden // shape.n_head * shape.n_head_kv
    tensors = [("token_embd.weight", (vocab, hidden)), ("output_norm.weight", (hidden,))]
    tensors += [] if tied else [("output.weight", (vocab, hidden))]
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.weight", (hidden,)), (b + "attn_q.weight", (hidden, hidden)),
            (b + "attn_k.weight", (kv, hidden)), (b + "attn_v.weight", (kv, hidden)),
            (b + "attn_output.weight", (hidden, hidden)), (b + "ffn_norm.weight", (hidden,)),
            (b + "ffn_gate.weight", (ffn, hidden)), (b + "ffn_up.weight", (ffn, hidden)),
            (b + "ffn_down.weight", (hidden, ffn)),
        ]  # fmt: skip
    typed = [(n, s, QT.F32 if len(s) == 1 else QT.BF16) for n, s in tensors]
    for name, s, qt in typed:
        layout.add_tensor(name, s, qt)
    head = layout.header()
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(len(head) + layout.data_size())
    return typed


# (label, model shape, hidden, ffn, vocab, tied): T-lite itself, a 70B-shaped Llama (its attn_v bump),
# a tied-embedding model, and odd widths (fallbacks down to F16).
SHAPES = [
    ("tlite-8b", ModelShape("llama", 32, 32, 8), 4096, 14336, 128256, False),
    ("llama-70b", ModelShape("llama", 80, 64, 8), 1024, 2816, 1024, False),
    ("tied-mha", ModelShape("llama", 16, 8, 8), 512, 1376, 1000, True),
    ("odd-widths", ModelShape("llama", 24, 6, 2), 480, 1000, 512, False),
]


@pytest.mark.parametrize("label,shape,hidden,ffn,vocab,tied", SHAPES, ids=[s[0] for s in SHAPES])
def test_types_equal_llama_dry_run(
    tmp_path: Path, label: str, shape: ModelShape, hidden: int, ffn: int, vocab: int, tied: bool
) -> None:
    """Our rule table picks llama.cpp's type for every tensor, for every profile, with and without
    an importance matrix (llama.cpp's dry run is the reference; no data is read)."""
    path = tmp_path / f"{label}.gguf"
    tensors = sparse_gguf(path, shape, hidden, ffn, vocab, tied)
    dims = {n: s for n, s, _ in tensors}
    try:
        for imatrix in (None, fake_imatrix(dims)):
            for profile in [*BUILTIN.values(), CUSTOM]:
                if profile.requires_imatrix and imatrix is None:
                    continue
                theirs = dry_run_types(path, profile, imatrix)
                ours = {
                    c.name: c.qtype.name for c in choose_types(tensors, profile, shape, imatrix is not None)
                }
                assert list(ours) == list(theirs), "tensor order differs"
                wrong = {n: (ours[n], theirs[n]) for n in ours if ours[n] != theirs[n]}
                assert not wrong, f"{label} {profile.name} imatrix={imatrix is not None}: {wrong}"
    finally:
        os.unlink(path)


def test_cli_one_pass_equals_via_bf16(small_tlite: Path, tmp_path: Path) -> None:
    """``convert -q`` writes no intermediate file and the same bytes as ``--via-bf16``."""
    one, via = tmp_path / "one", tmp_path / "via"
    levels = "q8_0,q4_k_m"
    r1 = run_cli("convert", small_tlite, "--name", NAME, "-q", levels, "--out-dir", one, "--threads", "2")
    assert r1.returncode == 0, r1.stderr
    r2 = run_cli("convert", small_tlite, "--name", NAME, "-q", levels, "--out-dir", via, "--via-bf16")
    assert r2.returncode == 0, r2.stderr
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in via.iterdir())
    assert not list(one.glob("*BF16*")) and len(list(one.glob("*.gguf"))) == 2
    for gguf in one.glob("*.gguf"):
        assert gguf.read_bytes() == (via / gguf.name).read_bytes()
        assert "# tokenizer parity" in sidecar_path(gguf).read_text()
    assert r1.stdout.count("verified") >= 4


def test_level_without_ported_rules_goes_through_bf16(small_tlite: Path, tmp_path: Path) -> None:
    """A level whose rules are not ported (MXFP4 MoE) is made from the BF16 file, said in one line;
    the other levels still come in one pass, and no intermediate file is left."""
    (tmp_path / "mx.toml").write_text(
        'name = "MX"\nftype = "MOSTLY_MXFP4_MOE"\ndescription = "x"\ntarget = "x"\nrequires_imatrix = false\n'
    )
    out = tmp_path / "out"
    r = run_cli(
        "convert", small_tlite, "--name", NAME, "-q", "mx,q8_0", "--out-dir", out,
        "--profiles", tmp_path / "mx.toml", "--no-verify",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if "MOSTLY_MXFP4_MOE" in line]
    assert len(lines) == 1 and "quantized through" in lines[0]
    assert sorted(p.name for p in out.glob("*.gguf")) == [f"{NAME}-MX.gguf", f"{NAME}-Q8_0.gguf"]
