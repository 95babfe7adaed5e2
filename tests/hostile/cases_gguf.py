"""Crafted GGUF files for inspect, quantize and run, and crafted importance matrices."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
from cases_checkpoint import ESCAPE_GLOBALS, LOOP_FOREVER
from gguf import GGUFValueType
from hostile_kit import (
    IMATRIX,
    INSPECT,
    QUANTIZE,
    RUN,
    Area,
    Builder,
    kv_value_offset,
    patch,
    replace_template,
    tensor_info_offset,
    tiny_model_gguf,
)

from tlite_edge.gguf.reader import read_header
from tlite_edge.quant.imatrix import Imatrix, ImatrixEntry, matmul_weights, write_imatrix

# --- GGUF --------------------------------------------------------------------------------------


def gguf(make: Callable[[bytes], bytes], base: str = "tiny") -> Builder:
    def build(a: Area) -> None:
        raw = tiny_model_gguf() if base == "tiny" else a.model.read_bytes()[:200_000]
        a.bad.write_bytes(make(raw))

    return build


def at_kv(key: str, fmt: str, *values: object, skip: int = 0) -> Callable[[bytes], bytes]:
    return lambda raw: patch(raw, kv_value_offset(raw, key) + skip, fmt, *values)


def at_tensor(name: str, skip: int, fmt: str, *values: object) -> Callable[[bytes], bytes]:
    return lambda raw: patch(raw, tensor_info_offset(raw, name) + skip, fmt, *values)


def key_length(raw: bytes) -> bytes:
    key = b"general.name"
    at = raw.index(struct.pack("<Q", len(key)) + key)
    return patch(raw, at, "<Q", 2**62)


def tiny_with(kv: dict) -> Callable[[bytes], bytes]:
    return lambda raw: tiny_model_gguf(kv)


def duplicate_tensor(raw: bytes) -> bytes:
    return tiny_model_gguf(second="token_embd.weight")


def array_count(raw: bytes) -> bytes:
    tagged = tiny_model_gguf({"general.tags": (GGUFValueType.ARRAY, ["a", "b"])})
    return patch(tagged, kv_value_offset(tagged, "general.tags") + 8, "<Q", 2**60)


def bad_utf8_key(raw: bytes) -> bytes:
    return raw.replace(b"general.name", b"general.\xff\xfeme", 1)


def model_template(text: str) -> Builder:
    return lambda a: replace_template(a.model, a.bad, text)


# --- imatrix ------------------------------------------------------------------------------------


def imatrix(edit: Callable[[dict[str, ImatrixEntry]], object], kind: bytes | None = None) -> Builder:
    """A well-formed imatrix for the model, then one change (entries, or general.type's value)."""

    def build(a: Area) -> None:
        dims = {name: d + (1,) * (4 - len(d)) for name, d, _ in read_header(a.model).tensors}
        entries = {
            n: ImatrixEntry(np.ones((1, dims[n][0]), np.float32), np.ones(1, np.float32))
            for n in matmul_weights(dims)
        }
        edit(entries)
        write_imatrix(Imatrix(entries, 1, 16, ["hostile"]), a.imatrix)
        if kind is not None:
            raw = a.imatrix.read_bytes()
            a.imatrix.write_bytes(raw.replace(b"imatrix", kind, 1))

    return build


def im_rename(entries: dict[str, ImatrixEntry]) -> None:
    entries["blk.77.attn_q.weight"] = entries.pop("blk.0.attn_q.weight")


def im_resize(entries: dict[str, ImatrixEntry]) -> None:
    e = entries["blk.0.attn_q.weight"]
    entries["blk.0.attn_q.weight"] = ImatrixEntry(e.in_sum2[:, :-32], e.counts)


def im_nan(entries: dict[str, ImatrixEntry]) -> None:
    entries["blk.1.ffn_up.weight"].in_sum2[0, 3] = np.nan


def im_legacy(a: Area) -> None:
    a.imatrix.write_bytes(struct.pack("<i", 1) + b"\x05\x00\x00\x00blk.0" + bytes(64))


def im_model(a: Area) -> None:
    a.imatrix.write_bytes(tiny_model_gguf())


GGUF_CASES: dict[str, tuple[Builder, tuple[str, ...], str, str]] = {
    # GGUF for inspect
    "gguf: wrong magic": (gguf(lambda r: b"GGML" + r[4:]), INSPECT, "bad.gguf", "bad magic"),
    "gguf: empty file": (gguf(lambda r: b""), INSPECT, "bad.gguf", "bad magic"),
    "gguf: truncated in metadata": (gguf(lambda r: r[:60]), INSPECT, "bad.gguf", "damaged or truncated"),
    "gguf: truncated in tensor data": (
        gguf(lambda r: r[:-100]),
        INSPECT,
        "bad.gguf",
        "truncated GGUF: tensor data",
    ),
    "gguf: real model cut at 200 kB": (
        gguf(lambda r: r, base="model"),
        INSPECT,
        "bad.gguf",
        "damaged or truncated",
    ),
    "gguf: version 1": (gguf(lambda r: patch(r, 4, "<I", 1)), INSPECT, "bad.gguf", "version 1"),
    "gguf: 2^40 keys": (gguf(lambda r: patch(r, 16, "<Q", 2**40)), INSPECT, "bad.gguf", "damaged"),
    "gguf: 2^19 tensors": (gguf(lambda r: patch(r, 8, "<Q", 2**19)), INSPECT, "bad.gguf", "damaged"),
    "gguf: key length 2^62": (gguf(key_length), INSPECT, "bad.gguf", "runs past the end"),
    "gguf: string value length 2^62": (
        gguf(at_kv("general.name", "<Q", 2**62, skip=4)),
        INSPECT,
        "bad.gguf",
        "runs past the end",
    ),
    "gguf: array count 2^60": (gguf(array_count), INSPECT, "bad.gguf", "array of .* items"),
    "gguf: unknown value type": (gguf(at_kv("general.name", "<I", 99)), INSPECT, "bad.gguf", "damaged"),
    "gguf: key not UTF-8": (gguf(bad_utf8_key), INSPECT, "bad.gguf", "damaged"),
    "gguf: unknown tensor type": (
        gguf(at_tensor("output_norm.weight", 4 + 8, "<I", 999)),
        INSPECT,
        "bad.gguf",
        "unknown type 999",
    ),
    "gguf: 9 dims": (gguf(at_tensor("output_norm.weight", 0, "<I", 9)), INSPECT, "bad.gguf", "9 dims"),
    "gguf: alignment 0": (
        gguf(tiny_with({"general.alignment": (GGUFValueType.UINT32, 0)})),
        INSPECT,
        "bad.gguf",
        "not a power of two",
    ),
    "gguf: misaligned tensor": (
        gguf(at_tensor("output_norm.weight", 4 + 8 + 4, "<Q", 4096 + 3)),
        INSPECT,
        "bad.gguf",
        "not aligned",
    ),
    "gguf: duplicate tensor": (gguf(duplicate_tensor), INSPECT, "bad.gguf", "duplicate tensor"),
    # GGUF for quantize and run
    "quantize: wrong magic": (gguf(lambda r: b"\0\0\0\0" + r[4:]), QUANTIZE, "bad.gguf", "bad magic"),
    "quantize: truncated": (gguf(lambda r: r, base="model"), QUANTIZE, "bad.gguf", "damaged or truncated"),
    "quantize: unknown tensor type": (
        gguf(at_tensor("output_norm.weight", 4 + 8, "<I", 77)),
        QUANTIZE,
        "bad.gguf",
        "unknown type 77",
    ),
    "quantize: string length 2^62": (gguf(key_length), QUANTIZE, "bad.gguf", "runs past the end"),
    "run: wrong magic": (gguf(lambda r: b"GGUG" + r[4:]), RUN, "bad.gguf", "bad magic"),
    "run: truncated": (gguf(lambda r: r, base="model"), RUN, "bad.gguf", "damaged or truncated"),
    "run: string length 2^62": (gguf(key_length), RUN, "bad.gguf", "runs past the end"),
    "run: template escapes the sandbox": (
        model_template(ESCAPE_GLOBALS),
        RUN,
        "bad.gguf",
        "does not render.*unsafe",
    ),
    "run: template loops without end": (model_template(LOOP_FOREVER), RUN, "bad.gguf", "longer than 5 s"),
    "run: template does not compile": (model_template("{% if %}"), RUN, "bad.gguf", "does not compile"),
    # imatrix (quantize --imatrix)
    "imatrix: wrong names": (
        imatrix(im_rename),
        IMATRIX,
        "bad.imatrix.gguf",
        "blk.77.attn_q.weight is not a tensor",
    ),
    "imatrix: wrong sizes": (imatrix(im_resize), IMATRIX, "bad.imatrix.gguf", r"has \d+ values, its rows"),
    "imatrix: wrong general.type": (
        imatrix(lambda e: None, kind=b"weights"),
        IMATRIX,
        "bad.imatrix.gguf",
        "general.type is 'weights'",
    ),
    "imatrix: a model file": (im_model, IMATRIX, "bad.imatrix.gguf", "not an imatrix"),
    "imatrix: legacy .dat format": (im_legacy, IMATRIX, "bad.imatrix.gguf", "not a GGUF imatrix"),
    "imatrix: NaN values": (imatrix(im_nan), IMATRIX, "bad.imatrix.gguf", "non-finite"),
}
