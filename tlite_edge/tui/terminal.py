"""The interactive chat: prompt_toolkit line editing with history, replies streamed as rich Markdown.

Ctrl-C while a reply streams stops it (the partial reply stays in the conversation); at the prompt it
clears the line, and pressed twice at an empty prompt (or Ctrl-D) it leaves.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings
from rich.console import Group
from rich.live import Live
from rich.markdown import Markdown
from rich.text import Text

from tlite_edge.errors import TliteError
from tlite_edge.tui.session import EXIT, ChatSession, history_path, stats_line

if TYPE_CHECKING:
    from prompt_toolkit.key_binding import KeyPressEvent

    from tlite_edge.runtime import Reply

PROMPT = ">>> "
CONTINUATION = "... "
BLOCK = '"""'
RENDER_EVERY_S = 0.08  # re-parse the Markdown at most this often while streaming
CLEARED, INTERRUPTED = object(), object()  # Ctrl-C with text on the line / at an empty prompt


def _open_block(text: str) -> bool:
    return text.lstrip().startswith(BLOCK) and text.count(BLOCK) == 1


def unwrap(text: str) -> str:
    """A submitted line without its \"\"\" block markers."""
    stripped = text.strip()
    if stripped.startswith(BLOCK) and stripped.endswith(BLOCK) and len(stripped) >= 2 * len(BLOCK):
        return stripped[len(BLOCK) : -len(BLOCK)].strip("\n")
    return text


def key_bindings() -> KeyBindings:
    kb = KeyBindings()

    @kb.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    @kb.add("enter")
    def _enter(event: KeyPressEvent) -> None:
        buf = event.current_buffer
        at_end = buf.cursor_position == len(buf.text)
        if at_end and buf.text.endswith("\\"):
            buf.delete_before_cursor(1)
            buf.insert_text("\n")
        elif at_end and _open_block(buf.text):
            buf.insert_text("\n")
        else:
            buf.validate_and_handle()

    @kb.add("c-c")
    def _interrupt(event: KeyPressEvent) -> None:
        event.app.exit(result=CLEARED if event.current_buffer.text else INTERRUPTED)

    return kb


def stream(reply: Reply, session: ChatSession) -> None:
    """Show a reply as it comes, as Markdown; Ctrl-C stops it. Notices and stats follow."""
    console = session.console
    old = signal.signal(signal.SIGINT, lambda *_: reply.stop())
    text, thinking, shown = "", "", 0.0

    def view() -> Group:  # the thinking dimmed above the answer
        return Group(*([Text(thinking, style="dim italic")] if thinking else []), Markdown(text))

    try:
        with Live(Text(""), console=console, refresh_per_second=12, vertical_overflow="visible") as live:
            for part in reply.parts():
                if part.kind == "content":
                    text += part.text
                elif part.kind == "reasoning" and not session.hide_thinking:
                    thinking += part.text
                if time.monotonic() - shown > RENDER_EVERY_S:
                    live.update(view())
                    shown = time.monotonic()
            live.update(view())
    finally:
        signal.signal(signal.SIGINT, old)
    if reply.stats.finish_reason == "stopped":
        session.note("[stopped]")
    for notice in reply.stats.notices:
        session.warn(notice)
    if reply.stats.finish_reason == "length":
        session.warn("reply cut at the token limit (/set max_tokens N for longer ones)")
    if session.show_stats:
        session.note(stats_line(reply.stats))


def interact(session: ChatSession) -> int:
    """The read-send-stream loop until /exit, Ctrl-D or a second Ctrl-C at an empty prompt."""
    path = history_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TliteError(path.parent, f"cannot create the history folder ({exc.strerror})") from None
    prompt = PromptSession(
        history=FileHistory(str(path)),
        key_bindings=key_bindings(),
        prompt_continuation=CONTINUATION,
        enable_history_search=False,
    )
    console = session.console
    settings = session.engine.settings
    session.note(
        f"{settings.path} · context {settings.n_ctx} · {settings.threads} threads"
        f"{' · GPU' if settings.gpu_layers else ''} · /help for commands, Ctrl-D to leave"
    )
    for warning in session.engine.warnings:
        session.warn(f"warning: {warning}")
    for notice in session.chat.notices:
        session.warn(notice)
    armed = False  # a first Ctrl-C at an empty prompt was pressed
    while True:
        try:
            line = prompt.prompt(PROMPT)
        except EOFError:
            return 0
        if line is INTERRUPTED:
            if armed:
                return 0
            armed = True
            session.note("(Ctrl-C again or Ctrl-D to leave)")
            continue
        armed = False
        if line is CLEARED or not line.strip():
            continue
        line = unwrap(line)
        if line.startswith("/") and not line.startswith("//"):
            action = session.command(line)
            if action is EXIT:
                return 0
            if action is None:
                continue
            reply = action
        else:
            try:
                reply = session.send(line[1:] if line.startswith("//") else line)
            except TliteError as exc:
                session.warn(f"error: {exc}")
                continue
        stream(reply, session)  # type: ignore[arg-type]
        console.print()
