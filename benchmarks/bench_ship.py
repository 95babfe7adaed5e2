"""Shipping benchmark on the tiny T-lite-shaped stand-in (real 128256-token Llama-3 vocabulary):
inspect (fast header reader + checks) vs gguf-py's GGUFReader, ``inspect --fix``, ``export`` copy with
sha256 verification, and a two-level ``release``.

    python benchmarks/bench_ship.py --work bench-data/ship --update-md BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mdreport import replace_section, stamp

SECTION = "## Ship: inspect, --fix, export and release on the stand-in"


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--update-md", type=Path)
    args = ap.parse_args()
    from tlite_edge.gguf_build.build import convert
    from tlite_edge.samples.standin import write_standin

    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    folder = write_standin(work / "T-lite-standin-instruct-0.1")
    gguf = convert(folder, name="T-lite-standin-instruct-0.1", out_dir=work).path
    size_mib = gguf.stat().st_size / 2**20
    py = [sys.executable, "-m", "tlite_edge"]
    rows: list[tuple[str, float, str]] = []

    t = timed([sys.executable, "-c", f"from gguf import GGUFReader; GGUFReader({str(gguf)!r})"])
    rows.append(("gguf-py GGUFReader (open only)", t, ""))
    t = timed([*py, "inspect", str(gguf), "--json"])
    rows.append(("tlite-edge inspect --json (process)", t, "header + all checks"))

    broken = work / "broken.gguf"
    data = bytearray(gguf.read_bytes())
    data[data.index(b"llama-bpe") : data.index(b"llama-bpe") + 9] = b"smaug-bpe"
    broken.write_bytes(bytes(data))
    t = timed([*py, "inspect", str(broken), "--fix", str(work / "fixed.gguf")])
    rows.append(("tlite-edge inspect --fix (process)", t, f"{size_mib:.0f} MiB rewritten and hashed"))

    home = work / "home"
    (home / ".lmstudio" / "models").mkdir(parents=True)
    env = {"HOME": str(home), "TLITE_EDGE_LMSTUDIO_MODELS": ""}
    t = timed([*py, "export", str(gguf), "--to", "lmstudio"], env)
    rows.append(("tlite-edge export --to lmstudio (copy)", t, f"{size_mib / t:.0f} MiB/s incl. start-up"))

    t = timed([*py, "release", str(gguf), "--out", str(work / "rel"), "-q", "Q8_0,Q4_K_M", "--calibrate",
               "--chunks", "4", "--ctx", "128"])  # fmt: skip
    rows.append(("tlite-edge release -q Q8_0,Q4_K_M --calibrate", t, "4 chunks × 128 tokens"))

    body = [
        stamp(),
        "",
        f"Stand-in BF16 GGUF: {size_mib:.1f} MiB, 2 layers, the real 128256-token Llama-3 vocabulary (the "
        "vocabulary dominates header parsing, as on T-lite). Wall seconds, one run each, on a machine "
        "shared with other work.",
        "",
        "| step | wall s | notes |",
        "|---|---:|---|",
        *(f"| {name} | {t:.2f} | {note} |" for name, t, note in rows),
    ]
    print("\n".join(body))
    if args.update_md:
        replace_section(args.update_md, SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
