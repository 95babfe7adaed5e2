"""tlite-edge release: levels + imatrix + model card + SHA256SUMS, atomic; --push through HfApi."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import huggingface_hub
import pytest
import yaml
from conftest import STANDIN_NAME, run_cli

from tlite_edge import cli
from tlite_edge.errors import TliteError
from tlite_edge.gguf.reader import read_header
from tlite_edge.quant.imatrix import load_imatrix
from tlite_edge.ship.card import read_eval
from tlite_edge.ship.release import push

LEVELS = {"Q8_0": 7, "Q4_K_M": 15}  # level -> llama.cpp file type
EVAL = {
    "candidates": [
        {"file": f"some/dir/{STANDIN_NAME}-Q8_0.gguf", "size": 80 * 2**20, "ppl": 7.25, "kld_mean": 0.0021,
         "kld_p99": 0.031, "top1": 0.987, "extra": "ignored"},
        {"file": f"{STANDIN_NAME}-Q4_K_M.gguf", "ppl": 7.61},
        {"no_file": True},
    ]
}  # fmt: skip


@pytest.fixture(scope="module")
def release(standin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("release")
    (root / "eval.json").write_text(json.dumps(EVAL), encoding="utf-8")
    out = root / "out"
    proc = run_cli(
        "release", standin_dir, "--out", out, "-q", ",".join(LEVELS), "--calibrate", "--chunks", "1",
        "--ctx", "64", "--eval-json", root / "eval.json", "--quantized-by", "tester",
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def front_matter(card: str) -> dict:
    m = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert m, "no front-matter"
    return yaml.safe_load(m[1])


def test_release_folder(release: tuple[Path, str]) -> None:
    out, stdout = release
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"{STANDIN_NAME}-{lv}.gguf" for lv in LEVELS]
        + [f"{STANDIN_NAME}.imatrix.gguf", "README.md", "SHA256SUMS"]
    )
    assert not list(out.parent.glob(".*partial*"))
    for level, ftype in LEVELS.items():
        kv = read_header(out / f"{STANDIN_NAME}-{level}.gguf").kv
        assert kv["general.file_type"] == ftype and kv["tokenizer.ggml.pre"] == "llama-bpe"
    # the shipped imatrix fits the model it ships with: 2 layers x 7 matrices + output
    assert len(load_imatrix(out / f"{STANDIN_NAME}.imatrix.gguf", out / f"{STANDIN_NAME}-Q8_0.gguf")) == 15
    assert "fixed: chat template ignored add_generation_prompt" in stdout


def test_card(release: tuple[Path, str]) -> None:
    out, _ = release
    card = (out / "README.md").read_text(encoding="utf-8")
    meta = front_matter(card)
    assert meta["base_model"] == "t-bank-ai/T-lite-instruct-0.1"
    assert meta["base_model_relation"] == "quantized" and meta["language"] == ["ru"]
    assert meta["license"] == "other" and meta["pipeline_tag"] == "text-generation"
    assert meta["quantized_by"] == "tester" and {"gguf", "imatrix"} <= set(meta["tags"])
    for p in out.iterdir():
        assert f"`{p.name}`" in card, p.name
    for level in LEVELS:
        size = (out / f"{STANDIN_NAME}-{level}.gguf").stat().st_size / 2**30
        assert re.search(rf"`{STANDIN_NAME}-{level}.gguf` \| {level} \| {size:.2f} \|", card)
    quality = card.split("## Quality", 1)[1].split("##", 1)[0]
    assert f"| `{STANDIN_NAME}-Q8_0.gguf` | 0.08 | 7.250 | 0.0021 | 0.031 | 98.7 % |" in quality
    assert f"| `{STANDIN_NAME}-Q4_K_M.gguf` |" in quality and "7.610 | — | — | — %" in quality
    for how in ("llama-server -m", "ollama run hf.co/", "--to lmstudio", "tlite-edge run"):
        assert how in card
    assert "fine-tuning" in card.split("## Intended use", 1)[1].split("##", 1)[0]


def test_sha256sums_verify(release: tuple[Path, str]) -> None:
    out, _ = release
    lines = (out / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ", 1)
        listed[name] = digest
    assert set(listed) == {p.name for p in out.iterdir()} - {"SHA256SUMS"}
    for name, digest in listed.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name


def test_push_uploads_the_folder(release: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict]] = []

    class RecordingApi:
        def create_repo(self, repo_id: str, **kw: object) -> None:
            calls.append(("create_repo", {"repo_id": repo_id, **kw}))

        def upload_folder(self, **kw: object) -> object:
            calls.append(("upload_folder", kw))
            folder = Path(str(kw["folder_path"]))
            assert (folder / "README.md").is_file() and (folder / "SHA256SUMS").is_file()
            return type("Info", (), {"commit_url": "https://huggingface.co/me/t-lite-GGUF/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    out, _ = release
    assert push(out, "me/t-lite-GGUF", log=lambda line: None).endswith("/commit/1")
    assert calls[0] == ("create_repo", {"repo_id": "me/t-lite-GGUF", "repo_type": "model", "exist_ok": True})
    assert calls[1][1]["folder_path"] == str(out) and calls[1][1]["repo_id"] == "me/t-lite-GGUF"

    class FailingApi(RecordingApi):
        def upload_folder(self, **kw: object) -> object:
            raise OSError("401 Unauthorized\nmore detail")

    monkeypatch.setattr(huggingface_hub, "HfApi", FailingApi)
    with pytest.raises(TliteError, match=r"upload failed \(401 Unauthorized\)$"):
        push(out, "me/t-lite-GGUF", log=lambda line: None)


def test_refusals_write_nothing(bf16_gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x", encoding="utf-8")
    data = bytearray(bf16_gguf.read_bytes())
    at = data.index(b"llama-bpe")
    data[at : at + 9] = b"smaug-bpe"
    (busy / "smaug.gguf").write_bytes(bytes(data))
    cases = (
        (["--out", busy, "-q", "q8_0"], "not an empty folder"),
        (["--out", tmp_path / "a", "-q", "iq2_m"], "need an importance matrix"),
        (["--out", tmp_path / "b", "-q", "q8_0", "--push", "bad/../repo"], "not a Hub repo id"),
        (["--out", tmp_path / "c", "-q", "q9_9"], "unknown quantization level"),
        (["--out", tmp_path / "d", "-q", "q8_0", "--eval-json", tmp_path / "none.json"], "cannot read"),
        (["--out", tmp_path / "e", "-q", "q8_0", "--imatrix", busy / "keep.txt"], "imatrix"),
        (["--out", tmp_path / "f", "-q", "q8_0", "--source", busy / "smaug.gguf"], "inspect --fix"),
    )
    for args, message in cases:
        source = str(args[-1]) if "--source" in args else str(bf16_gguf)
        args = args[:-2] if "--source" in args else args
        assert cli.main(["release", source, *map(str, args)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt", "smaug.gguf"]


def test_read_eval_is_tolerant(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    shapes = (
        [{"file": "a.gguf", "ppl": 5.0}],
        {"results": [{"file": "x/a.gguf", "ppl": 5.0, "new_field": 1}]},
        {"a.gguf": {"ppl": 5.0}, "note": "text"},
    )
    for data in shapes:
        path.write_text(json.dumps(data), encoding="utf-8")
        rows, _ = read_eval(path)
        assert rows == {"a.gguf": {"size": None, "ppl": 5.0, "kld_mean": None, "kld_p99": None, "top1": None}}
    path.write_text('{"candidates": 3}', encoding="utf-8")
    assert read_eval(path) == ({}, ["eval.json: no candidates found; the card has no quality table"])
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(TliteError, match="cannot read the eval JSON"):
        read_eval(path)


def test_maintainer_script_levels_exist() -> None:
    import importlib.util

    from tlite_edge.quant.profiles import load_profiles

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("release_tlite", root / "convert" / "release_tlite.py")
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert set(script.RECOMMENDED) <= set(load_profiles()) and "Q4_K_M" in script.RECOMMENDED
    proc = run_cli("release", "--help")
    assert proc.returncode == 0 and "--calibrate" in proc.stdout
