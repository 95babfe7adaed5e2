"""The OpenAI wire format's requests: checks with one clear error each (responses: ``serve.shape``)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tlite_edge.serve.messages import FieldError, chat_messages, tool_options

MAX_TOP_LOGPROBS = 20  # OpenAI's limit on top_logprobs
MAX_LOGIT_BIAS = 1024  # entries in logit_bias
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
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
    messages: list[dict[str, Any]] = field(default_factory=list)  # OpenAI's shape (tool calls too)
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
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # None: off; N: the chosen token's and the N most likely
    grammar: str | None = None  # from response_format
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    think: bool | None = None  # chat_template_kwargs.enable_thinking


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
    "tools": CHAT,
    "tool_choice": CHAT,
    "parallel_tool_calls": CHAT,
    "chat_template_kwargs": CHAT,  # llama-server's: {"enable_thinking": false}
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
    "repeat_penalty": Option(BOTH, lambda v: _num(v) and 0 < v <= 2, "a number in (0, 2] (1 = off)"),
    "seed": Option(BOTH, lambda v: _int(v) and 0 <= v < 2**32 - 1, f"an integer from 0 to {2**32 - 2}"),
    "stream": Option(BOTH, lambda v: isinstance(v, bool), "true or false"),
    "n": Option(BOTH, lambda v: v == 1 and _int(v), "1 (one choice per request)", False),
    "presence_penalty": Option(BOTH, lambda v: _num(v) and -2 <= v <= 2, "a number from -2 to 2"),
    "frequency_penalty": Option(BOTH, lambda v: _num(v) and -2 <= v <= 2, "a number from -2 to 2"),
    "logprobs": Option(
        BOTH,
        lambda v: isinstance(v, bool) or (_int(v) and 0 <= v <= MAX_TOP_LOGPROBS),
        f"true/false (chat) or an integer from 0 to {MAX_TOP_LOGPROBS} (completions)",
    ),
    "top_logprobs": Option(
        CHAT, lambda v: _int(v) and 0 <= v <= MAX_TOP_LOGPROBS, f"an integer from 0 to {MAX_TOP_LOGPROBS}"
    ),
    "echo": Option(COMPLETION, lambda v: v is False, "false (echo is not supported)", False),
    "best_of": Option(COMPLETION, lambda v: v == 1 and _int(v), "1 (best_of is not supported)", False),
    "suffix": Option(COMPLETION, lambda v: v == "", "empty (suffix is not supported)", False),
    "functions": Option(CHAT, lambda v: v == [], "empty (function calls are not supported)", False),
    "function_call": Option(CHAT, lambda v: v == "none", '"none" (function calls are not supported)', False),
    "logit_bias": Option(
        BOTH,
        lambda v: (
            isinstance(v, dict)
            and len(v) <= MAX_LOGIT_BIAS
            and all(k.isdigit() and len(k) < 10 and _num(b) and -100 <= b <= 100 for k, b in v.items())
        ),
        f"an object of at most {MAX_LOGIT_BIAS} token ids (strings of digits) to numbers from -100 to 100",
    ),
    "response_format": Option(
        CHAT,
        lambda v: isinstance(v, dict) and v.get("type") in RESPONSE_FORMATS,
        f"an object whose type is one of {', '.join(RESPONSE_FORMATS)}",
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


def _logprobs(kind: str, data: dict[str, Any]) -> int | None:
    """How many alternatives per token (None: no log-probabilities): chat takes ``logprobs: true`` and
    ``top_logprobs: N``, completions ``logprobs: N``."""
    value, top = data.get("logprobs"), data.get("top_logprobs")
    if kind == "completion":
        if isinstance(value, bool):
            raise bad(f"logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS} here", param="logprobs")
        return value
    if value is not None and not isinstance(value, bool):
        raise bad("logprobs must be true or false here (the count goes in top_logprobs)", param="logprobs")
    if top is not None and not value:
        raise bad("top_logprobs needs logprobs: true", param="top_logprobs")
    return (top or 0) if value else None


def _response_grammar(fmt: dict[str, Any]) -> str | None:
    """The grammar a ``response_format`` asks for (None: plain text); a schema it cannot enforce → 400."""
    from tlite_edge.errors import TliteError
    from tlite_edge.runtime.grammar import JSON_OBJECT_GRAMMAR, schema_grammar

    extra = set(fmt) - {"type", "json_schema"}
    if extra:
        raise bad(f"response_format.{sorted(extra)[0]} is not a supported field", param="response_format")
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return JSON_OBJECT_GRAMMAR
    spec = fmt.get("json_schema")
    where = "response_format.json_schema"
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise bad(f"{where} must be an object with a name and a schema", param=where)
    unknown = sorted(set(spec) - {"name", "description", "schema", "strict"})
    if unknown:
        raise bad(f"{where}.{unknown[0]} is not a supported field", param=where)
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise bad(f"{where}.schema must be a JSON schema object", param=f"{where}.schema")
    try:
        return schema_grammar(schema)
    except TliteError as exc:
        raise bad(f"{where}.schema: {exc.message}", param=f"{where}.schema") from None


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
    req.top_k = data.get("top_k")
    req.repetition_penalty = data.get("repetition_penalty") or data.get("repeat_penalty")
    req.presence_penalty, req.frequency_penalty = data.get("presence_penalty"), data.get("frequency_penalty")
    req.logit_bias = tuple((int(k), float(b)) for k, b in (data.get("logit_bias") or {}).items())
    req.logprobs = _logprobs(kind, data)
    if data.get("response_format") is not None:
        req.grammar = _response_grammar(data["response_format"])
    if data.get("stop") is not None:
        req.stop = _stop(data["stop"])
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise bad('stream_options must be an object like {"include_usage": true}', "stream_options")
        req.include_usage = bool(options.get("include_usage"))
    if kind == "chat":
        try:
            req.messages = chat_messages(data, max_messages)
            tool_options(data, req)
        except FieldError as exc:
            raise bad(exc.message, param=exc.param) from None
    else:
        prompt = data.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise bad("prompt must be a string (one prompt per request)", param="prompt")
        req.prompt = prompt
    return req
