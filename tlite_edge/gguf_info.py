"""Read what a GGUF file says about itself (with ``gguf.GGUFReader``), for inspect and the runtime."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFReader, GGUFValueType

from tlite_edge.errors import TliteError

SKIP_VALUES = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"}


def open_gguf(path: str | Path) -> GGUFReader:
    """A GGUFReader, or one clear line for a missing, foreign or truncated file."""
    p = Path(path)
    if not p.is_file():
        raise TliteError(p, "no such file")
    with open(p, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise TliteError(p, "not a GGUF file (bad magic)")
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
    reader = open_gguf(path)
    meta: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if key in SKIP_VALUES:
            meta[key] = f"[{len(fld.data)} items]"
        else:
            meta[key] = field_value(reader, key)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    nbytes = sum(int(t.n_bytes) for t in reader.tensors)
    tokens_field = reader.fields.get("tokenizer.ggml.tokens")
    special: dict[str, dict[str, Any]] = {}
    for key in ("bos", "eos", "eot", "padding"):
        tid = meta.get(f"tokenizer.ggml.{key}_token_id")
        if tid is not None and tokens_field is not None and 0 <= tid < len(tokens_field.data):
            special[key] = {"id": tid, "text": tokens_field.contents(tid)}
    return GGUFSummary(
        Path(path),
        Path(path).stat().st_size,
        meta,
        dict(types.most_common()),
        len(reader.tensors),
        n_params,
        nbytes,
        special,
    )
