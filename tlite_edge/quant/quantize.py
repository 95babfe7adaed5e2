"""llama.cpp's own quantizer (``llama_model_quantize``) driven by a profile: types, overrides and an
importance matrix passed through llama-cpp-python's C structs; progress from llama.cpp's log."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from tlite_edge.errors import TliteError
from tlite_edge.fsutil import describe_os_error, hash_and_publish, temp_path
from tlite_edge.quant.llama_log import capture_log
from tlite_edge.quant.profiles import Profile

TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
SIZE_LINE = re.compile(r"(model|quant) size\s*=\s*([\d.]+) MiB \(([\d.]+) BPW\)")
ERROR_LINE = re.compile(r"failed to quantize: (.*)")
# What llama.cpp's failed writes look like (std::ofstream exceptions, C stdio errors).
WRITE_ERROR = re.compile(r"iostream error|failed to write|write error|No space left|File too large", re.I)


@dataclass
class QuantResult:
    profile: str
    path: Path | None
    sha256: str | None
    size_mib: float
    bpw: float


def build_params(
    profile: Profile, imatrix: dict[str, np.ndarray] | None, threads: int, dry_run: bool
) -> tuple[llama_cpp.llama_model_quantize_params, list[object]]:
    """Quantize params for a profile; the second value keeps the C arrays alive."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = profile.ftype_id
    params.dry_run = dry_run
    if profile.output_type is not None:
        params.output_tensor_type = int(profile.output_type)
    if profile.token_embedding_type is not None:
        params.token_embedding_type = int(profile.token_embedding_type)
    keep: list[object] = []
    if profile.overrides:
        arr = (llama_cpp.llama_model_tensor_override * (len(profile.overrides) + 1))()
        for i, (pattern, qtype) in enumerate(profile.overrides):
            arr[i].pattern, arr[i].type = pattern.encode(), int(qtype)
        arr[len(profile.overrides)].pattern = None
        params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep.append(arr)
    if imatrix:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            data = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(data)
            arr[i].name = name.encode()
            arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = data.size
        arr[len(imatrix)].name = None
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(arr)
    return params, keep


def _run(src: Path, dst: Path, params: object, advance: Callable[[int, int, str], None]) -> tuple[dict, str]:
    """Call the quantizer on a worker thread (Ctrl-C stays responsive); return sizes and last error."""
    sizes: dict[str, tuple[float, float]] = {}
    errors: list[str] = []

    def on_line(level: int, line: str) -> None:
        if m := TENSOR_LINE.match(line.strip()):
            advance(int(m[1]), int(m[2]), m[3])
        elif m := SIZE_LINE.search(line):
            sizes[m[1]] = (float(m[2]), float(m[3]))
        elif m := ERROR_LINE.search(line):
            errors.append(m[1].strip())

    rc: list[int] = []
    with capture_log(on_line):
        worker = threading.Thread(
            target=lambda: rc.append(
                llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
            ),
            daemon=True,
        )
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.2)
        except KeyboardInterrupt:
            # the quantizer cannot be stopped; Python finalizing under it can crash (SIGSEGV): leave at
            # once instead, after the exit handlers registered from here on (they run first)
            atexit.register(_exit_now, 130)
            raise
    if not rc or rc[0] != 0:
        raise TliteError(src, f"llama.cpp quantizer failed: {errors[-1] if errors else 'see log'}")
    return sizes, ""


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _block_name(tmp: Path) -> None:
    """After an interrupt llama.cpp's thread may still open ``tmp`` for writing until the process ends:
    a directory under that name makes the open fail (so no file can appear), removed at exit."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
        tmp.mkdir()
        atexit.register(_remove_dir, tmp)


def _remove_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def estimate(src: Path, profile: Profile, imatrix: dict[str, np.ndarray] | None = None) -> QuantResult:
    """Exact output size and bits per weight from llama.cpp's dry run (nothing is written)."""
    params, keep = build_params(profile, imatrix, 1, dry_run=True)
    sizes, _ = _run(src, src.with_name(".dry-run"), params, lambda i, n, name: None)
    mib, bpw = sizes.get("quant", (0.0, 0.0))
    del keep
    return QuantResult(profile.name, None, None, mib, bpw)


def quantize(
    src: Path,
    profile: Profile,
    dst: Path,
    *,
    imatrix: dict[str, np.ndarray] | None = None,
    threads: int | None = None,
    advance: Callable[[int, int, str], None] = lambda i, n, name: None,
) -> QuantResult:
    """Quantize ``src`` to ``dst`` atomically (temporary name, fsync, rename) and record its sha256."""
    if profile.requires_imatrix and not imatrix:
        raise TliteError(
            src,
            f"level {profile.name} needs an importance matrix: make one with "
            f"`tlite-edge imatrix {src.name}` and pass --imatrix FILE",
        )
    if not dst.parent.is_dir():
        raise TliteError(dst.parent, "output folder does not exist")
    params, keep = build_params(profile, imatrix, threads or os.cpu_count() or 1, dry_run=False)
    tmp = temp_path(dst)
    try:
        try:
            sizes, _ = _run(src, tmp, params, advance)
        except TliteError as exc:
            if not WRITE_ERROR.search(exc.message):
                raise
            free = shutil.disk_usage(dst.parent).free / 2**20
            raise TliteError(
                dst, f"disk full or write error: llama.cpp could not write the output ({free:,.0f} MiB free)"
            ) from None
        digest = hash_and_publish(tmp, dst)
    except OSError as exc:
        raise TliteError(dst, describe_os_error(exc)) from exc
    except KeyboardInterrupt:
        _block_name(tmp)
        raise
    finally:
        if not tmp.is_dir():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        del keep
    mib, bpw = sizes.get("quant", (dst.stat().st_size / 2**20, 0.0))
    return QuantResult(profile.name, dst, digest, mib, bpw)
