"""``tlite-edge convert SOURCE``: Hub id or local folder -> GGUF (BF16 by default, lossless)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from tlite_edge.commands._options import add_quant_arguments, level_progress, run_levels
from tlite_edge.fsutil import sidecar_path
from tlite_edge.gguf_build.build import convert
from tlite_edge.gguf_build.tensor_map import OUTTYPES
from tlite_edge.known_models import KnownModel, find_model
from tlite_edge.source import DEFAULT_SOURCE, resolve_source


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a Hugging Face checkpoint to GGUF", description=__doc__)
    p.add_argument(
        "source",
        nargs="?",
        default=DEFAULT_SOURCE,
        help=f"local folder or Hub repo id (default {DEFAULT_SOURCE})",
    )
    p.add_argument("--revision", help="Hub branch, tag or commit")
    p.add_argument("--outtype", choices=list(OUTTYPES), default="bf16", help="tensor type (default bf16)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--outfile", type=Path, help="output file")
    where.add_argument("--out-dir", type=Path, help="output folder; file named <Name>-<TYPE>.gguf")
    p.add_argument("--chat-template", type=Path, metavar="FILE", help="Jinja chat template to write instead")
    p.add_argument("--name", help="general.name (default: the repo or folder name)")
    p.add_argument(
        "--keep-bf16",
        action="store_true",
        help="with -q: also write the BF16 (--outtype) file and quantize from it (implies --via-bf16)",
    )
    p.add_argument(
        "--via-bf16",
        action="store_true",
        help="with -q: write the BF16 file first and quantize it with llama.cpp, then remove it "
        "(default: every level in one pass from the checkpoint, byte-identical, no intermediate file)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the tokenizer and template parity checks on the written file (it is then unverified)",
    )
    add_quant_arguments(p, dry_run=False)
    p.set_defaults(func=run)


def one_pass(args: argparse.Namespace) -> bool:
    """-q without a request for the intermediate file: quantize straight from the checkpoint."""
    wants_file = args.via_bf16 or args.keep_bf16 or args.outfile or args.outtype == "q8_0"
    return bool(args.levels) and not wants_file


def run_one_pass(
    args: argparse.Namespace, folder: Path, name: str, console: Console, known: KnownModel | None
) -> int:
    from tlite_edge.gguf_build.onepass import convert_quantized

    with level_progress(console) as advance:
        done = convert_quantized(
            folder,
            args.levels,
            args.out_dir or Path("."),
            name=args.name or name,
            outtype=args.outtype,
            chat_template=args.chat_template,
            imatrix=args.imatrix,
            threads=args.threads,
            extra_profiles=args.profiles,
            verify=not args.no_verify,
            advance=advance,
            known=known,
        )
    for warning in done.warnings:
        print(f"tlite-edge convert: warning: {warning}", file=sys.stderr)
    for line in done.via_bf16:
        console.print(f"[yellow]via {args.outtype}[/]: {line}", soft_wrap=True)
    for result, verified in zip(done.results, done.verified, strict=True):
        console.print(
            f"[green]wrote[/] {result.path} ({result.size_mib:,.1f} MiB, {result.bpw:.2f} bpw) "
            f"sha256 {result.sha256}"
        )
        for line in verified:
            console.print(f"[green]verified[/]: {line}")
    if args.no_verify:
        console.print("[yellow]unverified[/]: tokenizer and template parity not checked (--no-verify)")
    return 0


def run(args: argparse.Namespace) -> int:
    console = Console()
    folder, name = resolve_source(args.source, args.revision)
    known = find_model(args.source)
    if known is not None:
        console.print(f"known model {known.name}: applying its data file (end of turn, sampling, licence)")
    if one_pass(args):
        return run_one_pass(args, folder, name, console, known)
    result = convert(
        folder,
        name=args.name or name,
        outtype=args.outtype,
        outfile=args.outfile,
        out_dir=args.out_dir,
        chat_template=args.chat_template,
        verify=not args.no_verify,
        known=known,
    )
    for fix in result.fixes:
        console.print(f"[yellow]fixed[/]: {fix}")
    for warning in result.warnings:
        print(f"tlite-edge convert: warning: {warning}", file=sys.stderr)
    console.print(
        f"[green]wrote[/] {result.path} ({result.size / 2**20:,.1f} MiB, {result.n_tensors} tensors)"
    )
    console.print(f"sha256 {result.sha256}")
    for line in result.verified:
        console.print(f"[green]verified[/]: {line}")
    if not result.verified:
        console.print("[yellow]unverified[/]: tokenizer and template parity not checked (--no-verify)")
    if args.levels:
        run_levels(result.path, args, console, result.path.parent)
        if not args.keep_bf16:
            result.path.unlink()
            sidecar_path(result.path).unlink(missing_ok=True)
            console.print(f"removed the intermediate {result.path.name} (--keep-bf16 keeps it)")
    return 0
