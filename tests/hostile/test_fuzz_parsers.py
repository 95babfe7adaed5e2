"""Property tests of the two untrusted-bytes parsers: whatever the input, the result is a parsed
header that keeps its invariants, or a TliteError naming the file; never another exception."""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlite_edge.checkpoint.safetensors import DTYPES, parse_header
from tlite_edge.errors import TliteError
from tlite_edge.gguf.reader import header_from_buffer, summary_from_header

ST_PATH, GGUF_PATH = Path("fuzz.safetensors"), Path("fuzz.gguf")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_st(data: bytes) -> dict | None:
    try:
        tensors, _ = parse_header(io.BytesIO(data).read, len(data), ST_PATH)
    except TliteError as exc:
        assert str(ST_PATH) in str(exc)
        return None
    spans = sorted((t.offset, t.offset + t.nbytes) for t in tensors.values())
    for t in tensors.values():
        assert t.offset + t.nbytes <= len(data)
        assert t.nbytes == math.prod(t.shape) * DTYPES[t.dtype][0]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    return tensors


def parse_gguf(data: bytes) -> object | None:
    try:
        header = header_from_buffer(data, GGUF_PATH)
    except TliteError as exc:
        assert str(GGUF_PATH) in str(exc)
        return None
    assert header.data_end <= len(data)
    json.dumps(summary_from_header(header, GGUF_PATH, len(data)).as_dict(), ensure_ascii=False)
    return header


# --- safetensors: structure-aware ---------------------------------------------------------------

ints = st.one_of(st.integers(-3, 70), st.sampled_from([2**31, 2**32, 2**48, 2**63, 2**64 + 1]))
entries = st.fixed_dictionaries(
    {
        "dtype": st.one_of(st.sampled_from(sorted(DTYPES)), st.text(max_size=4), st.integers()),
        "shape": st.one_of(st.lists(ints, max_size=5), ints, st.none()),
        "data_offsets": st.one_of(st.lists(ints, min_size=0, max_size=3), st.text(max_size=3)),
    },
    optional={"extra": st.booleans()},
)
headers = st.dictionaries(
    st.text(max_size=12), st.one_of(entries, st.integers(), st.lists(st.none())), max_size=6
)


@FUZZ
@given(header=headers, data_len=st.integers(0, 300), hlen_delta=st.sampled_from([0, 0, 0, -1, 1, 2**40]))
def test_safetensors_structured(header: dict, data_len: int, hlen_delta: int) -> None:
    raw = json.dumps(header).encode()
    parse_st(struct.pack("<Q", max(0, len(raw) + hlen_delta)) + raw + bytes(data_len))


def _valid_safetensors() -> bytes:
    header = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
    }
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(20)


VALID_ST = _valid_safetensors()


def test_valid_safetensors_parses() -> None:
    tensors = parse_st(VALID_ST)
    assert tensors is not None and sorted(tensors) == ["a", "b"]


# --- raw byte mutation of a valid file ----------------------------------------------------------

mutations = st.lists(
    st.tuples(
        st.sampled_from(["set", "insert", "delete", "truncate"]),
        st.integers(0, 10**6),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=6,
)


def apply(data: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for op, pos, chunk in ops:
        at = pos % (len(buf) + 1)
        if op == "set":
            buf[at : at + len(chunk)] = chunk
        elif op == "insert":
            buf[at:at] = chunk
        elif op == "delete":
            del buf[at : at + len(chunk)]
        else:
            del buf[at:]
    return bytes(buf)


@FUZZ
@given(ops=mutations)
def test_safetensors_mutated(ops: list[tuple[str, int, bytes]]) -> None:
    parse_st(apply(VALID_ST, ops))


# --- GGUF: structure-aware --------------------------------------------------------------------

SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def gstr(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


@st.composite
def gguf_values(draw: st.DrawFn) -> bytes:
    vtype = draw(st.sampled_from([*SCALARS, 8, 9, 13, 99]))
    if vtype in SCALARS:
        fmt = SCALARS[vtype]
        size = struct.calcsize(fmt)
        return struct.pack("<I", vtype) + draw(st.binary(min_size=size, max_size=size))
    if vtype == 8:
        return struct.pack("<I", 8) + gstr(draw(st.binary(max_size=20)))
    if vtype == 9:
        item = draw(st.sampled_from([4, 8, 9, 6, 77]))
        count = draw(st.one_of(st.integers(0, 5), st.sampled_from([2**32, 2**62])))
        body = b"".join(gstr(b"x") if item == 8 else bytes(4) for _ in range(min(count, 5)))
        return struct.pack("<IIQ", 9, item, count) + body
    return struct.pack("<I", vtype) + draw(st.binary(max_size=8))


KEYS = st.sampled_from(
    [
        b"general.architecture",
        b"general.alignment",
        b"tokenizer.ggml.tokens",
        b"tokenizer.ggml.eos_token_id",
        b"general.name",
        b"\xff\xfe",
        b"",
    ]
)
QTYPES = st.one_of(st.sampled_from([int(t) for t in GGML_QUANT_SIZES]), st.integers(0, 2**32 - 1))


@st.composite
def gguf_files(draw: st.DrawFn) -> bytes:
    kvs = draw(st.lists(st.tuples(KEYS, gguf_values()), max_size=5))
    tensors = []
    for i in range(draw(st.integers(0, 3))):
        dims = draw(st.lists(st.one_of(st.integers(0, 512), st.sampled_from([2**40, 2**63])), max_size=5))
        qtype = draw(QTYPES)
        offset = draw(st.sampled_from([0, 32, 64, 3, 2**60]))
        tensors.append(
            gstr(f"t{i % 2}".encode()) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, qtype, offset)
        )
    n_tensors = draw(st.one_of(st.just(len(tensors)), st.sampled_from([2**20 + 1, 2**63])))
    n_kv = draw(st.one_of(st.just(len(kvs)), st.integers(0, 9)))
    version = draw(st.sampled_from([3, 3, 2, 1, 2**31]))
    head = b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)
    body = b"".join(gstr(k) + v for k, v in kvs) + b"".join(tensors)
    return head + body + bytes(draw(st.integers(0, 600)))


@FUZZ
@given(data=gguf_files())
def test_gguf_structured(data: bytes) -> None:
    parse_gguf(data)


def _valid_gguf() -> bytes:
    from gguf import GGUFValueType as VT

    from tlite_edge.gguf.writer import GGUFLayout

    layout = GGUFLayout()
    layout.add("general.architecture", VT.STRING, "llama")
    layout.add("tokenizer.ggml.tokens", VT.ARRAY, ["<s>", "a", "б"], VT.STRING)
    layout.add("tokenizer.ggml.eos_token_id", VT.UINT32, 2)
    layout.add("llama.rope.freq_base", VT.FLOAT32, 500000.0)
    layout.add_tensor("token_embd.weight", (3, 32), GGMLQuantizationType.F32)
    layout.add_tensor("blk.0.attn_q.weight", (256, 256), GGMLQuantizationType.Q4_K)
    return layout.header() + bytes(layout.data_size())


VALID_GGUF = _valid_gguf()


def test_valid_gguf_parses() -> None:
    header = parse_gguf(VALID_GGUF)
    assert header is not None
    assert [name for name, _, _ in header.tensors] == ["token_embd.weight", "blk.0.attn_q.weight"]  # type: ignore[attr-defined]


@FUZZ
@given(ops=mutations)
def test_gguf_mutated(ops: list[tuple[str, int, bytes]]) -> None:
    parse_gguf(apply(VALID_GGUF, ops))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_float_metadata_survives_json(value: float) -> None:
    """A NaN/Inf metadata float must not break inspect --json (json.dumps writes NaN/Infinity)."""
    raw = VALID_GGUF.replace(struct.pack("<f", 500000.0), struct.pack("<f", value), 1)
    assert parse_gguf(raw) is not None


# --- regressions: what fuzzing found in the GGUF reader before it was hardened ----------------


def _gguf_with(key: str, vtype: int, value: object) -> bytes:
    from gguf import GGUFValueType as VT

    from tlite_edge.gguf.writer import GGUFLayout

    layout = GGUFLayout()
    layout.add("general.architecture", VT.STRING, "llama")
    layout.add("tokenizer.ggml.eos_token_id", VT.UINT32, 0)
    layout.add(key, VT(vtype), value)
    layout.add_tensor("token_embd.weight", (3, 32), GGMLQuantizationType.F32)
    return layout.header() + bytes(layout.data_size())


def test_regression_alignment_zero() -> None:
    """Was a ZeroDivisionError ('unexpected error') instead of one clear line."""
    with pytest.raises(TliteError, match="not a power of two"):
        header_from_buffer(_gguf_with("general.alignment", 4, 0), GGUF_PATH)


def test_regression_tokens_not_an_array() -> None:
    """Was a TypeError in inspect: tokenizer.ggml.tokens given as a number."""
    header = parse_gguf(_gguf_with("tokenizer.ggml.tokens", 4, 7))
    assert header is not None
    summary = summary_from_header(header, GGUF_PATH, 0)  # type: ignore[arg-type]
    assert summary.metadata["tokenizer.ggml.tokens"] == 7 and summary.special_tokens == {}
