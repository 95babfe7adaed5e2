"""What the engine, chats and the server share: sampling settings, messages, reply stats, the reply budget.

Nothing here loads llama.cpp; ``engine`` and ``chat`` import this module, never each other's code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol

from gguf import Keys

# Sampling field -> GGUF key (llama.cpp's general.sampling.* defaults written by model authors).
GGUF_SAMPLING_KEYS = {
    "temp": Keys.General.SAMPLING_TEMP,
    "top_p": Keys.General.SAMPLING_TOP_P,
    "top_k": Keys.General.SAMPLING_TOP_K,
    "min_p": Keys.General.SAMPLING_MIN_P,
    "repeat_penalty": Keys.General.SAMPLING_PENALTY_REPEAT,
}


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

    def choices(self) -> dict[str, Any]:
        """The settings a person picks (no grammar, bias or log-probabilities): for display."""
        return {k: v for k, v in self.as_dict().items() if k not in ("logit_bias", "grammar", "logprobs")}


@dataclass
class Message:
    """One chat message; ``tokens`` holds an assistant reply's generated ids (exact KV-cache reuse)."""

    role: str
    content: str
    tokens: list[int] | None = None

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


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
