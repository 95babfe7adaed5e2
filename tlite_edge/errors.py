"""One error type for everything a user can get wrong: it always names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class TliteError(Exception):
    """A user-facing failure, printed as one line: ``<path>: <what is wrong>``."""

    def __init__(self, path: str | Path | None, message: str) -> None:
        self.path = str(path) if path is not None else None
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
