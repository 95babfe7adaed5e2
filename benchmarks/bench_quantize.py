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


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


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
    ap.add_argument("--section", default=SECTION, help="markdown section title for the levels table")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {"overhead": overhead(args)} if args.overhead else {}
    if args.update_md and result:
        write_md(args, result)
    rows: dict[str, float] = {}
    for level in filter(None, args.levels.split(",")):
        needs = level.upper().startswith("IQ2")
        rows[level] = timed(ours(args.model, level, args.work, args.threads, args.imatrix if needs else None))
        size = next(args.work.glob(f"*-{level}.gguf")).stat().st_size / 2**30
        print(f"{level}: {rows[level]:.1f} s, {size:.2f} GiB", flush=True)
        rows[level + " GiB"] = size
        cleanup(args.work)
        if args.update_md:  # after every level, so a long run that is cut short still reports
            write_md(args, {"levels": rows})
    result["levels"] = rows
    print(json.dumps(result))
    return 0


def overhead(args: argparse.Namespace) -> dict:
    """Bare call then ours, same level and threads, outputs removed between runs."""
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
    bare_t = timed(bare_cmd)
    cleanup(args.work)
    ours_t = timed(ours(args.model, lvl, args.work, args.threads, None))
    cleanup(args.work)
    ratio = ours_t / bare_t
    print(f"overhead {lvl}: ours {ours_t:.1f} s / bare {bare_t:.1f} s = {ratio:.3f}x")
    return {"level": lvl, "ours_s": ours_t, "bare_s": bare_t, "ratio": ratio}


def write_md(args: argparse.Namespace, result: dict) -> None:
    when = f"{stamp()} {args.threads} threads."
    levels = [k for k in result.get("levels", {}) if not k.endswith(" GiB")]
    if levels:
        body = [
            f"{when} Input: the BF16 GGUF converted from the 8B-shaped random checkpoint.",
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
            f"{o['bare_s']:.1f} s at {o['level']} = **{o['ratio']:.3f}×** (target ≤ 1.02×; ours also fsyncs, "
            "renames atomically and writes the sha256).",
        ]
        replace_section(args.update_md, OVERHEAD_SECTION, body)


if __name__ == "__main__":
    raise SystemExit(main())
