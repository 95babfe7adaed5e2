"""Engine setting before/after: llama.cpp's flash attention off (llama-cpp-python's default, tlite-edge's
before) and on (llama.cpp's "auto" on CPU, tlite-edge's now), through the bare decode loop that shares
the engine's context parameters; both contexts loaded on one mmap, runs alternating (ABBA).

    python benchmarks/bench_flash_attn.py bench-data/llama-1b-random-Q4_K_M.gguf --reps 4 --pp 256 --tg 32
"""

from __future__ import annotations

import argparse
import statistics

import llama_cpp

from tlite_edge.runtime.bare import BareLlama


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=8192)
    args = ap.parse_args()
    loops = {}
    for fa in (False, True):
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers, mp.use_mmap = 0, True
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = args.ctx, 512, 512
        cp.n_threads = cp.n_threads_batch = args.threads
        cp.flash_attn_type, cp.no_perf = int(fa), False
        loops[fa] = BareLlama(args.model, mp, cp)
    prompt = [128000] + [(i * 7919) % 120000 + 100 for i in range(args.pp - 1)]
    for loop in loops.values():
        loop.run(prompt[:32], 2)  # warm-up
    res: dict[bool, tuple[list[float], list[float]]] = {k: ([], []) for k in loops}
    for rep in range(args.reps):
        for fa in (False, True) if rep % 2 == 0 else (True, False):
            run = loops[fa].run(prompt, args.tg)
            res[fa][0].append(run.pp_tok_s)
            res[fa][1].append(run.tg_tok_s)
    print("| flash attention | pp tok/s median (range) | tg tok/s median (range) |")
    print("|---|---:|---:|")
    for fa, (pp, tg) in res.items():
        print(
            f"| {'on' if fa else 'off'} | {statistics.median(pp):.2f} ({min(pp):.1f}–{max(pp):.1f}) | "
            f"{statistics.median(tg):.2f} ({min(tg):.2f}–{max(tg):.2f}) |"
        )
    for loop in loops.values():
        loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
