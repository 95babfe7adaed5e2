"""Benchmark ``convert -q`` in one pass against the BF16 route (``--via-bf16``: convert to BF16,
quantize with llama.cpp, remove the BF16 file), interleaved ABBA.

Each run is a child process: wall time, peak RSS (``os.wait4``; counts mapped checkpoint pages),
sampled peak ``RssAnon`` (memory that really needs RAM) and the peak bytes in the output folder
(the BF16 intermediate included). Outputs are deleted after each run. Usage::

    python benchmarks/make_8b_checkpoint.py --out bench-data/tlite-8b-random
    python benchmarks/bench_onepass.py bench-data/tlite-8b-random -q q4_k_m -q q8_0,q6_k,q4_k_m --once
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mdreport import command_line, stamp

SECTION = "## Convert -q in one pass vs through the BF16 file"


def folder_bytes(folder: Path) -> int:
    total = 0
    for entry in os.scandir(folder):
        with contextlib.suppress(OSError):
            total += entry.stat().st_blocks * 512
    return total


def rss_anon(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_once(checkpoint: Path, levels: str, via_bf16: bool, threads: int) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix="bench-onepass-", dir=Path.cwd()))
    cmd = [
        sys.executable,
        "-m",
        "tlite_edge",
        "convert",
        str(checkpoint),
        "-q",
        levels,
        "--out-dir",
        str(out),
    ]
    cmd += ["--threads", str(threads)] + (["--via-bf16"] if via_bf16 else [])
    peaks = {"disk": 0, "anon": 0}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peaks["disk"] = max(peaks["disk"], folder_bytes(out))
            peaks["anon"] = max(peaks["anon"], rss_anon(proc.pid))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    err = proc.stderr.read().decode() if proc.stderr else ""
    final = folder_bytes(out)
    shutil.rmtree(out)
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss": usage.ru_maxrss * 1024,
        "anon": peaks["anon"],
        "disk": max(peaks["disk"], final),
        "out": final,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("-q", "--levels", action="append", required=True, help="levels per case (repeatable)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=1, help="ABBA rounds per case (default 1)")
    ap.add_argument(
        "--once", action="store_true", help="one run per path (via BF16, then one pass), not ABBA"
    )
    args = ap.parse_args()
    gib = 2**30
    print(f"{SECTION}\n")
    print(f"{stamp()} Checkpoint {args.checkpoint.name}.")
    print(f"`{command_line()}`\n")
    print(
        "| levels | path | wall s (median) | CPU s (median) | peak RSS GiB | peak RssAnon GiB "
        "| disk peak GiB | outputs GiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for levels in args.levels:
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        order = (True, False) if args.once else (False, True, True, False) * args.rounds  # ABBA
        for via in order:
            runs[via].append(run_once(args.checkpoint, levels, via, args.threads))
        for via, label in ((False, "one pass"), (True, "via BF16")):
            r = runs[via]
            print(
                f"| {levels} | {label} | {statistics.median(x['wall'] for x in r):.1f} | "
                f"{statistics.median(x['cpu'] for x in r):.1f} | "
                f"{max(x['rss'] for x in r) / gib:.2f} | {max(x['anon'] for x in r) / gib:.2f} | "
                f"{max(x['disk'] for x in r) / gib:.2f} | {r[0]['out'] / gib:.2f} |"
            )
        ratio = statistics.median(x["wall"] for x in runs[False]) / statistics.median(
            x["wall"] for x in runs[True]
        )
        print(f"| {levels} | ratio one pass / via BF16 | {ratio:.2f} | | | | | |")


if __name__ == "__main__":
    main()
