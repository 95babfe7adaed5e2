"""Command-line pieces that several verbs share (not a verb): quantization options and per-tensor
progress bars (quantize, convert, release, demo), and the session options of run and chat."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from tlite_edge.errors import TliteError

if TYPE_CHECKING:
    from tlite_edge.quant.quantize import QuantResult
    from tlite_edge.runtime import Engine


def add_quant_arguments(p: argparse.ArgumentParser, *, dry_run: bool = True) -> None:
    """Options shared by ``quantize`` and ``convert -q``."""
    p.add_argument("-q", "--levels", help="comma-separated levels, e.g. q4_k_m,q8_0 (default Q4_K_M)")
    p.add_argument("--imatrix", type=Path, metavar="FILE", help="importance matrix (tlite-edge imatrix)")
    p.add_argument("--threads", type=int, help="quantizer threads (default: all cores)")
    p.add_argument(
        "--profiles",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="extra profile file or folder (repeatable)",
    )
    if dry_run:
        p.add_argument("--dry-run", action="store_true", help="print sizes and RAM per level, write nothing")


def tensor_columns() -> tuple[ProgressColumn, ...]:
    """Progress columns for a per-tensor quantization bar."""
    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tensor]}"),
        TimeElapsedColumn(),
    )


@contextmanager
def level_progress(console: Console) -> Iterator[Callable[[str, int, int, str], None]]:
    """``advance(level, i, n, tensor)`` drawing one bar per level (on a terminal only)."""
    with Progress(*tensor_columns(), console=console, disable=not console.is_terminal) as progress:
        tasks: dict[str, int] = {}

        def advance(level: str, i: int, n: int, name: str) -> None:
            if level not in tasks:
                tasks[level] = progress.add_task(level, total=n, tensor="")
            progress.update(tasks[level], completed=i, total=n, tensor=name)

        yield advance


def run_levels(
    src: Path, args: argparse.Namespace, console: Console, out_dir: Path | None
) -> list[QuantResult]:
    """``-q/--imatrix/--threads/--profiles`` applied to ``src``, with progress and a line per file."""
    from tlite_edge.quant.levels import quantize_levels

    def done(result: QuantResult) -> None:
        console.print(
            f"[green]wrote[/] {result.path} ({result.size_mib:,.1f} MiB, {result.bpw:.2f} bpw) "
            f"sha256 {result.sha256}"
        )

    with level_progress(console) as advance:
        return quantize_levels(
            src,
            args.levels,
            out_dir,
            imatrix=args.imatrix,
            threads=args.threads,
            extra_profiles=args.profiles,
            advance=advance,
            done=done,
        )


def add_rpc_arguments(p: argparse.ArgumentParser) -> None:
    """``--rpc`` and ``--tensor-split``: spread the layers over llama.cpp RPC workers (run, chat, serve,
    bench, doctor)."""
    p.add_argument(
        "--rpc",
        metavar="HOST:PORT[,...]",
        help="llama.cpp RPC workers (tlite-edge worker) that hold part of the layers",
    )
    p.add_argument(
        "--tensor-split",
        metavar="A,B[,LOCAL]",
        help="share of the layers per worker, then this machine's (default: by free memory)",
    )


def rpc_endpoints(args: argparse.Namespace) -> list:
    """The workers of ``--rpc`` (none without it); a lost worker ends the process with one line."""
    if getattr(args, "tensor_split", None) and not getattr(args, "rpc", None):
        raise TliteError(None, "--tensor-split needs --rpc")
    if not getattr(args, "rpc", None):
        return []
    from tlite_edge.runtime.rpc import down_workers, parse_endpoints
    from tlite_edge.runtime.rpc_ggml import on_abort

    endpoints = parse_endpoints(args.rpc)

    def lost(message: str) -> None:
        down = [str(e) for e in down_workers(endpoints)] or ["?"]
        print(
            f"tlite-edge {args.verb}: error: lost the RPC worker {', '.join(down)} "
            f"(llama.cpp: {message.rpartition(': ')[2] or message}); the reply is incomplete",
            file=sys.stderr,
            flush=True,
        )

    on_abort(lost)
    return endpoints


def add_session_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by run and chat: system message, sampling, context, threads and RPC workers."""
    p.add_argument("--system", help="system message")
    p.add_argument("--temp", type=float, help="temperature (0 = greedy; default from the GGUF or 0.6)")
    p.add_argument("--top-p", type=float, help="nucleus sampling (default from the GGUF or 0.9)")
    p.add_argument("--seed", type=int, help="sampling seed (default: random)")
    p.add_argument("--max-tokens", type=int, help="longest reply in tokens (default 1024)")
    p.add_argument("--ctx", type=int, help="context length (default: the model's, reduced if RAM is short)")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    p.add_argument(
        "--think",
        action=argparse.BooleanOptionalAction,
        help="thinking on/off for models whose template has the switch (Qwen3); default: the template's",
    )
    p.add_argument("--hide-thinking", action="store_true", help="do not show the model's thinking")
    add_rpc_arguments(p)
    add_speculative_argument(p)


def add_speculative_argument(p: argparse.ArgumentParser) -> None:
    """``--no-speculative`` (run, chat, serve): decode one token per model step."""
    p.add_argument(
        "--no-speculative",
        dest="speculative",
        action="store_false",
        help="no speculative decoding (by default, text the reply copies from the prompt is checked "
        "several tokens per model step; the output is the same)",
    )
    p.add_argument(
        "--draft",
        type=Path,
        metavar="MODEL.gguf",
        help="draft with this smaller model of the same vocabulary instead of prompt lookup",
    )


MIN_CTX = 64  # a chat prompt (template and a short message) and a few reply tokens
# flag -> (attribute, rule, what it must be); values must also be finite (no nan, no inf)
LIMITS: dict[str, tuple[str, Callable[[float], bool], str]] = {
    "--temp": ("temp", lambda v: 0 <= v <= 2, "a number from 0 to 2 (0 = greedy)"),
    "--top-p": ("top_p", lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "--seed": ("seed", lambda v: 0 <= v < 2**32 - 1, f"in [0, {2**32 - 2}]"),
    "--max-tokens": ("max_tokens", lambda v: v >= 1, "at least 1"),
    "--ctx": ("ctx", lambda v: v >= MIN_CTX, f"at least {MIN_CTX} tokens"),
    "--threads": ("threads", lambda v: v >= 1, "at least 1"),
}


def check_session(args: argparse.Namespace) -> None:
    """Every session flag finite and in range, else one line naming it."""
    for flag, (attr, ok, what) in LIMITS.items():
        value = getattr(args, attr)
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise TliteError(None, f"{flag} must be {what}, got {value}")


def load_engine(args: argparse.Namespace) -> Engine:
    """The session flags checked, then the model loaded with them."""
    check_session(args)
    import llama_cpp

    from tlite_edge.runtime.engine import Engine  # heavy import, only for the verbs that run a model

    seed = llama_cpp.LLAMA_DEFAULT_SEED if args.seed is None else args.seed
    rpc = rpc_endpoints(args)
    engine = Engine.load(
        args.model,
        ctx=args.ctx,
        threads=args.threads,
        seed=seed,
        rpc=rpc,
        tensor_split=args.tensor_split,
        speculative=args.speculative,
    )
    if args.draft is not None and args.speculative:
        engine.use_draft(args.draft)
    return engine
