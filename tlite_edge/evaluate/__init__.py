"""Quality of quantized GGUFs against a reference: perplexity, KL divergence, top-1 agreement, charts."""

from __future__ import annotations

from tlite_edge.evaluate.core import SCHEMA, CandidateResult, EvalReport, ModelInfo, evaluate
from tlite_edge.evaluate.topk import DEFAULT_TOP_K, TopK, exact_kld, score

__all__ = [
    "DEFAULT_TOP_K",
    "SCHEMA",
    "CandidateResult",
    "EvalReport",
    "ModelInfo",
    "TopK",
    "evaluate",
    "exact_kld",
    "score",
]
