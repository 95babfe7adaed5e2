"""End-to-end numerical parity: llama.cpp running our GGUF vs. an independent numpy Llama.

The stand-in checkpoint (random bf16 weights, T-lite shape) is converted to F32 and BF16 GGUF and
run through llama-cpp-python on a 64-token Russian prompt. Its logits are compared with
``reference_llama`` (float64, HF tensor names, rotate-half RoPE on the unpermuted q/k weights),
which shares no code with the converter: a wrong q/k permutation, tensor mapping, norm epsilon,
RoPE base or GQA layout shows up as a large logit difference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import llama_cpp_logits
from reference_llama import ReferenceLlama
from tokenizers import Tokenizer

N_TOKENS = 64
BOS_ID = 128000  # <|begin_of_text|>

# Our own text; it tokenizes to well over 63 Llama-3 tokens.
PROMPT_RU = (
    "Утром над рекой стоял густой туман, рыбаки молча чинили сети, а старый паром медленно "
    "переплывал на другой берег, где уже открылась булочная с горячим хлебом и крепким чаем. "
    "Кошка на крыльце щурилась от первых лучей солнца и делала вид, что её совсем не интересуют воробьи."
)

# F32 GGUF: every weight is the exact bf16 value widened to f32 and the KV cache is F32, so only
# f32 vs float64 arithmetic differs. Measured (llama-cpp-python 0.3.36, CPU, 2 threads): max |diff|
# 2.5e-5 on logits with std ~3 (2.2e-5 to 2.6e-5 over stand-in seeds 0-2).
F32_TOL = 1e-3
# BF16 GGUF: same weights (the source is bf16), but llama.cpp's CPU bf16 matmuls round the
# activations to bf16. Measured: max |diff| 0.124, mean 0.014, top-1 agreement 100% (seeds 1-2:
# max 0.134 / 0.149, top-1 98.4% / 96.9%). Tolerances are ~4x the measured error; a missing q/k
# RoPE permutation, for comparison, gives max |diff| 15.6, mean 1.9 and 8% top-1 agreement.
BF16_TOL = 0.5
BF16_MEAN_TOL = 0.05
BF16_MIN_TOP1_AGREEMENT = 0.95


@pytest.fixture(scope="module")
def prompt_ids(standin_dir: Path) -> list[int]:
    tokenizer = Tokenizer.from_file(str(standin_dir / "tokenizer.json"))
    ids = [BOS_ID, *tokenizer.encode(PROMPT_RU, add_special_tokens=False).ids]
    assert len(ids) >= N_TOKENS
    return ids[:N_TOKENS]


@pytest.fixture(scope="module")
def reference_logits(standin_dir: Path, prompt_ids: list[int]) -> np.ndarray:
    logits = ReferenceLlama(standin_dir).logits(prompt_ids)
    assert logits.shape == (N_TOKENS, 128256)
    return logits


def test_reference_logits_have_spread(reference_logits: np.ndarray) -> None:
    """Guard against a vacuous comparison: near-constant logits would match anything."""
    assert np.isfinite(reference_logits).all()
    std = float(reference_logits.std())
    low, high = float(reference_logits.min()), float(reference_logits.max())
    print(f"\nreference logits: std {std:.3f}, range [{low:.2f}, {high:.2f}]")
    assert std > 1.0
    assert len(set(reference_logits.argmax(axis=1).tolist())) > 1


def test_f32_gguf_matches_reference(
    f32_gguf: Path, prompt_ids: list[int], reference_logits: np.ndarray
) -> None:
    logits = llama_cpp_logits(f32_gguf, prompt_ids)
    diff = float(np.abs(logits - reference_logits).max())
    print(f"\nF32 GGUF vs reference: max |diff| {diff:.3e} over {logits.shape}")
    assert diff <= F32_TOL
    assert (logits.argmax(axis=1) == reference_logits.argmax(axis=1)).all()


def test_bf16_gguf_matches_reference(
    bf16_gguf: Path, prompt_ids: list[int], reference_logits: np.ndarray
) -> None:
    logits = llama_cpp_logits(bf16_gguf, prompt_ids)
    err = np.abs(logits - reference_logits)
    diff, mean = float(err.max()), float(err.mean())
    agree = float((logits.argmax(axis=1) == reference_logits.argmax(axis=1)).mean())
    print(f"\nBF16 GGUF vs reference: max |diff| {diff:.3e}, mean {mean:.3e}, top-1 agreement {agree:.1%}")
    assert diff <= BF16_TOL
    assert mean <= BF16_MEAN_TOL
    assert agree >= BF16_MIN_TOP1_AGREEMENT
