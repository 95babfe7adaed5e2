"""Capture llama.cpp's log lines (the quantizer reports progress and errors only there)."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator

import llama_cpp
import llama_cpp._logger as lcpp_logger


@llama_cpp.llama_log_callback
def _drop(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Swallow log text (a quantizer thread left running after Ctrl-C must not write over our message)."""


@contextlib.contextmanager
def capture_log(on_line: Callable[[int, str], None]) -> Iterator[None]:
    """Route llama.cpp's log to ``on_line(level, line)`` (whole lines), then restore the default; after
    an exception drop it (a quantizer thread may still be running)."""
    pending: list[str] = []

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        pending.append(text.decode("utf-8", errors="replace"))
        joined = "".join(pending)
        if "\n" in joined:
            *lines, rest = joined.split("\n")
            pending[:] = [rest] if rest else []
            for line in lines:
                on_line(level, line)

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield
    except BaseException:
        llama_cpp.llama_log_set(_drop, ctypes.c_void_p(0))
        raise
    if pending:
        on_line(0, "".join(pending))
    llama_cpp.llama_log_set(lcpp_logger.llama_log_callback, ctypes.c_void_p(0))
