"""Quantization levels through llama.cpp's quantizer: types, overrides, outputs, errors, the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from conftest import STANDIN_NAME, run_cli
from gguf import GGMLQuantizationType as QT

from tlite_edge.errors import TliteError
from tlite_edge.fsutil import sha256_file
from tlite_edge.gguf.reader import read_header
from tlite_edge.quant.profiles import load_profiles, read_profile_file
from tlite_edge.quant.quantize import quantize

ROOT = Path(__file__).resolve().parents[1]
# The base type llama.cpp uses for the bulk of the matrices at each level (attn_q, attn_k, ffn_up).
BASE_TYPE = {
    "Q8_0": QT.Q8_0,
    "Q6_K": QT.Q6_K,
    "Q5_K_M": QT.Q5_K,
    "Q4_K_M": QT.Q4_K,
    "IQ4_XS": QT.IQ4_XS,
    "Q3_K_M": QT.Q3_K,
    "IQ3_M": QT.IQ3_S,
    "Q2_K": QT.Q2_K,
    "IQ2_M": QT.IQ2_S,
}
REQUIRED = set(BASE_TYPE)


def types_of(path: Path) -> dict[str, QT]:
    """Tensor types of a file llama.cpp's quantizer wrote (read with our fast header parser: gguf-py's
    GGUFReader takes ~7 s on a 128k vocabulary)."""
    return {name: QT(qtype) for name, _, qtype in read_header(path).tensors}


def flat_imatrix(model: Path) -> dict[str, np.ndarray]:
    """A uniform importance matrix (every column equally important), for levels that require one."""
    return {
        name: np.ones(int(dims[0]), np.float32)
        for name, dims, _ in read_header(model).tensors
        if len(dims) == 2 and name != "token_embd.weight"
    }


def test_builtin_profiles_cover_the_levels() -> None:
    profiles = load_profiles()
    assert set(profiles) >= REQUIRED
    assert [p.name for p in profiles.values() if p.default] == ["Q4_K_M"]
    assert profiles["IQ2_M"].requires_imatrix


@pytest.mark.parametrize("level", sorted(REQUIRED))
def test_each_level_loads_generates_and_has_its_types(level: str, bf16_gguf: Path, tmp_path: Path) -> None:
    profile = load_profiles()[level]
    out = tmp_path / f"{STANDIN_NAME}-{level}.gguf"
    imatrix = flat_imatrix(bf16_gguf) if profile.requires_imatrix else None
    result = quantize(bf16_gguf, profile, out, imatrix=imatrix, threads=2)
    assert result.path == out and (tmp_path / f"{out.name}.sha256").read_text().split()[0] == sha256_file(out)
    kinds = types_of(out)
    bulk = Counter(
        k for n, k in kinds.items() if n.endswith(("attn_q.weight", "attn_k.weight", "ffn_up.weight"))
    )
    assert bulk.most_common(1)[0][0] == BASE_TYPE[level], bulk
    assert {k for n, k in kinds.items() if n.endswith("norm.weight")} == {QT.F32}
    if profile.token_embedding_type is not None:
        assert kinds["token_embd.weight"] == profile.token_embedding_type
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=128, verbose=False)
    text = llm.create_completion("Привет", max_tokens=4, temperature=0.0)
    assert text["usage"]["completion_tokens"] >= 1


def test_overrides_change_exactly_the_named_tensors(bf16_gguf: Path, tmp_path: Path) -> None:
    spec = tmp_path / "mine.toml"
    spec.write_text(
        'name = "MINE"\nftype = "MOSTLY_Q4_K_M"\ndescription = "test"\ntarget = "test"\n'
        'requires_imatrix = false\noutput_type = "Q8_0"\n'
        '[overrides]\n"blk\\\\.1\\\\.ffn_(gate|up)\\\\.weight" = "Q8_0"\n'
        '"blk\\\\.0\\\\.attn_q\\\\.weight" = "Q5_K"\n',
        encoding="utf-8",
    )
    base = types_of(quantize(bf16_gguf, load_profiles()["Q4_K_M"], tmp_path / "base.gguf", threads=2).path)
    mine = types_of(quantize(bf16_gguf, read_profile_file(spec), tmp_path / "mine.gguf", threads=2).path)
    changed = {n for n in base if base[n] != mine[n]}
    assert changed == {"blk.1.ffn_gate.weight", "blk.1.ffn_up.weight", "blk.0.attn_q.weight", "output.weight"}
    assert mine["blk.1.ffn_up.weight"] == QT.Q8_0 and mine["blk.0.attn_q.weight"] == QT.Q5_K
    assert mine["output.weight"] == QT.Q8_0


def test_cli_levels_names_and_dry_run(bf16_gguf: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "quantize",
        bf16_gguf,
        "--dry-run",
        "-q",
        "q4_k_m,q8_0,iq2_m",
        "--out-dir",
        tmp_path,
        env={"COLUMNS": "220"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Q4_K_M" in proc.stdout and "IQ2_M" in proc.stdout and "RAM @ 8192 ctx" in proc.stdout
    assert list(tmp_path.iterdir()) == []
    proc = run_cli("quantize", bf16_gguf, "-q", "q8_0", "--out-dir", tmp_path, "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{STANDIN_NAME}-Q8_0.gguf",
        f"{STANDIN_NAME}-Q8_0.gguf.sha256",
    ]


BAD_PROFILES = {
    "unknown field": (
        'name = "X"\nftype = "MOSTLY_Q4_0"\ndescription = ""\ntarget = ""\n'
        'requires_imatrix = false\ncolour = "red"\n',
        "unknown field 'colour'",
    ),
    "bad ftype": (
        'name = "X"\nftype = "MOSTLY_Q9_9"\ndescription = ""\ntarget = ""\nrequires_imatrix = false\n',
        "not a llama.cpp file type",
    ),
    "bad type": (
        'name = "X"\nftype = "MOSTLY_Q4_0"\ndescription = ""\ntarget = ""\nrequires_imatrix = false\n'
        'output_type = "Q7"\n',
        "unknown GGML type",
    ),
    "bad regex": (
        'name = "X"\nftype = "MOSTLY_Q4_0"\ndescription = ""\ntarget = ""\nrequires_imatrix = false\n'
        '[overrides]\n"blk.(" = "Q8_0"\n',
        "bad regex",
    ),
    "missing": ('name = "X"\nftype = "MOSTLY_Q4_0"\n', "missing field 'description'"),
    "not toml": ("name = = 1", "not valid TOML"),
}


@pytest.mark.parametrize("case", list(BAD_PROFILES))
def test_bad_profiles(case: str, tmp_path: Path, bf16_gguf: Path) -> None:
    text, message = BAD_PROFILES[case]
    spec = tmp_path / "bad.toml"
    spec.write_text(text, encoding="utf-8")
    with pytest.raises(TliteError, match=message):
        read_profile_file(spec)
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("quantize", bf16_gguf, "--profiles", spec, "-q", "x", "--out-dir", out)
    assert proc.returncode == 2 and str(spec) in proc.stderr and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-q", "iq2_m"], "needs an importance matrix: make one with `tlite-edge imatrix"),
        (["-q", "q4_k_xl"], "unknown quantization level"),
    ],
)
def test_cli_errors(bf16_gguf: Path, tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_cli("quantize", bf16_gguf, *args, "--out-dir", tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_not_a_gguf(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\0" * 64)
    proc = run_cli("quantize", junk, "-q", "q8_0")
    assert proc.returncode == 2 and "not a GGUF file" in proc.stderr and str(junk) in proc.stderr


def test_profiles_ship_in_the_wheel(tmp_path: Path) -> None:
    """Build the wheel, install it alone into a folder and load the profiles from there."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("tlite_edge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {
        Path(n).name for n in names if n.startswith("tlite_edge/quant_profiles/") and n.endswith(".toml")
    }
    assert shipped == {p.name for p in (ROOT / "quant_profiles").glob("*.toml")}
    models = {Path(n).name for n in names if n.startswith("tlite_edge/models/") and n.endswith(".toml")}
    assert models == {p.name for p in (ROOT / "models").glob("*.toml")} and models
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import tlite_edge, sys; from tlite_edge.quant.profiles import load_profiles, builtin_profile_files;"
        "assert tlite_edge.__file__.startswith(sys.argv[1]), tlite_edge.__file__;"
        "assert all(str(f).startswith(sys.argv[1]) for f in builtin_profile_files());"
        "from tlite_edge.known_models import known_models, model_files;"
        "assert all(str(f).startswith(sys.argv[1]) for f in model_files()) and known_models();"
        "print(','.join(sorted(load_profiles())))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(site)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.strip().split(",")) >= REQUIRED
