"""How much of ``convert -q``'s one pass is ggml's quantization arithmetic: the floor under either route.

Both routes (one pass, and BF16 then ``llama_model_quantize``) must write the same bytes, so both run
ggml's same row quantizers on the same rows; only the reading, widening, hashing and writing around
them differ, and the BF16 route quantizes a tensor once per level where the one pass quantizes it once
for all levels that give it the same type. This script runs the one pass in this process with every
``ggml_quantize_chunk`` call's CPU time summed (``time.thread_time`` in the calling thread), next to
the process's wall and CPU time. The arithmetic divided by the thread count is the least wall time the
one pass could take on this machine if everything else cost nothing::

    python benchmarks/bench_quant_floor.py bench-data/tlite-8b-random -q q8_0,q6_k,q4_k_m --threads 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from mdreport import command_line, stamp

from tlite_edge.gguf_build import onepass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("-q", "--levels", action="append", required=True, help="levels per case (repeatable)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    print(f"## Convert -q: the quantization arithmetic in the one pass\n\n{stamp()}")
    print(f"Checkpoint {args.checkpoint.name}. `{command_line()}`\n")
    print("| levels | wall s | process CPU s | arithmetic CPU s | share | floor wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    quantize, lock = onepass.quantize_rows, threading.Lock()
    spent = [0.0]

    def timed(*a, **kw):  # type: ignore[no-untyped-def]
        t0 = time.thread_time()
        try:
            return quantize(*a, **kw)
        finally:
            with lock:
                spent[0] += time.thread_time() - t0

    onepass.quantize_rows = timed
    for levels in args.levels:
        out = Path(tempfile.mkdtemp(prefix="bench-floor-", dir=Path.cwd()))
        spent[0] = 0.0
        cpu0, t0 = time.process_time(), time.perf_counter()
        try:
            onepass.convert_quantized(args.checkpoint, levels, out, threads=args.threads)
        finally:
            shutil.rmtree(out)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        print(
            f"| {levels} | {wall:.1f} | {cpu:.1f} | {spent[0]:.1f} | {spent[0] / cpu:.0%} "
            f"| {spent[0] / args.threads:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
