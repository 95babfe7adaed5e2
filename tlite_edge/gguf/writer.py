"""The streaming GGUF v3 writer: header and tensor infos first, then tensor data chunk by chunk.

Tensor data never has to sit in memory whole: callers hand over row blocks (numpy arrays or raw
byte ranges of a source file) and the writer hashes what it writes on a second thread.
"""

from __future__ import annotations

import hashlib
import math
import queue
import struct
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32
COPY_CHUNK = 64 * 1024 * 1024

SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


def string_bytes(text: str) -> bytes:
    """A GGUF string: uint64 byte length, then UTF-8."""
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def value_bytes(vtype: GGUFValueType, value: Any, item_type: GGUFValueType | None) -> bytes:
    """A metadata value's bytes (an array: item type, count, items)."""
    if vtype == GGUFValueType.STRING:
        return string_bytes(value)
    if vtype == GGUFValueType.ARRAY:
        assert item_type is not None
        head = struct.pack("<IQ", int(item_type), len(value))
        if item_type == GGUFValueType.STRING:
            return head + b"".join(string_bytes(v) for v in value)
        return head + np.asarray(value, dtype=np.dtype(SCALAR_FORMATS[item_type])).tobytes()
    return struct.pack(SCALAR_FORMATS[vtype], value)


def tensor_nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * size


def _pad(n: int) -> int:
    return (ALIGNMENT - n % ALIGNMENT) % ALIGNMENT


class GGUFLayout:
    """Metadata and tensor infos; knows the byte layout before any data is written."""

    def __init__(self) -> None:
        self.kv: list[tuple[str, GGUFValueType, Any, GGUFValueType | None]] = []
        self.tensors: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]] = []

    def add(self, key: str, vtype: GGUFValueType, value: Any, item_type: GGUFValueType | None = None) -> None:
        self.kv.append((key, vtype, value, item_type))

    def add_tensor(self, name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType) -> None:
        """``shape`` is numpy/HF order (rows first); GGUF stores it reversed."""
        self.tensors.append((name, shape, qtype, tensor_nbytes(shape, qtype)))

    def header(self) -> bytes:
        parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(self.tensors), len(self.kv))]
        for key, vtype, value, item_type in self.kv:
            parts += [string_bytes(key), struct.pack("<I", int(vtype)), value_bytes(vtype, value, item_type)]
        offset = 0
        for name, shape, qtype, nbytes in self.tensors:
            dims = tuple(reversed(shape))
            parts += [
                string_bytes(name),
                struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, int(qtype), offset),
            ]
            offset += nbytes + _pad(nbytes)
        head = b"".join(parts)
        return head + b"\0" * _pad(len(head))

    def data_size(self) -> int:
        return sum(n + _pad(n) for *_, n in self.tensors)


class HashingSink:
    """Writes bytes to a file and hashes them on a helper thread (bounded queue of buffers)."""

    def __init__(self, fh: BinaryIO, depth: int = 3) -> None:
        self.fh = fh
        self.written = 0
        self._sha = hashlib.sha256()
        self._queue: queue.Queue[memoryview | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._hash_loop, daemon=True)
        self._thread.start()

    def _hash_loop(self) -> None:
        while (block := self._queue.get()) is not None:
            self._sha.update(block)

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        view = (
            memoryview(np.ascontiguousarray(data)).cast("B")
            if isinstance(data, np.ndarray)
            else memoryview(data)
        )
        self.fh.write(view)
        self.written += view.nbytes
        self._queue.put(view)

    def copy_from(
        self, src: BinaryIO, offset: int, nbytes: int, check: Callable[[bytearray], None] | None = None
    ) -> None:
        """Copy a byte range of another file, through fresh bounded buffers (each shown to ``check``)."""
        src.seek(offset)
        while nbytes > 0:
            buf = bytearray(min(COPY_CHUNK, nbytes))
            if src.readinto(buf) != len(buf):
                raise EOFError(f"{getattr(src, 'name', 'source')}: file ended early")
            if check is not None:
                check(buf)
            self.write(buf)
            nbytes -= len(buf)

    def pad(self) -> None:
        if fill := _pad(self.written):
            self.write(b"\0" * fill)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._sha.hexdigest()

    def abort(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
