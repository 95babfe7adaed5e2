"""Decode speed of the reply loop (our evaluate/sample_at over llama.cpp's sampler chain) against
llama-cpp-python's ``Llama.generate`` (what the loop replaced), and the cost of a JSON grammar per token.

    python benchmarks/bench_sampling.py MODEL.gguf [--rounds 4] [--tokens 64]

Runs alternate (ABAB...) on one engine, greedy, same prompt; tokens/s is generation only (after the
first token). The grammar rows time the same loop constrained to ``{"story": "<up to 400 characters>"}``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from tlite_edge.runtime import Chat, Engine
from tlite_edge.runtime.grammar import schema_grammar

PROMPT = "Write a long story about a fox who lives in a forest near a river."
STORY = {
    "type": "object",
    "properties": {"story": {"type": "string", "maxLength": 400}},
    "required": ["story"],
}


def generate_tok_s(engine: Engine, prompt: list[int], n: int) -> float:
    llm = engine.llm
    llm.reset()
    t_first, count = 0.0, 0
    for token in llm.generate(prompt, temp=0.0, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.0):
        now = time.perf_counter()
        if not t_first:
            t_first = now
        else:
            count += 1
        if count >= n or engine.is_eog(token):
            break
    return count / (time.perf_counter() - t_first)


def reply_tok_s(engine: Engine, n: int, grammar: str | None = None) -> tuple[float, int]:
    engine.llm.reset()
    reply = Chat(engine).send(PROMPT, temp=0.0, max_tokens=n + 1, grammar=grammar)
    reply.result()
    return reply.stats.generation_tokens_per_s, reply.stats.generated_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    engine = Engine.load(args.model, ctx=1024, threads=args.threads, seed=0)
    prompt = Chat(engine).prompt_for(PROMPT)
    rows: dict[str, list[float]] = {
        "generate (before)": [],
        "reply loop (after)": [],
        "reply + JSON grammar": [],
    }
    lengths = []
    for _ in range(args.rounds):
        rows["generate (before)"].append(generate_tok_s(engine, prompt, args.tokens))
        rows["reply loop (after)"].append(reply_tok_s(engine, args.tokens)[0])
        tok_s, n = reply_tok_s(engine, args.tokens, schema_grammar(STORY))
        rows["reply + JSON grammar"].append(tok_s)
        lengths.append(n)
    print(f"| path | tg tok/s (median of {args.rounds}) | all runs |")
    print("|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    base = statistics.median(rows["reply loop (after)"])
    gram = statistics.median(rows["reply + JSON grammar"])
    overhead = 1000 / gram - 1000 / base
    print(f"\ngrammar overhead: {overhead:.2f} ms/token (answers {min(lengths)}-{max(lengths)} tokens)")
    print(f"after / before: {base / statistics.median(rows['generate (before)']):.3f}")


if __name__ == "__main__":
    main()
