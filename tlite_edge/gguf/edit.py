"""The metadata editor: rewrite a GGUF's metadata, carrying tensor infos and data over byte for byte."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gguf import Keys

from tlite_edge.errors import TliteError
from tlite_edge.fsutil import atomic_output, sidecar_path
from tlite_edge.gguf.reader import GGUFHeader, read_header
from tlite_edge.gguf.writer import GGUF_MAGIC, GGUF_VERSION, string_bytes, value_bytes

CHUNK = 1 << 22
Change = tuple[int, int | None, Any]  # (GGUF value type, item type for arrays, value)


def _header_bytes(header: GGUFHeader, changes: dict[str, Change]) -> bytes:
    kv = {k: (*header.kv_types[k], v) for k, v in header.kv.items()}
    kv.update(changes)
    parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(header.tensors), len(kv))]
    for key, (vtype, item, value) in kv.items():
        parts += [string_bytes(key), struct.pack("<I", int(vtype)), value_bytes(vtype, value, item)]
    for (name, dims, qtype), offset in zip(header.tensors, header.offsets, strict=True):
        parts += [string_bytes(name), struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, qtype, offset)]
    head = b"".join(parts)
    align = int(header.kv.get(Keys.General.ALIGNMENT, 32))
    return head + b"\0" * ((align - len(head) % align) % align)


def data_sha256(path: Path, start: int) -> str:
    """sha256 of everything from ``start`` to the end of the file (the tensor data section)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(start)
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def rewrite_metadata(
    src: Path, dst: Path, changes: dict[str, Change], verify: Callable[[Path], Sequence[str]] | None = None
) -> str:
    """Write ``dst``: ``src`` with ``changes`` applied to its metadata, atomically, with its ``.sha256``
    sidecar (``verify`` runs on the complete temporary file first; its lines go into the sidecar).
    Returns the sha256 of the tensor data, checked to be the same in both files."""
    if dst.resolve() == src.resolve():
        raise TliteError(dst, "the fixed copy must be a new file, not the input")
    header = read_header(src)
    head = _header_bytes(header, changes)
    whole = hashlib.sha256(head)
    with atomic_output(dst, whole.hexdigest, verify) as out, open(src, "rb") as fin:
        out.write(head)
        fin.seek(header.data_start)
        while block := fin.read(CHUNK):
            out.write(block)
            whole.update(block)
    before = data_sha256(src, header.data_start)
    try:
        fixed = read_header(dst)
        if fixed.data_start != len(head) or data_sha256(dst, fixed.data_start) != before:
            raise TliteError(dst, "tensor data differs from the input after rewriting; nothing kept")
    except TliteError:
        dst.unlink(missing_ok=True)
        sidecar_path(dst).unlink(missing_ok=True)
        raise
    return before
