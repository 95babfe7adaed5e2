"""Quantize one BF16/F16/F32 GGUF to several levels with llama.cpp's quantizer, optionally with an
importance matrix computed first on the packaged Russian calibration text:

    python convert/gguf_levels.py T-lite-instruct-0.1-BF16.gguf -q q8_0,q4_k_m,iq3_m --calibrate
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tlite_edge import TliteError, calibrate, quantize


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gguf", type=Path, help="source GGUF (BF16, F16 or F32)")
    p.add_argument("-q", "--levels", default="Q4_K_M", help="comma-separated levels (default Q4_K_M)")
    p.add_argument("--out-dir", type=Path, help="output folder (default: next to the source)")
    imx = p.add_mutually_exclusive_group()
    imx.add_argument("--imatrix", type=Path, help="importance matrix file")
    imx.add_argument("--calibrate", action="store_true", help="compute the importance matrix first")
    p.add_argument("--threads", type=int, help="threads (default: all cores)")
    args = p.parse_args(argv)
    try:
        imatrix = args.imatrix
        if args.calibrate:
            imatrix, _ = calibrate(args.gguf, threads=args.threads)
            print(f"imatrix {imatrix}")
        for result in quantize(args.gguf, args.levels, args.out_dir, imatrix=imatrix, threads=args.threads):
            print(f"wrote {result.path} ({result.size_mib:,.1f} MiB, {result.bpw:.2f} bpw)")
    except TliteError as exc:
        print(f"gguf_levels: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
