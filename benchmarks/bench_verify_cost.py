"""What verifying k drafted tokens costs: one batch of 1 + k tokens (logits at every position, as
speculative decoding evaluates them) against the one-token step, on one GGUF at a given KV depth.

The batches go through the reply's own calls (``speculate.decode_all``, ``Llama.eval``) after a prompt
of ``--depth`` tokens; each repetition visits k = 0 … K in alternating order (up, then down) and
the cache is cut back to the prompt after every step. From the cost ratio c(k) = t(1 + k) / t(1) follows
the expected speed-up when each draft is accepted with probability p until the first miss:
(1 + p + … + p^k) / c(k).

    python benchmarks/bench_verify_cost.py bench-data/tlite-8b-random-Q4_K_M.gguf --threads 2 \
        --update-md BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import llama_cpp
import numpy as np
from mdreport import replace_section, stamp

from tlite_edge.runtime import Engine
from tlite_edge.runtime.speculate import MAX_DRAFT, decode_all, truncate

SECTION = "## Runtime: cost of verifying k drafted tokens, {name}"
ACCEPT = (0.5, 0.7, 0.8, 0.9)


def step_seconds(engine: Engine, base: int, tokens: list[int]) -> float:
    """Time one decode of ``tokens`` after the first ``base`` cached tokens."""
    llm = engine.llm
    truncate(llm, base)
    t0 = time.perf_counter()
    if len(tokens) == 1:
        llm.eval(tokens)
    else:
        decode_all(llm, tokens)
    llama_cpp.llama_synchronize(llm._ctx.ctx)
    return time.perf_counter() - t0


def expected_speedup(p: float, k: int, cost: float) -> float:
    return sum(p**i for i in range(k + 1)) / cost


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=512, help="prompt tokens in the KV cache (default 512)")
    ap.add_argument("--max-k", type=int, default=MAX_DRAFT, help=f"largest draft (default {MAX_DRAFT})")
    ap.add_argument("--reps", type=int, default=6, help="repetitions per k (default 6)")
    ap.add_argument("--update-md", type=Path)
    args = ap.parse_args()

    engine = Engine.load(args.model, ctx=args.depth + args.max_k + 16, threads=args.threads, seed=0)
    rng = np.random.default_rng(0)
    # ordinary tokens (no control tokens: those sit at the end of the vocabulary)
    ids = rng.integers(1000, engine.n_vocab - 1000, size=args.depth + args.max_k + 1).tolist()
    llm = engine.llm
    llm.reset()
    llm.eval(ids[: args.depth])
    ks = list(range(args.max_k + 1))
    times: dict[int, list[float]] = {k: [] for k in ks}
    step_seconds(engine, args.depth, ids[args.depth : args.depth + 2])  # warm-up
    for rep in range(args.reps):
        for k in ks if rep % 2 == 0 else ks[::-1]:
            times[k].append(step_seconds(engine, args.depth, ids[args.depth : args.depth + 1 + k]))
    engine.close()
    t1 = statistics.median(times[0])
    cost = {k: statistics.median(times[k]) / t1 for k in ks}
    best = {p: max(ks, key=lambda k, p=p: expected_speedup(p, k, cost[k])) for p in ACCEPT}
    lines = [
        stamp(),
        f"Model `{args.model.name}`, {args.threads} threads, {args.depth} tokens in the KV cache, flash "
        f"attention off; medians of {args.reps} repetitions, k visited up and down in turn. "
        "Expected speed-up = (1 + p + … + p^k) / c(k) when each draft is accepted with probability p "
        "until the first miss.",
        "",
        "| k drafts | batch | ms (median) | c(k) = t / t(1 token) | "
        + " | ".join(f"speed-up p={p}" for p in ACCEPT)
        + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(ACCEPT),
    ]
    for k in ks:
        cells = " | ".join(f"{expected_speedup(p, k, cost[k]):.2f}×" for p in ACCEPT)
        ms = statistics.median(times[k]) * 1000
        lines.append(f"| {k} | {k + 1} | {ms:.1f} | {cost[k]:.2f} | {cells} |")
    lines += [
        "",
        "Best k per acceptance probability: "
        + ", ".join(
            f"p={p}: k={best[p]} ({expected_speedup(p, best[p], cost[best[p]]):.2f}×)" for p in ACCEPT
        )
        + ".",
    ]
    print("\n".join(lines))
    if args.update_md:
        replace_section(args.update_md, SECTION.format(name=args.model.name), lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
