"""Slots and the prompt cache across requests: which free engine a request should go to.

Each slot is one engine (one llama.cpp context); after a request its KV cache still holds that
request's prompt and reply, and llama-cpp-python's prefix match re-evaluates only the tokens after
the longest common prefix. So a request goes to the free slot that lets it reuse the most:

1. a slot whose last prompt the new prompt starts with (the next turn of its conversation, the same
   request again, or an empty slot): at most that slot's last reply is lost; the longest shared
   prefix wins;
2. else the slot sharing the longest prefix, if it shares at least ``MIN_REUSE`` tokens;
3. else the least recently used slot.

Ties go to the least recently used slot. Rule 1 keeps interleaved conversations each on its own slot:
a new conversation with the same system prompt takes an empty slot rather than the tail of another
conversation's cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from tlite_edge.runtime import Engine
    from tlite_edge.serve.protocol import Request

MIN_REUSE = 32  # shared prefix (tokens) worth sending a request to a slot that loses the rest of its cache


class Running(Protocol):
    """What a slot knows of its request (a ``pool.Job``)."""

    ended: bool  # its answer is complete; the thread may still be closing


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(eq=False)
class Slot:
    """One engine, what its KV cache holds, when it was last used, whether a request has it."""

    index: int
    engine: Engine
    cached: np.ndarray = field(default_factory=_empty)
    held_prompt: int = 0  # how many of the cached tokens were its last request's prompt
    used: float = 0.0  # time.monotonic() of its last release; 0: never used
    busy: bool = False
    job: Running | None = None  # the request running on it

    def remember(self, enabled: bool, prompt_tokens: int | None) -> None:
        """Note what the KV cache holds now, after a request with a prompt of ``prompt_tokens`` (None:
        unknown, it failed); call when no reply runs on it."""
        kv_tokens = getattr(self.engine, "kv_tokens", None)  # an engine in a child process has none
        self.cached = np.asarray(kv_tokens(), dtype=np.int64) if enabled and kv_tokens else _empty()
        held = len(self.cached)
        self.held_prompt = held if prompt_tokens is None else min(prompt_tokens, held)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two id arrays."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


def choose(free: list[Slot], prompt: np.ndarray | None) -> tuple[Slot, int]:
    """The free slot for ``prompt`` (None: no preference) and how many of its tokens it holds."""
    by_age = sorted(free, key=lambda s: (s.used, s.index))  # least recently used first
    if prompt is None:
        return by_age[0], 0
    shared = [(common_prefix(s.cached, prompt), s) for s in by_age]
    kept = [(n, s) for n, s in shared if n >= s.held_prompt]
    if kept:
        n, slot = max(kept, key=lambda x: x[0])  # max keeps the first (oldest) of equals
        return slot, n
    n, slot = max(shared, key=lambda x: x[0])
    return (slot, n) if n >= MIN_REUSE else (by_age[0], shared[0][0])


def prompt_ids(engine: Engine, req: Request) -> np.ndarray:
    """The prompt ids a request will have (as ``pool.start_reply`` builds them), for choosing a slot."""
    from tlite_edge.runtime.chat import Chat

    if req.kind == "chat":
        ids = Chat.from_messages(engine, req.messages[:-1]).prompt_for(req.messages[-1]["content"])
    else:
        ids = engine.tokenize(req.prompt, special=False)
        if engine.add_bos:
            ids.insert(0, engine.bos)
    return np.asarray(ids, dtype=np.int64)
