"""A reply's text split as it streams: thinking (``<think>…</think>``), answer, and tool calls.

``ReplyParser.feed(text)`` takes decoded text pieces and returns tagged ``Part``s; text that could be
the start of a tag is held back until the next piece says. Thinking is recognised at the start of a
reply only (or from the start when the prompt already opened the block); a ``<tool_call>`` block
whose body is a JSON object with a string ``name`` (and an object ``arguments``) becomes an
OpenAI tool call, anything else in it stays answer text, tags included.
"""

from __future__ import annotations

import codecs
import json
import secrets
import string
from dataclasses import dataclass
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
ID_ALPHABET = string.ascii_letters + string.digits


def call_id() -> str:
    """An OpenAI-style tool call id: ``call_`` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(ID_ALPHABET) for _ in range(24))


class Utf8Stream:
    """Token bytes in, whole characters out: a Cyrillic letter split over two tokens comes out once."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    @property
    def pending(self) -> bool:
        """Whether a character is half-way (its first bytes fed, not yet output)."""
        return bool(self._decoder.getstate()[0])

    def flush(self) -> str:
        """What is left at the end (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


@dataclass
class Part:
    """A piece of a reply: ``kind`` is "reasoning", "content" or "tool_call" (then ``call`` is set)."""

    kind: str
    text: str = ""
    call: dict[str, Any] | None = None


def parse_call(body: str) -> dict[str, Any] | None:
    """``{"name": ..., "arguments": {...}}`` -> an OpenAI tool call (arguments as JSON text), else None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        return None
    arguments = data.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {
        "id": call_id(),
        "type": "function",
        "function": {"name": data["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def _held(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is the start of one of ``tags``."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


class ReplyParser:
    """Streaming splitter. ``reasoning``: look for a think block at the start; ``in_think``: the
    prompt opened one already; ``tools``: turn ``<tool_call>`` blocks into calls."""

    def __init__(self, *, reasoning: bool, in_think: bool = False, tools: bool = False) -> None:
        self.reasoning, self.tools = reasoning, tools
        self.state = "think" if in_think else "content"
        self.buf = ""  # text not yet given out
        self.started = in_think  # a think block was seen, or answer text (no think block after it)
        self.ws = ""  # whitespace held at the end of the answer or thinking so far
        self.lead = True  # at the start of a stretch of answer or thinking: whitespace is dropped
        self.calls = 0

    def _tags(self) -> tuple[str, ...]:
        if self.state == "think":
            return (THINK_CLOSE,)
        if self.state == "call":
            return (CALL_CLOSE,)
        tags = (THINK_OPEN,) if self.reasoning and not self.started else ()
        return tags + ((CALL_OPEN,) if self.tools else ())

    def _text(self, kind: str, text: str) -> list[Part]:
        """Text of a stretch: leading whitespace dropped, trailing whitespace held until more comes."""
        if self.lead:
            text = text.lstrip()
            self.lead = not text
        body = text.rstrip()
        if not body:
            self.ws += text
            return []
        out, self.ws = self.ws + body, text[len(body) :]
        if kind == "content":
            self.started = True
        return [Part(kind, out)]

    def feed(self, text: str) -> list[Part]:
        self.buf += text
        parts: list[Part] = []
        while True:
            tags = self._tags()
            hits = [(self.buf.find(t), t) for t in tags if t in self.buf]
            kind = "reasoning" if self.state == "think" else "content"
            if not hits:
                if self.state != "call":  # a call's body waits for its closing tag
                    keep = _held(self.buf, tags)
                    ready, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep :]
                    parts += self._text(kind, ready)
                return parts
            at, tag = min(hits)
            before, self.buf = self.buf[:at], self.buf[at + len(tag) :]
            if self.state == "call":
                parts += self._close_call(before)
                continue
            parts += self._text(kind, before)
            self.ws, self.lead = "", True  # whitespace around a tag goes
            self.state = {THINK_OPEN: "think", THINK_CLOSE: "content", CALL_OPEN: "call"}[tag]
            self.started = True

    def _close_call(self, body: str) -> list[Part]:
        self.state, self.lead = "content", True
        call = parse_call(body.strip())
        if call is None:  # not a call: the block stays answer text, tags and all
            self.lead = False
            return [Part("content", self.ws + CALL_OPEN + body + CALL_CLOSE)]
        self.calls += 1
        return [Part("tool_call", call=call)]

    def flush(self) -> list[Part]:
        """What is held at the end: an unclosed tool block is answer text; trailing space is kept."""
        text, self.buf = self.buf, ""
        if self.state == "call":
            self.state, self.lead = "content", False
            return [Part("content", self.ws + CALL_OPEN + text)]
        kind = "reasoning" if self.state == "think" else "content"
        parts = self._text(kind, text)
        if self.ws and kind == "content" and not self.lead:
            parts.append(Part("content", self.ws))
        self.ws = ""
        return parts
