"""``tlite-edge export MODEL.gguf --to APP``: put a GGUF into Ollama, LM Studio, Jan or GPT4All.

Writes each app's layout in its per-OS folder (environment variables and the app's settings file
override it; ``--dir`` replaces it), verifies the sha256 of every copy, never replaces a file
without ``--force``, and removes what it created when a step fails. ``--dry-run`` only shows the plan.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tlite_edge.errors import TliteError
from tlite_edge.gguf.reader import read_header
from tlite_edge.ship.apps import APPS, ExportOptions, ExportPlan, plan_export
from tlite_edge.ship.checks import find_problems
from tlite_edge.ship.paths import FOLDERS, writable_root
from tlite_edge.ship.place import LINKS, Placer


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


def check_steps(plan: ExportPlan, src: Path, link: str) -> None:
    """What can be known before writing: every target folder writable, hard links on one filesystem."""
    for step in plan.steps:
        linked = step.render is None and link == "hardlink"
        writable_root(step.path.parent, link_from=src if linked else None)


def execute(plan: ExportPlan, src: Path, force: bool, console: Console) -> None:
    """Run the steps; on any failure remove what was created and re-raise."""
    for step in plan.steps:
        if not force and (step.path.exists() or step.path.is_symlink()):
            raise TliteError(step.path, "already exists; pass --force to replace it")
    placer = Placer(force=force)
    digest = ""
    try:
        for step in plan.steps:
            if step.render is None:
                digest = placer.place(src, step.path, step.action)
                console.print(f"[green]{step.action}[/] {escape(str(step.path))} sha256 {digest} verified")
            else:
                placer.write_text(step.path, step.render(digest))
                console.print(f"[green]wrote[/] {escape(str(step.path))}")
    except BaseException:
        placer.undo()
        raise


def run_command(command: list[str], console: Console) -> None:
    exe = shutil.which(command[0])
    if exe is None:
        console.print(f"{command[0]} is not on PATH; run:\n  {shlex.join(command)}", highlight=False)
        return
    console.print(f"running {shlex.join(command)}", highlight=False)
    proc = subprocess.run([exe, *command[1:]], check=False)
    if proc.returncode != 0:
        raise TliteError(command[0], f"`{shlex.join(command)}` failed with exit code {proc.returncode}")


def run(args: argparse.Namespace) -> int:
    console = Console()
    opts = ExportOptions(args.link, args.name, args.publisher, args.system, args.dir)
    plan = plan_export(args.to, args.file, opts)
    for finding in find_problems(read_header(args.file)):
        console.print(f"[yellow]warning[/]: {escape(finding.message)} (see tlite-edge inspect --fix)")
    show_plan(plan, console, args.dry_run)
    check_steps(plan, args.file, args.link)
    if args.dry_run:
        if plan.command:
            console.print(f"then: {shlex.join(plan.command)}", highlight=False)
        return 0
    execute(plan, args.file, args.force, console)
    if plan.command:
        run_command(plan.command, console)
    return 0
