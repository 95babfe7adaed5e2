"""Importance matrices: collected in llama.cpp, stored in the GGUF format of ``llama-imatrix``.

Collection follows ``llama-imatrix``: the text is tokenized with the model's own add-BOS flag, cut
into ``ctx``-token chunks (the remainder is dropped; the first token of every chunk becomes BOS when
the model adds BOS), every chunk is decoded from an empty cache with outputs for all tokens, and
the eval callback adds, for each matrix multiplication by a model weight, the squares of its input
activations per column (``in_sum2``) and the number of input rows (``counts``).

File layout (as ``llama-imatrix`` writes it and ``llama-quantize --imatrix`` reads it): GGUF v3 with
``general.type = "imatrix"``, ``imatrix.datasets`` (string array), ``imatrix.chunk_count`` and
``imatrix.chunk_size`` (uint32); per weight, sorted by name, ``<weight>.in_sum2`` F32 with GGUF dims
``[n_cols, n_mat]`` and ``<weight>.counts`` F32 with dims ``[1, n_mat]``, trailing 1s dropped as ggml
does (a dense weight: ``[n_cols]`` and ``[1]``). ``counts`` holds token rows, not chunks (e.g.
43 chunks × 128 = 5504). The quantizer's importance is ``in_sum2 / counts``.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp as lc
import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, Keys

from tlite_edge.errors import TliteError
from tlite_edge.fsutil import atomic_output
from tlite_edge.gguf.reader import field_value, open_gguf, read_header
from tlite_edge.gguf.writer import GGUFLayout
from tlite_edge.quant import ggml_ctypes as gg
from tlite_edge.quant.llama_log import capture_log

KEY_TYPE = Keys.General.TYPE
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUM2, COUNTS = ".in_sum2", ".counts"

MIN_CTX = 16  # llama-imatrix ignores smaller batches


@dataclass
class ImatrixEntry:
    """Raw statistics of one weight: ``in_sum2`` [n_mat, n_cols] and ``counts`` [n_mat], float32."""

    in_sum2: np.ndarray
    counts: np.ndarray

    def importance(self) -> np.ndarray:
        """``in_sum2 / counts`` flattened (float32); 1 where nothing was counted, as llama-quantize."""
        counts = self.counts.astype(np.float32)[:, None]
        safe = np.where(counts > 0, counts, np.float32(1))
        values = np.where(counts > 0, self.in_sum2 / safe, np.float32(1))
        return np.ascontiguousarray(values, dtype=np.float32).reshape(-1)


@dataclass
class Imatrix:
    entries: dict[str, ImatrixEntry]
    chunk_count: int
    chunk_size: int
    datasets: list[str] = field(default_factory=list)

    def importance(self) -> dict[str, np.ndarray]:
        return {name: e.importance() for name, e in sorted(self.entries.items())}


# --- the file format -------------------------------------------------------------------------


def write_imatrix(imatrix: Imatrix, path: str | Path) -> Path:
    """Write ``imatrix`` atomically in llama-imatrix's GGUF layout; return the path."""
    layout = GGUFLayout()
    layout.add(KEY_TYPE, GGUFValueType.STRING, "imatrix")
    layout.add(KEY_DATASETS, GGUFValueType.ARRAY, list(imatrix.datasets), GGUFValueType.STRING)
    layout.add(KEY_CHUNK_COUNT, GGUFValueType.UINT32, int(imatrix.chunk_count))
    layout.add(KEY_CHUNK_SIZE, GGUFValueType.UINT32, int(imatrix.chunk_size))
    blobs: list[np.ndarray] = []
    for name in sorted(imatrix.entries):
        e = imatrix.entries[name]
        sums = np.ascontiguousarray(e.in_sum2, dtype="<f4")
        counts = np.ascontiguousarray(e.counts, dtype="<f4").reshape(-1, 1)
        if sums.ndim != 2 or counts.shape[0] != sums.shape[0]:
            raise ValueError(f"{name}: in_sum2 {sums.shape} and counts {counts.shape} do not pair")
        dense = sums.shape[0] == 1  # ggml writes n_dims = ggml_n_dims(): trailing 1s dropped
        layout.add_tensor(name + SUM2, sums.shape[1:] if dense else sums.shape, GGMLQuantizationType.F32)
        layout.add_tensor(name + COUNTS, (1,) if dense else counts.shape, GGMLQuantizationType.F32)
        blobs += [sums, counts]
    with atomic_output(path) as fh:
        fh.write(layout.header())
        for blob in blobs:
            raw = blob.tobytes()
            fh.write(raw + b"\0" * (-len(raw) % 32))
    return Path(path)


def read_imatrix(path: str | Path) -> Imatrix:
    """Read an imatrix GGUF back, checked the way llama-quantize checks it (one-line errors)."""
    p = Path(path)
    if p.is_file():
        with open(p, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise TliteError(p, "not a GGUF imatrix (the legacy imatrix.dat format is not read)")
    if not any(n.endswith(SUM2) for n in gguf_dims(p)[1]):  # fast refusal of e.g. a model file
        raise TliteError(p, f"not an imatrix (no <weight>{SUM2} tensors)")
    reader = open_gguf(p)
    kind = field_value(reader, KEY_TYPE)
    if kind != "imatrix":
        raise TliteError(p, f"not an imatrix (general.type is {kind!r}, expected 'imatrix')")
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in reader.fields]
    if missing:
        raise TliteError(p, f"imatrix metadata missing: {', '.join(missing)}")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        for suffix in (SUM2, COUNTS):
            if t.name.endswith(suffix):
                if t.tensor_type != GGMLQuantizationType.F32:
                    raise TliteError(p, f"{t.name} is {t.tensor_type.name}, must be F32")
                dims = [int(d) for d in t.shape]  # GGUF order: ne0 first
                n_mat = math.prod(dims[1:]) if len(dims) > 1 else 1
                data = np.array(t.data, dtype=np.float32).reshape(n_mat, -1)
                pairs.setdefault(t.name[: -len(suffix)], {})[suffix] = data
    if not pairs:
        raise TliteError(p, "imatrix holds no entries")
    entries: dict[str, ImatrixEntry] = {}
    for name, pair in sorted(pairs.items()):
        if SUM2 not in pair or COUNTS not in pair:
            raise TliteError(p, f"{name}: in_sum2 and counts must both be present")
        sums, counts = pair[SUM2], pair[COUNTS].reshape(-1)
        if sums.shape[0] != counts.size and counts.size != 1:
            raise TliteError(p, f"{name}: {counts.size} counts for {sums.shape[0]} matrices")
        if not (np.isfinite(sums).all() and np.isfinite(counts).all()) or (counts < 0).any():
            raise TliteError(p, f"{name}: non-finite or negative values")
        entries[name] = ImatrixEntry(sums, np.broadcast_to(counts, (sums.shape[0],)).copy())
    datasets = field_value(reader, KEY_DATASETS)
    return Imatrix(
        entries,
        int(field_value(reader, KEY_CHUNK_COUNT)),
        int(field_value(reader, KEY_CHUNK_SIZE)),
        [str(d) for d in datasets] if isinstance(datasets, list) else [],
    )


# a GGUF file or reader, or (label, tensor name -> ne) of a model not written yet
ModelRef = str | Path | GGUFReader | tuple[str, dict[str, tuple[int, ...]]]


def gguf_dims(model: ModelRef) -> tuple[str, dict[str, tuple[int, ...]]]:
    """A model's name for messages and its tensors' ``ne`` (4 dims, ne0 first)."""
    if isinstance(model, tuple):
        return model
    if isinstance(model, GGUFReader):
        label = Path(str(getattr(model.data, "filename", None) or "model")).name
        return label, {
            t.name: tuple(int(d) for d in t.shape) + (1,) * (4 - len(t.shape)) for t in model.tensors
        }
    p = Path(model)
    header = read_header(p)  # fast: GGUFReader takes seconds over a 128k-token vocabulary
    return p.name, {name: dims + (1,) * (4 - len(dims)) for name, dims, _ in header.tensors}


def matmul_weights(dims: dict[str, tuple[int, ...]]) -> list[str]:
    """The weights llama.cpp multiplies activations by: 2-D+ ``blk.*`` tensors and ``output.weight``."""
    return [n for n, ne in dims.items() if max(ne[1:]) > 1 and (n.startswith("blk.") or n == "output.weight")]


def check_against_model(imatrix: Imatrix, imatrix_path: str | Path, model: ModelRef) -> None:
    """Every entry names a weight of ``model`` with its row length; every blk.* weight has an entry."""
    label, dims = gguf_dims(model)
    hint = "(computed on another model?)"
    for name, e in imatrix.entries.items():
        ne = dims.get(name)
        if ne is None:
            raise TliteError(imatrix_path, f"{name} is not a tensor of {label} {hint}")
        if e.in_sum2.size != ne[0] * ne[2]:  # what llama-quantize requires
            raise TliteError(
                imatrix_path,
                f"{name} has {e.in_sum2.size} values, its rows in {label} have {ne[0] * ne[2]} {hint}",
            )
    missing = [n for n in matmul_weights(dims) if n.startswith("blk.") and n not in imatrix.entries]
    if missing:
        raise TliteError(
            imatrix_path, f"no data for {len(missing)} weights of {label}, e.g. {missing[0]} {hint}"
        )


def load_imatrix(path: str | Path, model: ModelRef) -> dict[str, np.ndarray]:
    """Read, validate against a GGUF model, and return per-weight importance (float32, flat).

    The arrays are ``in_sum2 / counts`` in llama-quantize's layout, ready for
    ``llama_model_imatrix_data`` (name, data pointer, size = row length × n_mat).
    """
    imatrix = read_imatrix(path)
    check_against_model(imatrix, path, model)
    return imatrix.importance()


def physical_cores() -> int:
    """Physical cores this process may run on (llama.cpp's threading default), at least 1."""
    try:
        cpus = os.sched_getaffinity(0)
        cores = set()
        for cpu in cpus:
            topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(((topo / "physical_package_id").read_text(), (topo / "core_id").read_text()))
        return max(1, len(cores))
    except (AttributeError, OSError):
        return max(1, (os.cpu_count() or 2) // 2)


# --- collection in llama.cpp -----------------------------------------------------------------


ProgressFn = Callable[[int, int, int], None]


def collect(
    model_path: str | Path,
    text: str,
    *,
    ctx: int = 512,
    chunks: int | None = None,
    threads: int | None = None,
    dataset: str = "",
    include_output: bool = True,
    progress: ProgressFn | None = None,
) -> Imatrix:
    """Run the model in llama.cpp over ``text`` and return its importance matrix.

    ``progress(done_chunks, total_chunks, n_tokens)`` is called before the first chunk and after
    each. ``dataset`` names the text in the file and in errors. ``include_output`` also collects
    ``output.weight`` (llama-imatrix does only with ``--process-output``).
    """
    if ctx < MIN_CTX:
        raise TliteError(None, f"--ctx must be at least {MIN_CTX} tokens (got {ctx})")
    if chunks is not None and chunks < 1:
        raise TliteError(None, f"--chunks must be at least 1 (got {chunks})")
    if threads is not None and threads < 1:
        raise TliteError(None, f"--threads must be at least 1 (got {threads})")

    def wanted(name: str) -> bool:
        return name.startswith("blk.") or (include_output and name == "output.weight")

    expected = [n for n in matmul_weights(gguf_dims(model_path)[1]) if wanted(n)]
    stats = gg.MatmulInputStats(wanted)
    log: list[str] = []
    with capture_log(lambda level, line: log.append(line)):
        lc.llama_backend_init()
        model = lc.llama_model_load_from_file(str(model_path).encode(), lc.llama_model_default_params())
        if not model:
            raise TliteError(model_path, f"llama.cpp could not load the model{_last_line(log)}")
        try:
            params = lc.llama_context_default_params()
            params.n_ctx = params.n_batch = params.n_ubatch = ctx
            params.n_seq_max = 1
            params.n_threads = params.n_threads_batch = threads or physical_cores()
            params.cb_eval = stats.callback
            params.cb_eval_user_data = None
            params.no_perf = True
            lctx = lc.llama_init_from_model(model, params)
            if not lctx:
                raise TliteError(model_path, f"llama.cpp could not create a context{_last_line(log)}")
            try:
                vocab = lc.llama_model_get_vocab(model)
                tokens = _tokenize(vocab, text)
                n_chunks = min(chunks or len(tokens) // ctx, len(tokens) // ctx)
                if n_chunks == 0:
                    raise TliteError(
                        dataset or None, f"text is {len(tokens)} tokens, less than one chunk of {ctx}"
                    )
                if progress:
                    progress(0, n_chunks, len(tokens))
                for i in range(n_chunks):
                    rc = _decode_chunk(lctx, vocab, tokens[i * ctx : (i + 1) * ctx])
                    if stats.error is not None:
                        raise stats.error
                    if rc != 0:
                        raise RuntimeError(f"llama_decode returned {rc}{_last_line(log)}")
                    if progress:
                        progress(i + 1, n_chunks, len(tokens))
            except gg.StatsError as exc:
                raise TliteError(model_path, str(exc)) from None
            finally:
                lc.llama_free(lctx)
        finally:
            lc.llama_model_free(model)
    missing = [n for n in expected if n not in stats.sums]
    if missing:
        raise RuntimeError(f"no activations were seen for {len(missing)} weights, e.g. {missing[0]}")
    entries = {
        name: ImatrixEntry(sums.astype(np.float32)[None, :], np.array([stats.counts[name]], np.float32))
        for name, sums in sorted(stats.sums.items())
    }
    return Imatrix(entries, n_chunks, ctx, [dataset] if dataset else [])


def _tokenize(vocab: object, text: str) -> np.ndarray:
    """The model's own tokenization (BOS added if the model says so, special tokens as text)."""
    raw = text.encode("utf-8")
    buf = (lc.llama_token * (len(raw) + 8))()
    n = lc.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, False)
    if n < 0:
        raise RuntimeError(f"tokenizer needs room for {-n} tokens")
    return np.ctypeslib.as_array(buf)[:n].astype(np.int32)


def _decode_chunk(lctx: object, vocab: object, chunk: np.ndarray) -> int:
    """Decode one chunk from an empty cache with outputs for every token (so that every token goes
    through every matmul, as in llama-imatrix); its first token becomes BOS if the model adds BOS."""
    chunk = np.array(chunk, dtype=np.int32)
    if lc.llama_vocab_get_add_bos(vocab):
        chunk[0] = lc.llama_vocab_bos(vocab)
    n = len(chunk)
    batch = lc.llama_batch_init(n, 0, 1)
    try:
        ctypes.memmove(batch.token, chunk.ctypes.data, chunk.nbytes)
        for k in range(n):
            batch.pos[k], batch.n_seq_id[k], batch.logits[k] = k, 1, 1
            batch.seq_id[k][0] = 0
        batch.n_tokens = n
        lc.llama_memory_clear(lc.llama_get_memory(lctx), True)
        return int(lc.llama_decode(lctx, batch))
    finally:
        lc.llama_batch_free(batch)


def _last_line(log: list[str]) -> str:
    lines = [line.strip() for line in log if line.strip()]
    return f": {lines[-1]}" if lines else ""
