"""``tlite-edge quantize IN.gguf -q LEVELS``: every level from one BF16 GGUF, with llama.cpp's quantizer."""

from __future__ import annotations

import argparse
from pathlib import Path

from gguf import Keys
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from tlite_edge.gguf.keys import GGML_TOKENIZER_PREFIX
from tlite_edge.gguf.reader import read_header
from tlite_edge.memory import ram_needed
from tlite_edge.quant.profiles import Profile, load_profiles, select
from tlite_edge.quant.quantize import QuantResult, estimate, quantize

DRY_RUN_CTX = 8192


def add_quant_arguments(p: argparse.ArgumentParser, *, dry_run: bool = True) -> None:
    """Options shared by ``quantize`` and ``convert -q``."""
    p.add_argument("-q", "--levels", help="comma-separated levels, e.g. q4_k_m,q8_0 (default Q4_K_M)")
    p.add_argument("--imatrix", type=Path, metavar="FILE", help="importance matrix (tlite-edge imatrix)")
    p.add_argument("--threads", type=int, help="quantizer threads (default: all cores)")
    p.add_argument(
        "--profiles",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="extra profile file or folder (repeatable)",
    )
    if dry_run:
        p.add_argument("--dry-run", action="store_true", help="print sizes and RAM per level, write nothing")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize a GGUF to one or more levels", description=__doc__)
    p.add_argument("file", type=Path, help="input GGUF (BF16/F16/F32)")
    p.add_argument("--out-dir", type=Path, help="output folder (default: next to the input)")
    add_quant_arguments(p)
    p.set_defaults(func=run)


def quantize_levels(src: Path, args: argparse.Namespace, console: Console) -> list[QuantResult]:
    """Run (or dry-run) every chosen level of ``src``; used by quantize and convert."""
    profiles = select(load_profiles(args.profiles), args.levels)
    meta = {k: v for k, v in read_header(src).kv.items() if not k.startswith(GGML_TOKENIZER_PREFIX)}
    base = str(meta.get(Keys.General.NAME) or src.stem.rsplit("-", 1)[0])
    imatrix = None
    if args.imatrix is not None:
        from tlite_edge.quant.imatrix import load_imatrix

        imatrix = load_imatrix(args.imatrix, src)
    if getattr(args, "dry_run", False):
        show_plan(console, [(p, estimate(src, p, imatrix)) for p in profiles], meta, imatrix is not None)
        return []
    out_dir = args.out_dir or src.parent
    results = []
    for profile in profiles:
        results.append(
            _quantize_one(src, profile, out_dir / profile.output_name(base), imatrix, args, console)
        )
    return results


def tensor_columns() -> tuple[ProgressColumn, ...]:
    """Progress columns for a per-tensor quantization bar (quantize and release)."""
    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tensor]}"),
        TimeElapsedColumn(),
    )


def _quantize_one(
    src: Path, profile: Profile, dst: Path, imatrix: object, args: argparse.Namespace, console: Console
) -> QuantResult:
    columns = tensor_columns()
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(profile.name, total=None, tensor="")

        def advance(i: int, n: int, name: str) -> None:
            progress.update(task, completed=i, total=n, tensor=name)

        result = quantize(src, profile, dst, imatrix=imatrix, threads=args.threads, advance=advance)  # type: ignore[arg-type]
    console.print(
        f"[green]wrote[/] {dst} ({result.size_mib:,.1f} MiB, {result.bpw:.2f} bpw) sha256 {result.sha256}"
    )
    return result


def show_plan(
    console: Console, plans: list[tuple[Profile, QuantResult]], meta: dict, has_imatrix: bool
) -> None:
    table = Table(
        "level",
        "size GiB",
        "bits/weight",
        f"RAM @ {DRY_RUN_CTX} ctx GiB",
        "target",
        "imatrix",
        "description",
        title="dry run: nothing written",
    )
    for profile, est in plans:
        ram = ram_needed(int(est.size_mib * 2**20), meta, DRY_RUN_CTX) / 2**30
        need = "required" if profile.requires_imatrix else ("used" if has_imatrix else "optional")
        table.add_row(
            profile.name,
            f"{est.size_mib / 1024:.2f}",
            f"{est.bpw:.2f}",
            f"{ram:.2f}",
            profile.target,
            need,
            profile.description,
        )
    console.print(table)


def run(args: argparse.Namespace) -> int:
    quantize_levels(args.file, args, Console())
    return 0
