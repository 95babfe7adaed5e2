"""An OpenAI-compatible HTTP server over the runtime library (``tlite-edge serve``).

``pool`` runs N engines with a bounded queue in front, ``protocol`` checks requests and shapes
answers, ``app`` is the ASGI app (auth, limits, SSE, JSON errors, access log).
"""
