"""``tlite-edge imatrix MODEL.gguf``: an importance matrix for llama.cpp's quantizer.

Runs the model in llama.cpp over calibration text (default: the Russian text shipped by the
``dataset-build`` package) and writes the GGUF imatrix that ``llama-imatrix`` writes, for
``tlite-edge quantize --imatrix`` or ``llama-quantize --imatrix``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tlite_edge.errors import TliteError
from tlite_edge.progress import console as err_console


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("imatrix", help="compute an importance matrix for quantization", description=__doc__)
    p.add_argument("model", type=Path, help="GGUF model (BF16/F16/F32 gives the best statistics)")
    p.add_argument("--text", type=Path, metavar="FILE", help="UTF-8 calibration text (default: Russian text)")
    p.add_argument("-o", "--output", type=Path, help="output file (default ./<model name>.imatrix.gguf)")
    p.add_argument("--chunks", type=int, metavar="N", help="use at most N chunks (default: the whole text)")
    p.add_argument("--ctx", type=int, default=512, metavar="N", help="tokens per chunk (default 512)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: physical cores)")
    p.set_defaults(func=run)


def output_path(args: argparse.Namespace) -> Path:
    out = args.output or Path(f"{args.model.name.removesuffix('.gguf')}.imatrix.gguf")
    if out.is_dir():
        raise TliteError(out, "output path is a directory")
    if not out.absolute().parent.is_dir():
        raise TliteError(out.parent, "output folder does not exist")
    return out


@contextmanager
def chunk_progress(console: Console) -> Iterator[Callable[[int, int, int], None]]:
    """``progress(done, total, n_tokens)``: a bar with ETA on a terminal, a per-chunk ETA line after
    the first chunk otherwise."""
    bar = Progress(
        TextColumn("[bold]imatrix"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks"),
        TimeRemainingColumn(),
        console=err_console,
        disable=not sys.stderr.isatty(),
    )
    state: dict[str, float] = {}

    def update(done: int, total: int, n_tokens: int) -> None:
        if done == 0:
            state["task"] = bar.add_task("imatrix", total=total)
            state["t0"] = time.perf_counter()
        else:
            bar.update(int(state["task"]), completed=done)
            if done == 1 and bar.disable:
                per = time.perf_counter() - state["t0"]
                console.print(f"{per:.2f} s per chunk, ETA {per * (total - 1):.0f} s")

    with bar:
        yield update


def run(args: argparse.Namespace) -> int:
    from tlite_edge.quant.imatrix import physical_cores  # loads llama.cpp
    from tlite_edge.quant.levels import calibrate
    from tlite_edge.texts import default_text

    console = Console()
    if not args.model.is_file():
        raise TliteError(args.model, "no such file")
    out = output_path(args)
    if args.text is None:
        path, dataset = default_text()
        console.print(f"text: {escape(str(path))} (default Russian calibration text, {dataset})")
    else:
        console.print(f"text: {escape(str(args.text))}")
    threads = args.threads if args.threads is not None else physical_cores()

    with chunk_progress(console) as progress:

        def report(done: int, total: int, n_tokens: int) -> None:
            if done == 0:
                dropped = n_tokens - total * args.ctx
                console.print(
                    f"{n_tokens:,} tokens -> {total} chunks of {args.ctx} ({dropped:,} tokens unused), "
                    f"{threads} threads"
                )
            progress(done, total, n_tokens)

        t0 = time.perf_counter()
        _, imatrix = calibrate(
            args.model,
            out,
            text=args.text,
            ctx=args.ctx,
            chunks=args.chunks,
            threads=threads,
            progress=report,
        )
    console.print(
        f"[green]wrote[/] {escape(str(out))} ({len(imatrix.entries)} weights, {imatrix.chunk_count} chunks × "
        f"{imatrix.chunk_size} tokens, {time.perf_counter() - t0:.1f} s)"
    )
    return 0
