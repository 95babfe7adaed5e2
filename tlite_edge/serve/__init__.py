"""An OpenAI-compatible HTTP server over the runtime library (``tlite-edge serve``).

``server`` starts it (``serve(ServerConfig(model=...))``: options checked, engines loaded, uvicorn run),
``pool`` runs N engines with a bounded queue in front, ``protocol`` checks requests and shapes
answers, ``app`` is the ASGI app (auth, limits, SSE, JSON errors, access log), ``guard`` checks Host
and Origin, ``wire`` bounds connections and slow clients, ``logs`` turns every log into JSON lines.

Not llama-cpp-python's ``server`` extra: it tokenizes chat prompts with special tokens parsed (a typed
``<|eot_id|>`` ends the turn), runs every request behind one lock with an unbounded wait (no slots,
no 503), compares API keys with ``==`` and has no body or message limits.
"""

from __future__ import annotations

from tlite_edge.serve.server import ServerConfig, serve

__all__ = ["ServerConfig", "serve"]
