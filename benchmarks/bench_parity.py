"""Cost of convert's tokenizer and template self-check on a 128k vocabulary (budget: 5 s).

Runs the parity check on the stand-in's BF16 GGUF (the real 128256-token Llama-3 vocabulary, as on
T-lite) for both ignore_merges values, split into its steps, median of --repeat runs:

    python benchmarks/bench_parity.py --work bench-data/parity --update-md BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from mdreport import replace_section, stamp

SECTION = "## Convert's self-check: tokenizer and template parity on a 128k vocabulary"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--update-md", type=Path)
    args = ap.parse_args()
    from tokenizers import Tokenizer

    from tlite_edge.chat_template import resolve_chat_template
    from tlite_edge.checkpoint.tokenizer import load_vocab
    from tlite_edge.gguf_build.build import convert
    from tlite_edge.gguf_build.probes import merge_sensitive_words, probe_strings
    from tlite_edge.gguf_build.verify import template_parity, tokenizer_parity, vocab_only
    from tlite_edge.samples.standin import write_standin

    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    rows = []
    for flag in (True, False):
        folder = write_standin(work / f"im-{flag}" / "T-lite-standin-instruct-0.1", ignore_merges=flag)
        gguf = convert(folder, out_dir=folder.parent, verify=False).path
        tok_path = folder / "tokenizer.json"
        vocab = load_vocab(folder, 128256)
        template = resolve_chat_template(vocab.chat_template, tok_path, None, [])
        steps: dict[str, list[float]] = {}
        n_probes = n_words = 0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            tok = json.loads(tok_path.read_text(encoding="utf-8"))
            hf = Tokenizer.from_file(str(tok_path))
            t1 = time.perf_counter()
            n_words = len(merge_sensitive_words(tok, hf))
            t2 = time.perf_counter()
            n_probes = len(probe_strings(tok, hf))
            t3 = time.perf_counter()
            with vocab_only(gguf, gguf) as llm:
                t4 = time.perf_counter()
                tokenizer_parity(llm, tok_path, gguf)
                t5 = time.perf_counter()
                template_parity(llm, template, vocab.template_bos, vocab.template_eos, gguf)
                t6 = time.perf_counter()
            for name, dt in (
                ("part: load tokenizer.json in HF tokenizers", t1 - t0),
                ("part: merge-sensitive words (whole vocabulary, both ways)", t2 - t1),
                ("part: probe set (incl. the word search)", t3 - t2),
                ("llama.cpp vocab-only load", t4 - t3),
                ("tokenizer parity (load + probe set + compare)", t5 - t4),
                ("template parity (4 chats)", t6 - t5),
                ("**whole check, as convert runs it**", t6 - t3),
            ):
                steps.setdefault(name, []).append(dt)
        for name, times in steps.items():
            rows.append((f"ignore_merges {str(flag).lower()}", name, statistics.median(times), max(times)))
        print(f"ignore_merges {flag}: {n_probes} probes, {n_words} merge-sensitive words")
    lines = [f"| {v} | {n} | {m:.2f} | {x:.2f} |" for v, n, m, x in rows]
    print("\n".join(lines))
    if args.update_md:
        body = [
            stamp(),
            "",
            f"Stand-in BF16 GGUF with the real 128256-token Llama-3 vocabulary; {n_probes} probe strings "
            f"({n_words} of them merge-sensitive vocabulary words). Seconds, median and max of {args.repeat} "
            "runs. The 'part' rows time pieces of the tokenizer parity step on their own; the whole check is "
            "the llama.cpp load plus both parity steps. Budget: 5 s.",
            "",
            "| tokenizer.json | step | median s | max s |",
            "|---|---|---:|---:|",
            *lines,
        ]
        replace_section(args.update_md, SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
