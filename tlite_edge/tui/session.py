"""Chat state behind ``tlite-edge chat``: slash commands, ``/set`` validation, transcripts, history path.

Nothing here reads the keyboard: ``ChatSession.command(line)`` runs one slash command and says what
to do next (stream a reply, exit, or nothing), printing to a rich ``Console``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tlite_edge.errors import TliteError
from tlite_edge.fsutil import atomic_output, read_json

if TYPE_CHECKING:
    from tlite_edge.runtime import Chat, Engine, Reply, ReplyStats, Sampling

TRANSCRIPT_FORMAT = "tlite-edge-chat"
TRANSCRIPT_VERSION = 1
ROLES = ("system", "user", "assistant")
TRANSCRIPT_KEYS = {"role", "content", "reasoning_content"}
HISTORY_ENV = "TLITE_EDGE_HISTORY"
# sys.platform -> (environment variable with the per-user state folder, fallback under the home folder)
STATE_DIRS = {
    "linux": ("XDG_STATE_HOME", ".local/state"),
    "darwin": (None, "Library/Application Support"),
    "win32": ("LOCALAPPDATA", "AppData/Local"),
}
EXIT = object()  # ChatSession.command result: leave the chat


@dataclass(frozen=True)
class Setting:
    """One ``/set`` key: its type, the rule it must meet, and the word that means "unset"."""

    kind: type
    check: Callable[[float], bool]
    rule: str
    none_word: str | None = None


SETTINGS: dict[str, Setting] = {
    "temp": Setting(float, lambda v: v >= 0, "a number >= 0 (0 = greedy)"),
    "top_p": Setting(float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "top_k": Setting(int, lambda v: v >= 0, "a whole number >= 0 (0 = all tokens)"),
    "min_p": Setting(float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "repeat_penalty": Setting(float, lambda v: v > 0, "a number > 0 (1 = off)"),
    "max_tokens": Setting(int, lambda v: v >= 1, "a whole number >= 1, or 'none' (to the context)", "none"),
    "seed": Setting(
        int, lambda v: 0 <= v < 2**32 - 1, "a whole number in [0, 4294967294], or 'random'", "random"
    ),
}

HELP = [
    ("/help", "this list"),
    ("/system [TEXT]", "show the system message, or set it to TEXT ('/system -' removes it)"),
    ("/clear", "start over (the system message stays)"),
    ("/regen", "answer the last message again"),
    ("/save FILE", "write the conversation and settings to a JSON file"),
    ("/load FILE", "continue a conversation saved with /save"),
    ("/set [KEY VALUE]", "show the settings, or set one: " + ", ".join(SETTINGS)),
    ("/format FILE|json|off", "answer with JSON that follows the schema in FILE, any JSON object, or text"),
    ("/stats", "show or hide the speed line after each reply"),
    ("/think, /no_think", "thinking on or off (Qwen3; at the end of a message: for that message)"),
    ("/hide_thinking", "show or hide the model's thinking"),
    ("/exit", "leave (also /quit, Ctrl-D, or Ctrl-C twice at an empty prompt)"),
]
KEYS = [
    ("Enter", "send"),
    ("Alt-Enter or Esc Enter", "new line"),
    ("\\ at the end of a line", "new line"),
    ('""" ... """', 'a multi-line block: Enter adds lines until the closing """'),
    ("Up / Down, Ctrl-R", "history (kept between runs)"),
    ("Ctrl-C", "stop the reply; at the prompt, clear the line"),
    ("//text", "send a message that starts with /"),
]


def parse_setting(key: str, value: str) -> tuple[str, Any]:
    """``/set`` arguments -> (Sampling field, value), or a TliteError saying what is allowed."""
    name = key.strip().lower().replace("-", "_")
    if name not in SETTINGS:
        raise TliteError(None, f"unknown setting {key!r}; settings: {', '.join(SETTINGS)}")
    setting = SETTINGS[name]
    if setting.none_word and value.strip().lower() in (setting.none_word, "none"):
        return name, None
    try:
        number = setting.kind(value)
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or not setting.check(number):  # no nan, no inf
        raise TliteError(None, f"{name} must be {setting.rule}, got {value!r}")
    return name, number


def history_path() -> Path:
    """Where typed lines are kept: ``$TLITE_EDGE_HISTORY``, else the per-user state folder."""
    if os.environ.get(HISTORY_ENV):
        return Path(os.environ[HISTORY_ENV])
    env, fallback = STATE_DIRS.get(sys.platform, STATE_DIRS["linux"])
    base = Path(os.environ[env]) if env and os.environ.get(env) else Path.home() / fallback
    return base / "tlite-edge" / "chat_history"


def save_transcript(path: Path, chat: Chat, model: str) -> None:
    """The conversation and its sampling settings as JSON, written atomically."""
    data = {
        "format": TRANSCRIPT_FORMAT,
        "version": TRANSCRIPT_VERSION,
        "model": Path(model).name,
        "sampling": {k: v for k, v in chat.sampling.as_dict().items() if k in SETTINGS},
        "messages": [m.as_dict() for m in chat.messages],
    }
    with atomic_output(path) as fh:
        fh.write((json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))


def load_transcript(path: Path, base: Sampling) -> tuple[list[dict[str, str]], Sampling]:
    """Messages and sampling from a ``/save`` file; anything malformed is one TliteError naming it."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != TRANSCRIPT_FORMAT:
        raise TliteError(path, f'not a saved chat (no "format": "{TRANSCRIPT_FORMAT}")')
    if data.get("version") != TRANSCRIPT_VERSION:
        raise TliteError(path, f"unsupported version {data.get('version')!r} (expected {TRANSCRIPT_VERSION})")
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise TliteError(path, '"messages" must be a list')
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not {"role", "content"} <= set(m) <= TRANSCRIPT_KEYS:
            raise TliteError(path, f'messages[{i}] must be an object with "role" and "content"')
        if not isinstance(m.get("reasoning_content", ""), str):
            raise TliteError(path, f"messages[{i}].reasoning_content must be a string")
        if m["role"] not in ROLES or (m["role"] == "system" and i != 0):
            raise TliteError(path, f"messages[{i}].role must be {'/'.join(ROLES)} (system only first)")
        if not isinstance(m["content"], str):
            raise TliteError(path, f"messages[{i}].content must be a string")
        out.append({k: m[k] for k in m if k != "reasoning_content" or m["role"] == "assistant"})
    sampling = data.get("sampling", {})
    if not isinstance(sampling, dict):
        raise TliteError(path, '"sampling" must be an object')
    changes = {}
    for key, value in sampling.items():
        try:
            name, parsed = parse_setting(str(key), "none" if value is None else str(value))
        except TliteError as exc:
            raise TliteError(path, f"sampling: {exc.message}") from None
        changes[name] = parsed
    return out, _with(base, changes)


def _with(base: Sampling, changes: dict[str, Any]) -> Sampling:
    return replace(base, **changes)


def stats_line(stats: ReplyStats) -> str:
    """One line of speed figures for a reply."""
    return (
        f"prompt {stats.prompt_tokens} tok ({stats.evaluated_tokens} new,"
        f" {stats.prompt_tokens_per_s:.1f} tok/s)"
        f" · reply {stats.generated_tokens} tok ({stats.generation_tokens_per_s:.1f} tok/s)"
        f" · first token {stats.time_to_first_token:.2f} s · {stats.finish_reason}"
    )


class ChatSession:
    """A chat plus the UI's own state (stats on/off), driven by slash commands."""

    def __init__(self, engine: Engine, chat: Chat, console: Console, *, show_stats: bool = False):
        self.engine = engine
        self.chat = chat
        self.console = console
        self.show_stats = show_stats
        self.hide_thinking = False

    def note(self, text: str, style: str = "dim") -> None:
        self.console.print(Text(text, style=style))

    def warn(self, text: str) -> None:
        self.note(text, "yellow")

    def send(self, text: str) -> Reply:
        return self.chat.send(text)

    def command(self, line: str) -> Reply | object | None:
        """Run one slash command: a Reply to stream (/regen), EXIT, or None. Errors are printed."""
        name, _, arg = line.strip().partition(" ")
        handler = COMMANDS.get(name.lower())
        if handler is None:
            self.warn(f"unknown command {name}; /help lists the commands")
            return None
        try:
            return handler(self, arg.strip())
        except TliteError as exc:
            self.warn(f"error: {exc}")
            return None

    # ---- the commands --------------------------------------------------------------------------

    def help(self, _: str) -> None:
        for title, rows in (("Commands", HELP), ("Input", KEYS)):
            table = Table(title=title, show_header=False, box=None, title_justify="left")
            for key, what in rows:
                table.add_row(Text(key, style="bold"), what)
            self.console.print(table)

    def system(self, arg: str) -> None:
        if not arg:
            current = self.chat.system
            self.note(f"system: {current.content}" if current else "no system message")
            return
        self.chat.set_system(None if arg == "-" else arg)
        self.note("system message removed" if arg == "-" else "system message set")

    def clear(self, _: str) -> None:
        self.chat.reset()
        self.note("conversation cleared")

    def regen(self, _: str) -> Reply:
        return self.chat.regen()

    def save(self, arg: str) -> None:
        if not arg:
            raise TliteError(None, "usage: /save FILE")
        path = Path(arg).expanduser()
        save_transcript(path, self.chat, self.engine.settings.path)
        self.note(f"saved {len(self.chat.messages)} messages to {path}")

    def load(self, arg: str) -> None:
        if not arg:
            raise TliteError(None, "usage: /load FILE")
        path = Path(arg).expanduser()
        messages, sampling = load_transcript(path, self.chat.sampling)
        from tlite_edge.runtime import Chat

        self.chat.reset()
        self.chat = Chat.from_messages(self.engine, messages, sampling)
        self.note(f"loaded {len(messages)} messages from {path}")

    def set(self, arg: str) -> None:
        if not arg:
            table = Table(show_header=False, box=None)
            for key, value in self.chat.sampling.as_dict().items():
                if key not in SETTINGS:
                    continue
                none_word = SETTINGS[key].none_word if key in SETTINGS else None
                table.add_row(key, str(none_word if value is None else value))
            self.console.print(table)
            return
        key, _, value = arg.partition(" ")
        if not value.strip():
            raise TliteError(None, f"usage: /set {key} VALUE")
        name, parsed = parse_setting(key, value.strip())
        self.chat.sampling = _with(self.chat.sampling, {name: parsed})
        self.note(f"{name} = {SETTINGS[name].none_word if parsed is None else parsed}")

    def format(self, arg: str) -> None:
        """/format FILE|json|off: answers that follow a JSON schema file, any JSON object, or free text."""
        from tlite_edge.runtime.grammar import JSON_OBJECT_GRAMMAR, load_schema_grammar

        arg = arg.strip()
        if not arg:
            raise TliteError(None, "usage: /format FILE|json|off")
        fixed = {"off": None, "json": JSON_OBJECT_GRAMMAR}
        grammar = fixed[arg.lower()] if arg.lower() in fixed else load_schema_grammar(Path(arg).expanduser())
        self.chat.sampling = _with(self.chat.sampling, {"grammar": grammar})
        what = {"off": "free text", "json": "a JSON object"}.get(arg.lower(), f"JSON following {arg}")
        self.note(f"answers: {what}")

    def stats(self, _: str) -> None:
        self.show_stats = not self.show_stats
        self.note(f"stats {'on' if self.show_stats else 'off'}")

    def think(self, arg: str, on: bool = True) -> None:
        if not self.engine.caps.thinking:
            self.warn("this model's chat template has no thinking switch")
            return
        self.chat.think = on
        self.note(f"thinking {'on' if on else 'off'}")

    def no_think(self, arg: str) -> None:
        self.think(arg, on=False)

    def toggle_thinking(self, _: str) -> None:
        self.hide_thinking = not self.hide_thinking
        self.note(f"thinking {'hidden' if self.hide_thinking else 'shown'}")

    def exit(self, _: str) -> object:
        return EXIT


COMMANDS: dict[str, Callable[[ChatSession, str], Any]] = {
    "/help": ChatSession.help,
    "/?": ChatSession.help,
    "/system": ChatSession.system,
    "/clear": ChatSession.clear,
    "/regen": ChatSession.regen,
    "/save": ChatSession.save,
    "/load": ChatSession.load,
    "/set": ChatSession.set,
    "/format": ChatSession.format,
    "/stats": ChatSession.stats,
    "/think": ChatSession.think,
    "/no_think": ChatSession.no_think,
    "/hide_thinking": ChatSession.toggle_thinking,
    "/exit": ChatSession.exit,
    "/quit": ChatSession.exit,
}
