"""Convert a Hugging Face checkpoint (local folder or Hub id) to one GGUF file, as llama.cpp's
``convert_hf_to_gguf.py`` is called, over tlite-edge's streaming converter:

    python convert/hf_to_gguf.py SRC --outtype bf16 --outfile T-lite-instruct-0.1-BF16.gguf

The output is proved before it is renamed into place (llama.cpp's ids == HF tokenizers' on the source
tokenizer.json, template rendered alike); ``--no-verify`` skips that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tlite_edge import TliteError, convert
from tlite_edge.gguf_build.tensor_map import OUTTYPES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="Hugging Face folder or Hub repo id")
    p.add_argument("--outtype", choices=list(OUTTYPES), default="bf16")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--outfile", type=Path, help="output file")
    where.add_argument("--out-dir", type=Path, help="output folder (file named <Name>-<TYPE>.gguf)")
    p.add_argument("--revision", help="Hub branch, tag or commit")
    p.add_argument("--no-verify", action="store_true", help="skip the tokenizer and template parity checks")
    args = p.parse_args(argv)
    try:
        result = convert(
            args.source,
            outtype=args.outtype,
            outfile=args.outfile,
            out_dir=args.out_dir,
            revision=args.revision,
            verify=not args.no_verify,
        )
    except TliteError as exc:
        print(f"hf_to_gguf: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {result.path} (sha256 {result.sha256})")
    for line in [*result.fixes, *(result.verified or ["unverified (--no-verify)"])]:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
