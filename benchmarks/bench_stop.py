"""Cost of `serve`'s stop-sequence matching per generated token, against no stop at all.

The matcher (tlite_edge/serve/stops.py) runs one Knuth-Morris-Pratt automaton per stop sequence, so a
token costs time linear in its own length whatever the stop lengths. Measured on ordinary text and on
adversarial text that keeps a long stop almost matched (``aaa…a`` against ``aaa…ab``):

    python benchmarks/bench_stop.py --update-md BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from mdreport import replace_section, stamp

from tlite_edge.serve.pool import StopMatcher

SECTION = "## Serve: stop-sequence matching per token"
TOKENS = 4000


def per_token_us(stops: list[str], pieces: list[str], repeat: int) -> float:
    """Median microseconds per fed piece over ``repeat`` runs."""
    runs = []
    for _ in range(repeat):
        matcher = StopMatcher(stops)
        t0 = time.perf_counter()
        for piece in pieces:
            _, found = matcher.feed(piece)
            assert not found
        runs.append((time.perf_counter() - t0) / len(pieces) * 1e6)
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--update-md")
    args = ap.parse_args()
    rng = random.Random(0)
    words = ["модель", "текст", "ответ", "пример", "данные", "вопрос", "the", "model", "answer", "token"]
    prose = [" " + rng.choice(words) for _ in range(TOKENS)]
    cases = {
        "no stop": ([], prose),
        "1 stop of 1 KB": (["я" * 1024], prose),
        "1 stop of 10 KB": (["я" * 10240], prose),
        "1 stop of 32 KB (the limit)": (["я" * 32768], prose),
        "4 stops of 8 KB": ([c * 8192 for c in "яюэь"], prose),
        "adversarial: 32 KB stop almost matched": (["a" * 32767 + "b"], ["a"] * TOKENS),
    }
    rows = []
    for name, (stops, pieces) in cases.items():
        us = per_token_us(stops, pieces, args.repeat)
        rows.append(f"| {name} | {us:.2f} |")
        print(rows[-1])
    if args.update_md:
        from pathlib import Path

        body = [
            stamp(),
            "",
            f"{TOKENS} generated pieces fed one at a time; median of {args.repeat} runs. A model step "
            "on T-lite takes ~300 ms on this machine, so even the worst row is noise next to it, and the "
            "cost does not grow with the stop's length. The old matcher (tested every prefix of every stop "
            "on every token) took 0.6 ms per token with a 10 KB stop, 62 ms with 200 KB and 1 s with "
            "900 KB; stops now total at most 32 KiB (a 400 beyond).",
            "",
            "| stops | µs per token |",
            "|---|---:|",
            *rows,
        ]
        replace_section(Path(args.update_md), SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
