"""Quality of quantized GGUFs against a reference: perplexity, KL divergence and top-1 agreement.

The reference runs once; its distributions are kept on disk in top-k form (``topk``), one file per
chunk, and every candidate is scored against them chunk by chunk, so memory stays bounded whatever
the vocabulary and the text length. A ``cache_dir`` keeps them for the next run with the same
reference, text and settings; without one they live in a temporary folder removed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlite_edge.errors import TliteError
from tlite_edge.evaluate.runner import Chunks, LogitsModel, check_same_vocabulary, vocabulary
from tlite_edge.evaluate.topk import DEFAULT_TOP_K, Scores, TopK, score
from tlite_edge.gguf.reader import summarize
from tlite_edge.texts import read_text

SCHEMA = "tlite-edge.eval/1"

# (label, done, total) -- label names the model being run.
ProgressFn = Callable[[str, int, int], None]


@dataclass
class ModelInfo:
    path: str
    name: str
    file_bytes: int
    n_params: int
    bits_per_weight: float

    @classmethod
    def of(cls, path: Path) -> ModelInfo:
        s = summarize(path)
        return cls(str(path), path.stem, s.size, s.n_params, round(s.bits_per_weight, 4))


@dataclass
class CandidateResult:
    model: ModelInfo
    ppl: float
    ppl_ratio: float  # candidate / reference perplexity
    kld_mean: float
    kld_mean_stderr: float
    kld_p99: float
    kld_max: float
    top1: float  # share of positions where the candidate's most likely token is the reference's
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self.model), **{k: v for k, v in asdict(self).items() if k != "model"}}


@dataclass
class EvalReport:
    text: dict[str, Any]
    settings: dict[str, Any]
    reference: dict[str, Any]
    candidates: list[CandidateResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "text": self.text,
            "settings": self.settings,
            "reference": self.reference,
            "candidates": [c.as_dict() for c in self.candidates],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), ensure_ascii=False, indent=1) + "\n"


class RefCache:
    """A folder per (reference, text, ctx, chunks, k): ``chunk-NNNNN.npz``, ``key.json`` once whole."""

    def __init__(self, root: Path, key: dict[str, Any]):
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        self.dir = root / f"ref-{digest}"
        self.key = key

    def path(self, i: int) -> Path:
        return self.dir / f"chunk-{i:05d}.npz"

    def complete(self) -> bool:
        marker = self.dir / "key.json"
        try:
            return json.loads(marker.read_text(encoding="utf-8")) == self.key
        except (OSError, ValueError):
            return False

    def write(self, i: int, block: TopK) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path(i).with_suffix(".partial")
        with open(tmp, "wb") as fh:
            block.save(fh)  # type: ignore[arg-type]
        os.replace(tmp, self.path(i))

    def finish(self) -> None:
        (self.dir / "key.json").write_text(json.dumps(self.key, sort_keys=True), encoding="utf-8")

    def read(self, i: int) -> TopK:
        return TopK.load(str(self.path(i)))


def _file_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


@contextlib.contextmanager
def _cache_root(cache_dir: Path | None) -> Iterator[Path]:
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        yield cache_dir
        return
    with tempfile.TemporaryDirectory(prefix="tlite-eval-") as tmp:
        yield Path(tmp)


def _reference_pass(
    model: LogitsModel, chunks: Chunks, cache: RefCache, top_k: int, progress: ProgressFn
) -> None:
    label = model.path.stem
    progress(label, 0, len(chunks.chunks))
    for i, (logits, target) in enumerate(model.run(chunks)):
        cache.write(i, TopK.from_logits(logits, target, top_k))
        progress(label, i + 1, len(chunks.chunks))
    cache.finish()


def _summarize(model: ModelInfo, parts: list[Scores], ref_ppl: float, seconds: float) -> CandidateResult:
    kld = np.concatenate([p.kld for p in parts])
    ppl = float(np.exp(np.concatenate([p.nll for p in parts]).mean()))
    return CandidateResult(
        model=model,
        ppl=ppl,
        ppl_ratio=ppl / ref_ppl,
        kld_mean=float(kld.mean()),
        kld_mean_stderr=float(kld.std(ddof=1) / np.sqrt(len(kld))) if len(kld) > 1 else 0.0,
        kld_p99=float(np.quantile(kld, 0.99)),
        kld_max=float(kld.max()),
        top1=float(np.concatenate([p.top1 for p in parts]).mean()),
        seconds=round(seconds, 3),
    )


def evaluate(
    ref: Path,
    candidates: list[Path],
    text_path: Path,
    *,
    ctx: int = 512,
    chunks: int | None = None,
    top_k: int = DEFAULT_TOP_K,
    cache_dir: Path | None = None,
    threads: int | None = None,
    gpu: bool | None = None,
    progress: ProgressFn | None = None,
    on_result: Callable[[CandidateResult], None] | None = None,
) -> EvalReport:
    """Score every candidate against ``ref`` on ``text_path``; all inputs are checked before any work."""
    progress = progress or (lambda label, done, total: None)
    if chunks is not None and chunks < 1:
        raise TliteError(None, f"--chunks must be at least 1 (got {chunks})")
    if top_k < 1:
        raise TliteError(None, f"--top-k must be at least 1 (got {top_k})")
    if not candidates:
        raise TliteError(None, "no candidate GGUF given")
    text = read_text(text_path)
    ref_tokens = vocabulary(ref)
    for cand in candidates:
        check_same_vocabulary(ref, ref_tokens, cand)
    with _cache_root(cache_dir) as root:
        with LogitsModel(ref, ctx, threads, gpu) as model:
            split = model.chunks(text, chunks, text_path)
            text_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
            key = {
                "schema": SCHEMA,
                "reference": _file_key(ref),
                "text_sha256": text_sha,
                "ctx": ctx,
                "chunks": len(split.chunks),
                "top_k": top_k,
            }
            cache = RefCache(root, key)
            cached = cache.complete()
            if not cached:
                _reference_pass(model, split, cache, top_k, progress)
            threads_used = model.threads
        n = len(split.chunks)
        nll = np.concatenate([cache.read(i).nll for i in range(n)])
        tail = np.exp(np.concatenate([cache.read(i).rest for i in range(n)]))
        ref_ppl = float(np.exp(nll.mean()))
        report = EvalReport(
            text={
                "path": str(text_path),
                "sha256": text_sha,
                "tokens": split.text_tokens,
                "chunks": n,
                "scored_tokens": split.scored,
            },
            settings={"ctx": ctx, "top_k": top_k, "threads": threads_used, "reference_cached": cached},
            reference={
                **asdict(ModelInfo.of(ref)),
                "ppl": ref_ppl,
                "tail_mass_mean": float(tail.mean()),
                "tail_mass_max": float(tail.max()),
            },
        )
        for cand in candidates:
            result = _candidate(cand, split, cache, ref_ppl, ctx, threads, gpu, progress)
            report.candidates.append(result)
            if on_result:
                on_result(result)
    return report


def _candidate(
    cand: Path,
    split: Chunks,
    cache: RefCache,
    ref_ppl: float,
    ctx: int,
    threads: int | None,
    gpu: bool | None,
    progress: ProgressFn,
) -> CandidateResult:
    t0 = time.perf_counter()
    parts: list[Scores] = []
    with LogitsModel(cand, ctx, threads, gpu) as model:
        progress(cand.stem, 0, len(split.chunks))
        for i, (logits, target) in enumerate(model.run(split)):
            block = cache.read(i)
            if not np.array_equal(block.target, target):
                raise TliteError(cache.dir, "reference cache does not match the text (remove it)")
            parts.append(score(block, logits))
            progress(cand.stem, i + 1, len(split.chunks))
    return _summarize(ModelInfo.of(cand), parts, ref_ppl, time.perf_counter() - t0)
