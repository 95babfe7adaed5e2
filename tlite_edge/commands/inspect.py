"""``tlite-edge inspect FILE.gguf``: metadata, tensor types, size, bits per weight, template, specials."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tlite_edge.gguf_info import GGUFSummary, summarize


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show what a GGUF file holds", description=__doc__)
    p.add_argument("file", type=Path, help="GGUF file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def render(summary: GGUFSummary, console: Console) -> None:
    meta = summary.metadata
    table = Table(title=str(summary.path.name), show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in meta.items():
        if key != "tokenizer.chat_template":
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
    template = meta.get("tokenizer.chat_template")
    console.print("chat template:" if template else "chat template: [red]missing[/]")
    if template:
        console.print(template, markup=False, highlight=False)


def run(args: argparse.Namespace) -> int:
    summary = summarize(args.file)
    if args.json:
        print(json.dumps(summary.as_dict(), ensure_ascii=False, indent=1))
    else:
        render(summary, Console())
    return 0
