"""An F32 copy of a GGUF with the same weights: every tensor dequantized by gguf-py, metadata kept.

A fair reference for a quantized file: llama.cpp runs the copy with plain F32 matmuls, so comparing
it with the quantized original isolates what the quantized kernels do at run time (e.g. Q4_1
matmuls quantize the activations to 8 bits), and comparing it with another conversion of the same
weights isolates the conversion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, Keys, LlamaFileType, quants

from tlite_edge.fsutil import atomic_output
from tlite_edge.gguf.reader import open_gguf
from tlite_edge.gguf.writer import GGUFLayout, HashingSink
from tlite_edge.runtime.engine import check_model


def dequantize_gguf(src: Path, dst: Path) -> Path:
    """Write ``dst``: ``src``'s metadata (file type ALL_F32) and its tensors as F32, atomically."""
    check_model(src)
    reader = open_gguf(src)
    layout = GGUFLayout()
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        vtype = GGUFValueType(fld.types[0])
        sub = GGUFValueType(fld.types[-1]) if vtype == GGUFValueType.ARRAY else None
        value = int(LlamaFileType.ALL_F32) if key == Keys.General.FILE_TYPE else fld.contents()
        layout.add(key, vtype, value, sub)
    for t in reader.tensors:
        layout.add_tensor(t.name, tuple(int(n) for n in reversed(t.shape)), GGMLQuantizationType.F32)
    with atomic_output(dst) as fh:
        sink = HashingSink(fh)
        try:
            sink.write(layout.header())
            for t in reader.tensors:
                sink.write(quants.dequantize(t.data, GGMLQuantizationType(t.tensor_type)).astype(np.float32))
                sink.pad()
        finally:
            sink.abort()
    return dst
