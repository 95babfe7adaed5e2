"""inspect and demo through the console entry point, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli


def test_inspect_json(bf16_gguf: Path) -> None:
    proc = run_cli("inspect", bf16_gguf, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["tensor_types"] == {"BF16": 16, "F32": 5}
    assert info["special_tokens"]["eos"] == {"id": 128009, "text": "<|eot_id|>"}
    assert info["metadata"]["tokenizer.ggml.pre"] == "llama-bpe"
    assert info["metadata"]["tokenizer.ggml.tokens"] == "[128256 items]"
    assert abs(info["bits_per_weight"] - 16.0) < 0.01
    assert "add_generation_prompt" in info["metadata"]["tokenizer.chat_template"]


def test_inspect_table(bf16_gguf: Path) -> None:
    proc = run_cli("inspect", bf16_gguf, env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "bits per weight" in proc.stdout and "eos = 128009 <|eot_id|>" in proc.stdout


def test_inspect_bad_files(tmp_path: Path, bf16_gguf: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04 not a gguf")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(bf16_gguf.read_bytes()[:5000])
    for path, message in (
        (junk, "not a GGUF file"),
        (truncated, "damaged or truncated"),
        (tmp_path / "none.gguf", "no such file"),
    ):
        proc = run_cli("inspect", path)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1
        assert str(path) in proc.stderr and message in proc.stderr, proc.stderr


def test_demo(tmp_path: Path) -> None:
    proc = run_cli("demo", "--out", tmp_path / "demo", "--max-tokens", "8", env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "replaced by the Llama-3 template" in out
    for level in ("Q8_0", "Q4_K_M", "Q2_K"):
        assert (tmp_path / "demo" / f"T-lite-standin-instruct-0.1-{level}.gguf").is_file()
        assert f"T-lite-standin-instruct-0.1-{level} " in out  # a row of the quality table
    assert "5. quality vs BF16" in out and "mean KLD" in out and "(reference)" in out
    assert "6. chat (Q4_K_M, tlite_edge.runtime)" in out and "8 generated" in out
    assert "This was a stand-in" in out and "tlite-edge convert t-bank-ai/T-lite-instruct-0.1" in out
    assert (tmp_path / "demo" / "T-lite-standin-instruct-0.1-BF16.gguf").is_file()
    assert "7. a real model: SmolLM2-135M-Instruct" in out and "The capital of France is Paris." in out
