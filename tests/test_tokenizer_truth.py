"""The pre-tokenizer label follows tokenizer.json's split regex and ignore_merges, and every conversion
proves tokenizer and template parity on the file it writes (nothing is kept when a check fails)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import llama_cpp
import pytest
from corpus import parity_corpus
from tokenizers import Tokenizer

from tlite_edge import cli
from tlite_edge.checkpoint.tokenizer import load_vocab
from tlite_edge.errors import TliteError
from tlite_edge.fsutil import sidecar_notes
from tlite_edge.gguf.reader import read_header
from tlite_edge.gguf_build import metadata
from tlite_edge.gguf_build.build import convert
from tlite_edge.gguf_build.probes import MIN_PROBES, merge_sensitive_words, probe_strings
from tlite_edge.samples.standin import standin_tokenizer

BOS = 128000
# (ignore_merges, BOS post-processor) -> the label llama.cpp needs to split like HF tokenizers
VARIANTS = {
    (True, False): "llama-bpe",
    (True, True): "llama-bpe",
    (False, False): "smaug-bpe",
    (False, True): "smaug-bpe",
    (None, False): "smaug-bpe",  # absent means false
    (None, True): "smaug-bpe",
}


def variant(standin_dir: Path, folder: Path, ignore_merges: bool | None, bos_pp: bool) -> Path:
    """The stand-in checkpoint (weights linked, not copied) with another tokenizer.json."""
    folder.mkdir(parents=True)
    for item in standin_dir.iterdir():
        if item.name != "tokenizer.json":
            (folder / item.name).symlink_to(item)
    tok = standin_tokenizer(ignore_merges, bos_pp)
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    return folder


def llama_ids(gguf: Path, texts: list[str], add_bos: bool = False) -> list[list[int]]:
    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(t.encode(), add_bos=add_bos, special=False) for t in texts]
    finally:
        llm.close()


@pytest.mark.parametrize(("ignore_merges", "bos_pp"), list(VARIANTS))
def test_variant_label_and_parity(
    standin_dir: Path, tmp_path: Path, ignore_merges: bool | None, bos_pp: bool
) -> None:
    src = variant(standin_dir, tmp_path / "T-lite-variant", ignore_merges, bos_pp)
    result = convert(src, outtype="bf16", out_dir=tmp_path)
    label = VARIANTS[ignore_merges, bos_pp]
    kv = read_header(result.path).kv
    assert kv["tokenizer.ggml.pre"] == label
    assert kv["tokenizer.ggml.add_bos_token"] is True  # BOS is its own decision: once, either label
    parity = re.fullmatch(r"tokenizer parity (\d+)/(\d+) \(pre-tokenizer (\S+)\)", result.verified[0])
    assert parity and parity[1] == parity[2] and int(parity[1]) >= MIN_PROBES and parity[3] == label
    assert result.verified[1].startswith("template parity 4/4")
    assert sidecar_notes(result.path) == result.verified

    # independent comparison: the test corpus, not the converter's probes
    hf = Tokenizer.from_file(str(src / "tokenizer.json"))
    corpus = [*parity_corpus(), " даже", " глаза", "Если даже глаза устали"]
    ref = [e.ids for e in hf.encode_batch(corpus, add_special_tokens=False)]
    assert llama_ids(result.path, corpus) == ref
    first = llama_ids(result.path, ["Привет"], add_bos=True)[0]
    assert first[0] == BOS and first.count(BOS) == 1


def test_the_two_labels_really_differ(standin_dir: Path) -> None:
    """The probe set holds words whose split depends on ignore_merges (a wrong label cannot pass)."""
    tok = standin_tokenizer(False)
    hf = Tokenizer.from_str(json.dumps(tok))
    words = merge_sensitive_words(tok, hf)
    assert " даже" in words and len(words) >= 100
    flipped = Tokenizer.from_str(json.dumps(standin_tokenizer(True)))
    assert all(hf.encode(w).ids != flipped.encode(w).ids for w in words[:50])
    probes = probe_strings(tok, hf)
    assert len(probes) == len(set(probes)) >= MIN_PROBES and set(words) <= set(probes)


def test_mislabelled_output_fails_and_leaves_nothing(
    standin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A test-only hook writes the wrong label: the self-check names the first string, no file stays."""
    real = metadata.add_tokenizer_metadata

    def wrong_label(layout, vocab, template):  # type: ignore[no-untyped-def]
        vocab.pre = "smaug-bpe"  # the source has ignore_merges true: llama-bpe is right
        real(layout, vocab, template)

    monkeypatch.setattr(metadata, "add_tokenizer_metadata", wrong_label)
    out = tmp_path / "out"
    out.mkdir()
    rc = cli.main(["convert", str(standin_dir), "--out-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "tokenizer parity failed (pre-tokenizer 'smaug-bpe', the source needs 'llama-bpe')" in err
    assert "llama.cpp [" in err and "vs HF tokenizers [" in err and "no file written" in err
    assert list(out.iterdir()) == []


def test_template_mismatch_fails(standin_dir: Path, tmp_path: Path) -> None:
    """A template that prints eos_token: HF passes tokenizer_config's <|end_of_text|>, llama.cpp's
    formatter the GGUF's eos (fixed to <|eot_id|>), so the two prompts differ and nothing is written."""
    src = variant(standin_dir, tmp_path / "T-lite-eos", True, False)
    cfg_path = src / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["eos_token"] = "<|end_of_text|>"
    cfg_path.unlink()
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    template = tmp_path / "eos.jinja"
    template.write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TliteError, match="template parity failed on a 1-message chat") as exc:
        convert(src, outtype="bf16", out_dir=out, chat_template=template)
    assert "<|eot_id|>" in str(exc.value) and "<|end_of_text|>" in str(exc.value)
    assert list(out.iterdir()) == []


def test_no_verify_is_reported(standin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["convert", str(standin_dir), "--out-dir", str(tmp_path), "--no-verify"])
    printed = capsys.readouterr().out
    assert rc == 0 and "unverified" in printed and "--no-verify" in printed
    (gguf,) = tmp_path.glob("*.gguf")
    assert sidecar_notes(gguf) == []


def test_unknown_combination_is_refused(standin_dir: Path, tmp_path: Path) -> None:
    """GPT-2's byte-level split with ignore_merges: llama.cpp has no label for it."""
    tok = standin_tokenizer(True)
    tok["pre_tokenizer"] = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": True,
    }
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    with pytest.raises(
        TliteError, match="unknown pre-tokenizer '<ByteLevel use_regex>' with ignore_merges true"
    ):
        load_vocab(folder, 128256)
