"""``tlite-edge quantize IN.gguf -q LEVELS``: every level from one BF16 GGUF, with llama.cpp's quantizer."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tlite_edge.commands._options import add_quant_arguments, run_levels
from tlite_edge.gguf.keys import GGML_TOKENIZER_PREFIX
from tlite_edge.gguf.reader import read_header
from tlite_edge.quant.levels import plan_levels
from tlite_edge.quant.profiles import Profile
from tlite_edge.quant.quantize import QuantResult
from tlite_edge.runtime.fit import ram_needed

DRY_RUN_CTX = 8192


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize a GGUF to one or more levels", description=__doc__)
    p.add_argument("file", type=Path, help="input GGUF (BF16/F16/F32)")
    p.add_argument("--out-dir", type=Path, help="output folder (default: next to the input)")
    add_quant_arguments(p)
    p.set_defaults(func=run)


def dry_run(src: Path, args: argparse.Namespace, console: Console) -> None:
    """Sizes, bits per weight and RAM of each chosen level, from llama.cpp's dry run."""
    meta = {k: v for k, v in read_header(src).kv.items() if not k.startswith(GGML_TOKENIZER_PREFIX)}
    plans = plan_levels(src, args.levels, imatrix=args.imatrix, extra_profiles=args.profiles)
    show_plan(console, plans, meta, args.imatrix is not None)


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
    console = Console()
    if args.dry_run:
        dry_run(args.file, args, console)
    else:
        run_levels(args.file, args, console, args.out_dir)
    return 0
