"""An F32 copy of a GGUF with the same weights: every tensor dequantized by gguf-py, metadata kept.

A fair reference for a quantized file: llama.cpp runs the copy with plain F32 matmuls, so comparing
it with the quantized original isolates what the quantized kernels do at run time (e.g. Q4_1
matmuls quantize the activations to 8 bits), and comparing it with another conversion of the same
weights isolates the conversion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType, quants

from tlite_edge.errors import TliteError
from tlite_edge.fsutil import publish, temp_path
from tlite_edge.runtime.engine import check_model

FILE_TYPE = "general.file_type"


def dequantize_gguf(src: Path, dst: Path) -> Path:
    """Write ``dst``: ``src``'s metadata (file type ALL_F32) and its tensors as F32, atomically."""
    check_model(src)
    if not dst.parent.is_dir():
        raise TliteError(dst.parent, "output folder does not exist")
    reader = GGUFReader(src)
    arch = str(reader.fields["general.architecture"].contents())
    tmp = temp_path(dst)
    try:
        writer = GGUFWriter(tmp, arch)
        for key, fld in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture":
                continue
            vtype = GGUFValueType(fld.types[0])
            sub = GGUFValueType(fld.types[-1]) if vtype == GGUFValueType.ARRAY else None
            value = int(LlamaFileType.ALL_F32) if key == FILE_TYPE else fld.contents()
            writer.add_key_value(key, value, vtype, sub_type=sub)
        for t in reader.tensors:
            shape = tuple(int(n) for n in reversed(t.shape))
            data = quants.dequantize(t.data, GGMLQuantizationType(t.tensor_type)).reshape(shape)
            writer.add_tensor(t.name, np.ascontiguousarray(data, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        publish(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
