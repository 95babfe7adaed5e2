"""What llama.cpp's own converter (convert_hf_to_gguf.py) writes for the stand-in and its tokenizer
variants: the upstream behaviour our converter fixes (see the README's table)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from conftest import STANDIN_NAME, run_cli
from corpus import parity_corpus
from llamacpp_convert import LlamacppConvertError, llamacpp_convert, llamacpp_sources
from tokenizers import Tokenizer

from tlite_edge.gguf.reader import read_header
from tlite_edge.samples.standin import UPSTREAM_TEMPLATE, write_standin

BOS, EOT, VOCAB = 128000, 128009, 128256
BF16, F32 = 30, 0  # GGMLQuantizationType


@pytest.fixture(scope="session")
def llamacpp_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where llama.cpp's sources are extracted: pytest's cache (kept between runs) when enabled."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("llamacpp") if cache is not None else tmp_path_factory.mktemp("llamacpp")


@pytest.fixture(scope="session")
def llamacpp_src(llamacpp_cache: Path) -> Path:
    return llamacpp_sources(llamacpp_cache)


def gguf_kv(path: Path) -> dict[str, Any]:
    """A GGUF's metadata (a vocab-only file ends right after its header, unpadded: read_header takes it)."""
    return read_header(path).kv


def test_sources_extracted(llamacpp_src: Path) -> None:
    assert (llamacpp_src / "convert_hf_to_gguf.py").is_file()
    assert (llamacpp_src / "conversion" / "llama.py").is_file()
    assert (llamacpp_src / "gguf-py" / "gguf" / "__init__.py").is_file()


# (ignore_merges, bos_post_processor) -> (tokenizer.ggml.pre, add_bos_token). llama.cpp's pre-tokenizer
# probe hashes the ids of one text encoded with the BOS the post-processor adds, so only the
# post-processor changes the label; ignore_merges does not show in the probe.
VARIANTS = {
    "ignore_merges": (True, False, "smaug-bpe", False),
    "no_ignore_merges": (False, False, "smaug-bpe", False),
    "ignore_merges_absent": (None, False, "smaug-bpe", False),
    "bos_post_processor": (True, True, "llama-bpe", True),
}
FULL = ("ignore_merges", "no_ignore_merges")  # converted with their tensors (inspect --fix needs them)


@pytest.fixture(scope="module")
def converted(
    llamacpp_src: Path, llamacpp_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], tuple[Path, Path]]:
    """variant -> (its stand-in folder, llama.cpp's GGUF of it), each converted once per module."""
    done: dict[str, tuple[Path, Path]] = {}

    def get(variant: str) -> tuple[Path, Path]:
        if variant not in done:
            ignore_merges, post_processor, _, _ = VARIANTS[variant]
            base = tmp_path_factory.mktemp(f"llamacpp-{variant}")
            folder = write_standin(
                base / STANDIN_NAME, ignore_merges=ignore_merges, bos_post_processor=post_processor
            )
            t0 = time.perf_counter()
            out = llamacpp_convert(
                folder, base / "ref-BF16.gguf", vocab_only=variant not in FULL, cache=llamacpp_cache
            )
            print(f"\nllama.cpp convert ({variant}): {time.perf_counter() - t0:.1f}s")
            done[variant] = folder, out
        return done[variant]

    return get


def test_full_bf16(converted: Callable[[str], tuple[Path, Path]]) -> None:
    """The stand-in as T-lite ships it (ignore_merges true, no BOS post-processor), tensors included."""
    header = read_header(converted("ignore_merges")[1])
    kv = header.kv
    assert kv["general.file_type"] == 32  # LLAMA_FTYPE_MOSTLY_BF16
    types = {name: qtype for name, _, qtype in header.tensors}
    assert len(types) == 3 + 9 * 2
    assert {types[n] for n in types if n.endswith("norm.weight")} == {F32}
    assert {types[n] for n in types if not n.endswith("norm.weight")} == {BF16}
    assert dict((n, d) for n, d, _ in header.tensors)["token_embd.weight"] == (256, VOCAB)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tokenizer_variant(variant: str, converted: Callable[[str], tuple[Path, Path]]) -> None:
    _, _, pre, add_bos = VARIANTS[variant]
    kv = gguf_kv(converted(variant)[1])
    assert (kv["tokenizer.ggml.pre"], kv["tokenizer.ggml.add_bos_token"]) == (pre, add_bos)
    assert kv["tokenizer.ggml.model"] == "gpt2"
    assert kv["tokenizer.ggml.add_eos_token"] is False
    # eos from config.json / tokenizer_config.json, not generation_config.json's <|end_of_text|>.
    assert (kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.eos_token_id"]) == (BOS, EOT)
    assert kv["llama.vocab_size"] == len(kv["tokenizer.ggml.tokens"]) == VOCAB
    # The upstream template is copied as is (it ignores add_generation_prompt).
    assert kv["tokenizer.chat_template"] == UPSTREAM_TEMPLATE


def test_failure_reports_converter_stderr(llamacpp_src: Path, llamacpp_cache: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlamacppConvertError, match="config.json"):
        llamacpp_convert(tmp_path / "empty", tmp_path / "out.gguf", vocab_only=True, cache=llamacpp_cache)
    assert not (tmp_path / "out.gguf").exists()


def tensor_bytes(path: Path) -> bytes:
    return path.read_bytes()[read_header(path).data_start :]


@pytest.mark.parametrize("ignore_merges", [True, False])
def test_inspect_fix_on_llamacpp_output(
    ignore_merges: bool, converted: Callable[[str], tuple[Path, Path]], tmp_path: Path
) -> None:
    """A smaug-labelled GGUF from llama.cpp's converter: --fix leaves the label without a tokenizer, and
    with the source tokenizer sets what its ignore_merges needs, proved by parity; tensors untouched."""
    folder, ref = converted("ignore_merges" if ignore_merges else "no_ignore_merges")
    base = tmp_path
    assert read_header(ref).kv["tokenizer.ggml.pre"] == "smaug-bpe"

    plain = base / "plain.gguf"
    proc = run_cli("inspect", ref, "--fix", plain, env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    kv = read_header(plain).kv
    assert kv["tokenizer.ggml.pre"] == "smaug-bpe" and "left as it is" in proc.stdout
    assert kv["tokenizer.ggml.add_bos_token"] is True
    assert tensor_bytes(plain) == tensor_bytes(ref)

    fixed = base / "fixed.gguf"
    proc = run_cli("inspect", ref, "--fix", fixed, "--tokenizer", folder, env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    label = "llama-bpe" if ignore_merges else "smaug-bpe"
    assert read_header(fixed).kv["tokenizer.ggml.pre"] == label
    parity = re.search(r"verified: tokenizer parity (\d+)/(\d+)", proc.stdout)
    assert parity and parity[1] == parity[2] and int(parity[1]) >= 1000, proc.stdout
    assert tensor_bytes(fixed) == tensor_bytes(ref)

    # independently of the self-check: the test corpus through llama.cpp and HF tokenizers
    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    corpus = parity_corpus()
    ref_ids = [e.ids for e in hf.encode_batch(corpus, add_special_tokens=False)]
    assert llama_ids(fixed, corpus) == ref_ids
    if ignore_merges:  # llama.cpp's own label splits this tokenizer's Russian differently
        assert llama_ids(ref, corpus) != ref_ids


def llama_ids(gguf: Path, texts: list[str]) -> list[list[int]]:
    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(t.encode(), add_bos=False, special=False) for t in texts]
    finally:
        llm.close()
