"""``tlite-edge demo``: the whole pipeline offline on an embedded stand-in of T-lite.

Writes a tiny T-lite-shaped checkpoint (random weights, the real Llama-3 tokenizer, T-lite's
upstream quirks), converts it to GGUF, inspects it, quantizes it to three levels, measures what each
level costs against the BF16 file (``tlite-edge eval``), and answers one prompt through the chat
runtime. Every step is the real code path; only the model is a stand-in.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gguf import Keys
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tlite_edge.errors import TliteError
from tlite_edge.gguf.reader import summarize
from tlite_edge.gguf_build.convert import convert
from tlite_edge.standin import write_standin

NAME = "T-lite-standin-instruct-0.1"
PROMPT = "Расскажи коротко, чем Казань отличается от Москвы."
LEVELS = ("Q8_0", "Q4_K_M", "Q2_K")  # the stand-in's rows (256, 768) are multiples of 256: k-quants apply
CHAT_LEVEL = "Q4_K_M"
EVAL_CTX, EVAL_CHUNKS = 128, 4
# Used only when dataset-build's Russian text is not installed (random weights: any text will do).
OWN_TEXT = (
    "Это демонстрационный текст для оценки качества квантования. Модель-заглушка имеет случайные веса, "
    "поэтому важны не слова, а то, насколько распределения квантованных файлов отличаются от исходного. "
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the pipeline offline on a tiny stand-in model", description=__doc__)
    p.add_argument(
        "--out", type=Path, default=Path("tlite-demo"), help="working folder (default ./tlite-demo)"
    )
    p.add_argument("--max-tokens", type=int, default=24, help="tokens to generate (default 24)")
    p.set_defaults(func=run)


def eval_text(folder: Path) -> tuple[Path, str]:
    """dataset-build's Russian text when installed, else a short text of our own written to ``folder``."""
    from tlite_edge.texts import default_text

    try:
        path, label = default_text()
        return path, label
    except TliteError:
        path = folder / "demo-text.txt"
        path.write_text(OWN_TEXT * 60, encoding="utf-8")
        return path, "the demo's own text"


def quantize_levels(src: Path, out: Path, console: Console) -> list[Path]:
    from tlite_edge.quant.profiles import load_profiles
    from tlite_edge.quant.quantize import quantize

    profiles = load_profiles()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    paths = []
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        for level in LEVELS:
            task = progress.add_task(level, total=None)
            result = quantize(
                src,
                profiles[level],
                out / profiles[level].output_name(NAME),
                advance=lambda i, n, name, task=task: progress.update(task, completed=i, total=n),
            )
            paths.append(result.path)
    for level, path in zip(LEVELS, paths, strict=True):
        console.print(f"   {level}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return paths


def run(args: argparse.Namespace) -> int:
    from tlite_edge.commands.eval import results_table
    from tlite_edge.evaluate import evaluate
    from tlite_edge.runtime import Engine

    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    hf_dir = write_standin(args.out / NAME)
    console.print(f"[bold]1. stand-in checkpoint[/] {hf_dir} ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    result = convert(hf_dir, name=NAME, outtype="bf16", out_dir=args.out)
    console.print(
        f"[bold]2. converted[/] {result.path} in {time.perf_counter() - t0:.1f} s, "
        f"sha256 {result.sha256[:16]}…"
    )
    for fix in result.fixes:
        console.print(f"   [yellow]fixed[/]: {fix}")
    for line in result.verified:
        console.print(f"   [green]verified[/]: {line}")

    info = summarize(result.path)
    table = Table("key", "value", title="3. inspect")
    for key in (Keys.General.NAME, Keys.General.SIZE_LABEL, Keys.Tokenizer.PRE, Keys.Tokenizer.ADD_BOS):
        table.add_row(key, str(info.metadata.get(key)))
    for role, tok in info.special_tokens.items():
        table.add_row(f"{role} token", f"{tok['id']} {tok['text']}")
    table.add_row("tensors", ", ".join(f"{k}×{v}" for k, v in info.tensor_types.items()))
    table.add_row("bits per weight", f"{info.bits_per_weight:.2f}")
    console.print(table)

    t0 = time.perf_counter()
    console.print(f"[bold]4. quantize[/] {', '.join(LEVELS)} with llama.cpp's quantizer")
    levels = quantize_levels(result.path, args.out, console)
    console.print(f"   ({time.perf_counter() - t0:.1f} s)")

    text, label = eval_text(args.out)
    t0 = time.perf_counter()
    report = evaluate(result.path, levels, text, ctx=EVAL_CTX, chunks=EVAL_CHUNKS)
    seconds = time.perf_counter() - t0
    console.print(f"[bold]5. quality vs BF16[/] (tlite-edge eval on {label}, {seconds:.1f} s)")
    console.print(results_table(report))

    chat_file = levels[LEVELS.index(CHAT_LEVEL)]
    engine = Engine.load(chat_file, ctx=512, seed=0)
    try:
        reply = engine.chat().send(PROMPT, temp=0.0, max_tokens=args.max_tokens)
        answer = reply.result()
    finally:
        engine.close()
    stats = reply.stats
    console.print(
        f"[bold]6. chat[/] ({CHAT_LEVEL}, tlite_edge.runtime) prompt {stats.prompt_tokens} tokens, "
        f"{stats.generated_tokens} generated at {stats.generation_tokens_per_s:.0f} tok/s"
    )
    console.print(f"   user: {PROMPT}")
    console.print(f"   assistant: {answer!r}", markup=False)
    console.print(
        "[bold yellow]This was a stand-in[/]: T-lite's architecture and tokenizer with 2 small layers of "
        "random weights, so the answer is noise and the quality numbers only show the method. The same "
        "on T-lite-instruct-0.1 (a 16 GB download, 3-8 GB per level):"
    )
    console.print(
        "   tlite-edge convert t-bank-ai/T-lite-instruct-0.1 -q q8_0,q4_k_m,q2_k --keep-bf16\n"
        "   tlite-edge eval T-lite-instruct-0.1-BF16.gguf T-lite-instruct-0.1-Q8_0.gguf "
        "T-lite-instruct-0.1-Q4_K_M.gguf T-lite-instruct-0.1-Q2_K.gguf --text held-out.txt\n"
        '   tlite-edge run T-lite-instruct-0.1-Q4_K_M.gguf "Привет!"',
        markup=False,
    )
    return 0
