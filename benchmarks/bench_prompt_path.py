"""Where a prompt's time goes, in one process (no drift between processes): the same 512-token prompt
through our chat path (time to first token), through llama-cpp-python's ``Llama.eval`` and through the
bare ``llama_decode`` loop, interleaved ABC/CBA. Usage::

    python benchmarks/bench_prompt_path.py bench-data/llama-1b-random-Q4_K_M.gguf --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from mdreport import command_line, stamp

from tlite_edge.runtime.bare import BareLlama
from tlite_edge.runtime.bench import pp_text
from tlite_edge.runtime.chat import Chat
from tlite_edge.runtime.engine import Engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    engine = Engine.load(args.model, ctx=4096, threads=args.threads, seed=0)
    llm = engine.llm
    text = pp_text(engine, args.tokens)
    sampling = engine.sampling.with_(temp=0.0, repeat_penalty=1.0, max_tokens=1)
    Chat(engine, sampling=sampling).send(text, max_tokens=2).result()  # warm-up
    prompt = Chat(engine).prompt_for(text)
    bare = BareLlama(
        args.model, *[type(p).from_buffer_copy(p) for p in (llm.model_params, llm.context_params)]
    )
    bare.run(prompt, 1)

    def chat() -> float:
        llm.reset()
        reply = Chat(engine, sampling=sampling).send(text)
        reply.result()
        return len(prompt) / reply.stats.time_to_first_token

    def llama_eval() -> float:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        return len(prompt) / (time.perf_counter() - t0)

    paths: dict[str, Callable[[], float]] = {
        "chat path (TTFT)": chat,
        "Llama.eval": llama_eval,
        "bare llama_decode loop": lambda: bare.run(prompt, 1).pp_tok_s,
    }
    runs: dict[str, list[float]] = {name: [] for name in paths}
    for rnd in range(args.rounds):
        for name in list(paths) if rnd % 2 == 0 else list(paths)[::-1]:
            runs[name].append(paths[name]())
    bare.close()
    print(f"{stamp()} Model `{args.model.name}`, {args.threads} threads, prompt {len(prompt)} tokens.\n")
    print("| path | pp tok/s (median) | range |\n|---|---:|---|")
    for name, xs in runs.items():
        print(f"| {name} | {statistics.median(xs):.2f} | {min(xs):.2f}–{max(xs):.2f} |")
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    main()
