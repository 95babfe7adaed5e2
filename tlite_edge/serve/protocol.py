"""The OpenAI wire format: request checks (one clear error each), response and stream-chunk shapes."""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
MAX_STOP = 4  # OpenAI's limit on stop sequences


class ApiError(Exception):
    """An error answered as ``{"error": {message, type, param, code}}`` with an HTTP status."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error"}

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        if self.status in self.TYPES:
            return self.TYPES[self.status]
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)


@dataclass
class Request:
    """A checked chat or completion request (what a worker needs, nothing from the wire)."""

    kind: str  # "chat" or "completion"
    model: str
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str = ""
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


# field -> (accepted types, check, what it must be); a value of None is always accepted (= default)
def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


OPTIONS: dict[str, tuple[Any, str]] = {
    "max_tokens": (lambda v: _int(v) and v >= 1, "an integer of at least 1"),
    "max_completion_tokens": (lambda v: _int(v) and v >= 1, "an integer of at least 1"),
    "temperature": (lambda v: _num(v) and 0 <= v <= 2, "a number from 0 to 2"),
    "top_p": (lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "seed": (lambda v: _int(v) and 0 <= v < 2**32 - 1, f"an integer from 0 to {2**32 - 2}"),
    "n": (lambda v: v == 1 and _int(v), "1 (one choice per request)"),
    "stream": (lambda v: isinstance(v, bool), "true or false"),
    "presence_penalty": (lambda v: _num(v) and v == 0, "0 (penalties are not supported)"),
    "frequency_penalty": (lambda v: _num(v) and v == 0, "0 (penalties are not supported)"),
    "logprobs": (lambda v: v is False or v == 0, "false (log-probabilities are not supported)"),
    "echo": (lambda v: v is False, "false (echo is not supported)"),
    "best_of": (lambda v: v == 1 and _int(v), "1 (best_of is not supported)"),
    "tools": (lambda v: v == [], "empty (tool calls are not supported)"),
    "functions": (lambda v: v == [], "empty (function calls are not supported)"),
    "logit_bias": (lambda v: v == {}, "empty (logit_bias is not supported)"),
    "suffix": (lambda v: v == "", "empty (suffix is not supported)"),
    "response_format": (lambda v: v == {"type": "text"}, '{"type": "text"} (JSON modes are not supported)'),
}


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise bad("the request body is not UTF-8", code="invalid_json") from None
    except (ValueError, RecursionError) as exc:
        raise bad(f"the request body is not valid JSON ({str(exc)[:120]})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad("the request body must be a JSON object", code="invalid_json")
    return data


def _content(msg: dict[str, Any], i: int) -> str:
    """A message's text: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    content = msg.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    raise bad(
        f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}].content"
    )


def _messages(data: dict[str, Any], max_messages: int) -> list[dict[str, str]]:
    msgs = data.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("messages must be a non-empty list", param="messages")
    if len(msgs) > max_messages:
        raise bad(f"too many messages: {len(msgs)}, at most {max_messages}", param="messages")
    out = []
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict):
            raise bad(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = msg.get("role")
        if role not in ROLES:
            raise bad(
                f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}",
                param=f"messages[{i}].role",
            )
        if role == "system" and i > 0:
            raise bad(f"messages[{i}]: a system message may only come first", param=f"messages[{i}].role")
        if msg.get("tool_calls") or msg.get("function_call"):
            raise bad(f"messages[{i}]: tool calls are not supported", param=f"messages[{i}]")
        out.append({"role": role, "content": _content(msg, i)})
    if out[-1]["role"] != "user":
        raise bad("the last message must have role user", param=f"messages[{len(out) - 1}].role")
    return out


def _stop(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop must be a non-empty string or a list of them", param="stop")
    if len(stops) > MAX_STOP:
        raise bad(f"stop takes at most {MAX_STOP} sequences, got {len(stops)}", param="stop")
    return stops


def parse_request(kind: str, data: dict[str, Any], max_messages: int) -> Request:
    """Check a chat (``kind="chat"``) or completion request; raises ApiError 400 on the first problem."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model is required (a string)", param="model")
    for name, (ok, what) in OPTIONS.items():
        value = data.get(name)
        if value is not None and not ok(value):
            raise bad(f"{name} must be {what}, got {json.dumps(value)[:60]}", param=name)
    req = Request(kind=kind, model=model, stream=bool(data.get("stream")))
    req.max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
    req.temperature, req.top_p, req.seed = data.get("temperature"), data.get("top_p"), data.get("seed")
    if data.get("stop") is not None:
        req.stop = _stop(data["stop"])
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise bad('stream_options must be an object like {"include_usage": true}', "stream_options")
        req.include_usage = bool(options.get("include_usage"))
    if kind == "chat":
        req.messages = _messages(data, max_messages)
    else:
        prompt = data.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise bad("prompt must be a string (one prompt per request)", param="prompt")
        req.prompt = prompt
    return req


# ---- responses -----------------------------------------------------------------------------------


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class Shaper:
    """Builds the response objects of one request (same id and timestamp in every chunk)."""

    def __init__(self, req: Request, model_id: str) -> None:
        self.req, self.model = req, model_id
        prefix = "chatcmpl" if req.kind == "chat" else "cmpl"
        self.id = f"{prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())

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

    def full(self, text: str, finish: str, usage: Usage) -> dict[str, Any]:
        if self.req.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
            return self._wrap(
                "chat.completion", [{**choice, "logprobs": None, "finish_reason": finish}], usage
            )
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return self._wrap("text_completion", [choice], usage)

    def chunk(
        self, text: str | None = None, finish: str | None = None, first: bool = False
    ) -> dict[str, Any]:
        if self.req.kind == "chat":
            delta: dict[str, str] = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return self._wrap("chat.completion.chunk", [choice])
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return self._wrap("text_completion", [choice])

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.req.kind == "chat" else "text_completion"
        return self._wrap(obj, [], usage)


def sse(obj: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()
