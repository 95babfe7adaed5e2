"""Run llama.cpp's own ``convert_hf_to_gguf.py``: the reference converter the tests compare against.

Its sources come from the llama-cpp-python sdist of the installed version (the same llama.cpp that
runs the models), downloaded once with pip or taken from ``$TLITE_LLAMACPP_SDIST`` (the sdist's
``.tar.gz``, or a folder holding it). The converter needs torch and transformers (the ``test`` extra).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

SDIST_ENV = "TLITE_LLAMACPP_SDIST"
CONVERTER = "convert_hf_to_gguf.py"
# What the converter reads, relative to vendor/llama.cpp/: the script, its model classes, its own gguf
# package, and the chat templates some model classes load.
NEEDED = (CONVERTER, "conversion/", "gguf-py/gguf/", "models/templates/")
DONE = ".extracted"


class LlamacppConvertError(RuntimeError):
    """llama.cpp's converter, or getting its sources, failed."""


def llamacpp_version() -> str:
    """The installed llama-cpp-python version (its sdist vendors the matching llama.cpp)."""
    import llama_cpp

    return llama_cpp.__version__


def _sdist_name(version: str) -> str:
    return f"llama_cpp_python-{version}.tar.gz"


def find_sdist(cache: Path, version: str) -> tuple[Path, bool]:
    """The sdist and whether it was downloaded here: ``$TLITE_LLAMACPP_SDIST`` if set, else pip
    downloads it into ``cache/sdist``."""
    if given := os.environ.get(SDIST_ENV):
        path = Path(given)
        if path.is_dir():
            path = path / _sdist_name(version)
        if not path.is_file():
            raise LlamacppConvertError(f"${SDIST_ENV}={given}: no {_sdist_name(version)} there")
        return path, False
    target = cache / "sdist"
    path = target / _sdist_name(version)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", f"llama-cpp-python=={version}", "-d", str(target),
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if run.returncode != 0 or not path.is_file():
        raise LlamacppConvertError(
            f"pip download of llama-cpp-python=={version} failed (rc {run.returncode}); set ${SDIST_ENV} "
            f"to a downloaded {_sdist_name(version)}:\n{_tail(run.stderr or run.stdout)}"
        )
    return path, True


def _extract(sdist: Path, version: str, dest: Path) -> None:
    """Copy the converter's files out of ``sdist`` into ``dest`` (regular files only, paths checked)."""
    root = PurePosixPath(f"llama_cpp_python-{version}", "vendor", "llama.cpp")
    found = set()
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            path = PurePosixPath(member.name)
            if not member.isfile() or root not in path.parents:
                continue
            rel = path.relative_to(root)
            if ".." in rel.parts or not any(str(rel) == n or str(rel).startswith(n) for n in NEEDED):
                continue
            found.update(n for n in NEEDED if str(rel) == n or str(rel).startswith(n))
            out = dest.joinpath(*rel.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            with src, open(out, "wb") as fh:
                shutil.copyfileobj(src, fh)
    if missing := [n for n in NEEDED[:3] if n not in found]:
        raise LlamacppConvertError(f"{sdist}: no {', '.join(missing)} under {root}/")


def llamacpp_sources(cache: Path) -> Path:
    """llama.cpp's converter sources (``convert_hf_to_gguf.py``, ``conversion/``, ``gguf-py/``, ...)
    for the installed llama-cpp-python, extracted once into ``cache/llama.cpp-<version>`` (a
    downloaded sdist is deleted afterwards: only the ~3 MB extract is kept); returns that folder."""
    version = llamacpp_version()
    dest = cache / f"llama.cpp-{version}"
    if (dest / DONE).is_file():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    sdist, downloaded = find_sdist(cache, version)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=cache))
    try:
        _extract(sdist, version, staging)
        (staging / DONE).write_text(f"{sdist.name}\n", encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp made it private
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if downloaded:
        sdist.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            sdist.parent.rmdir()
    return dest


def llamacpp_convert(
    folder: Path,
    outfile: Path,
    outtype: str = "bf16",
    vocab_only: bool = False,
    *,
    cache: Path | None = None,
    timeout: float = 900,
) -> Path:
    """Convert the Hugging Face ``folder`` to ``outfile`` with llama.cpp's ``convert_hf_to_gguf.py``.

    Runs offline (no Hub access) with llama.cpp's own vendored gguf package, not the installed one.
    ``cache`` holds the sources (default: a folder in the system temp dir). Returns ``outfile``;
    a failure raises LlamacppConvertError with the end of the converter's stderr."""
    if cache is None:
        cache = Path(tempfile.gettempdir()) / "tlite-edge-llamacpp"
    src = llamacpp_sources(cache)
    gguf_py = str(src / "gguf-py")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [gguf_py, os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUTF8": "1",
    }
    env.pop("NO_LOCAL_GGUF", None)
    cmd = [
        sys.executable, str(src / CONVERTER), str(folder),
        "--outfile", str(outfile), "--outtype", outtype, *(["--vocab-only"] if vocab_only else []),
    ]  # fmt: skip
    outfile.parent.mkdir(parents=True, exist_ok=True)
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise LlamacppConvertError(f"{CONVERTER} {folder}: timed out after {timeout:.0f} s") from exc
    if run.returncode != 0 or not outfile.is_file():
        raise LlamacppConvertError(
            f"{CONVERTER} {folder} failed (rc {run.returncode}):\n{_tail(run.stderr or run.stdout)}"
        )
    return outfile


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
