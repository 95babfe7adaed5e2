"""``tlite-edge export MODEL.gguf --to APP``: put a GGUF into Ollama, LM Studio, Jan or GPT4All.

Writes each app's layout in its per-OS folder (environment variables and the app's settings file
override it; ``--dir`` replaces it), verifies the sha256 of every copy, never replaces a file
without ``--force``, and removes what it created when a step fails. ``--dry-run`` only shows the plan.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tlite_edge.fsutil import sidecar_notes
from tlite_edge.gguf.reader import read_header
from tlite_edge.ship.apps import APPS, ExportOptions, ExportPlan, plan_export
from tlite_edge.ship.checks import find_problems
from tlite_edge.ship.export import check_steps, execute, run_command
from tlite_edge.ship.paths import FOLDERS
from tlite_edge.ship.place import LINKS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="install a GGUF into a desktop app", description=__doc__)
    p.add_argument("file", type=Path, help="GGUF model")
    p.add_argument("--to", required=True, choices=APPS, help="the app")
    p.add_argument("--name", help="model name in the app (default from the file name)")
    p.add_argument("--link", choices=LINKS, default="copy", help="copy (default), hardlink or symlink")
    p.add_argument("--publisher", default="tlite-edge", help="LM Studio/Jan publisher folder")
    p.add_argument("--system", metavar="S", help="Ollama: default system prompt (SYSTEM)")
    p.add_argument("--dir", type=Path, help="the app's folder (Ollama: where the Modelfile goes)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    p.add_argument("--force", action="store_true", help="replace files that already exist")
    p.set_defaults(func=run)


def show_plan(plan: ExportPlan, console: Console, dry_run: bool) -> None:
    title = f"export to {plan.app}" + (" — dry run, nothing written" if dry_run else "")
    table = Table("action", "path", "", title=title)
    for step in plan.steps:
        exists = step.path.exists() or step.path.is_symlink()
        table.add_row(step.action, escape(str(step.path)), "[yellow]exists[/]" if exists else "new")
    console.print(table)
    spec = FOLDERS[plan.app]
    where = f"{spec.title} {spec.what}: {plan.location.folder} ({plan.location.origin})"
    console.print(escape(where), highlight=False)
    for note in plan.notes:
        console.print(f"note: {escape(note)}")


def run(args: argparse.Namespace) -> int:
    console = Console()
    opts = ExportOptions(args.link, args.name, args.publisher, args.system, args.dir)
    plan = plan_export(args.to, args.file, opts)
    for finding in find_problems(read_header(args.file), sidecar_notes(args.file)):
        console.print(f"[yellow]warning[/]: {escape(finding.message)} (see tlite-edge inspect --fix)")
    show_plan(plan, console, args.dry_run)
    check_steps(plan, args.file, args.link)
    if args.dry_run:
        if plan.command:
            console.print(f"then: {shlex.join(plan.command)}", highlight=False)
        return 0
    execute(plan, args.file, args.force, log=lambda line: console.print(escape(line), highlight=False))
    if plan.command:
        run_command(plan.command, log=lambda line: console.print(line, highlight=False))
    return 0
