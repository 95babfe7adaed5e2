"""The Python API: each verb as a function over the same library the command line uses.

from tlite_edge import Chat, convert, load, quantize

bf16 = convert("t-bank-ai/T-lite-instruct-0.1", out_dir="models")     # Hub id or local folder
[q4] = quantize(bf16.path, "q4_k_m")                                    # levels next to it
chat = Chat(load(q4.path), system="Ты — полезный ассистент.")
print(chat.send("Привет!").result())
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlite_edge.source import DEFAULT_SOURCE

if TYPE_CHECKING:
    from tlite_edge.gguf_build.build import ConvertResult
    from tlite_edge.runtime import Engine
    from tlite_edge.ship.checks import Inspection


def convert(
    source: str | Path = DEFAULT_SOURCE,
    *,
    out_dir: str | Path | None = None,
    outfile: str | Path | None = None,
    outtype: str = "bf16",
    name: str | None = None,
    revision: str | None = None,
    chat_template: str | Path | None = None,
    verify: bool = True,
) -> ConvertResult:
    """A Hub id or local Hugging Face folder -> one GGUF (BF16 by default), proved against its tokenizer;
    a known model's data file (``models/``) is applied when SOURCE names one."""
    from tlite_edge.gguf_build.build import convert as build
    from tlite_edge.known_models import find_model
    from tlite_edge.source import resolve_source

    folder, default_name = resolve_source(str(source), revision)
    return build(
        folder,
        name=name or default_name,
        outtype=outtype,
        outfile=Path(outfile) if outfile is not None else None,
        out_dir=Path(out_dir) if out_dir is not None else None,
        chat_template=Path(chat_template) if chat_template is not None else None,
        verify=verify,
        known=find_model(str(source)),
    )


def load(path: str | Path, **settings: Any) -> Engine:
    """A GGUF loaded in llama.cpp with settings that suit this machine (``ctx``, ``threads``, ``gpu``,
    ``seed`` override them)."""
    from tlite_edge.runtime import Engine

    return Engine.load(path, **settings)


def inspect(path: str | Path) -> Inspection:
    """What ``tlite-edge inspect`` shows (``.as_dict()`` is its ``--json``): metadata, tensors, size,
    special tokens, known problems, and the parity checks recorded when the file was written."""
    from tlite_edge.ship.checks import inspect_gguf

    return inspect_gguf(Path(path))
