"""The OpenAI wire format: request checks (one clear error each), response and stream-chunk shapes."""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_STOP_BYTES = 32 * 1024  # all stop sequences together, UTF-8
LOG_KEY = "tlite_edge.log"  # the access-log entry of a request, in its ASGI scope


class ApiError(Exception):
    """An error answered as ``{"error": {message, type, param, code}}`` with an HTTP status."""

    TYPES = {401: "authentication_error", 403: "permission_error"}

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
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


CHAT, COMPLETION = frozenset({"chat"}), frozenset({"completion"})
BOTH = CHAT | COMPLETION
# Fields read by their own parser (and honoured): field -> the request kinds that take it.
STRUCTURED: dict[str, frozenset[str]] = {
    "model": BOTH,
    "messages": CHAT,
    "prompt": COMPLETION,
    "stop": BOTH,
    "stream_options": BOTH,
    "user": BOTH,  # an end-user id for the provider's abuse checks: accepted, nothing to do with it here
}


@dataclass(frozen=True)
class Option:
    """A plain-valued field: the kinds that take it, its check, what it must be, whether it is honoured
    (False: accepted only at the value that means "off", anything else is refused)."""

    kinds: frozenset[str]
    ok: Callable[[Any], bool]
    what: str
    honoured: bool = True


# a value of None is always accepted (= the default)
OPTIONS: dict[str, Option] = {
    "max_tokens": Option(BOTH, lambda v: _int(v) and v >= 1, "an integer of at least 1"),
    "max_completion_tokens": Option(CHAT, lambda v: _int(v) and v >= 1, "an integer of at least 1"),
    "temperature": Option(BOTH, lambda v: _num(v) and 0 <= v <= 2, "a number from 0 to 2"),
    "top_p": Option(BOTH, lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "top_k": Option(BOTH, lambda v: _int(v) and 0 <= v <= 1000, "an integer from 0 (all tokens) to 1000"),
    "repetition_penalty": Option(BOTH, lambda v: _num(v) and 0 < v <= 2, "a number in (0, 2] (1 = off)"),
    "seed": Option(BOTH, lambda v: _int(v) and 0 <= v < 2**32 - 1, f"an integer from 0 to {2**32 - 2}"),
    "stream": Option(BOTH, lambda v: isinstance(v, bool), "true or false"),
    "n": Option(BOTH, lambda v: v == 1 and _int(v), "1 (one choice per request)", False),
    "presence_penalty": Option(BOTH, lambda v: _num(v) and v == 0, "0 (use repetition_penalty)", False),
    "frequency_penalty": Option(BOTH, lambda v: _num(v) and v == 0, "0 (use repetition_penalty)", False),
    "logprobs": Option(BOTH, lambda v: v is False or v == 0, "false (no log-probabilities here)", False),
    "top_logprobs": Option(CHAT, lambda v: v == 0 and _int(v), "0 (no log-probabilities here)", False),
    "echo": Option(COMPLETION, lambda v: v is False, "false (echo is not supported)", False),
    "best_of": Option(COMPLETION, lambda v: v == 1 and _int(v), "1 (best_of is not supported)", False),
    "suffix": Option(COMPLETION, lambda v: v == "", "empty (suffix is not supported)", False),
    "tools": Option(CHAT, lambda v: v == [], "empty (tool calls are not supported)", False),
    "tool_choice": Option(CHAT, lambda v: v == "none", '"none" (tool calls are not supported)', False),
    "functions": Option(CHAT, lambda v: v == [], "empty (function calls are not supported)", False),
    "function_call": Option(CHAT, lambda v: v == "none", '"none" (function calls are not supported)', False),
    "logit_bias": Option(BOTH, lambda v: v == {}, "empty (logit_bias is not supported)", False),
    "response_format": Option(
        CHAT, lambda v: v == {"type": "text"}, '{"type": "text"} (JSON modes are not supported)', False
    ),
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
    size = sum(len(s.encode("utf-8")) for s in stops)
    if size > MAX_STOP_BYTES:
        raise bad(f"stop sequences total {size} bytes, at most {MAX_STOP_BYTES}", param="stop")
    return stops


def check_text(data: Any, path: str = "") -> None:
    """Refuse (400 naming the field) any string or key that is not encodable UTF-8 (lone surrogates)."""
    todo: list[tuple[Any, str]] = [(data, path)]
    while todo:
        value, where = todo.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                name = where or "the request body"
                raise bad(f"{name} is not valid UTF-8 (a lone surrogate?)", param=where or None) from None
        elif isinstance(value, dict):
            for key, item in value.items():
                todo.append((key, where or "a field name"))
                todo.append((item, f"{where}.{key}" if where else str(key)))
        elif isinstance(value, list):
            todo.extend((item, f"{where}[{i}]") for i, item in enumerate(value))


def check_fields(kind: str, data: dict[str, Any]) -> None:
    """Every field is known for this kind of request: nothing is silently ignored."""
    for name in data:
        kinds = STRUCTURED.get(name) or (OPTIONS[name].kinds if name in OPTIONS else None)
        if kinds is None:
            raise bad(f"{name} is not a supported field", param=name, code="unsupported_parameter")
        if kind not in kinds:
            where = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
            raise bad(f"{name} is not a field of {where}", param=name, code="unsupported_parameter")


def parse_request(kind: str, data: dict[str, Any], max_messages: int) -> Request:
    """Check a chat (``kind="chat"``) or completion request; raises ApiError 400 on the first problem."""
    check_text(data)
    check_fields(kind, data)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model is required (a string)", param="model")
    for name, option in OPTIONS.items():
        value = data.get(name)
        if value is not None and not option.ok(value):
            raise bad(f"{name} must be {option.what}, got {json.dumps(value)[:60]}", param=name)
    if data.get("user") is not None and not isinstance(data["user"], str):
        raise bad("user must be a string", param="user")
    req = Request(kind=kind, model=model, stream=bool(data.get("stream")))
    req.max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
    req.temperature, req.top_p, req.seed = data.get("temperature"), data.get("top_p"), data.get("seed")
    req.top_k, req.repetition_penalty = data.get("top_k"), data.get("repetition_penalty")
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
