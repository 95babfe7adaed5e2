"""Shared by the benchmark scripts: machine facts and replacing one section of BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import sys
from pathlib import Path


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.1f} GiB RAM, Python {platform.python_version()}"


def stamp() -> str:
    return f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}."


def command_line() -> str:
    """The command that ran, to copy: paths relative to the working folder, llama-bench as built."""
    parts = []
    for arg in sys.argv:
        path = Path(arg)
        if path.is_absolute() and path.name == "llama-bench":
            parts.append('"$(python benchmarks/build_llama_bench.py)"')
            continue
        if path.is_absolute() and path.is_relative_to(Path.cwd()):
            arg = str(path.relative_to(Path.cwd()))
        parts.append(shlex.quote(arg))
    return "python " + " ".join(parts)


def replace_section(md_path: Path, title: str, body: list[str]) -> None:
    """Replace (or append) the ``## title`` section of a markdown file, with the command that made it."""
    md = md_path.read_text(encoding="utf-8") if md_path.exists() else "# Benchmarks\n"
    text = "\n".join([title, "", *body, "", "```sh", command_line(), "```", ""])
    pattern = re.compile(r"^" + re.escape(title) + r"$.*?(?=\n## |\Z)", re.S | re.M)  # a whole heading line
    md = pattern.sub(lambda m: text, md) if pattern.search(md) else md.rstrip() + "\n\n" + text
    md_path.write_text(md, encoding="utf-8")
