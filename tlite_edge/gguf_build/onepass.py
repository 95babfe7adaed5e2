"""``convert -q`` in one pass: each checkpoint tensor is read once and written to every level's GGUF.

Byte for byte what converting to the intermediate file (BF16 by default) and running llama.cpp's
``llama_model_quantize`` on it writes: the intermediate's row blocks are made as the converter
makes them, widened to float32 as llama.cpp widens them, and quantized by ggml's own
``ggml_quantize_chunk`` to the type llama.cpp's rules (``quant.type_rules``) pick per tensor; the
metadata is the intermediate's with ``general.quantization_version`` and ``general.file_type``
set last, and the tensors are in llama.cpp's order. Row blocks are bounded, so memory stays small.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType, Keys

from tlite_edge.checkpoint.safetensors import count_nonfinite
from tlite_edge.errors import TliteError
from tlite_edge.fsutil import atomic_output, make_dirs
from tlite_edge.gguf.writer import GGUFLayout, HashingSink
from tlite_edge.gguf_build.build import SOURCE_QTYPE, Prepared, encode_block, permute_rows, to_f32
from tlite_edge.known_models import KnownModel
from tlite_edge.quant.ggml_quant import quantize_rows
from tlite_edge.quant.profiles import Profile
from tlite_edge.quant.quantize import QuantResult
from tlite_edge.quant.type_rules import ModelShape, choose_types, supported

GGML_QNT_VERSION = 2  # ggml.h: written as general.quantization_version by llama_model_quantize
BLOCK_BYTES = 16 * 2**20  # float32 bytes per row block
LOOKAHEAD = 2  # blocks (or tensor ends) submitted before the oldest is written
FILE_DTYPE = {QT.BF16: "BF16", QT.F16: "F16", QT.F32: "F32"}  # intermediate types read as floats
RESET_KEYS = (Keys.General.QUANTIZATION_VERSION, Keys.General.FILE_TYPE)
Advance = Callable[[str, int, int, str], None]


@dataclass
class Level:
    """One output file: its profile, tensor types, layout and (while writing) sink."""

    profile: Profile
    types: dict[str, QT]
    layout: GGUFLayout
    target: Path
    sink: HashingSink | None = None
    digest: str = ""
    verified: list[str] = field(default_factory=list)


def model_shape(prep: Prepared) -> ModelShape:
    cfg = prep.cfg
    return ModelShape(cfg.gguf_arch, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads)


def why_not(prep: Prepared, profile: Profile) -> str | None:
    """Why ``profile`` cannot be written in one pass from ``prep`` (None: it can)."""
    if prep.layout.tensors and any(q not in FILE_DTYPE for _, _, q, _ in prep.layout.tensors):
        return "the intermediate file type is itself quantized"
    return supported(profile, model_shape(prep))


def level_layout(
    base: GGUFLayout, profile: Profile, types: dict[str, QT], order: Sequence[str]
) -> GGUFLayout:
    """The intermediate's metadata as llama_model_quantize rewrites it, tensors in ``order``."""
    layout = GGUFLayout()
    for key, vtype, value, item in base.kv:
        if key not in RESET_KEYS:
            layout.add(key, vtype, value, item)
    layout.add(Keys.General.QUANTIZATION_VERSION, GGUFValueType.UINT32, GGML_QNT_VERSION)
    layout.add(Keys.General.FILE_TYPE, GGUFValueType.UINT32, profile.ftype_id)
    shapes = {name: shape for name, shape, _, _ in base.tensors}
    for name in order:
        layout.add_tensor(name, shapes[name], types[name])
    return layout


def plan_level(
    prep: Prepared, profile: Profile, imatrix: dict[str, np.ndarray] | None, target: Path
) -> Level:
    """Types for every tensor; a missing or misshapen importance matrix is refused here, before writing."""
    tensors = [(name, shape, qtype) for name, shape, qtype, _ in prep.layout.tensors]
    choices = choose_types(tensors, profile, model_shape(prep), bool(imatrix))
    shapes = {name: shape for name, shape, _ in tensors}
    for c in choices:
        quantized = c.qtype not in FILE_DTYPE and c.name != "token_embd.weight"
        if quantized and imatrix and c.name in imatrix and imatrix[c.name].size != shapes[c.name][-1]:
            raise TliteError(
                c.name, f"imatrix has {imatrix[c.name].size} values, rows have {shapes[c.name][-1]}"
            )
        if c.needs_imatrix and not (imatrix and c.name in imatrix):
            raise TliteError(
                c.name,
                f"level {profile.name} makes it {c.qtype.name}, which needs an importance matrix (--imatrix)",
            )
    types = {c.name: c.qtype for c in choices}
    order = [c.name for c in choices]
    return Level(profile, types, level_layout(prep.layout, profile, types, order), target)


def file_blocks(prep: Prepared, name: str, bad: list[int]) -> Iterator[np.ndarray]:
    """The intermediate file's rows of tensor ``name`` (as the converter writes them), block by block."""
    if name == "rope_freqs.weight" and prep.rope_freqs is not None:
        yield prep.rope_freqs
        return
    plan = next(p for p in prep.plans if p.dst == name)
    info = prep.ckpt.tensors[plan.src]
    shard = prep.ckpt.shard_of(plan.src)
    arr = shard.array(plan.src)
    if arr.ndim == 1:
        bad[0] += count_nonfinite(arr, info.dtype)
        yield np.asarray(encode_block(arr, info.dtype, plan.qtype))
        shard.release(plan.src)
        return
    unit = prep.cfg.head_dim if plan.permute_heads else 1
    step = max(unit, BLOCK_BYTES // (arr.shape[1] * 4) // unit * unit)
    for start in range(0, arr.shape[0], step):
        block = arr[start : start + step]
        bad[0] += count_nonfinite(block, info.dtype)
        if plan.permute_heads:
            block = permute_rows(block, prep.cfg.head_dim)
        out = encode_block(block, info.dtype, plan.qtype)
        if SOURCE_QTYPE[info.dtype] != plan.qtype:  # gguf-py returns bytes: view them as elements again
            out = np.ascontiguousarray(out).view(np.uint16 if plan.qtype != QT.F32 else np.float32)
        yield np.asarray(out).reshape(block.shape[0], -1)
        shard.release(plan.src)


def _as_f32(block: np.ndarray, file_type: QT) -> np.ndarray:
    if file_type == QT.F16:
        return block.view(np.float16).astype(np.float32)
    return to_f32(block, FILE_DTYPE[file_type])


def write_levels(
    prep: Prepared,
    levels: list[Level],
    *,
    imatrix: dict[str, np.ndarray] | None,
    threads: int,
    verify: bool,
    advance: Advance | None = None,
) -> list[str]:
    """Stream every tensor once into all ``levels`` (atomic files); return NaN/Inf warnings."""
    file_types = {name: qtype for name, _, qtype, _ in prep.layout.tensors}
    order = list(levels[0].types)
    warnings: list[str] = []
    with ExitStack() as stack, ThreadPoolExecutor(max(1, threads)) as pool:
        for lv in levels:
            check = prep.check(lv.target, lv.verified) if verify else None
            fh = stack.enter_context(atomic_output(lv.target, lambda lv=lv: lv.digest, check))
            lv.sink = HashingSink(fh)
            stack.callback(lv.sink.abort)
            lv.sink.write(lv.layout.header())

        def submit() -> Iterator[tuple[str, object]]:
            """Each block's quantization jobs as they are submitted, then each tensor's end."""
            for i, name in enumerate(order, 1):
                file_type = file_types[name]
                imat = None if imatrix is None else imatrix.get(name)
                bad = [0]
                for block in file_blocks(prep, name, bad):
                    rows = None
                    made: dict[QT, list] = {file_type: [block]}  # levels that share a type share its bytes
                    for lv in levels:
                        qtype = lv.types[name]
                        if qtype in made:
                            continue
                        if rows is None:
                            rows = _as_f32(block, file_type).reshape(
                                block.shape[0] if block.ndim > 1 else 1, -1
                            )
                        use = imat if imat is not None and imat.size == rows.shape[1] else None
                        parts = np.array_split(rows, min(max(1, threads), rows.shape[0]))
                        made[qtype] = [pool.submit(quantize_rows, p, qtype, use) for p in parts]
                    yield "block", [made[lv.types[name]] for lv in levels]
                if bad[0]:
                    warnings.append(f"tensor {name} holds {bad[0]} NaN/Inf values")
                yield "end", (i, name)

        def finish(kind: str, item: object) -> None:
            """Write a block's bytes to every level, or pad every level at a tensor's end."""
            for n, lv in enumerate(levels):
                assert lv.sink is not None
                if kind == "block":
                    for part in item[n]:  # type: ignore[index]
                        lv.sink.write(part if isinstance(part, np.ndarray) else part.result())
                    continue
                lv.sink.pad()
                if advance is not None:
                    i, name = item  # type: ignore[misc]
                    advance(lv.profile.name, i, len(order), name)

        # The next block is read and widened while the pool still quantizes the previous ones.
        pending: deque[tuple[str, object]] = deque()
        for step in submit():
            pending.append(step)
            if len(pending) > LOOKAHEAD:
                finish(*pending.popleft())
        while pending:
            finish(*pending.popleft())
        for lv in levels:
            assert lv.sink is not None
            lv.digest = lv.sink.hexdigest()
    return warnings


def result_of(lv: Level) -> QuantResult:
    nbytes = sum(n for *_, n in lv.layout.tensors)
    n_elements = sum(math.prod(shape) for _, shape, _, _ in lv.layout.tensors)
    return QuantResult(lv.profile.name, lv.target, lv.digest, nbytes / 2**20, nbytes * 8 / n_elements)


def convert_levels(
    prep: Prepared,
    profiles: Sequence[Profile],
    out_dir: Path,
    *,
    imatrix: dict[str, np.ndarray] | None = None,
    threads: int = 1,
    verify: bool = True,
    advance: Advance | None = None,
) -> tuple[list[QuantResult], list[list[str]], list[str]]:
    """Every level of ``profiles`` (all must pass ``why_not``) as ``<out_dir>/<name>-<LEVEL>.gguf``.

    Returns the results, each file's parity lines, and warnings about the source."""
    make_dirs(out_dir)
    base = prep.names.name
    levels = [plan_level(prep, p, imatrix, out_dir / p.output_name(base)) for p in profiles]
    warnings = write_levels(prep, levels, imatrix=imatrix, threads=threads, verify=verify, advance=advance)
    return [result_of(lv) for lv in levels], [lv.verified for lv in levels], warnings


def planned_dims(prep: Prepared) -> tuple[str, dict[str, tuple[int, ...]]]:
    """The intermediate file's tensors as (label, name -> ne) for checking an importance matrix."""
    dims = {
        name: tuple(reversed(shape)) + (1,) * (4 - len(shape)) for name, shape, _, _ in prep.layout.tensors
    }
    return prep.names.name, dims


@dataclass
class ConvertedLevels:
    results: list[QuantResult]
    verified: list[list[str]]
    warnings: list[str]
    via_bf16: list[str]  # one line per level that went through the intermediate file


def convert_quantized(
    folder: Path,
    levels: str | Sequence[str | Profile] | None,
    out_dir: Path,
    *,
    name: str | None = None,
    outtype: str = "bf16",
    chat_template: Path | None = None,
    imatrix: Path | dict[str, np.ndarray] | None = None,
    threads: int | None = None,
    extra_profiles: Sequence[Path] = (),
    verify: bool = True,
    advance: Advance | None = None,
    known: KnownModel | None = None,
) -> ConvertedLevels:
    """The checkpoint at every level: in one pass where the rules are ported, the rest through the
    intermediate file and llama.cpp's quantizer (the file removed afterwards)."""
    from tlite_edge.gguf_build.build import convert, prepare
    from tlite_edge.quant.imatrix import check_against_model, physical_cores, read_imatrix
    from tlite_edge.quant.levels import choose, quantize_levels

    profiles = choose(levels, extra_profiles)
    threads = threads or physical_cores()
    with prepare(folder, name=name, outtype=outtype, chat_template=chat_template, known=known) as prep:
        imp = imatrix
        if isinstance(imatrix, Path):
            data = read_imatrix(imatrix)
            check_against_model(data, imatrix, planned_dims(prep))
            imp = data.importance()
        missing = [p.name for p in profiles if p.requires_imatrix and not imp]
        if missing:
            raise TliteError(
                folder, f"level {', '.join(missing)} needs an importance matrix (--imatrix FILE)"
            )
        reasons = {p.name: why_not(prep, p) for p in profiles}
        direct = [p for p in profiles if reasons[p.name] is None]
        done = ConvertedLevels([], [], [], [])
        if direct:
            assert not isinstance(imp, Path)
            results, verified, warnings = convert_levels(
                prep, direct, out_dir, imatrix=imp, threads=threads, verify=verify, advance=advance
            )
            done = ConvertedLevels(results, verified, warnings, [])
    rest = [p for p in profiles if reasons[p.name] is not None]
    if rest:
        mid = convert(
            folder,
            name=name,
            outtype=outtype,
            out_dir=out_dir,
            chat_template=chat_template,
            verify=verify,
            known=known,
        )
        try:
            for p in rest:
                done.via_bf16.append(f"level {p.name}: {reasons[p.name]}; quantized through {mid.path.name}")
            done.results += quantize_levels(mid.path, rest, out_dir, imatrix=imatrix, threads=threads)
            done.verified += [mid.verified] * len(rest)
        finally:
            from tlite_edge.fsutil import sidecar_path

            mid.path.unlink(missing_ok=True)
            sidecar_path(mid.path).unlink(missing_ok=True)
    return done
