"""``tlite-edge run MODEL.gguf "prompt"``: one chat turn in llama.cpp, streamed to stdout.

Only the answer goes to stdout (pipe-friendly); warnings and notices go to stderr, and timings too
when stderr is a terminal. ``--json`` prints one object with the answer, token counts and timings.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlite_edge.errors import TliteError

if TYPE_CHECKING:
    from tlite_edge.runtime import Engine, Reply


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="answer one prompt with a GGUF model", description=__doc__)
    p.add_argument("model", type=Path, help="GGUF file")
    p.add_argument("prompt", help="the user message")
    add_session_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    p.set_defaults(func=run)


def add_session_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by run and chat: system message, sampling, context and threads."""
    p.add_argument("--system", help="system message")
    p.add_argument("--temp", type=float, help="temperature (0 = greedy; default from the GGUF or 0.6)")
    p.add_argument("--top-p", type=float, help="nucleus sampling (default from the GGUF or 0.9)")
    p.add_argument("--seed", type=int, help="sampling seed (default: random)")
    p.add_argument("--max-tokens", type=int, help="longest reply in tokens (default 1024)")
    p.add_argument("--ctx", type=int, help="context length (default: the model's, reduced if RAM is short)")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")


MIN_CTX = 64  # a chat prompt (template and a short message) and a few reply tokens
# flag -> (attribute, rule, what it must be); values must also be finite (no nan, no inf)
LIMITS: dict[str, tuple[str, Callable[[float], bool], str]] = {
    "--temp": ("temp", lambda v: 0 <= v <= 2, "a number from 0 to 2 (0 = greedy)"),
    "--top-p": ("top_p", lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "--seed": ("seed", lambda v: 0 <= v < 2**32 - 1, f"in [0, {2**32 - 2}]"),
    "--max-tokens": ("max_tokens", lambda v: v >= 1, "at least 1"),
    "--ctx": ("ctx", lambda v: v >= MIN_CTX, f"at least {MIN_CTX} tokens"),
    "--threads": ("threads", lambda v: v >= 1, "at least 1"),
}


def _check(args: argparse.Namespace) -> None:
    for flag, (attr, ok, what) in LIMITS.items():
        value = getattr(args, attr)
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise TliteError(None, f"{flag} must be {what}, got {value}")


COUNTS = (
    "finish_reason",
    "prompt_tokens",
    "evaluated_tokens",
    "generated_tokens",
    "dropped_messages",
    "notices",
)
TIMINGS = (
    "time_to_first_token",
    "prompt_seconds",
    "prompt_tokens_per_s",
    "generation_seconds",
    "generation_tokens_per_s",
)


def result_dict(engine: Engine, reply: Reply) -> dict[str, Any]:
    """The ``--json`` object: answer, token counts, timings, what the engine chose."""
    stats = reply.stats.as_dict()
    return {
        "answer": reply.text,
        **{k: stats[k] for k in COUNTS},
        "timings": {k: round(stats[k], 4) for k in TIMINGS},
        "model": engine.settings.path,
        "settings": {k: v for k, v in engine.settings.as_dict().items() if k not in ("path", "warnings")},
        "sampling": reply.sampling.as_dict(),
        "warnings": engine.warnings,
    }


def run(args: argparse.Namespace) -> int:
    _check(args)
    from tlite_edge.runtime.engine import Engine  # heavy import, only for this verb

    engine = Engine.load(args.model, ctx=args.ctx, threads=args.threads, seed=_seed(args.seed))
    if not args.json:
        for warning in engine.warnings:
            print(f"tlite-edge run: warning: {warning}", file=sys.stderr)
    chat = engine.chat(system=args.system)
    reply = chat.send(
        args.prompt, temp=args.temp, top_p=args.top_p, seed=args.seed, max_tokens=args.max_tokens
    )
    if args.json:
        reply.result()
        print(json.dumps(result_dict(engine, reply), ensure_ascii=False, indent=1))
        return 0
    for piece in reply:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    for notice in reply.stats.notices:
        print(f"tlite-edge run: {notice}", file=sys.stderr)
    if sys.stderr.isatty():
        s = reply.stats
        print(
            f"[{s.prompt_tokens} prompt tokens ({s.evaluated_tokens} evaluated, "
            f"{s.prompt_tokens_per_s:.1f} tok/s), "
            f"{s.generated_tokens} generated ({s.generation_tokens_per_s:.1f} tok/s), "
            f"first token after {s.time_to_first_token:.2f} s, {s.finish_reason}]",
            file=sys.stderr,
        )
    return 0


def _seed(seed: int | None) -> int:
    import llama_cpp

    return llama_cpp.LLAMA_DEFAULT_SEED if seed is None else seed
