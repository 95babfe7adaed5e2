"""Strict, streaming safetensors reader (mmap, one tensor or one row block at a time).

Never loads pickle: only the safetensors format is read, and its header is validated before any
tensor is touched: bounded header length, JSON object, known dtypes, dtype x shape = byte length,
offsets inside the file and not overlapping.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tlite_edge.errors import TliteError

MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype -> (bytes per element, numpy dtype used to view the raw data)
DTYPES: dict[str, tuple[int, np.dtype]] = {
    "BF16": (2, np.dtype("<u2")),
    "F16": (2, np.dtype("<f2")),
    "F32": (4, np.dtype("<f4")),
    "F64": (8, np.dtype("<f8")),
    "I8": (1, np.dtype("i1")),
    "U8": (1, np.dtype("u1")),
    "I16": (2, np.dtype("<i2")),
    "I32": (4, np.dtype("<i4")),
    "I64": (8, np.dtype("<i8")),
    "BOOL": (1, np.dtype("u1")),
    "F8_E4M3": (1, np.dtype("u1")),
    "F8_E5M2": (1, np.dtype("u1")),
}
FLOAT_DTYPES = ("BF16", "F16", "F32")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and absolute byte range."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


MAX_DIMS = 8


def parse_header(read: Callable[[int], bytes], size: int, path: Path) -> tuple[dict[str, TensorInfo], dict]:
    """Validate a safetensors header read from the start of a ``size``-byte file; return the tensors
    (absolute byte ranges) and ``__metadata__``. Anything wrong is a TliteError naming ``path``."""

    def fail(message: str) -> TliteError:
        return TliteError(path, f"corrupt safetensors header: {message}")

    if size < 8:
        raise fail("file shorter than the 8-byte header length")
    (hlen,) = struct.unpack("<Q", read(8))
    if hlen > MAX_HEADER_BYTES:
        raise fail(f"header length {hlen} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + hlen > size:
        raise fail(f"header length {hlen} runs past the end of the file")
    try:
        header = json.loads(read(hlen).decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise fail(f"header is not valid JSON ({type(exc).__name__}: {str(exc)[:80]})") from None
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise fail("__metadata__ is not an object")
    metadata = {str(k): str(v)[:4096] for k, v in meta.items()}
    data_start = 8 + hlen
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        info = _tensor_entry(path, name, entry, data_start, size - data_start, fail)
        tensors[name] = info
        spans.append((info.offset, info.offset + info.nbytes, name))
    spans.sort()
    for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:], strict=False):
        if start_b < end_a:
            raise fail(f"tensors {name_a!r} and {name_b!r} overlap")
    return tensors, metadata


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {dup[:80]!r}")
    return out


def _tensor_entry(
    path: Path, name: str, entry: object, data_start: int, data_size: int, fail: Callable[[str], TliteError]
) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise fail(f"tensor {name!r} lacks dtype, shape or data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise fail(f"tensor {name!r} has unknown dtype {str(dtype)[:40]!r}")
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_DIMS
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 48 for d in shape)
    ):
        raise fail(f"tensor {name!r} has an invalid shape {str(shape)[:80]}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise fail(f"tensor {name!r} has invalid data_offsets {str(offsets)[:80]}")
    if offsets[0] > offsets[1]:
        raise fail(f"tensor {name!r} has reversed data_offsets {offsets!r}")
    if not 0 <= offsets[0] <= offsets[1] <= data_size:
        raise fail(f"tensor {name!r} has data_offsets {offsets!r} outside the file")
    nbytes = offsets[1] - offsets[0]
    expected = math.prod(shape) * DTYPES[dtype][0]
    if nbytes != expected:
        raise fail(f"tensor {name!r}: {dtype} x {shape} needs {expected} bytes, has {nbytes}")
    return TensorInfo(name, path, dtype, tuple(shape), data_start + offsets[0], nbytes)


def count_nonfinite(block: np.ndarray | bytes | bytearray | memoryview, dtype: str) -> int:
    """How many NaN/Inf values a block of raw ``dtype`` data (BF16, F16 or F32) holds."""
    if dtype == "BF16":
        bits = np.frombuffer(block, dtype="<u2") if not isinstance(block, np.ndarray) else block
        return int(np.count_nonzero((bits & 0x7F80) == 0x7F80))
    if dtype not in ("F16", "F32"):
        return 0
    values = np.frombuffer(block, dtype=DTYPES[dtype][1]) if not isinstance(block, np.ndarray) else block
    return int(values.size - np.count_nonzero(np.isfinite(values)))


class SafetensorsFile:
    """One ``.safetensors`` file, header validated on open, data mapped read-only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise TliteError(self.path, f"cannot open: {exc.strerror}") from exc
        try:
            self.tensors, self.metadata = parse_header(
                self._fh.read, os.fstat(self._fh.fileno()).st_size, self.path
            )
        except BaseException:
            self._fh.close()
            raise
        self._map: mmap.mmap | None = None

    @property
    def file(self) -> BinaryIO:
        """The open file, for raw byte-range copies."""
        return self._fh

    def array(self, name: str) -> np.ndarray:
        """A read-only numpy view of a tensor (BF16 is viewed as uint16); pages load on access."""
        info = self.tensors[name]
        if self._map is None:
            self._map = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        dtype = DTYPES[info.dtype][1]
        return np.frombuffer(self._map, dtype=dtype, count=info.n_elements, offset=info.offset).reshape(
            info.shape
        )

    def release(self, name: str) -> None:
        """Drop a tensor's pages from this process (the page cache keeps them); bounds RSS."""
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        info = self.tensors[name]
        start = info.offset - info.offset % mmap.PAGESIZE
        length = info.offset + info.nbytes - start
        if length > 0:
            self._map.madvise(mmap.MADV_DONTNEED, start, length)

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view is still held; the GC releases it later
                self._map.close()
            self._map = None
        self._fh.close()
