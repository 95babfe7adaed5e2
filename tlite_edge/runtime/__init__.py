"""Running a GGUF in llama.cpp: hardware probe, engine (load, prompt, stream), chat sessions.

The entry points for a chat UI or a server::

    engine = Engine.load("T-lite-instruct-0.1-Q4_K_M.gguf")   # engine.warnings, engine.settings
    chat = Chat(engine, system="Ты — полезный ассистент.")
    reply = chat.send("Привет!")
    for piece in reply:            # whole UTF-8 characters; reply.stop() ends it early
        print(piece, end="")
    reply.stats                    # tokens, evaluated prompt tokens, tok/s, time to first token, notices

Layers, each importing only those before it: ``types`` (sampling, messages, stats, reply budget),
``hardware``, ``fit`` (memory sizing), ``engine``, ``reply``, ``chat``; ``bare`` and ``bench`` for ``bench``.
The names below load llama.cpp on first use, so ``types``, ``fit`` and ``hardware`` stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tlite_edge.runtime.chat import Chat
    from tlite_edge.runtime.engine import Engine, EngineSettings
    from tlite_edge.runtime.reply import Reply
    from tlite_edge.runtime.types import Message, ReplyStats, Sampling, reply_budget

# public name -> the module that defines it
_HOMES = {
    "Chat": "chat",
    "Reply": "reply",
    "Engine": "engine",
    "EngineSettings": "engine",
    "Message": "types",
    "ReplyStats": "types",
    "Sampling": "types",
    "reply_budget": "types",
}

__all__ = [
    "Chat",
    "Engine",
    "EngineSettings",
    "Message",
    "Reply",
    "ReplyStats",
    "Sampling",
    "reply_budget",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value
