"""``tlite-edge release SOURCE --out DIR``: a complete Hub release of T-lite in GGUF.

Converts SOURCE (Hub id, local folder, or a BF16/F16/F32 GGUF), quantizes every chosen level (with an
importance matrix given or calibrated on Russian text), writes a model card with YAML front-matter,
sizes, optional quality numbers from ``tlite-edge eval``, how to run it, and SHA256SUMS; ``--push``
uploads the folder with huggingface_hub.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tlite_edge.commands._options import level_progress
from tlite_edge.ship.card import UPSTREAM
from tlite_edge.ship.release import ReleaseOptions, build_release, check_repo, push
from tlite_edge.source import DEFAULT_SOURCE, REPO_ID


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("release", help="build (and push) a Hub release folder", description=__doc__)
    p.add_argument("source", nargs="?", default=DEFAULT_SOURCE, help="Hub id, HF folder or a BF16 GGUF")
    p.add_argument("--out", type=Path, required=True, help="release folder (new or empty)")
    p.add_argument("-q", "--levels", help="comma-separated levels (default: all built-in levels)")
    imx = p.add_mutually_exclusive_group()
    imx.add_argument("--imatrix", type=Path, metavar="FILE", help="importance matrix to use and ship")
    imx.add_argument("--calibrate", action="store_true", help="compute the importance matrix first")
    p.add_argument("--chunks", type=int, metavar="N", help="--calibrate: at most N chunks")
    p.add_argument("--ctx", type=int, default=512, metavar="N", help="--calibrate: tokens per chunk")
    p.add_argument("--threads", type=int, metavar="N", help="threads for quantizing and calibrating")
    p.add_argument("--eval-json", type=Path, metavar="FILE", help="quality table from tlite-edge eval")
    p.add_argument("--base-model", help=f"card base_model (default: SOURCE when a Hub id, else {UPSTREAM})")
    p.add_argument("--quantized-by", default="tlite-edge", help="card quantized_by")
    p.add_argument("--keep-bf16", action="store_true", help="ship the BF16 GGUF too")
    p.add_argument("--name", help="general.name when converting (default: the repo or folder name)")
    p.add_argument("--revision", help="Hub branch, tag or commit of SOURCE")
    p.add_argument("--push", metavar="REPO", help="upload the folder to this Hub model repo")
    p.set_defaults(func=run)


def is_hub_id(source: str) -> bool:
    return not Path(source).exists() and REPO_ID.fullmatch(source) is not None


def run(args: argparse.Namespace) -> int:
    console = Console()
    if args.push:
        check_repo(args.push)
    opts = ReleaseOptions(
        levels=args.levels,
        imatrix=args.imatrix,
        calibrate=args.calibrate,
        chunks=args.chunks,
        ctx=args.ctx,
        threads=args.threads,
        eval_json=args.eval_json,
        base_model=args.base_model or (args.source if is_hub_id(args.source) else UPSTREAM),
        quantized_by=args.quantized_by,
        repo=args.push,
        keep_bf16=args.keep_bf16,
        name=args.name,
        revision=args.revision,
    )
    with level_progress(console) as advance:
        rows = build_release(
            args.source, args.out, opts, log=lambda line: console.print(escape(line)), advance=advance
        )
    for warning in opts.warnings:
        console.print(f"[yellow]warning[/]: {escape(warning)}")
    table = Table("file", "level", "size MiB", "bits/weight", title=f"release in {args.out}")
    for row in rows:
        table.add_row(row.name, row.level or "", f"{row.size / 2**20:,.1f}", f"{row.bpw or 0:.2f}")
    console.print(table)
    console.print(f"[green]wrote[/] {escape(str(args.out))}: README.md, SHA256SUMS and {len(rows)} models")
    if args.push:
        push(args.out, args.push, log=lambda line: console.print(escape(line)))
    return 0
