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


def generate_run(engine: Engine, prompt: list[int], n: int) -> tuple[float, float, int]:
    """(generation tok/s, CPU ms per generated token, tokens) through llama-cpp-python's generate."""
    llm = engine.llm
    llm.reset()
    t_first = c_first = 0.0
    count = 0
    for token in llm.generate(prompt, temp=0.0, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.0):
        now, cpu = time.perf_counter(), time.process_time()
        if not t_first:
            t_first, c_first = now, cpu
        else:
            count += 1
        if count >= n or engine.is_eog(token):
            break
    return count / (now - t_first), 1000 * (cpu - c_first) / count, count


def reply_run(engine: Engine, n: int, grammar: str | None = None) -> tuple[float, float, int]:
    """The same through ``Chat.send`` (CPU time includes the prompt's last-token sample, ~1/n)."""
    engine.llm.reset()
    reply = Chat(engine).send(PROMPT, temp=0.0, max_tokens=n + 1, grammar=grammar)
    next(reply)
    c_first = time.process_time()
    reply.result()
    cpu = time.process_time() - c_first
    s = reply.stats
    return s.generation_tokens_per_s, 1000 * cpu / max(s.decoded_tokens, 1), s.generated_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    engine = Engine.load(args.model, ctx=1024, threads=args.threads, seed=0)
    prompt = Chat(engine).prompt_for(PROMPT)
    grammar = schema_grammar(STORY)
    runs = {
        "generate (before)": lambda: generate_run(engine, prompt, args.tokens),
        "reply loop (after)": lambda: reply_run(engine, args.tokens),
        "reply + JSON-schema grammar": lambda: reply_run(engine, args.tokens, grammar),
    }
    rows: dict[str, list[tuple[float, float, int]]] = {name: [] for name in runs}
    for _ in range(args.rounds):  # interleaved
        for name, run in runs.items():
            rows[name].append(run())
    print(f"| path | tg tok/s (median of {args.rounds}) | CPU ms/token (median) | tokens |")
    print("|---|---|---|---|")
    med = {}
    for name, values in rows.items():
        tok_s = statistics.median(v[0] for v in values)
        med[name] = cpu = statistics.median(v[1] for v in values)
        print(f"| {name} | {tok_s:.1f} | {cpu:.2f} | {', '.join(str(v[2]) for v in values)} |")
    print(f"\nCPU per token, after / before: {med['reply loop (after)'] / med['generate (before)']:.3f}")
    print(f"grammar: +{med['reply + JSON-schema grammar'] - med['reply loop (after)']:.2f} CPU ms/token")


if __name__ == "__main__":
    main()
