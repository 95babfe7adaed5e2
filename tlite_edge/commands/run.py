"""``tlite-edge run MODEL.gguf "prompt"``: one chat turn in llama.cpp, streamed to stdout.

Only the answer goes to stdout (pipe-friendly); the thinking of a reasoning model (Qwen3), warnings
and notices go to stderr (the thinking dimmed on a terminal; ``--hide-thinking`` leaves it out), and
timings too when stderr is a terminal. ``--json`` prints one object with the answer (``content``),
the thinking (``reasoning_content``), token counts and timings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlite_edge.commands._options import add_session_arguments, load_engine

if TYPE_CHECKING:
    from tlite_edge.runtime import Engine, Reply


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="answer one prompt with a GGUF model", description=__doc__)
    p.add_argument("model", type=Path, help="GGUF file")
    p.add_argument("prompt", help="the user message")
    add_session_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    p.add_argument(
        "--json-schema",
        type=Path,
        metavar="FILE",
        help="answer with JSON that follows this JSON schema (grammar-constrained decoding)",
    )
    p.set_defaults(func=run)


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
        "content": reply.text,
        "reasoning_content": reply.reasoning or None,
        **{k: stats[k] for k in COUNTS},
        "timings": {k: round(stats[k], 4) for k in TIMINGS},
        "model": engine.settings.path,
        "settings": {k: v for k, v in engine.settings.as_dict().items() if k not in ("path", "warnings")},
        "sampling": {k: v for k, v in reply.sampling.as_dict().items() if k != "grammar"},
        "grammar": reply.sampling.grammar is not None,
        "warnings": [*engine.warnings, *reply.chat.notices],
    }


def run(args: argparse.Namespace) -> int:
    grammar = None
    if args.json_schema is not None:  # a bad schema file fails before the model loads
        from tlite_edge.runtime.grammar import load_schema_grammar

        grammar = load_schema_grammar(args.json_schema)
    engine = load_engine(args)
    if not args.json:
        for warning in engine.warnings:
            print(f"tlite-edge run: warning: {warning}", file=sys.stderr)
    from tlite_edge.runtime import Chat

    chat = Chat(engine, system=args.system, think=args.think)
    reply = chat.send(
        args.prompt,
        temp=args.temp,
        top_p=args.top_p,
        seed=args.seed,
        max_tokens=args.max_tokens,
        grammar=grammar,
    )
    if args.json:
        reply.result()
        print(json.dumps(result_dict(engine, reply), ensure_ascii=False, indent=1))
        return 0
    for notice in chat.notices:
        print(f"tlite-edge run: {notice}", file=sys.stderr)
    dim = ("\x1b[2m", "\x1b[0m") if sys.stderr.isatty() else ("", "")
    thinking = False
    for part in reply.parts():
        if part.kind == "reasoning" and not args.hide_thinking:
            sys.stderr.write(("" if thinking else dim[0]) + part.text)
            sys.stderr.flush()
            thinking = True
        elif part.kind == "content":
            if thinking:
                sys.stderr.write(dim[1] + "\n")
                thinking = False
            sys.stdout.write(part.text)
            sys.stdout.flush()
    if thinking:
        sys.stderr.write(dim[1] + "\n")
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
