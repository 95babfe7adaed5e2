"""Hub ids resolve through huggingface_hub's own cache and offline mode; failures are one line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from gguf import GGUFReader

from tlite_edge.fsutil import sha256_file

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(standin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face cache holding the stand-in as t-bank-ai/T-lite-instruct-0.1 (blobs + symlinks)."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / "models--t-bank-ai--T-lite-instruct-0.1"
    snap = repo / "snapshots" / COMMIT
    (repo / "refs").mkdir(parents=True)
    (repo / "blobs").mkdir()
    snap.mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for f in standin_dir.iterdir():
        blob = repo / "blobs" / f"blob-{f.name}"
        os.link(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return cache


def test_convert_from_offline_cache(hub_cache: Path, tmp_path: Path) -> None:
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    proc = run_cli("convert", "--out-dir", tmp_path, env=env)  # default SOURCE is the T-lite Hub id
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "T-lite-instruct-0.1-BF16.gguf"
    reader = GGUFReader(out)
    fields = {
        k: reader.fields[k].contents()
        for k in ("general.name", "general.basename", "general.finetune", "general.version")
    }
    assert fields == {
        "general.name": "T-lite-instruct-0.1",
        "general.basename": "T-lite",
        "general.finetune": "instruct",
        "general.version": "0.1",
    }
    sidecar = (tmp_path / "T-lite-instruct-0.1-BF16.gguf.sha256").read_text()
    assert sidecar.splitlines()[0] == f"{sha256_file(out)}  {out.name}"
    assert sidecar.splitlines()[1].startswith("# tokenizer parity ")  # proved on the written file
    assert subprocess.run(["sha256sum", "--strict", "-c", out.name + ".sha256"], cwd=tmp_path).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["AnatoliiPotapov/T-lite-instruct-0.1"], "not in the local Hugging Face cache"),
        (["t-bank-ai/T-lite-instruct-0.1", "--revision", "v9"], "not in the local Hugging Face cache"),
    ],
)
def test_offline_miss_is_one_line(hub_cache: Path, tmp_path: Path, args: list[str], message: str) -> None:
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    proc = run_cli("convert", *args, "--out-dir", tmp_path, env=env)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert args[0] in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_inspect_fix_takes_the_tokenizer_from_the_hub(
    hub_cache: Path, bf16_gguf: Path, tmp_path: Path
) -> None:
    """``--tokenizer HUB_ID`` reads only the tokenizer files, through the same cache and offline mode."""
    data = bytearray(bf16_gguf.read_bytes())
    at = data.index(b"llama-bpe")
    data[at : at + 9] = b"smaug-bpe"
    smaug = tmp_path / "smaug.gguf"
    smaug.write_bytes(bytes(data))
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    out = tmp_path / "fixed.gguf"
    proc = run_cli("inspect", smaug, "--fix", out, "--tokenizer", "t-bank-ai/T-lite-instruct-0.1", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "'smaug-bpe' -> 'llama-bpe'" in proc.stdout and "verified: tokenizer parity" in proc.stdout
    assert out.read_bytes() == bf16_gguf.read_bytes()
    missing = run_cli(
        "inspect", smaug, "--fix", tmp_path / "x.gguf", "--tokenizer", "someone/absent", env=env
    )
    assert missing.returncode == 2 and "not in the local Hugging Face cache" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.gguf").exists()
