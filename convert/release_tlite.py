"""Build (and optionally push) the T-lite-instruct-0.1 GGUF release with the recommended levels.

    python convert/release_tlite.py --out release/T-lite-instruct-0.1-GGUF \
        [--push OWNER/T-lite-instruct-0.1-GGUF] [--eval-json eval.json] [--keep-bf16] \
        [--source AnatoliiPotapov/T-lite-instruct-0.1] [--threads N]

Downloads the checkpoint (or takes a local folder), converts it to BF16, computes a Russian importance
matrix, quantizes every recommended level with it, and writes the model card and SHA256SUMS: a thin
wrapper over ``tlite-edge release``.
"""

from __future__ import annotations

import argparse
import sys

from tlite_edge import cli
from tlite_edge.source import DEFAULT_SOURCE

# From near-lossless to the smallest that stays usable on T-lite's shapes (see BENCHMARKS.md).
RECOMMENDED = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M", "IQ3_M", "Q2_K", "IQ2_M")
CALIBRATION = ("--calibrate", "--ctx", "512")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="release folder (new or empty)")
    p.add_argument(
        "--source", default=DEFAULT_SOURCE, help=f"Hub id or local folder (default {DEFAULT_SOURCE})"
    )
    p.add_argument("--levels", default=",".join(RECOMMENDED), help="comma-separated levels")
    p.add_argument("--eval-json", help="quality numbers from tlite-edge eval")
    p.add_argument("--push", metavar="REPO", help="Hub repo to upload to")
    p.add_argument("--threads", help="threads for calibration and quantization")
    p.add_argument("--keep-bf16", action="store_true", help="ship the lossless BF16 GGUF too (~16 GB)")
    args = p.parse_args(argv)
    cmd = ["release", args.source, "--out", args.out, "-q", args.levels, *CALIBRATION]
    cmd += ["--quantized-by", "tlite-edge", "--name", "T-lite-instruct-0.1"]
    cmd += ["--keep-bf16"] if args.keep_bf16 else []
    for flag, value in (("--eval-json", args.eval_json), ("--push", args.push), ("--threads", args.threads)):
        if value:
            cmd += [flag, value]
    print("tlite-edge " + " ".join(cmd), file=sys.stderr)
    return cli.main(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
