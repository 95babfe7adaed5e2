"""The converter: a Hugging Face Llama folder -> one GGUF file, one tensor (or row block) at a time."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import quants

from tlite_edge.chat_template import resolve_chat_template
from tlite_edge.checkpoint.hfconfig import ModelConfig, load_config
from tlite_edge.checkpoint.safetensors import count_nonfinite
from tlite_edge.checkpoint.shards import Checkpoint
from tlite_edge.checkpoint.tokenizer import Vocab, load_vocab
from tlite_edge.fsutil import atomic_output, make_dirs
from tlite_edge.gguf.writer import COPY_CHUNK, GGUFLayout, HashingSink
from tlite_edge.gguf_build import known as known_data
from tlite_edge.gguf_build import metadata
from tlite_edge.gguf_build.tensor_map import OUTTYPES, TensorPlan, permute_rows, plan_tensors
from tlite_edge.gguf_build.verify import verify_gguf
from tlite_edge.known_models import KnownModel
from tlite_edge.progress import byte_progress

SOURCE_QTYPE = {"BF16": QT.BF16, "F16": QT.F16, "F32": QT.F32}


@dataclass
class ConvertResult:
    path: Path
    sha256: str
    size: int
    n_tensors: int
    outtype: str
    fixes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)  # parity lines; empty when verification was skipped


def to_f32(block: np.ndarray, dtype: str) -> np.ndarray:
    """Source block (BF16 viewed as uint16, F16 or F32) as float32."""
    if dtype == "BF16":
        return (block.astype(np.uint32) << 16).view(np.float32)
    return block.astype(np.float32, copy=False)


def encode_block(block: np.ndarray, dtype: str, qtype: QT) -> np.ndarray:
    """Encode a row block into ``qtype`` bytes (identity when the types already agree)."""
    if SOURCE_QTYPE[dtype] == qtype:
        return block
    return quants.quantize(to_f32(block, dtype), qtype)


def write_tensor(sink: HashingSink, ckpt: Checkpoint, plan: TensorPlan, head_dim: int) -> int:
    """Stream one tensor into ``sink``; return how many NaN/Inf values its source holds."""
    info = ckpt.tensors[plan.src]
    shard = ckpt.shard_of(plan.src)
    bad = [0]

    def check(block: np.ndarray | bytearray) -> None:
        bad[0] += count_nonfinite(block, info.dtype)

    if plan.permute_heads is None and SOURCE_QTYPE[info.dtype] == plan.qtype:
        sink.copy_from(shard.file, info.offset, info.nbytes, check)
        return bad[0]
    arr = shard.array(plan.src)
    if arr.ndim == 1:
        check(arr)
        sink.write(encode_block(arr, info.dtype, plan.qtype))
        shard.release(plan.src)
        return bad[0]
    unit = head_dim if plan.permute_heads else 1
    step = max(unit, COPY_CHUNK // (arr.shape[1] * 4) // unit * unit)
    for start in range(0, arr.shape[0], step):
        block = arr[start : start + step]
        check(block)
        if plan.permute_heads:
            block = permute_rows(block, head_dim)
        sink.write(encode_block(block, info.dtype, plan.qtype))
        shard.release(plan.src)
    del arr
    return bad[0]


def output_path(name: str, outtype: str, outfile: Path | None, out_dir: Path | None) -> Path:
    """``--outfile`` as given, else ``<out_dir>/<Name>-<TYPE>.gguf`` (``out_dir`` created if missing)."""
    if outfile is not None:
        return outfile
    if out_dir is not None:
        make_dirs(out_dir)
    return (out_dir or Path(".")) / f"{name}-{outtype.upper()}.gguf"


@dataclass
class Prepared:
    """Everything known before the first tensor is read: config, tokenizer, template, tensor plans
    and the BF16/F16/F32/Q8_0 file's metadata (tensor infos included)."""

    folder: Path
    cfg: ModelConfig
    vocab: Vocab
    template: str | None
    ckpt: Checkpoint
    plans: list[TensorPlan]
    names: metadata.ModelNames
    layout: GGUFLayout
    rope_freqs: np.ndarray | None
    known: KnownModel | None = None  # the model's data file, when it has one

    def check(self, target: Path, verified: list[str]) -> Callable[[Path], list[str]]:
        """The parity self-check of a written (temporary) file, recording its lines in ``verified``; a known
        model's end-of-generation tokens are proved too."""
        vocab, template, known = self.vocab, self.template, self.known
        eog = tuple((t, vocab.id_of(t) or 0) for t in known.end_of_generation) if known else ()

        def run(tmp: Path) -> list[str]:
            results = verify_gguf(
                tmp, target, vocab.path, template, vocab.template_bos, vocab.template_eos, eog=eog
            )
            verified.extend(map(str, results))
            return verified

        return run


@contextmanager
def prepare(
    folder: Path,
    *,
    name: str | None = None,
    outtype: str = "bf16",
    chat_template: Path | None = None,
    known: KnownModel | None = None,
) -> Iterator[Prepared]:
    """Validate the checkpoint, tokenizer and template and lay out the GGUF (checkpoint kept open);
    ``known``: the model's data file, whose facts are applied and checked (``gguf_build.known``)."""
    cfg = load_config(folder)
    vocab = load_vocab(folder, cfg.vocab_size)
    if known is not None:
        known_data.apply_to_vocab(known, cfg, vocab)
    template = resolve_chat_template(
        vocab.chat_template, folder / "tokenizer_config.json", chat_template, vocab.fixes
    )
    if known is not None:
        known_data.check_template(known, template, vocab)
    card = metadata.card_facts(folder)
    if known is not None and known.license and not card.license:
        card = metadata.CardFacts(known.license, card.languages)
    with Checkpoint(folder) as ckpt:
        plans = plan_tensors(cfg, ckpt, outtype)
        names = metadata.model_names(name or folder.resolve().name, sum(math.prod(p.shape) for p in plans))
        layout = GGUFLayout()
        metadata.add_model_metadata(layout, cfg, names, OUTTYPES[outtype][1], card)
        if known is not None:
            known_data.add_known_metadata(layout, known)
        rope_freqs = metadata.rope_scaling_keys(cfg, layout)
        metadata.add_tokenizer_metadata(layout, vocab, template)
        if rope_freqs is not None:
            layout.add_tensor("rope_freqs.weight", rope_freqs.shape, QT.F32)
        for plan in plans:
            layout.add_tensor(plan.dst, plan.shape, plan.qtype)
        yield Prepared(folder, cfg, vocab, template, ckpt, plans, names, layout, rope_freqs, known)


def convert(
    folder: Path,
    *,
    name: str | None = None,
    outtype: str = "bf16",
    outfile: Path | None = None,
    out_dir: Path | None = None,
    chat_template: Path | None = None,
    verify: bool = True,
    known: KnownModel | None = None,
    progress: Callable[[str, int], AbstractContextManager[Callable[[int], None]]] = byte_progress,
) -> ConvertResult:
    """Validate everything first, then stream the tensors into an atomically written GGUF; with
    ``verify``, prove tokenizer and template parity on the written file before it is renamed. ``known``:
    the model's data file (``models/``), applied and checked."""
    with prepare(folder, name=name, outtype=outtype, chat_template=chat_template, known=known) as prep:
        cfg, ckpt, plans, layout, rope_freqs = prep.cfg, prep.ckpt, prep.plans, prep.layout, prep.rope_freqs
        target = output_path(prep.names.name, outtype, outfile, out_dir)
        head = layout.header()
        warnings: list[str] = []
        total = len(head) + layout.data_size()
        digest = ""  # set at the end of the block; the sidecar is published with the file, as one step
        verified: list[str] = []

        with (
            progress(f"convert {target.name}", total) as advance,
            atomic_output(target, lambda: digest, prep.check(target, verified) if verify else None) as fh,
        ):
            sink = HashingSink(fh)
            try:
                for part in [head] if rope_freqs is None else [head, rope_freqs]:
                    sink.write(part)
                    sink.pad()
                for plan in plans:
                    before = sink.written
                    if bad := write_tensor(sink, ckpt, plan, cfg.head_dim):
                        warnings.append(f"tensor {plan.src} holds {bad} NaN/Inf values (copied as they are)")
                    sink.pad()
                    advance(sink.written - before)
                digest = sink.hexdigest()
            finally:
                sink.abort()
    vocab = prep.vocab
    return ConvertResult(target, digest, total, len(layout.tensors), outtype, vocab.fixes, warnings, verified)
