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

CASES: dict[str, tuple[Builder, tuple[str, ...], str, str]] = {
    **CHECKPOINT_CASES,
    **GGUF_CASES,
    # export: names with '/', '..', absolute paths; read-only target folders -- cases go here once
    # the export verb lands (same shape: builder, command, culprit, message).
}
