"""A conversation on an ``Engine``: streamed replies, KV-cache reuse across turns, context overflow, stop.

``Chat(engine, system=..., sampling=...)`` starts one. ``Chat.send(text)`` returns a ``Reply``:
iterate it for text pieces (whole UTF-8 characters), call ``reply.stop()`` (or just stop iterating)
to end it early; the history keeps what was said. ``reply.parts()`` tags the pieces as thinking,
answer or tool calls (``think=`` and ``tools=`` of ``Chat``; see ``parts`` and ``tools``). Each turn
evaluates only the prompt tokens the KV cache does not already hold (longest common prefix);
``reply.stats`` counts them. Tokens come from llama.cpp's sampler chain (``runtime.sampler``):
evaluate, sample at a position, repeat.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tlite_edge.errors import TliteError
from tlite_edge.runtime.parts import ReplyParser
from tlite_edge.runtime.prompt import Prompt, check_tool_text
from tlite_edge.runtime.reply import Reply
from tlite_edge.runtime.tools import AUTO, NONE, check_tools, forced_grammar, forced_name
from tlite_edge.runtime.types import Message, Sampling, reply_budget

if TYPE_CHECKING:
    from tlite_edge.runtime.engine import Engine

RESERVE_SHARE = 4  # with max_tokens=None, keep n_ctx // 4 free for the reply (never more than half)
# On overflow, drop turns until this share of n_ctx is free as well: the next turns then extend the
# cached prefix instead of re-evaluating a shifted window every time.
SLACK_SHARE = 4


class Chat:
    """One conversation: a system message, the turns, and the window of them that fits the context."""

    def __init__(
        self,
        engine: Engine,
        *,
        system: str | None = None,
        sampling: Sampling | None = None,
        think: bool | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] = AUTO,
        parallel_tool_calls: bool = True,
    ) -> None:
        """A new conversation on ``engine`` (conversations on one engine share its KV cache by
        prefix); ``sampling`` defaults to the engine's (the GGUF's own ``general.sampling.*``).

        ``think``: the template's ``enable_thinking`` (None: its default; a template without the
        switch ignores it, with a line in ``notices``). ``tools``: OpenAI function tools for the
        template (a template that does not take tools is a TliteError); ``tool_choice`` "auto",
        "none", "required" or ``{"type": "function", "function": {"name": ...}}`` (forced by a grammar).
        """
        self.engine = engine
        self.sampling = sampling or engine.sampling
        self.messages: list[Message] = [Message("system", system)] if system else []
        self.start = len(self.messages)  # first message still in the model's window (after system)
        self.reply: Reply | None = None
        self.notices: list[str] = []
        self.think = think
        if think is not None and not engine.caps.thinking:
            self.notices.append("this model's chat template has no thinking switch: think setting ignored")
        self.tools = check_tools(list(tools)) if tools else []
        self.forced = forced_name(tool_choice, self.tools)
        self.tool_choice, self.parallel_tool_calls = tool_choice, parallel_tool_calls
        if self.tools and tool_choice != NONE:
            if not engine.caps.tools:
                raise TliteError(engine.settings.path, "this model's chat template does not take tools")
            check_tool_text(engine, self.tools)

    @classmethod
    def from_messages(
        cls,
        engine: Engine,
        messages: Sequence[dict[str, Any]],
        sampling: Sampling | None = None,
        **options: Any,
    ) -> Chat:
        """A chat that continues an existing transcript in OpenAI's shape (``respond()`` answers it);
        ``options`` are ``Chat``'s (think, tools, tool_choice, parallel_tool_calls)."""
        msgs = [Message.from_dict(m) for m in messages]
        system = msgs[0].content if msgs and msgs[0].role == "system" else None
        chat = cls(engine, system=system, sampling=sampling, **options)
        chat.messages += msgs[1:] if system is not None else msgs
        return chat

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != NONE

    def template_options(self) -> dict[str, Any]:
        """What the template gets besides the messages: tools and the thinking switch. A forced
        tool call renders with thinking off (its grammar has no room for a think block)."""
        think = self.think if self.engine.caps.thinking else None
        if self.uses_tools and self.tool_choice != AUTO and self.engine.caps.thinking:
            think = False
        return {"tools": self.tools if self.uses_tools else None, "think": think}

    def _parser(self, prompt: Prompt) -> ReplyParser | None:
        caps = self.engine.caps
        if not (caps.reasoning or self.uses_tools):
            return None
        return ReplyParser(reasoning=caps.reasoning, in_think=prompt.opens_think, tools=self.uses_tools)

    def _grammar(self) -> str | None:
        if not self.uses_tools or self.tool_choice == AUTO:
            return None
        return forced_grammar(self.tools, self.forced, self.parallel_tool_calls)

    @property
    def system(self) -> Message | None:
        return self.messages[0] if self.messages and self.messages[0].role == "system" else None

    def window(self) -> list[Message]:
        """What the model sees: the system message and the turns not dropped for length."""
        head = [self.system] if self.system else []
        return head + self.messages[self.start :]

    def prompt_for(self, text: str | None) -> list[int]:
        """The prompt ids the next ``send(text)`` (None: ``respond()``) would evaluate (before any
        overflow handling)."""
        new = [Message("user", text)] if text is not None else []
        return self.engine.prompt_tokens([*self.window(), *new], **self.template_options())

    def send(self, text: str, **sampling: Any) -> Reply:
        """Add a user turn and start the reply; ``sampling`` overrides fields of ``Sampling``."""
        return self._reply([Message("user", text)], sampling)

    def add_tool_result(self, content: str, tool_call_id: str | None = None) -> None:
        """A ``tool`` message: what a call of the last reply returned (then ``respond()``)."""
        self.messages.append(Message("tool", content, tool_call_id=tool_call_id))

    def respond(self, **sampling: Any) -> Reply:
        """Answer the transcript as it stands (its last message is the user's or a tool result)."""
        if not self.messages or self.messages[-1].role not in ("user", "tool"):
            raise TliteError(None, "nothing to answer: the last message is not from the user or a tool")
        return self._reply([], sampling)

    def _reply(self, new: list[Message], sampling: dict[str, Any]) -> Reply:
        t0 = time.perf_counter()
        self.engine.claim()  # one generation at a time per llama.cpp context
        s = self.sampling.with_(**sampling)
        grammar = self._grammar()
        if grammar is not None:
            s = s.with_(grammar=grammar)
        n_ctx = self.engine.n_ctx
        reserve = min(s.max_tokens or n_ctx // RESERVE_SHARE, n_ctx // 2)
        start, prompt = self._fit(new, reserve)
        dropped = start - self.start
        limit = reply_budget(n_ctx, len(prompt.ids), s.max_tokens)
        self.start = start
        self.messages += new
        reply = Reply(self, prompt.ids, limit, s, t0, self._parser(prompt))
        reply.single_call = self.uses_tools and not self.parallel_tool_calls
        self.messages.append(reply.message)
        reply.stats.dropped_messages = dropped
        if dropped:
            reply.stats.notices.append(
                f"context full ({n_ctx} tokens): left out the {dropped} oldest messages"
                + (", the system message kept" if self.system else "")
            )
        if s.max_tokens and limit < s.max_tokens:
            reply.stats.notices.append(f"reply limited to {limit} tokens by the context ({n_ctx})")
        return self._start(reply)

    def complete(self, prompt: list[int], sampling: Sampling, *, t0: float | None = None) -> Reply:
        """A reply that continues raw prompt ids (a text completion, the history untouched), at most
        ``sampling.max_tokens`` long and never past the context; ``t0``: when the request began."""
        t0 = time.perf_counter() if t0 is None else t0
        n_ctx = self.engine.n_ctx
        if len(prompt) >= n_ctx:
            raise TliteError(None, f"prompt too long: {len(prompt)} tokens, the context {n_ctx}")
        limit = reply_budget(n_ctx, len(prompt), sampling.max_tokens)
        return self._start(Reply(self, prompt, limit, sampling, t0))

    def _start(self, reply: Reply) -> Reply:
        """``reply`` becomes this chat's and the engine's current one (an unfinished one is closed)."""
        self.reply = reply
        self.engine.claim(reply)
        return reply

    def _fit(self, new: list[Message], reserve: int) -> tuple[int, Prompt]:
        """First kept message and the prompt, oldest turns dropped until ``reserve`` tokens stay free
        (never the turn being answered)."""
        n_ctx, head = self.engine.n_ctx, [self.system] if self.system else []
        options = self.template_options()
        users = [i for i, m in enumerate(self.messages) if m.role == "user"]
        last = len(self.messages) if new or not users else users[-1]  # the current turn starts here
        start = self.start

        def build() -> Prompt:
            return self.engine.prompt([*head, *self.messages[start:], *new], **options)

        prompt = build()
        slack = n_ctx // SLACK_SHARE if len(prompt.ids) + reserve > n_ctx else 0
        while len(prompt.ids) + reserve + slack > n_ctx and start < last:
            start = min(self._next_turn(start), last)
            prompt = build()
        if len(prompt.ids) >= n_ctx:
            raise TliteError(
                None, f"message too long: the prompt is {len(prompt.ids)} tokens, the context {n_ctx}"
            )
        return start, prompt

    def _next_turn(self, start: int) -> int:
        """Index of the next user message after ``start`` (drops a whole user+assistant turn)."""
        i = start + 1
        while i < len(self.messages) and self.messages[i].role != "user":
            i += 1
        return i

    def reset(self) -> None:
        """Forget the turns, keep the system message."""
        if self.reply is not None and not self.reply.done:
            self.reply.close()
        self.messages = [self.system] if self.system else []
        self.start = len(self.messages)

    def set_system(self, text: str | None) -> None:
        """Replace (``None``: remove) the system message; the turns stay."""
        if self.reply is not None and not self.reply.done:
            self.reply.close()
        head = int(self.system is not None)
        del self.messages[:head]
        if text:
            self.messages.insert(0, Message("system", text))
        self.start += int(bool(text)) - head

    def regen(self, **sampling: Any) -> Reply:
        """Drop the last reply and answer the last user message again."""
        users = [i for i, m in enumerate(self.messages) if m.role == "user"]
        if not users:
            raise TliteError(None, "nothing to regenerate: no user message yet")
        if self.reply is not None and not self.reply.done:
            self.reply.close()
        user = self.messages[users[-1]]
        del self.messages[users[-1] :]
        self.start = min(self.start, len(self.messages))
        return self.send(user.content, **sampling)
