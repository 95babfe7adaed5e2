"""Export a GGUF into a desktop app: check the plan's folders, place its files (undone on failure) and
run the app's own import command."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from tlite_edge.errors import TliteError
from tlite_edge.ship.apps import ExportOptions, ExportPlan, plan_export
from tlite_edge.ship.paths import writable_root
from tlite_edge.ship.place import Placer


def check_steps(plan: ExportPlan, src: Path, link: str) -> None:
    """What can be known before writing: every target folder writable, hard links on one filesystem."""
    for step in plan.steps:
        linked = step.render is None and link == "hardlink"
        writable_root(step.path.parent, link_from=src if linked else None)


def execute(plan: ExportPlan, src: Path, force: bool, log: Callable[[str], None] = print) -> None:
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
                log(f"{step.action} {step.path} sha256 {digest} verified")
            else:
                placer.write_text(step.path, step.render(digest))
                log(f"wrote {step.path}")
    except BaseException:
        placer.undo()
        raise


def run_command(command: list[str], log: Callable[[str], None] = print) -> None:
    """Run the app's import command (e.g. ``ollama create``) when it is installed, else say how."""
    exe = shutil.which(command[0])
    if exe is None:
        log(f"{command[0]} is not on PATH; run:\n  {shlex.join(command)}")
        return
    log(f"running {shlex.join(command)}")
    proc = subprocess.run([exe, *command[1:]], check=False)
    if proc.returncode != 0:
        raise TliteError(command[0], f"`{shlex.join(command)}` failed with exit code {proc.returncode}")


def export(
    gguf: Path,
    to: str,
    opts: ExportOptions | None = None,
    *,
    force: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> ExportPlan:
    """Put ``gguf`` into the app ``to`` (ollama, lmstudio, jan, gpt4all): plan, check, then place every
    file with sha256 verification (undone on failure) and run the app's import command if it has one."""
    opts = opts or ExportOptions()
    plan = plan_export(to, gguf, opts)
    check_steps(plan, gguf, opts.link)
    if not dry_run:
        execute(plan, gguf, force, log)
        if plan.command:
            run_command(plan.command, log)
    return plan
