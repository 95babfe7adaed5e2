"""``tlite-edge demo``: the whole pipeline offline on an embedded stand-in of T-lite.

Writes a tiny T-lite-shaped checkpoint (random weights, the real Llama-3 tokenizer, T-lite's
upstream quirks), converts it to GGUF, inspects it, and runs it in llama.cpp with the chat template.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tlite_edge.gguf_build.convert import convert
from tlite_edge.gguf_info import summarize
from tlite_edge.standin import write_standin

NAME = "T-lite-standin-instruct-0.1"
PROMPT = "Расскажи коротко, чем Казань отличается от Москвы."


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the pipeline offline on a tiny stand-in model", description=__doc__)
    p.add_argument(
        "--out", type=Path, default=Path("tlite-demo"), help="working folder (default ./tlite-demo)"
    )
    p.add_argument("--max-tokens", type=int, default=24, help="tokens to generate (default 24)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import llama_cpp  # heavy import, only for this verb

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

    info = summarize(result.path)
    table = Table("key", "value", title="3. inspect")
    for key in ("general.name", "general.size_label", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token"):
        table.add_row(key, str(info.metadata.get(key)))
    for role, tok in info.special_tokens.items():
        table.add_row(f"{role} token", f"{tok['id']} {tok['text']}")
    table.add_row("tensors", ", ".join(f"{k}×{v}" for k, v in info.tensor_types.items()))
    table.add_row("bits per weight", f"{info.bits_per_weight:.2f}")
    console.print(table)

    llm = llama_cpp.Llama(model_path=str(result.path), n_ctx=512, verbose=False, seed=0)
    messages = [{"role": "user", "content": PROMPT}]
    t0 = time.perf_counter()
    out = llm.create_chat_completion(messages=messages, max_tokens=args.max_tokens, temperature=0.0)
    usage = out["usage"]
    console.print(
        f"[bold]4. llama.cpp chat[/] prompt {usage['prompt_tokens']} tokens, "
        f"{usage['completion_tokens']} generated in {time.perf_counter() - t0:.2f} s "
        f"(random weights: the words are noise, the pipeline is real)"
    )
    console.print(f"   user: {PROMPT}")
    console.print(f"   assistant: {out['choices'][0]['message']['content']!r}", markup=False)
    console.print(
        "[green]done[/]: convert the real model with `tlite-edge convert` (default "
        "t-bank-ai/T-lite-instruct-0.1)"
    )
    return 0
