"""``tlite-edge inspect FILE.gguf``: metadata, tensor types, size, bits per weight, template, specials,
warnings for known breakage, and ``--fix OUT`` for a copy with corrected metadata."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gguf import Keys
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tlite_edge.errors import TliteError
from tlite_edge.gguf.reader import GGUFSummary
from tlite_edge.ship.checks import Finding, inspect_gguf


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show what a GGUF file holds", description=__doc__)
    p.add_argument("file", type=Path, help="GGUF file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--fix", type=Path, metavar="OUT", help="write a copy with corrected metadata to OUT")
    p.add_argument(
        "--tokenizer",
        metavar="SOURCE",
        help="with --fix: the source tokenizer (tokenizer.json, its folder or a Hub id) that decides the "
        "pre-tokenizer label; the copy must then pass the tokenizer parity check",
    )
    p.add_argument("--revision", help="with --tokenizer HUB_ID: branch, tag or commit")
    p.set_defaults(func=run)


def render(summary: GGUFSummary, console: Console) -> None:
    meta = summary.metadata
    table = Table(title=str(summary.path.name), show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in meta.items():
        if key != Keys.Tokenizer.CHAT_TEMPLATE:
            table.add_row(key, str(value))
    console.print(table)
    types = Table("tensor type", "count", title=f"{summary.n_tensors} tensors")
    for name, count in summary.tensor_types.items():
        types.add_row(name, str(count))
    console.print(types)
    console.print(
        f"size {summary.size / 2**20:,.1f} MiB · {summary.n_params:,} weights · "
        f"{summary.bits_per_weight:.2f} bits per weight"
    )
    specials = ", ".join(f"{k} = {v['id']} {v['text']}" for k, v in summary.special_tokens.items())
    console.print(f"special tokens: {specials or 'none'}")
    template = meta.get(Keys.Tokenizer.CHAT_TEMPLATE)
    console.print("chat template:" if template else "chat template: [red]missing[/]")
    if template:
        console.print(template, markup=False, highlight=False)


def render_findings(findings: list[Finding], console: Console) -> None:
    if not findings:
        console.print("[green]no known problems[/]")
        return
    table = Table("problem", "details", "--fix", title="warnings", title_style="bold yellow")
    for f in findings:
        table.add_row(f.code, escape(f.message), "fixes it" if f.fixable else "[red]cannot[/]")
    console.print(table)


def fix(args: argparse.Namespace, console: Console) -> None:
    from tlite_edge.ship.fix import fix_gguf

    result = fix_gguf(args.file, args.fix, args.tokenizer, args.revision)
    for key, (_, _, value) in result.changes.items():
        shown = value if key != Keys.Tokenizer.CHAT_TEMPLATE else "the Llama-3 template"
        console.print(f"[yellow]set[/] {key} = {escape(str(shown))}")
    console.print(escape(result.label))
    for line in result.verified:
        console.print(f"[green]verified[/]: {escape(line)}")
    console.print(
        f"[green]wrote[/] {escape(str(result.path))} (tensor data unchanged, sha256 {result.data_sha256})"
    )
    for f in result.left:
        console.print(f"[red]still[/]: {escape(f.message)}")


def run(args: argparse.Namespace) -> int:
    if args.tokenizer is not None and args.fix is None:
        raise TliteError(args.file, "--tokenizer goes with --fix OUT")
    report = inspect_gguf(args.file)
    console = Console(stderr=args.json)
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=1))
    else:
        render(report.summary, console)
        for line in report.verified:
            console.print(f"[green]verified[/] when written: {escape(line)}")
        render_findings(report.findings, console)
    if args.fix is not None:
        fix(args, console)
    return 0
