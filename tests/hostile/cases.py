"""The hostile-input table: (builder, command, culprit, expected message) per crafted input.

A builder damages one thing in a fresh work area (``Area``); the command runs through the real CLI;
the error must be one line naming ``culprit`` and matching ``message``. Placeholders in commands
and culprits: {hf} stand-in checkpoint copy, {out} empty output folder, {bad} crafted file,
{model} a good BF16 GGUF (read-only), {imatrix} crafted imatrix, {template} crafted Jinja file.
"""

from __future__ import annotations

from cases_checkpoint import CHECKPOINT_CASES
from cases_gguf import GGUF_CASES
from hostile_kit import Area, Builder

__all__ = ["CASES", "Area"]


def _nothing(a: Area) -> None:
    """The model is good; the command line is what is hostile."""


BAD_NAME = r"bad [\w ]*(name|publisher): .*no path separators"
# export: hostile names (path separators, '..', absolute paths, hidden) and a missing app folder. A
# read-only app folder cannot be staged when the tests run as root (root writes anyway): the
# read-only case is covered by tests/test_export.py where it can run.
EXPORT_CASES: dict[str, tuple[Builder, tuple[str, ...], str, str]] = {
    f"export-{app}-{label}": (
        _nothing,
        ("export", "{model}", "--to", app, "--dir", "{out}", "--name", name),
        name,
        BAD_NAME,
    )
    for app, label, name in (
        ("lmstudio", "slash", "evil/name"),
        ("lmstudio", "dotdot", ".."),
        ("jan", "dotdot-path", "../../etc"),
        ("jan", "absolute", "/etc/cron.d/x"),
        ("gpt4all", "backslash", "..\\evil"),
        ("gpt4all", "hidden", ".hidden"),
        ("ollama", "slash", "a/../../b"),
    )
}
EXPORT_CASES["export-lmstudio-publisher"] = (
    _nothing,
    ("export", "{model}", "--to", "lmstudio", "--dir", "{out}", "--publisher", "../up"),
    "../up",
    BAD_NAME,
)
EXPORT_CASES["export-jan-dir-is-a-file"] = (
    _nothing,
    ("export", "{model}", "--to", "jan", "--dir", "{model}"),
    "{model}",
    r"--dir is not a folder",
)

CASES: dict[str, tuple[Builder, tuple[str, ...], str, str]] = {
    **CHECKPOINT_CASES,
    **GGUF_CASES,
    **EXPORT_CASES,
}
