"""What the engine, chats and the server share: sampling settings, messages, reply stats, the reply budget.

Nothing here loads llama.cpp; ``engine`` and ``chat`` import this module, never each other's code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol

from tlite_edge.gguf.keys import SAMPLING_KEYS

# Sampling field -> GGUF key (llama.cpp's general.sampling.* defaults written by model authors).
GGUF_SAMPLING_KEYS = SAMPLING_KEYS


def reply_budget(n_ctx: int, prompt_tokens: int, max_tokens: int | None) -> int:
    """Tokens the answer may take: ``max_tokens`` (None or 0: no limit of its own), never past the end
    of the context after ``prompt_tokens``; 0 when the prompt fills the context."""
    return max(0, min(max_tokens or n_ctx, n_ctx - prompt_tokens))


@dataclass(frozen=True)
class Sampling:
    """Sampling settings for one reply; ``seed=None`` keeps the engine's seed.

    ``presence_penalty``/``frequency_penalty`` (OpenAI's, -2..2) and ``repeat_penalty`` (llama.cpp's,
    1 = off) count the reply's last 64 tokens; ``logit_bias`` is ``((token, bias), ...)``;
    ``grammar`` is GBNF text with a rule named ``root`` (every token then keeps the text grammatical,
    and the reply ends when the grammar is complete); ``logprobs``: None off, N = the chosen token's
    log-probability and the N most likely (0..20) at each step, in ``Reply.logprobs``."""

    temp: float = 0.6
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    max_tokens: int | None = 1024
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None
    logprobs: int | None = None

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> Sampling:
        """Our defaults, replaced by the GGUF's ``general.sampling.*`` values where present."""
        kinds = {f.name: f.type for f in fields(cls)}
        found = {k: meta[key] for k, key in GGUF_SAMPLING_KEYS.items() if meta.get(key) is not None}
        return cls(**{k: (int(v) if kinds[k] == "int" else float(v)) for k, v in found.items()})

    def with_(self, **changes: Any) -> Sampling:
        """A copy with the given fields changed; ``None`` values are ignored."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Message:
    """One chat message; ``tokens`` holds an assistant reply's generated ids (exact KV-cache reuse).

    ``reasoning`` is an assistant's thinking (``reasoning_content``), ``tool_calls`` its calls in
    OpenAI's shape, ``tool_call_id`` what a ``tool`` message answers.
    """

    role: str
    content: str
    tokens: list[int] | None = None
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning is not None:
            out["reasoning_content"] = self.reasoning
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        """From OpenAI's shape (``reasoning_content``, ``tool_calls``, ``tool_call_id``)."""
        return cls(
            str(data["role"]),
            data.get("content") or "",
            reasoning=data.get("reasoning_content"),
            tool_calls=data.get("tool_calls") or None,
            tool_call_id=data.get("tool_call_id"),
        )


@dataclass
class ReplyStats:
    prompt_tokens: int = 0  # the whole prompt of this turn
    evaluated_tokens: int = 0  # prompt tokens actually evaluated (the rest came from the KV cache)
    generated_tokens: int = 0  # reply tokens, the end-of-turn token not counted
    prompt_seconds: float = 0.0  # llama.cpp's time evaluating the prompt
    generation_seconds: float = 0.0  # first to last token
    time_to_first_token: float = 0.0  # from send() to the first sampled token
    finish_reason: str = ""  # "stop" (end of turn), "length", "stopped"; "" while running
    dropped_messages: int = 0  # oldest messages left out to fit the context
    notices: list[str] = field(default_factory=list)
    _decodes: int = field(default=0, repr=False)  # tokens sampled after the first (one decode each)

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.evaluated_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def decoded_tokens(self) -> int:
        """Reply tokens fed back through the model (one decode each) within ``generation_seconds``."""
        return self._decodes

    @property
    def generation_tokens_per_s(self) -> float:
        return self._decodes / self.generation_seconds if self.generation_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        out.update(
            prompt_tokens_per_s=round(self.prompt_tokens_per_s, 2),
            generation_tokens_per_s=round(self.generation_tokens_per_s, 2),
        )
        return out


class Generation(Protocol):
    """What an engine knows of the reply generating on its context (a ``chat.Reply``)."""

    @property
    def done(self) -> bool: ...

    def close(self) -> None: ...
