"""Prompt-lookup speculative decoding: acceptance and wall-clock speed-up (SmolLM2-135M-Instruct, or
the GGUF given with ``--model``).

Two copy-heavy tasks over a ~1,000-token text (rewrite it; extract the sentences about the harbour),
greedy, each reply with and without speculation in ABBA order (off, on, on, off per round) on one
engine, so the prompt comes from the KV cache and the timings are the reply's own. The replies must
be the same token for token.

    python benchmarks/bench_speculative.py --update-md BENCHMARKS.md
    python benchmarks/bench_speculative.py --model bench-data/tlite-8b-random-Q4_K_M.gguf --rounds 1
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from mdreport import replace_section, stamp

from tlite_edge.runtime import Chat, Engine
from tlite_edge.samples.smollm2 import smollm2_gguf

SECTION = "## Runtime: speculative decoding (prompt lookup) on a copy-heavy task"
PLACES = ["the harbour", "the market", "the school", "the old mill", "the station", "the library"]
EVENTS = [
    "a delivery of timber arrived at {p} before noon",
    "the council discussed the repairs needed at {p}",
    "children painted a long mural near {p}",
    "two fishermen argued about the weather outside {p}",
    "a lost dog was found sleeping behind {p}",
    "the lights at {p} failed for an hour after sunset",
    "volunteers cleaned the paths leading to {p}",
    "a travelling musician played for an hour at {p}",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def source_text(n_sentences: int = 44) -> str:
    rng = random.Random(0)
    out = []
    for i in range(n_sentences):
        event = rng.choice(EVENTS).format(p=rng.choice(PLACES))
        out.append(f"On {DAYS[i % 7]} {event}, and {rng.randint(2, 40)} people came to see it.")
    return " ".join(out)


TASKS = {
    "rewrite": "Rewrite the following text exactly as it is, sentence by sentence:\n\n{text}",
    "extract": "Copy each sentence of this text that mentions the harbour, word for word:\n\n{text}",
}


def one(engine: Engine, prompt: str, speculative: bool, max_tokens: int):
    engine.settings.speculative = speculative
    chat = Chat(engine, sampling=engine.sampling.with_(temp=0.0, max_tokens=max_tokens))
    t0 = time.perf_counter()
    reply = chat.send(prompt)
    reply.result()
    return time.perf_counter() - t0, reply


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="ABBA rounds per task")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, help="a GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--update-md")
    args = ap.parse_args()
    model = args.model or smollm2_gguf()
    engine = Engine.load(model, ctx=2048, threads=args.threads, seed=0)
    text = source_text()
    rows = []
    for name, template in TASKS.items():
        prompt = template.format(text=text)
        n_prompt = len(Chat(engine).prompt_for(prompt))
        one(engine, prompt, False, 8)  # warm-up: the prompt into the KV cache
        walls: dict[bool, list[float]] = {False: [], True: []}
        replies = {}
        for _ in range(args.rounds):
            for spec in (False, True, True, False):
                wall, reply = one(engine, prompt, spec, args.max_tokens)
                walls[spec].append(wall)
                replies.setdefault(spec, reply)
                assert reply.raw.tokens == replies[spec].raw.tokens
        off, on = replies[False], replies[True]
        assert on.raw.tokens == off.raw.tokens, f"{name}: replies differ"
        s = on.stats
        ratios = [a / b for a, b in zip(walls[False], walls[True], strict=True)]
        rows.append(
            f"| {name} | {n_prompt} | {s.generated_tokens} | {s.drafted} | {s.accepted} "
            f"| {s.accepted / max(s.generated_tokens, 1):.0%} | {statistics.median(walls[False]):.2f} "
            f"| {statistics.median(walls[True]):.2f} | {statistics.median(ratios):.2f}× "
            f"({min(ratios):.2f}–{max(ratios):.2f}) |"
        )
        print(rows[-1], flush=True)
    if args.update_md:
        label = "SmolLM2-135M-Instruct Q4_1" if args.model is None else f"`{model.name}`"
        body = [
            stamp(),
            "",
            f"{label}, {args.threads} threads, greedy, at most {args.max_tokens} reply "
            f"tokens; {args.rounds} ABBA rounds per task (off, on, on, off), the prompt already in the KV "
            "cache, so the wall time is the reply's. Replies identical with and without speculation "
            "(checked). Accepted share = accepted drafts / reply tokens (tokens that needed no step of "
            "their own). Speed-up = median over the pairs of wall(off) / wall(on), range in brackets.",
            "",
            "| task | prompt tokens | reply tokens | drafted | accepted | accepted share "
            "| wall off (s) | wall on (s) | speed-up |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
            *rows,
        ]
        title = SECTION if args.model is None else f"{SECTION}, {model.name}"
        replace_section(Path(args.update_md), title, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
