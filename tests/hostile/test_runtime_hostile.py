"""`run` against a model that emits invalid UTF-8 and never ends: valid UTF-8 out (U+FFFD for the
stray byte), exit 0, the reply bounded by --max-tokens or by the context, bounded time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DOUBLE_NEWLINE, STANDIN_NAME
from hostile_kit import run_bounded

from tlite_edge.gguf_build.build import convert
from tlite_edge.samples.standin import llama3_tokenizer_json, write_standin


def byte_token(value: int) -> str:
    """GPT-2 byte-level text of one raw byte (the vocabulary's token for that lone byte)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    if value in printable:
        return chr(value)
    others = [b for b in range(256) if b not in printable]
    return chr(256 + others.index(value))


@pytest.fixture(scope="module")
def endless(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in whose greedy reply cycles forever through " Да", the lone byte 0x81, " нет", "!"."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(llama3_tokenizer_json()))
    ids = [tok.token_to_id(byte_token(0x81))]
    words = [tok.encode(w, add_special_tokens=False).ids for w in (" Да", " нет", "!")]
    assert all(len(w) == 1 for w in words) and ids[0] is not None
    cycle = [words[0][0], ids[0], words[1][0], words[2][0]]
    chain = [DOUBLE_NEWLINE, *cycle, cycle[0]]  # ... "!" -> "Да" again: no end of turn, ever
    folder = write_standin(tmp_path_factory.mktemp("endless") / STANDIN_NAME, chain=chain, seed=5)
    return convert(
        folder, name=STANDIN_NAME, outtype="bf16", out_dir=tmp_path_factory.mktemp("endless-gguf")
    ).path


def test_invalid_utf8_and_max_tokens(endless: Path) -> None:
    result = run_bounded(
        "run", endless, "Скажи что-нибудь.", "--temp", "0", "--max-tokens", "41", "--ctx", "512"
    )
    assert result.returncode == 0, result.stderr
    answer = result.stdout.rstrip("\n")  # run_bounded decodes strictly: the output is valid UTF-8
    assert answer == " Да\ufffd нет!" * 10 + " Да"  # 41 tokens: ten turns of the loop and one more
    assert "error" not in result.stderr
    assert result.wall < 120


def test_json_reports_length(endless: Path) -> None:
    result = run_bounded(
        "run", endless, "Ещё.", "--temp", "0", "--max-tokens", "20", "--ctx", "512", "--json"
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["finish_reason"] == "length" and info["generated_tokens"] == 20
    assert info["answer"].count("\ufffd") == 5


def test_bounded_by_context(endless: Path) -> None:
    """No --max-tokens: the reply ends where the context ends (llama.cpp rounds --ctx up to 256)."""
    result = run_bounded("run", endless, "Говори.", "--temp", "0", "--ctx", "96", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["finish_reason"] == "length"
    assert info["prompt_tokens"] + info["generated_tokens"] == info["settings"]["n_ctx"] <= 256
    assert "\ufffd" in info["answer"]
