"""inspect flags known breakage in a crafted GGUF and --fix repairs its metadata, tensors untouched."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import llama_cpp
import pytest
from conftest import EOT, make_rigged, run_cli
from tokenizers import Tokenizer

from tlite_edge.gguf.reader import read_header
from tlite_edge.samples.standin import llama3_tokenizer_json

REPLY = "Добрый день!"
RUSSIAN = " даже глаза"  # split differently under the smaug-bpe label


def patch(data: bytearray, key: str, fmt: str, value: object) -> None:
    """Overwrite a metadata value in place (same size): find the key, skip its type, write the value."""
    raw = key.encode()
    at = data.index(struct.pack("<Q", len(raw)) + raw) + 8 + len(raw) + 4
    if fmt == "str":
        text = str(value).encode()
        (n,) = struct.unpack_from("<Q", data, at)
        assert n == len(text)
        data[at + 8 : at + 8 + n] = text
    else:
        struct.pack_into(fmt, data, at, value)


@pytest.fixture(scope="module")
def rigged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    return make_rigged(tmp_path_factory, REPLY, seed=5)


@pytest.fixture(scope="module")
def broken(rigged: tuple[Path, list[int]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The community-style breakage: smaug-bpe label, eos <|end_of_text|>, no BOS flag."""
    data = bytearray(rigged[0].read_bytes())
    patch(data, "tokenizer.ggml.pre", "str", "smaug-bpe")
    patch(data, "tokenizer.ggml.eos_token_id", "<I", 128001)
    patch(data, "tokenizer.ggml.add_bos_token", "<?", False)
    path = tmp_path_factory.mktemp("broken") / "broken.gguf"
    path.write_bytes(bytes(data))
    return path


def tokenize(path: Path, text: str) -> list[int]:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False, vocab_only=True)
    try:
        return llm.tokenize(text.encode(), add_bos=llm._model.add_bos_token(), special=False)
    finally:
        llm.close()


def test_flags_the_broken_file(broken: Path) -> None:
    proc = run_cli("inspect", broken, "--json")
    assert proc.returncode == 0, proc.stderr
    warnings = {w["code"]: w for w in json.loads(proc.stdout)["warnings"]}
    assert set(warnings) == {"pre-tokenizer", "eos", "bos"}
    assert warnings["eos"]["fixable"] and warnings["bos"]["fixable"]
    # the label is a question only the source tokenizer.json answers: reported, never guessed
    assert not warnings["pre-tokenizer"]["fixable"]
    assert "smaug-bpe" in warnings["pre-tokenizer"]["message"]
    assert "cannot tell from the GGUF alone" in warnings["pre-tokenizer"]["message"]
    assert "--tokenizer" in warnings["pre-tokenizer"]["message"]
    assert "128001 <|end_of_text|>" in warnings["eos"]["message"]
    assert "add_bos_token false" in warnings["bos"]["message"]
    table = run_cli("inspect", broken, env={"COLUMNS": "250"})
    assert table.returncode == 0 and "warnings" in table.stdout and "smaug-bpe" in table.stdout


def test_fix_repairs_it(broken: Path, rigged: tuple[Path, list[int]], tmp_path: Path) -> None:
    original, reply = rigged
    fixed = tmp_path / "fixed.gguf"
    proc = run_cli(
        "inspect", broken, "--fix", fixed, "--tokenizer", llama3_tokenizer_json(), env={"COLUMNS": "250"}
    )
    assert proc.returncode == 0, proc.stderr
    assert "tensor data unchanged" in proc.stdout
    assert "'smaug-bpe' -> 'llama-bpe'" in proc.stdout and "verified: tokenizer parity" in proc.stdout
    # Same-size values: the repaired file is the converter's original, byte for byte.
    assert fixed.read_bytes() == original.read_bytes()
    again = json.loads(run_cli("inspect", fixed, "--json").stdout)
    assert again["warnings"] == []
    assert again["verified"][0].startswith("tokenizer parity ")

    hf = Tokenizer.from_file(str(llama3_tokenizer_json())).encode(RUSSIAN, add_special_tokens=False).ids
    assert tokenize(broken, RUSSIAN) != hf  # the smaug-bpe label splits Russian words differently
    assert tokenize(fixed, RUSSIAN) == [128000, *hf]  # llama-bpe, BOS once

    llm = llama_cpp.Llama(model_path=str(fixed), n_ctx=256, verbose=False)
    try:
        assert llama_cpp.llama_vocab_eos(llama_cpp.llama_model_get_vocab(llm.model)) == EOT
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": "Поздоровайся."}], max_tokens=32, temperature=0.0
        )
    finally:
        llm.close()
    assert out["choices"][0]["message"]["content"] == REPLY
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] <= len(reply) + 1


def test_fix_without_tokenizer_leaves_the_label(broken: Path, tmp_path: Path) -> None:
    """No source tokenizer: eos and BOS are fixed (the GGUF proves them), the label stays as it was."""
    fixed = tmp_path / "fixed.gguf"
    proc = run_cli("inspect", broken, "--fix", fixed, env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    assert "'smaug-bpe' left as it is" in proc.stdout and "--tokenizer" in proc.stdout
    head = read_header(fixed)
    assert head.kv["tokenizer.ggml.pre"] == "smaug-bpe"
    assert head.kv["tokenizer.ggml.eos_token_id"] == EOT and head.kv["tokenizer.ggml.add_bos_token"] is True
    info = json.loads(run_cli("inspect", fixed, "--json").stdout)
    assert [w["code"] for w in info["warnings"]] == ["pre-tokenizer"] and info["verified"] == []


def test_fix_refuses_a_foreign_tokenizer(broken: Path, tmp_path: Path) -> None:
    data = json.loads(llama3_tokenizer_json().read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    vocab["даже!"] = vocab.pop(next(iter(vocab)))  # one token renamed
    other = tmp_path / "tokenizer.json"
    other.write_text(json.dumps(data), encoding="utf-8")
    proc = run_cli("inspect", broken, "--fix", tmp_path / "x.gguf", "--tokenizer", other, "--json")
    assert proc.returncode == 2 and "not this GGUF's tokenizer: 1 of" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]


def test_fix_adds_a_missing_template(rigged: tuple[Path, list[int]], tmp_path: Path) -> None:
    """A fix that grows the header: tensor infos and data are carried over unchanged."""
    original = rigged[0]
    data = bytearray(original.read_bytes())
    raw = b"tokenizer.chat_template"
    at = data.index(struct.pack("<Q", len(raw)) + raw)
    data[at + 8 : at + 8 + len(raw)] = b"tokenizer.chat_templatX"  # the template is gone
    patch(data, "llama.vocab_size", "<I", 128259)
    damaged = tmp_path / "no-template.gguf"
    damaged.write_bytes(bytes(data))
    codes = {w["code"] for w in json.loads(run_cli("inspect", damaged, "--json").stdout)["warnings"]}
    assert codes == {"template", "vocab"}
    fixed = tmp_path / "fixed.gguf"
    proc = run_cli("inspect", damaged, "--fix", fixed)
    assert proc.returncode == 0, proc.stderr
    head_old, head_new = read_header(damaged), read_header(fixed)
    assert head_new.kv["tokenizer.chat_template"].startswith("{{- bos_token }}")
    assert head_new.kv["llama.vocab_size"] == 128256
    assert head_new.tensors == head_old.tensors and head_new.offsets == head_old.offsets
    assert head_new.data_start > head_old.data_start
    assert (
        fixed.read_bytes()[head_new.data_start :] == original.read_bytes()[read_header(original).data_start :]
    )
    assert json.loads(run_cli("inspect", fixed, "--json").stdout)["warnings"] == []
    llm = llama_cpp.Llama(model_path=str(fixed), n_ctx=256, verbose=False)
    try:
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": "Привет"}], max_tokens=32, temperature=0.0
        )
    finally:
        llm.close()
    assert out["choices"][0]["message"]["content"] == REPLY


def test_fix_errors(bf16_gguf: Path, broken: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy.gguf"
    for args, message in (
        ((bf16_gguf, "--fix", out), "nothing that --fix can repair"),
        ((broken, "--fix", broken), "must be a new file"),
        ((broken, "--fix", tmp_path / "no" / "x.gguf"), "output folder does not exist"),
    ):
        proc = run_cli("inspect", *args, "--json")
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
