"""Chat prompts from the GGUF's own template (Hugging Face semantics) with every user text kept plain.

The template is rendered twice: once with the real texts, once with a sentinel in place of each
user-supplied text (message content, reasoning, tool-call names and arguments, tool results). The
pieces between sentinels are the template's own and are tokenized with special tokens parsed; each
sentinel's text is tokenized as plain text: no control token (``<|im_end|>``) and no added token of
the vocabulary (``<tool_call>``, ``<think>``) can come out of it. Where the template transforms a
text (``| trim``, ``.strip('\\n')``), the transform is found by matching the real rendering.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import llama_cpp

from tlite_edge.errors import TliteError
from tlite_edge.runtime.types import Message

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
OPEN, CLOSE = "\ue000", "\ue001"  # private-use characters around a sentinel's number
ADDED = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
# How a template may print a text: as is, trimmed (Llama-3's ``| trim``, Qwen3's ``.strip('\n')``), or
# as a JSON string (``| tojson`` of a string).
TRANSFORMS: tuple[Callable[[str], str], ...] = (
    lambda s: s,
    str.strip,
    lambda s: s.strip("\n"),
    lambda s: s.lstrip("\n"),
    lambda s: s.rstrip("\n"),
    str.lstrip,
    str.rstrip,
    lambda s: json.dumps(s, ensure_ascii=False),
)
MAX_ALIGN_STEPS = 100_000  # transform search budget; past it every text is taken as printed as is
PROBE_MESSAGES = [{"role": "user", "content": "Hi"}]
PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "probe_tool",
        "description": "Whether the template prints tools.",
        "parameters": {"type": "object", "properties": {}},
    },
}


class Engine(Protocol):
    """What prompts need of ``engine.Engine`` (which imports this module)."""

    bos: int
    add_bos: bool

    def render(self, messages: Sequence[dict[str, Any]], **variables: Any) -> str: ...
    def tokenize(self, text: str, *, special: bool) -> list[int]: ...
    def detokenize(self, tokens: Sequence[int]) -> str: ...
    def token_text(self, token: int) -> str: ...
    def token_attr(self, token: int) -> int: ...


@dataclass(frozen=True)
class TemplateCaps:
    """What a chat template does: prints ``tools``, switches on ``enable_thinking``, knows ``<think>``."""

    tools: bool
    thinking: bool
    reasoning: bool


def template_caps(template: str, render: Callable[..., str]) -> TemplateCaps:
    """Found by rendering, not by model name: a template takes tools if it prints them."""
    base = render(PROBE_MESSAGES)
    tools = render(PROBE_MESSAGES, tools=[PROBE_TOOL]) != base
    thinking = render(PROBE_MESSAGES, enable_thinking=True) != render(PROBE_MESSAGES, enable_thinking=False)
    return TemplateCaps(tools, thinking, thinking or THINK_CLOSE in template)


@dataclass
class Prompt:
    ids: list[int]
    opens_think: bool  # the generation prompt leaves a <think> block open (the reply starts in it)


def template_message(m: Message, mark: Callable[[str], str]) -> dict[str, Any]:
    """A message as the template sees it (OpenAI/HF shape), each user text passed through ``mark``."""
    out: dict[str, Any] = {"role": m.role, "content": mark(m.content)}
    if m.reasoning is not None:
        out["reasoning_content"] = mark(m.reasoning)
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.get("id", ""),
                "type": "function",
                "function": {
                    "name": mark(call["function"]["name"]),
                    "arguments": mark(arguments_text(call["function"].get("arguments", {}))),
                },
            }
            for call in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def arguments_text(arguments: Any) -> str:
    """Tool-call arguments as the JSON text a template prints (``tojson`` of an object, as is if text)."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def check_tool_text(engine: Engine, tools: Sequence[dict[str, Any]]) -> None:
    """Tools are rendered as template text: none of their strings may hold a special token's text."""
    todo: list[tuple[Any, str]] = [(t, f"tools[{i}]") for i, t in enumerate(tools)]
    while todo:
        value, where = todo.pop()
        if isinstance(value, dict):
            todo += [(k, where) for k in value] + [(v, f"{where}.{k}") for k, v in value.items()]
        elif isinstance(value, list):
            todo += [(v, f"{where}[{i}]") for i, v in enumerate(value)]
        elif isinstance(value, str):
            found = [t for t in engine.tokenize(value, special=True) if engine.token_attr(t) & ADDED]
            if found:
                raise TliteError(None, f"{where} holds the special token {engine.token_text(found[0])!r}")


def build_prompt(
    engine: Engine, messages: Sequence[Message], variables: dict[str, Any] | None = None
) -> Prompt:
    """Prompt ids: template text with special tokens parsed, every user text plain, BOS once."""
    variables = variables or {}
    nonce = secrets.token_hex(4)
    slots: list[str] = []

    def mark(text: str) -> str:
        if not text:  # nothing to protect, and templates test texts for emptiness
            return text
        slots.append(text)
        return f"{OPEN}{nonce}:{len(slots) - 1}{CLOSE}"

    plain = engine.render([template_message(m, lambda s: s) for m in messages], **variables)
    marked = engine.render([template_message(m, mark) for m in messages], **variables)
    pieces = _pieces(marked, nonce, len(slots))
    transforms = _align(pieces, slots, plain)
    # Template markers (control and added tokens the template wrote) are atoms; every text between two
    # markers, template text and user texts alike, is tokenized in one run as plain text (as HF does
    # it: added tokens first, the rest by BPE), so no user text can make a marker.
    runs: list[list[tuple[str, bool]]] = [[]]  # per run between markers: (text, is it a user text)
    markers: list[int] = []
    for (text, index), t in zip(pieces, transforms, strict=True):
        if index is not None:
            runs[-1].append((t(slots[index]), True))
            continue
        pos = 0
        for token in engine.tokenize(text, special=True):
            if engine.token_attr(token) & ADDED:
                word = engine.token_text(token)
                at = text.find(word, pos)
                if at < 0:
                    raise TliteError(None, f"the chat template's marker {word!r} could not be traced")
                runs[-1].append((text[pos:at], False))
                markers.append(token)
                runs.append([])
                pos = at + len(word)
        runs[-1].append((text[pos:], False))
    # an assistant reply's own ids are reused when its content is a whole run (exact KV cache)
    reuse = {m.content: m.tokens for m in messages if m.tokens is not None and m.content}
    ids: list[int] = []
    for i, run in enumerate(runs):
        texts = [text for text, _ in run if text]
        joined = "".join(texts)
        known = reuse.get(joined) if len(texts) == 1 and run_is_user(run) else None
        if known is not None and joined == engine.detokenize(known):
            ids += known
        else:
            ids += plain_tokens(engine, joined)
        if i < len(markers):
            ids.append(markers[i])
    if engine.add_bos and (not ids or ids[0] != engine.bos):
        ids.insert(0, engine.bos)
    while ids[1:2] == [engine.bos] and ids[0] == engine.bos:
        ids.pop(0)
    tail = pieces[-1][0] if pieces and pieces[-1][1] is None else ""
    return Prompt(ids, tail.rfind(THINK_OPEN) > tail.rfind(THINK_CLOSE))


def run_is_user(run: list[tuple[str, bool]]) -> bool:
    return all(user for text, user in run if text)


def _pieces(marked: str, nonce: str, n: int) -> list[tuple[str, int | None]]:
    """Template text and sentinel numbers in order; a sentinel the template changed is an error."""
    parts = marked.split(OPEN)
    pieces: list[tuple[str, int | None]] = [(parts[0], None)]
    for part in parts[1:]:
        head, sep, rest = part.partition(CLOSE)
        tag, _, number = head.partition(":")
        if not sep or tag != nonce or not number.isdigit() or int(number) >= n:
            raise TliteError(None, "the chat template altered a message text in a way that cannot be traced")
        pieces += [("", int(number)), (rest, None)]
    return pieces


def _align(pieces: list[tuple[str, int | None]], slots: list[str], plain: str) -> list[Callable[[str], str]]:
    """One transform per piece such that the pieces rebuild ``plain`` (depth-first, first fit); when
    nothing fits (a template that decides on a text's content), each text as is."""
    identity, last = TRANSFORMS[0], len(TRANSFORMS) - 1
    n = len(pieces)
    choice, pos = [0] * n, [0] * (n + 1)
    i = 0
    for _ in range(MAX_ALIGN_STEPS):
        if i == n:
            if pos[n] == len(plain):
                pairs = zip(pieces, choice, strict=True)
                return [identity if idx is None else TRANSFORMS[c] for (_, idx), c in pairs]
            fits = False
        else:
            text, index = pieces[i]
            value = text if index is None else TRANSFORMS[choice[i]](slots[index])
            fits = plain.startswith(value, pos[i])
            if fits:
                pos[i + 1] = pos[i] + len(value)
                i += 1
                if i < n:
                    choice[i] = 0
                continue
            if index is not None and choice[i] < last:
                choice[i] += 1
                continue
        i -= 1  # back to the nearest text with a transform left to try
        while i >= 0 and (pieces[i][1] is None or choice[i] == last):
            i -= 1
        if i < 0:
            break
        choice[i] += 1
    return [identity] * n


def plain_tokens(engine: Engine, text: str) -> list[int]:
    """``text`` as plain characters: llama.cpp without special tokens, and no added token either
    (llama.cpp matches added non-control tokens such as ``<tool_call>`` even then): each occurrence
    is split so that it comes out as ordinary tokens; the ids detokenize to ``text``."""
    ids = engine.tokenize(text, special=False)
    added = {t for t in ids if engine.token_attr(t) & ADDED}
    if not added:
        return ids
    words = sorted({engine.token_text(t) for t in added}, key=len, reverse=True)
    chunks = list(_split_at(text, words))
    if len(chunks) == 1:  # a one-character added token cannot be split: left as llama.cpp reads it
        return ids
    return [t for chunk in chunks for t in plain_tokens(engine, chunk)]


def _split_at(text: str, words: list[str]) -> Iterator[str]:
    """``text`` cut inside each occurrence of ``words`` (after the first character)."""
    start = 0
    i = 0
    while i < len(text):
        word = next((w for w in words if w and text.startswith(w, i)), None)
        if word is None:
            i += 1
            continue
        yield text[start : i + 1]
        start = i + 1
        i += len(word)
    yield text[start:]
