"""The OpenAI wire format's responses: usage, response objects and stream chunks, server-sent events."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from tlite_edge.serve.protocol import Request


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens taken from the slot's KV cache (not evaluated)

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


class Shaper:
    """Builds the response objects of one request (same id and timestamp in every chunk)."""

    def __init__(self, req: Request, model_id: str) -> None:
        self.req, self.model = req, model_id
        prefix = "chatcmpl" if req.kind == "chat" else "cmpl"
        self.id = f"{prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self._offset = 0  # characters of the answer before the next logprobs token (completions)

    def _wrap(self, obj: str, choices: list[dict[str, Any]], usage: Usage | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            out["usage"] = usage.as_dict()
        return out

    def full(
        self,
        text: str,
        finish: str,
        usage: Usage,
        logprobs: list[Any] | None = None,
        reasoning: str = "",
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        lp = self.logprobs(logprobs)
        if self.req.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text or (None if tool_calls else "")}
            if reasoning:
                message["reasoning_content"] = reasoning  # as llama-server and vLLM send it
            if tool_calls:
                message["tool_calls"] = tool_calls
            choice = {"index": 0, "message": message}
            return self._wrap("chat.completion", [{**choice, "logprobs": lp, "finish_reason": finish}], usage)
        choice = {"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}
        return self._wrap("text_completion", [choice], usage)

    def chunk(
        self,
        text: str | None = None,
        finish: str | None = None,
        first: bool = False,
        logprobs: list[Any] | None = None,
        reasoning: str | None = None,
        tool_call: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A stream chunk: answer ``text`` (with its tokens' ``logprobs``), ``reasoning``
        (``delta.reasoning_content``), or one ``tool_call`` delta (OpenAI's ``delta.tool_calls[0]``)."""
        lp = self.logprobs(logprobs)
        if self.req.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            if reasoning is not None:
                delta["reasoning_content"] = reasoning
            if tool_call is not None:
                delta["tool_calls"] = [tool_call]
            choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
            return self._wrap("chat.completion.chunk", [choice])
        choice = {"index": 0, "text": text or "", "logprobs": lp, "finish_reason": finish}
        return self._wrap("text_completion", [choice])

    def logprobs(self, infos: list[Any] | None) -> dict[str, Any] | None:
        """OpenAI's logprobs object for these tokens (``pool.TokenInfo``): chat's ``content`` list, or
        the completions' legacy columns (``text_offset`` counts characters across the whole answer)."""
        if infos is None or self.req.logprobs is None:
            return None
        if self.req.kind == "chat":

            def entry(text: str, data: bytes, lp: float) -> dict[str, Any]:
                return {"token": text, "logprob": lp, "bytes": list(data)}

            content = [
                {**entry(i.text, i.data, i.logprob), "top_logprobs": [entry(*t) for t in i.top]}
                for i in infos
            ]
            return {"content": content, "refusal": None}
        offsets = []
        for i in infos:
            offsets.append(self._offset)
            self._offset += len(i.text)
        return {
            "tokens": [i.text for i in infos],
            "token_logprobs": [i.logprob for i in infos],
            "top_logprobs": [{t: lp for t, _, lp in i.top} for i in infos],
            "text_offset": offsets,
        }

    def tool_call_chunks(self, index: int, call: dict[str, Any]) -> list[dict[str, Any]]:
        """One tool call as OpenAI streams it: index, id, type and name first, then the arguments."""
        fn = call["function"]
        head = {"index": index, "id": call["id"], "type": "function"}
        return [
            self.chunk(tool_call={**head, "function": {"name": fn["name"], "arguments": ""}}),
            self.chunk(tool_call={"index": index, "function": {"arguments": fn["arguments"]}}),
        ]

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.req.kind == "chat" else "text_completion"
        return self._wrap(obj, [], usage)


def sse(obj: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()
