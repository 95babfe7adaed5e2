"""``tlite-edge eval REF.gguf CAND.gguf... --text FILE``: perplexity, KL divergence and top-1 agreement
of every candidate against the reference, on held-out text.

The reference runs once; its distributions are kept compactly (top-k log-probabilities and the mass
of the rest) and every candidate is compared with them. Text is tokenized as plain text.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tlite_edge.evaluate.core import EvalReport, evaluate
from tlite_edge.evaluate.plot import Point, plot_kld_vs_size, require_matplotlib, short_labels
from tlite_edge.evaluate.table import results_table
from tlite_edge.evaluate.topk import DEFAULT_TOP_K
from tlite_edge.fsutil import atomic_output


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="quality of quantized GGUFs vs a reference", description=__doc__)
    p.add_argument("reference", type=Path, metavar="REF.gguf", help="reference GGUF (e.g. BF16 or F32)")
    p.add_argument("candidates", type=Path, nargs="+", metavar="CAND.gguf", help="GGUFs to score")
    p.add_argument("--text", type=Path, required=True, metavar="FILE", help="held-out UTF-8 text")
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512)")
    p.add_argument("--chunks", type=int, help="at most this many chunks (default: all the text holds)")
    p.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help=f"reference log-probs kept per token (default {DEFAULT_TOP_K})",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON ('-' for stdout)")
    p.add_argument(
        "--plot", type=Path, metavar="OUT.png", help="chart of KLD vs file size (needs matplotlib)"
    )
    p.add_argument("--cache-dir", type=Path, help="keep the reference's distributions here for reuse")
    p.add_argument("--threads", type=int, help="threads (default: physical cores)")
    p.add_argument("--cpu", action="store_true", help="no GPU offload even when llama.cpp has a GPU backend")
    p.set_defaults(func=run)


def write_plot(report: EvalReport, out: Path) -> Path:
    labels = short_labels([c.model.name for c in report.candidates])
    points = [
        Point(label, c.model.file_bytes, c.kld_mean, c.kld_p99)
        for label, c in zip(labels, report.candidates, strict=True)
    ]
    title = (
        f"KLD vs {report.reference['name']}, {report.text['scored_tokens']} tokens of {report.text['path']}"
    )
    return plot_kld_vs_size({"": points}, out, title)


def run(args: argparse.Namespace) -> int:
    console = Console()
    err = Console(stderr=True)
    if args.plot is not None:
        require_matplotlib(args.plot)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, disable=not err.is_terminal) as progress:
        tasks: dict[str, int] = {}

        def on_progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=total)
            progress.update(tasks[label], completed=done, total=total)

        report = evaluate(
            args.reference,
            list(args.candidates),
            args.text,
            ctx=args.ctx,
            chunks=args.chunks,
            top_k=args.top_k,
            cache_dir=args.cache_dir,
            threads=args.threads,
            gpu=False if args.cpu else None,
            progress=on_progress,
        )
    if args.json is not None and str(args.json) == "-":
        print(report.to_json(), end="")
        return 0
    console.print(results_table(report))
    tail = report.reference["tail_mass_mean"]
    console.print(
        f"KLD over the reference's top-{report.settings['top_k']} tokens + the rest "
        f"(mean reference mass outside the top-{report.settings['top_k']}: {tail:.2%}; a lower bound on "
        "the full-vocabulary KLD, see README)"
    )
    if args.json is not None:
        with atomic_output(args.json) as fh:
            fh.write(report.to_json().encode("utf-8"))
        console.print(f"[green]wrote[/] {args.json}")
    if args.plot is not None:
        console.print(f"[green]wrote[/] {write_plot(report, args.plot)}")
    return 0
