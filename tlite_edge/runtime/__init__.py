"""Running a GGUF in llama.cpp: hardware probe, engine (load, prompt, stream), chat sessions.

The entry points for a chat UI or a server::

    engine = Engine.load("T-lite-instruct-0.1-Q4_K_M.gguf")   # engine.warnings, engine.settings
    chat = engine.chat(system="Ты — полезный ассистент.")
    reply = chat.send("Привет!")
    for piece in reply:            # whole UTF-8 characters; reply.stop() ends it early
        print(piece, end="")
    reply.stats                    # tokens, evaluated prompt tokens, tok/s, time to first token, notices
"""

from __future__ import annotations

from tlite_edge.runtime.chat import Chat, Message, Reply, ReplyStats
from tlite_edge.runtime.engine import Engine, EngineSettings, Sampling

__all__ = ["Chat", "Engine", "EngineSettings", "Message", "Reply", "ReplyStats", "Sampling"]
