"""Every bad input: one line naming the file and the problem, exit != 0, no output file left."""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_cli


def linked_copy(src: Path, dst: Path) -> Path:
    """Cheap copy (hard links); mutate only through ``replace_file`` so the original stays intact."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def replace_file(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    replace_file(path, json.dumps(data).encode())


def edit_shard_header(path: Path, change: Callable[[dict], None]) -> None:
    raw = path.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + hlen])
    change(header)
    new = json.dumps(header).encode()
    replace_file(path, struct.pack("<Q", len(new)) + new + raw[8 + hlen :])


class Evil:
    """Unpickling this would create a marker file: the converter must never unpickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"


def _missing_shard(d: Path) -> None:
    (d / SHARD2).unlink()


def _extra_shard(d: Path) -> None:
    os.link(d / SHARD2, d / "model-00003-of-00002.safetensors")


def _arch(d: Path) -> None:
    edit_json(d / "config.json", lambda c: c.update(architectures=["MistralForCausalLM"]))


def _shape(d: Path) -> None:
    edit_json(d / "config.json", lambda c: c.update(intermediate_size=1024))


def _no_tokenizer(d: Path) -> None:
    (d / "tokenizer.json").unlink()


def _dtype(d: Path) -> None:
    edit_shard_header(d / SHARD1, lambda h: h["model.embed_tokens.weight"].update(dtype="I16"))


def _corrupt(d: Path) -> None:
    raw = (d / SHARD1).read_bytes()
    replace_file(d / SHARD1, raw[:8] + b"{not json" + raw[17:])


def _pickle_only(d: Path) -> None:
    for f in list(d.glob("*.safetensors")) + [d / "model.safetensors.index.json"]:
        f.unlink()
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Evil(d / "UNPICKLED")))


def _unknown_pretokenizer(d: Path) -> None:
    def change(t: dict) -> None:
        t["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\s+|\w+"

    edit_json(d / "tokenizer.json", change)


SUPPORTED = "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"
CASES = {
    "missing shard": (_missing_shard, SHARD2, "shard listed in model.safetensors.index.json is missing"),
    "extra shard": (_extra_shard, "model-00003-of-00002.safetensors", "extra shard not listed"),
    "architecture": (_arch, "config.json", f"not supported (supported: {SUPPORTED})"),
    "shape": (_shape, SHARD1, "config.json implies"),
    "missing tokenizer": (_no_tokenizer, "tokenizer.json", "missing tokenizer"),
    "dtype": (_dtype, SHARD1, "unsupported dtype I16"),
    "corrupt header": (_corrupt, SHARD1, "corrupt safetensors header"),
    "pickle only": (_pickle_only, "pytorch_model.bin", "pickle checkpoints are refused"),
    "unknown pre-tokenizer": (_unknown_pretokenizer, "tokenizer.json", "unknown pre-tokenizer"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint(case: str, standin_dir: Path, tmp_path: Path) -> None:
    mutate, culprit, message = CASES[case]
    bad = linked_copy(standin_dir, tmp_path / "hf")
    mutate(bad)
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("convert", bad, "--out-dir", out)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0] and culprit in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert list(out.iterdir()) == []
    assert not (bad / "UNPICKLED").exists()


def test_disk_full_leaves_nothing(standin_dir: Path, tmp_path: Path) -> None:
    """A real write failure from the OS (file-size limit, the same path as a full disk)."""
    out = tmp_path / "out"
    out.mkdir()

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 * 2**20, 20 * 2**20))

    proc = subprocess.run(
        [sys.executable, "-m", "tlite_edge", "convert", str(standin_dir), "--out-dir", str(out)],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "disk full" in proc.stderr and "T-lite-standin-instruct-0.1-BF16.gguf" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


def test_not_a_source(tmp_path: Path) -> None:
    proc = run_cli("convert", tmp_path / "nope" / "..x", "--out-dir", tmp_path)
    assert proc.returncode == 2
    assert "not a Hub repo id" in proc.stderr
