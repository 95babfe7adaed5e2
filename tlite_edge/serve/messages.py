"""Chat messages and tool options of a request, checked in OpenAI's shape (each problem one
``FieldError`` naming the field; ``protocol`` answers it as a 400)."""

from __future__ import annotations

from typing import Any, Protocol

ROLES = ("system", "user", "assistant", "tool")
TOOL_CHOICES = ("auto", "none", "required")


class FieldError(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


class ToolOptions(Protocol):
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    think: bool | None


def _content(msg: dict[str, Any], i: int) -> str:
    """A message's text: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    content = msg.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    raise FieldError(
        f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}].content"
    )


def _tool_calls(calls: Any, i: int) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls``: id, type function, function name and arguments (JSON text)."""
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, list):
        raise FieldError(f"{where} must be a list", param=where)
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        ok = isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]
        if not ok or call.get("type", "function") != "function":
            raise FieldError(
                f'{where}[{j}] must be {{"type": "function", "function": {{"name", "arguments"}}}}', where
            )
        arguments = fn.get("arguments", "{}")
        if not isinstance(arguments, str):
            raise FieldError(f"{where}[{j}].function.arguments must be a JSON string", param=where)
        call_id = call.get("id", "")
        if not isinstance(call_id, str):
            raise FieldError(f"{where}[{j}].id must be a string", param=where)
        out.append(
            {"id": call_id, "type": "function", "function": {"name": fn["name"], "arguments": arguments}}
        )
    return out


def _message(msg: dict[str, Any], i: int) -> dict[str, Any]:
    """One checked message in OpenAI's shape, only the fields the runtime reads."""
    role = msg["role"]
    if msg.get("function_call"):
        raise FieldError(
            f"messages[{i}]: function_call is deprecated, send tool_calls", param=f"messages[{i}]"
        )
    calls = msg.get("tool_calls")
    if calls and role != "assistant":
        raise FieldError(
            f"messages[{i}]: only assistant messages have tool_calls", param=f"messages[{i}].tool_calls"
        )
    out: dict[str, Any] = {"role": role}
    out["content"] = "" if calls and msg.get("content") is None else _content(msg, i)
    if calls:
        out["tool_calls"] = _tool_calls(calls, i)
    reasoning = msg.get("reasoning_content")
    if reasoning is not None:
        if role != "assistant" or not isinstance(reasoning, str):
            where = f"messages[{i}].reasoning_content"
            raise FieldError(f"{where} must be a string, on assistant messages only", param=where)
        out["reasoning_content"] = reasoning
    if role == "tool":
        call_id = msg.get("tool_call_id")
        if not isinstance(call_id, str):
            where = f"messages[{i}].tool_call_id"
            raise FieldError(f"{where} must be the id of the call this message answers", param=where)
        out["tool_call_id"] = call_id
    return out


def chat_messages(data: dict[str, Any], max_messages: int) -> list[dict[str, Any]]:
    msgs = data.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise FieldError("messages must be a non-empty list", param="messages")
    if len(msgs) > max_messages:
        raise FieldError(f"too many messages: {len(msgs)}, at most {max_messages}", param="messages")
    out = []
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict):
            raise FieldError(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = msg.get("role")
        if role not in ROLES:
            raise FieldError(
                f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}",
                param=f"messages[{i}].role",
            )
        if role == "system" and i > 0:
            raise FieldError(
                f"messages[{i}]: a system message may only come first", param=f"messages[{i}].role"
            )
        out.append(_message(msg, i))
    if out[-1]["role"] not in ("user", "tool"):
        raise FieldError(
            "the last message must have role user or tool", param=f"messages[{len(out) - 1}].role"
        )
    return out


def tool_options(data: dict[str, Any], req: ToolOptions) -> None:
    """``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``chat_template_kwargs`` into ``req``."""
    tools = data.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise FieldError("tools must be a list of function tools", param="tools")
        req.tools = tools
    choice = data.get("tool_choice")
    if choice is not None:
        named = isinstance(choice, dict) and choice.get("type") == "function"
        fn = choice.get("function") if named else None
        if not (choice in TOOL_CHOICES or (isinstance(fn, dict) and isinstance(fn.get("name"), str))):
            what = '"auto", "none", "required" or {"type": "function", "function": {"name": ...}}'
            raise FieldError(f"tool_choice must be {what}", param="tool_choice")
        if choice != "none" and not req.tools:
            raise FieldError("tool_choice needs tools", param="tool_choice")
        req.tool_choice = choice
    parallel = data.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise FieldError("parallel_tool_calls must be true or false", param="parallel_tool_calls")
        req.parallel_tool_calls = parallel
    kwargs = data.get("chat_template_kwargs")
    if kwargs is not None:
        think = kwargs.get("enable_thinking") if isinstance(kwargs, dict) else None
        if not isinstance(kwargs, dict) or set(kwargs) - {"enable_thinking"} or not isinstance(think, bool):
            raise FieldError(
                'chat_template_kwargs takes {"enable_thinking": true|false} only', "chat_template_kwargs"
            )
        req.think = think
