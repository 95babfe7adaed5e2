"""Everything the server process says on its log stream as JSON lines: Python logging (uvicorn's,
warnings) and llama.cpp's own log messages, which would otherwise be printed as plain text."""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from typing import Any

Write = Callable[[dict[str, Any]], None]
# ggml log level -> name (5 = continues the previous message)
GGML_LEVELS = {0: "none", 1: "info", 2: "warning", 3: "error", 4: "debug"}
SHOWN = ("warning", "error")  # llama.cpp levels that reach the log (info/debug are load-time chatter)
_callback: Any = None  # the installed ctypes callback (must outlive every llama.cpp call)


class JsonLines(logging.Handler):
    """A logging handler writing one JSON line per record."""

    def __init__(self, write: Write) -> None:
        super().__init__()
        self.write = write

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        self.write({"event": "server", "level": record.levelname.lower(), "message": message[:1000]})


class _LlamaLines:
    """Collects llama.cpp's message pieces into lines (it logs in fragments)."""

    def __init__(self, write: Write) -> None:
        self.write, self.level, self.buffer, self.lock = write, "info", "", threading.Lock()

    def __call__(self, level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        with self.lock:
            if level != 5:
                self.level = GGML_LEVELS.get(level, "info")
            self.buffer += text.decode("utf-8", errors="replace")
            *lines, self.buffer = self.buffer.split("\n")
            for line in lines:
                if line.strip() and self.level in SHOWN:
                    self.write({"event": "llama.cpp", "level": self.level, "message": line.strip()[:1000]})


def json_logging(write: Write) -> None:
    """Route Python logging, warnings and llama.cpp's log through ``write``."""
    handler = JsonLines(write)
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = [handler] if name in ("", "uvicorn") else []
        logger.propagate = name not in ("", "uvicorn")
    logging.captureWarnings(True)
    import llama_cpp

    global _callback
    _callback = llama_cpp.llama_log_callback(_LlamaLines(write))
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
