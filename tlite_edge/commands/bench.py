"""``tlite-edge bench MODEL.gguf``: runtime speed, ours against a bare llama.cpp loop on the same file.

Load time, prompt processing (pp) and generation (tg) speed, time to first token and peak RSS through
our chat path; the same prompt through a bare llama_decode loop with the same parameters (ratios
ours/bare) and, with ``--llama-bench PATH``, through llama.cpp's own ``llama-bench`` (tg compared at
the depth our prompt reaches); a multi-turn chat (last-turn / first-turn time to first token, each
turn adding the same number of new tokens); tg against memory bandwidth ÷ weight bytes read per token.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tlite_edge.commands._options import add_rpc_arguments, rpc_endpoints
from tlite_edge.errors import TliteError

GB = 1e9
MIB = 2**20


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure runtime speed against bare llama.cpp", description=__doc__)
    p.add_argument("model", type=Path, help="GGUF file")
    p.add_argument("--pp", type=int, default=512, help="prompt tokens (default 512)")
    p.add_argument("--tg", type=int, default=128, help="generated tokens (default 128)")
    p.add_argument("--reps", type=int, default=3, help="repetitions; medians are reported (default 3)")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    p.add_argument("--ctx", type=int, help="context length (default: the model's, reduced if RAM is short)")
    p.add_argument("--turns", type=int, default=5, help="turns of the multi-turn chat (default 5)")
    p.add_argument("--turn-tokens", type=int, default=64, help="new user tokens per turn (default 64)")
    p.add_argument("--turn-reply", type=int, default=32, help="reply tokens per turn (default 32)")
    p.add_argument(
        "--bandwidth-mib", type=int, default=1024, help="buffer for the read-bandwidth sweep (default 1024)"
    )
    p.add_argument(
        "--llama-bench",
        type=Path,
        metavar="PATH",
        help="also time llama.cpp's llama-bench binary on the same file, threads and batch sizes",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_rpc_arguments(p)
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    for flag in ("pp", "tg", "reps", "turns", "turn_tokens", "turn_reply", "bandwidth_mib", "threads", "ctx"):
        value = getattr(args, flag)
        minimum = 2 if flag == "turns" else 1
        if value is not None and value < minimum:
            raise TliteError(None, f"--{flag.replace('_', '-')} must be at least {minimum}, got {value}")


def run(args: argparse.Namespace) -> int:
    _check(args)
    from tlite_edge.runtime.bench import BenchConfig, run_bench  # heavy import, only for this verb
    from tlite_edge.runtime.llamabench import LlamaBench

    if args.llama_bench is not None and args.rpc:
        raise TliteError(args.llama_bench, "--llama-bench runs the model locally: not with --rpc")
    anchor = LlamaBench(args.llama_bench) if args.llama_bench is not None else None  # checked before loading

    cfg = BenchConfig(
        pp=args.pp,
        tg=args.tg,
        reps=args.reps,
        threads=args.threads,
        ctx=args.ctx,
        turns=args.turns,
        turn_tokens=args.turn_tokens,
        turn_reply=args.turn_reply,
        bandwidth_mib=args.bandwidth_mib,
        rpc=tuple(rpc_endpoints(args)),
        tensor_split=args.tensor_split,
    )
    err = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("bench", total=None)
        result = run_bench(args.model, cfg, lambda what: progress.update(task, description=what), anchor)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
    else:
        render(result, Console())
    return 0


def _x(value: float) -> str:
    return f"{value:.3f}×" if math.isfinite(value) else "n/a"


def render(r: dict[str, Any], console: Console) -> None:
    """The result as rich tables: speeds, ratios against targets, turns."""
    ours, bare, bw = r["ours"], r["bare"], r["bandwidth"]
    speed = Table(title=f"{r['model']} · {r['threads']} threads · ctx {r['n_ctx']}")
    for col in ("", "tlite-edge", "bare llama.cpp", "ratio"):
        speed.add_column(col, justify="right" if col else "left")
    rows = (
        ("load (s)", f"{ours['load_s']:.2f}", f"{bare['load_s']:.2f}", ""),
        (f"pp{ours['pp_tokens']} (tok/s)", f"{ours['pp_tok_s']:.1f}", f"{bare['pp_tok_s']:.1f}",
         _x(r["ratios"]["pp_vs_bare"])),
        (f"tg{ours['tg_tokens']} (tok/s)", f"{ours['tg_tok_s']:.2f}", f"{bare['tg_tok_s']:.2f}",
         _x(r["ratios"]["tg_vs_bare"])),
        ("tg: ms/token outside llama_decode", f"{ours['tg_overhead_ms']:.2f}",
         f"{bare['tg_overhead_ms']:.2f}", ""),
        ("time to first token (s)", f"{ours['ttft_s']:.3f}", "", ""),
        ("peak RSS (GiB)", f"{ours['peak_rss_bytes'] / 2**30:.2f}", "", ""),
        ("tg bound (tok/s)", f"{bw['tg_bound_tok_s']:.2f}", "", ""),
        ("tg / bound", _x(r["ratios"]["tg_vs_bandwidth_bound"]), _x(bw["bare_tg_vs_bound"]), ""),
    )  # fmt: skip
    for row in rows:
        speed.add_row(*row)
    console.print(speed)
    console.print(
        f"read bandwidth {bw['read_bytes_per_s'] / GB:.2f} GB/s, weights read per token "
        f"{bw['weight_bytes_per_token'] / MIB:.1f} MiB"
    )
    if r.get("llama_bench"):
        console.print(_anchor_table(r))
    turns = Table(title="multi-turn chat (KV cache reused)")
    for col in ("turn", "new tokens evaluated", "time to first token (s)"):
        turns.add_column(col, justify="right")
    for t in r["chat"]["turns"]:
        turns.add_row(str(t["turn"]), str(t["evaluated_tokens"]), f"{t['ttft_s']:.3f}")
    console.print(turns)
    from tlite_edge.runtime.bench import LLAMA_BENCH_TARGETS, TARGETS

    targets = Table(title="targets")
    for col in ("metric", "value", "target", "met"):
        targets.add_column(col)
    for key, (op, threshold) in {**TARGETS, **LLAMA_BENCH_TARGETS}.items():
        if key not in r["targets"]:
            continue
        ok = r["targets"][key]
        targets.add_row(key, _x(r["ratios"][key]), f"{op} {threshold}", "[green]yes" if ok else "[red]no")
    console.print(targets)


def _range(xs: list[float]) -> str:
    return f"{min(xs):.1f}–{max(xs):.1f}" if xs else ""


def _anchor_table(r: dict[str, Any]) -> Table:
    """Ours against llama.cpp's llama-bench: pp, tg at the depth our prompt reaches, tg at depth 0."""
    ours, lb, ratios = r["ours"], r["llama_bench"], r["ratios"]
    s = lb["settings"]
    fa = {None: "auto", True: "on", False: "off"}[s["flash_attn"]]
    table = Table(
        title=f"against llama-bench · batch {s['n_batch']}/{s['n_ubatch']} · flash attention {fa}",
        caption="medians (ranges); runs interleaved",
    )
    for col in ("", "tlite-edge", "llama-bench", "ratio"):
        table.add_column(col, justify="right" if col else "left")
    depth = lb["depth"]
    table.add_row(
        f"pp{lb['pp_tokens']} (tok/s)",
        f"{ours['pp_tok_s']:.1f} ({_range(ours['pp_samples'])})",
        f"{lb['pp_tok_s']:.1f} ({_range(lb['pp_samples'])})",
        _x(ratios["pp_vs_llama_bench"]),
    )
    table.add_row(
        f"tg{lb['tg_tokens']} at depth {depth} (tok/s)",
        f"{ours['tg_tok_s']:.2f} ({_range(ours['tg_samples'])})",
        f"{lb['tg_depth_tok_s']:.2f} ({_range(lb['tg_depth_samples'])})",
        _x(ratios["tg_vs_llama_bench"]),
    )
    table.add_row(
        f"tg{lb['tg_tokens']} at depth 0 (tok/s)",
        "",
        f"{lb['tg_tok_s']:.2f} ({_range(lb['tg_samples'])})",
        _x(ratios["tg_vs_llama_bench_depth0"]),
    )
    return table
