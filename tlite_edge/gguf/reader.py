"""Read what a GGUF file says about itself: a fast header parser for models, GGUFReader for small files."""

from __future__ import annotations

import math
import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, Keys

from tlite_edge.errors import TliteError
from tlite_edge.gguf.keys import SPECIAL_TOKEN_KEYS
from tlite_edge.gguf.writer import SCALAR_FORMATS

SKIP_VALUES = {Keys.Tokenizer.LIST, Keys.Tokenizer.TOKEN_TYPE, Keys.Tokenizer.MERGES}


@dataclass
class GGUFHeader:
    """Metadata and tensor infos of a GGUF, parsed without touching tensor data."""

    kv: dict[str, Any]
    tensors: list[tuple[str, tuple[int, ...], int]]  # name, ggml dims (ne0 first), ggml type
    data_end: int = 0  # where the last tensor's data ends
    data_start: int = 0  # where the tensor data section begins (aligned)
    kv_types: dict[str, tuple[int, int | None]] = field(default_factory=dict)  # key -> (type, item type)
    offsets: list[int] = field(default_factory=list)  # tensor data offsets, relative to data_start

    def tensor_nbytes(self, dims: tuple[int, ...], qtype: int) -> int:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
        return math.prod(dims) // block * size


def read_header(path: str | Path) -> GGUFHeader:
    """Fast header parse (a 128k-token vocabulary takes well under a second; GGUFReader takes many)."""
    p = gguf_file(path)
    with open(p, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return header_from_buffer(buf, p)


def gguf_file(path: str | Path) -> Path:
    """``path`` if it is a file that starts with the GGUF magic, else one clear line."""
    p = Path(path)
    if not p.is_file():
        raise TliteError(p, "no such file")
    with open(p, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise TliteError(p, "not a GGUF file (bad magic)")
    return p


def header_from_buffer(buf: bytes | mmap.mmap, path: Path) -> GGUFHeader:
    """Parse and check a whole GGUF file held in ``buf``; anything wrong is a TliteError naming ``path``."""
    if buf[:4] != b"GGUF":
        raise TliteError(path, "not a GGUF file (bad magic)")
    try:
        header = _parse_header(buf)
    except (struct.error, ValueError, UnicodeDecodeError, IndexError, KeyError, OverflowError) as exc:
        raise TliteError(path, f"damaged or truncated GGUF ({exc})") from None
    if header.data_end > len(buf):
        raise TliteError(
            path, f"truncated GGUF: tensor data needs {header.data_end} bytes, file has {len(buf)}"
        )
    return header


MAX_COUNT = 1 << 24  # keys, tensors or array items: far above any real model, below any absurd one


def _parse_header(buf: bytes | mmap.mmap) -> GGUFHeader:
    if buf[:4] != b"GGUF":
        raise ValueError("bad magic")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3) or n_kv > 1 << 20 or n_tensors > 1 << 20:
        raise ValueError(f"version {version}, {n_kv} keys, {n_tensors} tensors")
    pos = 24

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        if pos + 8 + n > len(buf):
            raise ValueError(f"string of {n} bytes runs past the end of the file")
        pos += 8 + n
        return buf[pos - n : pos].decode("utf-8")

    def value(vtype: int) -> Any:
        nonlocal pos
        if vtype == GGUFValueType.STRING:
            return string()
        if vtype == GGUFValueType.ARRAY:
            item, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if count > MAX_COUNT or count * (8 if item == GGUFValueType.STRING else 1) > len(buf) - pos:
                raise ValueError(f"array of {count} items runs past the end of the file")
            if item == GGUFValueType.STRING:
                return [string() for _ in range(count)]
            fmt = SCALAR_FORMATS[GGUFValueType(item)]
            size = struct.calcsize(fmt)
            if pos + size * count > len(buf):
                raise ValueError("array runs past the end of the file")
            pos += size * count
            return np.frombuffer(buf, dtype=np.dtype(fmt), count=count, offset=pos - size * count).tolist()
        fmt = SCALAR_FORMATS[GGUFValueType(vtype)]
        (v,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v

    kv: dict[str, Any] = {}
    kv_types: dict[str, tuple[int, int | None]] = {}
    for _ in range(n_kv):
        key = string()
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if key in kv:
            raise ValueError(f"duplicate key {key[:80]!r}")
        item = struct.unpack_from("<I", buf, pos)[0] if vtype == GGUFValueType.ARRAY else None
        kv_types[key] = (vtype, item)
        kv[key] = value(vtype)
    align = kv.get(Keys.General.ALIGNMENT, 32)
    if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
        raise ValueError(f"general.alignment {align!r} is not a power of two")
    tensors = []
    ends = []
    offsets: list[int] = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        if n_dims > 4:
            raise ValueError(f"tensor {name!r} has {n_dims} dims")
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        qtype, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        if name in names:
            raise ValueError(f"duplicate tensor {name[:80]!r}")
        names.add(name)
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
        except (ValueError, KeyError):
            raise ValueError(f"tensor {name!r} has unknown type {qtype}") from None
        if dims and dims[0] % block:
            raise ValueError(f"tensor {name!r}: row of {dims[0]} not a multiple of its block size {block}")
        if offset % align:
            raise ValueError(f"tensor {name!r}: data offset {offset} not aligned to {align}")
        tensors.append((name, tuple(dims), qtype))
        offsets.append(offset)
        ends.append(offset + math.prod(dims) // block * size)
    data_start = pos + (align - pos % align) % align
    # a file without tensors (llama.cpp's --vocab-only) may end right after its header, unpadded
    data_end = data_start + max(ends) if ends else pos
    return GGUFHeader(kv, tensors, data_end, data_start, kv_types, offsets)


def open_gguf(path: str | Path) -> GGUFReader:
    """A GGUFReader, or one clear line for a missing, foreign or truncated file."""
    p = gguf_file(path)
    try:
        return GGUFReader(p)
    except Exception as exc:  # GGUFReader raises ValueError/IndexError/etc. on damage
        raise TliteError(p, f"damaged or truncated GGUF ({type(exc).__name__}: {exc})") from None


def field_value(reader: GGUFReader, key: str) -> Any:
    """A metadata value as plain Python (str, int, float, bool or list), None when absent."""
    fld = reader.fields.get(key)
    if fld is None:
        return None
    if fld.types and fld.types[0] == GGUFValueType.ARRAY:
        return [fld.contents(i) for i in range(len(fld.data))]
    return fld.contents()


@dataclass
class GGUFSummary:
    path: Path
    size: int
    metadata: dict[str, Any]
    tensor_types: dict[str, int]
    n_tensors: int
    n_params: int
    tensor_bytes: int
    special_tokens: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / self.n_params if self.n_params else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "size": self.size,
            "n_tensors": self.n_tensors,
            "n_params": self.n_params,
            "bits_per_weight": round(self.bits_per_weight, 4),
            "tensor_types": self.tensor_types,
            "special_tokens": self.special_tokens,
            "metadata": self.metadata,
        }


def summarize(path: str | Path) -> GGUFSummary:
    return summary_from_header(read_header(path), Path(path), Path(path).stat().st_size)


def summary_from_header(header: GGUFHeader, path: Path, size: int) -> GGUFSummary:
    """What ``inspect`` shows, from a parsed header (whatever types its metadata values have)."""
    listed = {k for k, v in header.kv.items() if k in SKIP_VALUES and isinstance(v, list)}
    meta = {k: f"[{len(v)} items]" if k in listed else v for k, v in header.kv.items()}
    types = Counter(GGMLQuantizationType(t).name for _, _, t in header.tensors)
    n_params = sum(math.prod(dims) for _, dims, _ in header.tensors)
    nbytes = sum(header.tensor_nbytes(dims, t) for _, dims, t in header.tensors)
    tokens = header.kv.get(Keys.Tokenizer.LIST) or []
    special: dict[str, dict[str, Any]] = {}
    for key in ("bos", "eos", "eot", "padding"):
        tid = meta.get(SPECIAL_TOKEN_KEYS[key])
        if isinstance(tid, int) and isinstance(tokens, list) and 0 <= tid < len(tokens):
            special[key] = {"id": tid, "text": tokens[tid]}
    return GGUFSummary(
        path,
        size,
        meta,
        dict(types.most_common()),
        len(header.tensors),
        n_params,
        nbytes,
        special,
    )
