"""Quantization benchmark: wall time per level with ``tlite-edge quantize``, and its overhead over a bare
``llama_model_quantize`` call on the same file, same threads, back to back in the same run.

    python benchmarks/bench_quantize.py --model bench-data/T-lite-8b-random-BF16.gguf --work bench-data/q \
        --levels Q4_K_M,Q8_0 --overhead Q4_K_M --threads 2 --update-md BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from mdreport import replace_section, stamp

BARE = r"""
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.nthread = int(sys.argv[4]); p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_" + sys.argv[3])
quiet = llama_cpp.llama_log_callback(lambda *a: None)  # keep a reference: llama.cpp calls it
llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""
SECTION = "## Quantize: 8B-shaped BF16 GGUF → levels"
OVERHEAD_SECTION = "## Quantize: overhead over a bare llama_model_quantize call"


def evict(path: Path) -> None:
    """Drop ``path`` from the page cache, so every timed run reads its input cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


CPU_SECONDS: list[float] = []  # user + system CPU of each timed child, in order


def timed(cmd: list[str], model: Path | None = None) -> float:
    """Wall seconds of ``cmd``; its CPU seconds are appended to CPU_SECONDS."""
    if model is not None:
        evict(model)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return wall


def ours(model: Path, level: str, out_dir: Path, threads: int, imatrix: Path | None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "tlite_edge",
        "quantize",
        str(model),
        "-q",
        level,
        "--out-dir",
        str(out_dir),
        "--threads",
        str(threads),
    ]
    return cmd + (["--imatrix", str(imatrix)] if imatrix else [])


def cleanup(out_dir: Path) -> None:
    for f in out_dir.glob("*"):
        if f.name.startswith(("bare-", ".")) or re.search(r"-(Q|IQ)\w+\.gguf(\.sha256)?$", f.name):
            f.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--levels", default="Q8_0,Q6_K,Q5_K_M,Q4_K_M,IQ4_XS,Q3_K_M,IQ3_M,Q2_K,IQ2_M")
    ap.add_argument("--overhead", default="Q4_K_M", help="level timed against the bare call")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--imatrix", type=Path, help="imatrix for levels that require one")
    ap.add_argument("--update-md", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the quantized files of --levels")
    ap.add_argument("--section", default=SECTION, help="markdown section title for the levels table")
    ap.add_argument("--input", default="the 8B-shaped random checkpoint", help="what the BF16 GGUF came from")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {"overhead": overhead(args)} if args.overhead else {}
    if args.update_md and result:
        write_md(args, result)
    rows: dict[str, float] = {}
    for level in filter(None, args.levels.split(",")):
        needs = level.upper().startswith("IQ2")
        cmd = ours(args.model, level, args.work, args.threads, args.imatrix if needs else None)
        rows[level] = timed(cmd, args.model)
        size = next(args.work.glob(f"*-{level}.gguf")).stat().st_size / 2**30
        print(f"{level}: {rows[level]:.1f} s, {size:.2f} GiB", flush=True)
        rows[level + " GiB"] = size
        if not args.keep:
            cleanup(args.work)
        if args.update_md:  # after every level, so a long run that is cut short still reports
            write_md(args, {"levels": rows})
    result["levels"] = rows
    print(json.dumps(result))
    return 0


def overhead(args: argparse.Namespace) -> dict:
    """Bare and ours in ABBA order (drift cancels), same level and threads, input read cold each time,
    outputs removed between runs; the ratio of the means."""
    lvl = args.overhead
    bare_cmd = [
        sys.executable,
        "-c",
        BARE,
        str(args.model),
        str(args.work / f"bare-{lvl}.gguf"),
        f"MOSTLY_{lvl}",
        str(args.threads),
    ]
    runs: dict[str, list[float]] = {"bare": [], "ours": []}
    cpu: dict[str, list[float]] = {"bare": [], "ours": []}
    for kind in ("bare", "ours", "ours", "bare"):
        cmd = bare_cmd if kind == "bare" else ours(args.model, lvl, args.work, args.threads, None)
        runs[kind].append(timed(cmd, args.model))
        cpu[kind].append(CPU_SECONDS[-1])
        cleanup(args.work)
        print(f"{kind}: {runs[kind][-1]:.1f} s wall, {cpu[kind][-1]:.1f} s CPU", flush=True)
    bare_t, ours_t = (sum(runs[k]) / len(runs[k]) for k in ("bare", "ours"))
    bare_c, ours_c = (sum(cpu[k]) / len(cpu[k]) for k in ("bare", "ours"))
    ratio = ours_t / bare_t
    print(f"overhead {lvl}: ours {ours_t:.1f} s / bare {bare_t:.1f} s = {ratio:.3f}x")
    return {
        "level": lvl,
        "ours_s": ours_t,
        "bare_s": bare_t,
        "ratio": ratio,
        "runs": runs,
        "cpu_ratio": ours_c / bare_c,
        "cpu": cpu,
    }


def write_md(args: argparse.Namespace, result: dict) -> None:
    when = f"{stamp()} {args.threads} threads."
    levels = [k for k in result.get("levels", {}) if not k.endswith(" GiB")]
    if levels:
        body = [
            f"{when} Input: the BF16 GGUF converted from {args.input}.",
            "",
            "| level | wall s | size GiB |",
            "|---|---|---|",
        ]
        body += [f"| {k} | {result['levels'][k]:.1f} | {result['levels'][k + ' GiB']:.2f} |" for k in levels]
        replace_section(args.update_md, args.section, body)
    if o := result.get("overhead"):
        body = [
            when,
            "",
            f"`tlite-edge quantize` {o['ours_s']:.1f} s vs a bare `llama_model_quantize` call "
            f"{o['bare_s']:.1f} s at {o['level']} = **{o['ratio']:.3f}×** (target ≤ 1.02×; mean of two runs "
            f"each in ABBA order, input evicted from the page cache before every run; runs: bare "
            f"{', '.join(f'{t:.1f}' for t in o['runs']['bare'])} s, ours "
            f"{', '.join(f'{t:.1f}' for t in o['runs']['ours'])} s). Ours also fsyncs, renames atomically "
            "and writes the sha256 (hashed from the page cache while the flush runs). CPU time (user + "
            f"system) ours {sum(o['cpu']['ours']) / 2:.1f} s vs bare {sum(o['cpu']['bare']) / 2:.1f} s = "
            f"{o['cpu_ratio']:.3f}×.",
        ]
        replace_section(args.update_md, OVERHEAD_SECTION, body)


if __name__ == "__main__":
    raise SystemExit(main())
