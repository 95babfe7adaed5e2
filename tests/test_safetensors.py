"""The safetensors reader validates every header field before touching data."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from tlite_edge.checkpoint.safetensors import MAX_HEADER_BYTES, SafetensorsFile
from tlite_edge.errors import TliteError
from tlite_edge.samples.standin import bf16, write_safetensors


def _raw(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_reads_bf16_f16_f32(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_safetensors(tmp_path / "b.safetensors", {"w": bf16(a)})
    write_safetensors(tmp_path / "h.safetensors", {"w": a.astype(np.float16)}, dtype="F16")
    write_safetensors(tmp_path / "f.safetensors", {"w": a}, dtype="F32")
    st = SafetensorsFile(tmp_path / "b.safetensors")
    assert (st.array("w").astype(np.uint32) << 16).view(np.float32).tolist() == a.tolist()
    st.close()
    for name in ("h", "f"):
        st = SafetensorsFile(tmp_path / f"{name}.safetensors")
        assert st.array("w").astype(np.float32).tolist() == a.tolist()
        st.close()


BAD_HEADERS = [
    ({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 6]}}, 8, "needs 8 bytes, has 6"),
    ({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 16]}}, 8, "outside the file"),
    ({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 4]}}, 8, "unknown dtype"),
    ({"w": {"dtype": "BF16", "shape": [-2], "data_offsets": [0, 4]}}, 8, "invalid shape"),
    ({"w": {"dtype": "BF16", "shape": [2]}}, 8, "lacks dtype, shape or data_offsets"),
    (
        {
            "a": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]},
            "b": {"dtype": "BF16", "shape": [2], "data_offsets": [4, 8]},
        },
        8,
        "overlap",
    ),
    ([1, 2, 3], 8, "not a JSON object"),
]


@pytest.mark.parametrize(("header", "nbytes", "message"), BAD_HEADERS)
def test_bad_headers(tmp_path: Path, header: object, nbytes: int, message: str) -> None:
    path = _raw(tmp_path / "x.safetensors", header, b"\0" * nbytes)  # type: ignore[arg-type]
    with pytest.raises(TliteError, match=message) as err:
        SafetensorsFile(path)
    assert str(path) in str(err.value)


def test_header_length_bounds(tmp_path: Path) -> None:
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    with pytest.raises(TliteError, match="exceeds"):
        SafetensorsFile(huge)
    past = tmp_path / "past.safetensors"
    past.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(TliteError, match="past the end"):
        SafetensorsFile(past)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"abc")
    with pytest.raises(TliteError, match="shorter"):
        SafetensorsFile(short)
    notjson = tmp_path / "notjson.safetensors"
    notjson.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(TliteError, match="not valid JSON"):
        SafetensorsFile(notjson)
