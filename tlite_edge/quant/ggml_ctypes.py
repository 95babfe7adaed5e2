"""Just enough of ggml through ctypes to read the tensors llama.cpp's eval callback hands over.

``GGMLTensor`` mirrors ``struct ggml_tensor`` of the ggml vendored in llama-cpp-python (ggml.h);
the mirror is checked against the library at load time (``ggml_tensor_overhead`` and
``ggml_op_name``), so a llama-cpp-python with another layout fails loudly instead of misreading.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import numpy as np

from tlite_edge.errors import TliteError

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64
GGML_OBJECT_SIZE = 32  # sizeof(struct ggml_object) on 64-bit platforms

# The llama-cpp-python release these mirrors were checked against (pyproject.toml pins the same range).
CHECKED_LLAMA_CPP = "0.3.36"
GGML_TYPE_F32 = 0
GGML_OP_MUL_MAT = 29  # enum ggml_op, checked against ggml_op_name() at load time
GGML_OP_MUL_MAT_ID = 30


class GGMLTensor(ctypes.Structure):
    """``struct ggml_tensor`` (ggml/include/ggml.h)."""


GGMLTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GGMLTensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(GGMLTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]

TensorP = ctypes.POINTER(GGMLTensor)


class GGUFInitParams(ctypes.Structure):
    """``struct gguf_init_params`` (ggml/include/gguf.h)."""

    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


def _library_names() -> list[str]:
    if sys.platform == "win32":
        return ["ggml-base.dll", "libggml-base.dll", "ggml.dll", "libggml.dll"]
    if sys.platform == "darwin":
        return ["libggml-base.dylib", "libggml-base.so", "libggml.dylib", "libggml.so"]
    return ["libggml-base.so", "libggml.so"]


@functools.lru_cache(maxsize=1)
def libggml() -> ctypes.CDLL:
    """The ggml library that llama-cpp-python ships next to libllama (the copy llama.cpp runs on)."""
    lib_dir = Path(str(llama_cpp.__file__)).parent / "lib"
    path = next((lib_dir / n for n in _library_names() if (lib_dir / n).exists()), None)
    if path is None:
        raise RuntimeError(f"no ggml library in {lib_dir}")
    lib = ctypes.CDLL(str(path))
    lib.ggml_tensor_overhead.restype = ctypes.c_size_t
    lib.ggml_tensor_overhead.argtypes = []
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    lib.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    lib.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [TensorP, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, GGUFInitParams]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    lib.ggml_free.argtypes = [ctypes.c_void_p]
    lib.ggml_get_first_tensor.restype = TensorP
    lib.ggml_get_first_tensor.argtypes = [ctypes.c_void_p]
    lib.ggml_get_next_tensor.restype = TensorP
    lib.ggml_get_next_tensor.argtypes = [ctypes.c_void_p, TensorP]
    size = lib.ggml_tensor_overhead() - GGML_OBJECT_SIZE
    if size != ctypes.sizeof(GGMLTensor):
        layout_mismatch(f"struct ggml_tensor is {size} bytes, our mirror {ctypes.sizeof(GGMLTensor)}")
    for op, name in ((GGML_OP_MUL_MAT, b"MUL_MAT"), (GGML_OP_MUL_MAT_ID, b"MUL_MAT_ID")):
        if lib.ggml_op_name(op) != name:
            layout_mismatch(f"ggml op {op} is {lib.ggml_op_name(op)!r}, expected {name!r}")
    return lib


def layout_mismatch(what: str) -> None:
    """One line: the installed llama-cpp-python's ggml differs from the one our ctypes mirrors know."""
    raise TliteError(
        f"llama-cpp-python {llama_cpp.__version__}",
        f"{what}: tlite-edge's ctypes mirrors were checked against {CHECKED_LLAMA_CPP}; "
        f"install llama-cpp-python=={CHECKED_LLAMA_CPP}",
    )


def gguf_tensor_dims(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> ``ne`` (4 dims, ne0 first) from ggml's own GGUF parser; None if it refuses the file.

    Reads only the header (no tensor data), in C: fast even with a 128k-token vocabulary.
    """
    lib = libggml()
    ctx = ctypes.c_void_p()
    gctx = lib.gguf_init_from_file(os.fsencode(path), GGUFInitParams(True, ctypes.pointer(ctx)))
    if not gctx:
        return None
    try:
        dims: dict[str, tuple[int, ...]] = {}
        t = lib.ggml_get_first_tensor(ctx)
        while t:
            dims[t.contents.name.decode("utf-8", errors="replace")] = tuple(int(n) for n in t.contents.ne)
            t = lib.ggml_get_next_tensor(ctx, t)
        return dims
    finally:
        lib.gguf_free(gctx)
        if ctx:
            lib.ggml_free(ctx)


def weight_name(raw: bytes) -> str:
    """A model weight's name without a backend's decorations (``CUDA0#blk.0.attn_k.weight#0``)."""
    name = raw.decode("utf-8", errors="replace")
    if "#" in name:
        name = name.split("#")[1]
    return name


def f32_rows(t: GGMLTensor) -> np.ndarray:
    """An F32 tensor's rows as a [rows, ne0] float32 array (host memory read in place, else copied).

    The result may alias ggml's memory: use it before the callback returns.
    """
    if t.type != GGML_TYPE_F32 or t.nb[0] != 4 or any(s % 4 for s in t.nb):
        raise ValueError(f"{weight_name(t.name)}: not a contiguous-row F32 tensor")
    lib = libggml()
    ne = tuple(int(n) for n in t.ne)
    nb = tuple(int(n) for n in t.nb)
    nbytes = sum((n - 1) * s for n, s in zip(ne, nb, strict=True)) + 4
    if t.buffer and not lib.ggml_backend_buffer_is_host(t.buffer):
        raw = np.empty(nbytes, dtype=np.uint8)
        lib.ggml_backend_tensor_get(ctypes.byref(t), raw.ctypes.data, 0, nbytes)
    else:
        raw = np.frombuffer((ctypes.c_char * nbytes).from_address(t.data), dtype=np.uint8)
    view = np.lib.stride_tricks.as_strided(
        raw.view(np.float32),
        shape=ne[::-1],
        strides=nb[::-1],
        writeable=False,
    )
    return view.reshape(-1, ne[0])


class StatsError(Exception):
    """Activations that cannot be summed (non-finite values, stacked expert weights)."""


class MatmulInputStats:
    """An eval callback (``llama_context_params.cb_eval``) that sums, per column, the squares of the
    inputs of every matrix multiplication by a weight whose name ``wanted`` accepts (llama-imatrix's
    ``in_sum2``), and counts the input rows. Keep the object alive while the context is in use."""

    def __init__(self, wanted: Callable[[str], bool]) -> None:
        libggml()  # load and check the struct mirror before the first callback
        self.wanted = wanted
        self.sums: dict[str, np.ndarray] = {}  # float64 accumulators
        self.counts: dict[str, int] = {}
        self.error: BaseException | None = None
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_eval)

    def _on_eval(self, t_ptr: int, ask: bool, user_data: int | None) -> bool:
        try:
            t = ctypes.cast(t_ptr, TensorP).contents
            if ask:  # the scheduler asks first; only nodes answered True are handed over after compute
                if t.op != GGML_OP_MUL_MAT or not t.src[0] or not t.src[1]:
                    return False
                src1 = t.src[1].contents
                return src1.type == GGML_TYPE_F32 and self.wanted(weight_name(t.src[0].contents.name))
            self._add(t.src[0].contents, t.src[1].contents)
            return True
        except BaseException as exc:  # never let an exception cross the C boundary; stop the graph
            self.error = self.error or exc
            return False

    def _add(self, weight: GGMLTensor, inputs: GGMLTensor) -> None:
        name = weight_name(weight.name)
        if weight.ne[2] * weight.ne[3] != 1:
            raise StatsError(f"{name}: stacked (expert) weights are not supported")
        rows = f32_rows(inputs)
        acc = self.sums.setdefault(name, np.zeros(rows.shape[1], dtype=np.float64))
        if acc.shape[0] != rows.shape[1]:
            raise StatsError(f"{name}: input width changed from {acc.shape[0]} to {rows.shape[1]}")
        for start in range(0, rows.shape[0], 256):  # bounded float64 temporaries
            block = rows[start : start + 256].astype(np.float64)
            acc += np.einsum("ij,ij->j", block, block)
        if not np.isfinite(acc).all():
            raise StatsError(f"{name}: non-finite activations")
        self.counts[name] = self.counts.get(name, 0) + rows.shape[0]
