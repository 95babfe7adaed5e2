"""ggml's own row quantizer (``ggml_quantize_chunk``) through ctypes, from the libggml that
llama-cpp-python ships: the same code ``llama_model_quantize`` runs, called on float32 row blocks.

The bindings are checked when the library is loaded: every GGML type we may write must have the
name and block size gguf-py gives it (``ggml_type_name``, ``ggml_blck_size``, ``ggml_row_size``),
so a libggml whose type enum moved fails loudly instead of writing wrong bytes.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT

from tlite_edge.quant.ggml_ctypes import layout_mismatch, libggml

# The types the one-pass writer may produce (every type llama.cpp's rules can pick for our profiles).
WRITABLE: tuple[QT, ...] = (
    QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0,
    QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K,
    QT.IQ2_XXS, QT.IQ2_XS, QT.IQ2_S, QT.IQ3_XXS, QT.IQ3_S, QT.IQ1_S, QT.IQ1_M, QT.IQ4_NL, QT.IQ4_XS,
)  # fmt: skip
FloatP = ctypes.POINTER(ctypes.c_float)


@functools.lru_cache(maxsize=1)
def quant_lib() -> ctypes.CDLL:
    """libggml with the quantization entry points declared and the type table checked."""
    lib = libggml()
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, FloatP, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, FloatP
    ]  # fmt: skip
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_validate_row_data.restype = ctypes.c_bool
    lib.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    lib.ggml_type_name.restype = ctypes.c_char_p
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    lib.ggml_blck_size.restype = ctypes.c_int64
    lib.ggml_blck_size.argtypes = [ctypes.c_int]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    for qt in WRITABLE:
        name = (lib.ggml_type_name(int(qt)) or b"").decode().upper()
        block, size = GGML_QUANT_SIZES[qt]
        if (
            name != qt.name
            or lib.ggml_blck_size(int(qt)) != block
            or lib.ggml_row_size(int(qt), 256) != 256 // block * size
        ):
            layout_mismatch(f"ggml type {int(qt)} is {name!r} in libggml, gguf-py calls it {qt.name}")
    return lib


def requires_imatrix(qtype: QT) -> bool:
    """ggml refuses to quantize to ``qtype`` without an importance matrix (it would abort)."""
    return bool(quant_lib().ggml_quantize_requires_imatrix(int(qtype)))


def row_bytes(qtype: QT, n_per_row: int) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return n_per_row // block * size


def quantize_rows(rows: np.ndarray, qtype: QT, imatrix: np.ndarray | None = None) -> np.ndarray:
    """``rows`` ([n, n_per_row] float32) as ``qtype`` bytes, validated like llama.cpp validates them.

    Releases the GIL while ggml works, so row blocks can be quantized on several threads."""
    lib = quant_lib()
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    nrows, n_per_row = rows.shape
    if imatrix is None and requires_imatrix(qtype):
        raise ValueError(f"{qtype.name} needs an importance matrix")
    out = np.empty(nrows * row_bytes(qtype, n_per_row), dtype=np.uint8)
    imat = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        imat = imatrix.ctypes.data_as(FloatP)
    size = lib.ggml_quantize_chunk(
        int(qtype), rows.ctypes.data_as(FloatP), out.ctypes.data, 0, nrows, n_per_row, imat
    )
    if size != out.nbytes or not lib.ggml_validate_row_data(int(qtype), out.ctypes.data, size):
        raise ValueError(f"ggml produced invalid {qtype.name} data")
    return out
