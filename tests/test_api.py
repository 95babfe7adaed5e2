"""The public Python API (what docs/python-api.md shows), the converter's entry scripts in convert/, and
the pinned llama-cpp-python the ctypes mirrors were checked against."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import STANDIN_NAME

import tlite_edge
from tlite_edge.errors import TliteError
from tlite_edge.quant import ggml_ctypes
from tlite_edge.quant.profiles import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves() -> None:
    for name in tlite_edge.__all__:
        assert getattr(tlite_edge, name) is not None
    with pytest.raises(AttributeError):
        tlite_edge.not_a_verb  # noqa: B018


def test_the_documented_example(standin_dir: Path, tmp_path: Path) -> None:
    """convert -> quantize -> load -> Chat -> inspect, as a library user writes it."""
    from tlite_edge import Chat, convert, inspect, load, quantize

    bf16 = convert(standin_dir, out_dir=tmp_path / "models" / "new")  # folders are created
    assert bf16.path.parent == tmp_path / "models" / "new" and bf16.verified
    [q8] = quantize(bf16.path, "q8_0")
    assert q8.path == bf16.path.with_name(f"{STANDIN_NAME}-Q8_0.gguf") and q8.path.is_file()
    engine = load(q8.path, ctx=256, threads=2)
    try:
        chat = Chat(engine, system="Ты — полезный ассистент.")
        reply = chat.send("Привет!", temp=0.0, max_tokens=4)
        assert reply.result() == reply.text and reply.stats.generated_tokens <= 4
    finally:
        engine.close()
    report = inspect(bf16.path)
    assert report.findings == [] and report.verified[0].startswith("tokenizer parity ")
    assert report.as_dict()["metadata"]["general.name"] == STANDIN_NAME


def run_script(name: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "convert" / name), *map(str, args)], capture_output=True, text=True
    )


def test_convert_scripts(standin_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.gguf"
    proc = run_script("hf_to_gguf.py", standin_dir, "--outtype", "bf16", "--outfile", out)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout and "tokenizer parity" in proc.stdout
    proc = run_script("gguf_levels.py", out, "-q", "q8_0,q4_k_m", "--out-dir", tmp_path / "levels")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "levels").glob("*.gguf")) == [
        f"{STANDIN_NAME}-Q4_K_M.gguf",
        f"{STANDIN_NAME}-Q8_0.gguf",
    ]
    bad = run_script("hf_to_gguf.py", tmp_path / "nowhere", "--outfile", tmp_path / "x.gguf")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_llama_cpp_python_pinned_to_the_checked_version() -> None:
    installed = metadata.version("llama-cpp-python")
    assert installed == ggml_ctypes.CHECKED_LLAMA_CPP
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    pin = next(d for d in deps if d.startswith("llama-cpp-python"))
    assert f">={ggml_ctypes.CHECKED_LLAMA_CPP}," in pin and ",<" in pin


def test_layout_mismatch_is_one_clear_line() -> None:
    with pytest.raises(TliteError) as exc:
        ggml_ctypes.layout_mismatch("struct ggml_tensor is 1 bytes, our mirror 2")
    text = str(exc.value)
    assert "\n" not in text and f"install llama-cpp-python=={ggml_ctypes.CHECKED_LLAMA_CPP}" in text
