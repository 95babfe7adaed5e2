"""Runtime speed: ``tlite-edge bench`` (ours against a bare llama_decode loop, same file and threads),
written as a BENCHMARKS.md section; with ``--llama-bench PATH`` (benchmarks/build_llama_bench.py makes
it) also ours / llama.cpp's ``llama-bench`` for pp, tg at depth 0 and tg at the depth our prompt reaches,
all interleaved, in a section of its own per model file.

    python benchmarks/bench_runtime.py bench-data/T-lite-instruct-0.1-Q4_K_M.gguf --threads 2 \
        --update-md BENCHMARKS.md
    python benchmarks/bench_runtime.py bench-data/llama-1b-random-Q4_K_M.gguf --threads 2 --reps 4 \
        --llama-bench "$(python benchmarks/build_llama_bench.py)" --update-md BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from mdreport import replace_section, stamp

SECTION = "## Runtime: tlite-edge vs a bare llama.cpp decode loop"
ANCHOR_SECTION = "## Runtime: tlite-edge vs llama.cpp's llama-bench, {name}"
TARGET_TEXT = {  # ratio key -> how the issue states the target
    "pp_vs_bare": "pp ≥ 0.98× bare",
    "tg_vs_bare": "tg ≥ 0.98× bare",
    "ttft_last_vs_first_turn": "last-turn TTFT ≤ 1.2× first-turn (per evaluated token)",
    "tg_vs_bandwidth_bound": "tg ≥ 0.9× bandwidth bound",
}


def section(r: dict[str, Any]) -> list[str]:
    ours, bare, bw = r["ours"], r["bare"], r["bandwidth"]
    cfg = r["config"]
    lines = [
        stamp(),
        f"Model `{Path(r['model']).name}`, {r['threads']} threads, context {r['n_ctx']}, "
        f"GPU layers {r['gpu_layers']}, medians of {cfg['reps']} runs"
        + (", ours and bare alternating (ABBA), both loaded on one mmap." if r.get("interleaved") else "."),
        "",
        "| | tlite-edge | bare llama.cpp | ours / bare |",
        "|---|---:|---:|---:|",
        f"| load (s) | {ours['load_s']:.2f} | {bare['load_s']:.2f} | |",
        f"| pp{ours['pp_tokens']} (tok/s) | {ours['pp_tok_s']:.2f} | {bare['pp_tok_s']:.2f} | "
        f"{r['ratios']['pp_vs_bare']:.3f} |",
        f"| tg{ours['tg_tokens']} (tok/s) | {ours['tg_tok_s']:.2f} | {bare['tg_tok_s']:.2f} | "
        f"{r['ratios']['tg_vs_bare']:.3f} |",
        f"| tg: ms per token outside llama_decode | {ours['tg_overhead_ms']:.2f} | "
        f"{bare['tg_overhead_ms']:.2f} | |",
        f"| time to first token, pp{ours['pp_tokens']} prompt (s) | {ours['ttft_s']:.3f} | | |",
        f"| peak RSS (GiB) | {ours['peak_rss_bytes'] / 2**30:.2f} | | |",
        "",
        f"Read bandwidth {bw['read_bytes_per_s'] / 1e9:.2f} GB/s ({r['threads']} threads, numpy sweep over "
        f"{cfg['bandwidth_mib']} MiB); weights read per token "
        f"{bw['weight_bytes_per_token'] / 2**20:.1f} MiB; bound {bw['tg_bound_tok_s']:.2f} tok/s "
        f"(bare llama.cpp reaches {bw['bare_tg_vs_bound']:.3f}× of it).",
        "",
        f"{cfg['turns']}-turn chat, {cfg['turn_tokens']} new user tokens and up to {cfg['turn_reply']} reply "
        "tokens per turn (KV cache reused):",
        "",
        "| turn | tokens evaluated | time to first token (s) |",
        "|---:|---:|---:|",
        *(f"| {t['turn']} | {t['evaluated_tokens']} | {t['ttft_s']:.3f} |" for t in r["chat"]["turns"]),
        "",
        "| target | measured | met |",
        "|---|---:|---|",
        *(
            f"| {text} | {r['ratios'][key]:.3f} | {'yes' if r['targets'][key] else 'no'} |"
            for key, text in TARGET_TEXT.items()
        ),
    ]
    return lines


def _range(xs: list[float]) -> str:
    return f"{min(xs):.2f}–{max(xs):.2f}" if xs else ""


def _rounds(lb: dict[str, Any], kind: str) -> str:
    per_round = lb.get(f"{kind}_ratio_rounds") or []
    return f" ({min(per_round):.3f}–{max(per_round):.3f})" if len(per_round) > 1 else ""


def anchor_section(r: dict[str, Any]) -> list[str]:
    """Ours against llama-bench: medians, the range of every run, ratios and the 0.97× targets."""
    ours, lb, ratios, cfg = r["ours"], r["llama_bench"], r["ratios"], r["config"]
    st = lb["settings"]
    fa = {None: "auto", True: "on", False: "off"}[st["flash_attn"]]
    depth = lb["depth"]
    met = {k: "yes" if r["targets"][k] else "no" for k in ("pp_vs_llama_bench", "tg_vs_llama_bench")}
    return [
        stamp(),
        f"Model `{Path(r['model']).name}`, {r['threads']} threads, batch {st['n_batch']}, ubatch "
        f"{st['n_ubatch']}, flash attention {fa} (the same for both), context {r['n_ctx']} (ours); "
        f"{cfg['reps']} repetitions, runs interleaved ours, bare, llama-bench, llama-bench, bare, ours, …; "
        "medians, ranges over all runs in brackets; the ratios are medians of the ratio within each "
        "round (its range in brackets), so the machine's drift between rounds cancels.",
        "",
        "| | tlite-edge | llama-bench | ours / llama-bench | target |",
        "|---|---:|---:|---:|---|",
        f"| pp{lb['pp_tokens']} (tok/s) | {ours['pp_tok_s']:.2f} ({_range(ours['pp_samples'])}) | "
        f"{lb['pp_tok_s']:.2f} ({_range(lb['pp_samples'])}) | "
        f"{ratios['pp_vs_llama_bench']:.3f}{_rounds(lb, 'pp')} | "
        f"≥ 0.97: {met['pp_vs_llama_bench']} |",
        f"| tg{lb['tg_tokens']} at depth {depth} (tok/s) | "
        f"{ours['tg_tok_s']:.2f} ({_range(ours['tg_samples'])}) | "
        f"{lb['tg_depth_tok_s']:.2f} ({_range(lb['tg_depth_samples'])}) | "
        f"{ratios['tg_vs_llama_bench']:.3f}{_rounds(lb, 'tg')} | "
        f"≥ 0.97: {met['tg_vs_llama_bench']} |",
        f"| tg{lb['tg_tokens']} at depth 0 (tok/s) | | {lb['tg_tok_s']:.2f} ({_range(lb['tg_samples'])}) | "
        f"{ratios['tg_vs_llama_bench_depth0']:.3f} | (not like for like) |",
        f"| bare loop: pp / tg at depth {depth} (tok/s) | | {r['bare']['pp_tok_s']:.2f} / "
        f"{r['bare']['tg_tok_s']:.2f} | | |",
        "",
        "Ours is the chat path (template, tokenization, sampling, streaming): pp = prompt tokens ÷ time to "
        "first token; tg follows the prompt, so it is compared with llama-bench's tg at that depth (`-d`).",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--update-md", type=Path, help="write the section into this markdown file")
    ap.add_argument("--note", default="", help="a line to add under the section (e.g. what the file is)")
    args, bench_args = ap.parse_known_args()
    cmd = [sys.executable, "-m", "tlite_edge", "bench", str(args.model), *bench_args, "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    result = json.loads(proc.stdout)
    body = section(result) + (["", args.note] if args.note else [])
    print("\n".join(body))
    if args.update_md:
        replace_section(args.update_md, SECTION, body)
    if result.get("llama_bench"):
        anchor = anchor_section(result) + (["", args.note] if args.note else [])
        print("\n".join(anchor))
        if args.update_md:
            replace_section(args.update_md, ANCHOR_SECTION.format(name=args.model.name), anchor)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
