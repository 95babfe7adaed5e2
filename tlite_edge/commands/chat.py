"""``tlite-edge chat MODEL.gguf``: talk to a GGUF model in the terminal.

In a terminal: replies stream as Markdown, lines are edited with history kept between runs, and slash
commands (/help) change the conversation and the sampling. When stdin or stdout is not a terminal,
all of stdin is one user message and only the answer is printed to stdout (warnings, notices and,
with --verbose, the speed line go to stderr), so it can be scripted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tlite_edge.commands._options import add_session_arguments, check_session, load_engine
from tlite_edge.errors import TliteError

if TYPE_CHECKING:
    from tlite_edge.runtime import Chat


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a GGUF model in the terminal", description=__doc__)
    p.add_argument("model", type=Path, help="GGUF file")
    add_session_arguments(p)
    p.add_argument("--verbose", action="store_true", help="a speed line after each reply (/stats toggles)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_session(args)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if not interactive:
        text = sys.stdin.read().rstrip("\n")
        if not text.strip():
            raise TliteError("<stdin>", "no message: stdin is empty")
    engine = load_engine(args)
    sampling = engine.sampling.with_(
        temp=args.temp, top_p=args.top_p, seed=args.seed, max_tokens=args.max_tokens
    )
    from tlite_edge.runtime import Chat

    chat = Chat(engine, system=args.system, sampling=sampling, think=args.think)
    if interactive:
        from rich.console import Console

        from tlite_edge.tui.session import ChatSession
        from tlite_edge.tui.terminal import interact

        session = ChatSession(engine, chat, Console(highlight=False), show_stats=args.verbose)
        session.hide_thinking = args.hide_thinking
        return interact(session)
    return _plain(engine.warnings, chat, text, args)


def _plain(warnings: list[str], chat: Chat, text: str, args: argparse.Namespace) -> int:
    from tlite_edge.tui.session import stats_line

    for warning in [*warnings, *chat.notices]:
        print(f"tlite-edge chat: warning: {warning}", file=sys.stderr)
    reply = chat.send(text)
    for part in reply.parts():  # the thinking to stderr (unless hidden), the answer to stdout
        out = sys.stdout if part.kind == "content" else sys.stderr
        if part.kind == "content" or (part.kind == "reasoning" and not args.hide_thinking):
            out.write(part.text)
            out.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    for notice in reply.stats.notices:
        print(f"tlite-edge chat: {notice}", file=sys.stderr)
    if args.verbose:
        print(f"[{stats_line(reply.stats)}]", file=sys.stderr)
    return 0
