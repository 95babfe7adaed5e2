"""tlite-edge: T-Bank's T-lite converted exactly to GGUF and run on llama.cpp.

The verbs as functions (imported on first use, so ``import tlite_edge`` stays light)::

    from tlite_edge import Chat, convert, load, quantize

See docs/python-api.md.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    "convert": ("tlite_edge.api", "convert"),
    "load": ("tlite_edge.api", "load"),
    "inspect": ("tlite_edge.api", "inspect"),
    "quantize": ("tlite_edge.quant.levels", "quantize_levels"),
    "calibrate": ("tlite_edge.quant.levels", "calibrate"),
    "Chat": ("tlite_edge.runtime", "Chat"),
    "Engine": ("tlite_edge.runtime", "Engine"),
    "evaluate": ("tlite_edge.evaluate", "evaluate"),
    "export": ("tlite_edge.ship.export", "export"),
    "fix": ("tlite_edge.ship.fix", "fix_gguf"),
    "release": ("tlite_edge.ship.release", "build_release"),
    "TliteError": ("tlite_edge.errors", "TliteError"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'tlite_edge' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
