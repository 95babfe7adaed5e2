"""Tools for a chat: the OpenAI function list checked, and ``tool_choice`` as a grammar when forced.

``tool_choice`` is "auto" (the model decides; calls are parsed from its ``<tool_call>`` blocks),
"none" (tools are not shown to the model), "required" (at least one call) or a function name (that
function). The last two constrain sampling with a GBNF grammar built from the functions'
``parameters`` schemas, so even a weak model answers a well-formed call with valid arguments.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tlite_edge.errors import TliteError
from tlite_edge.runtime.grammar import schema_grammar
from tlite_edge.runtime.parts import CALL_CLOSE, CALL_OPEN

AUTO, NONE, REQUIRED = "auto", "none", "required"
NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # OpenAI's function name rule
CALL_RULE = "tool-call-object"


def check_tools(tools: Any, where: str = "tools") -> list[dict[str, Any]]:
    """The OpenAI function list, checked: one TliteError naming the first wrong field."""
    if not isinstance(tools, list):
        raise TliteError(None, f"{where} must be a list of function tools")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        at = f"{where}[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise TliteError(None, f'{at} must be {{"type": "function", "function": {{...}}}}')
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise TliteError(None, f"{at}.function must be an object")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise TliteError(None, f"{at}.function.name must be 1-64 letters, digits, _ . or -")
        if name in names:
            raise TliteError(None, f"{at}.function.name {name!r} is given twice")
        names.add(name)
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise TliteError(None, f"{at}.function.description must be a string")
        params = fn.get("parameters")
        if params is not None and (not isinstance(params, dict) or params.get("type", "object") != "object"):
            raise TliteError(None, f'{at}.function.parameters must be a JSON schema of "type": "object"')
    return tools


def forced_name(choice: Any, tools: Sequence[dict[str, Any]]) -> str | None:
    """The function a named ``tool_choice`` forces (None for the string choices), checked against tools."""
    if isinstance(choice, str):
        if choice not in (AUTO, NONE, REQUIRED):
            what = '"auto", "none", "required" or a function'
            raise TliteError(None, f"tool_choice must be {what}, got {choice!r}")
        return None
    fn = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise TliteError(None, 'tool_choice must be {"type": "function", "function": {"name": ...}}')
    if name not in {t["function"]["name"] for t in tools}:
        raise TliteError(None, f"tool_choice names {name!r}, which is not among the tools")
    return name


def call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of one call's body: ``{"name": NAME, "arguments": PARAMETERS}``."""
    fn = tool["function"]
    params = fn.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def forced_grammar(tools: Sequence[dict[str, Any]], name: str | None, parallel: bool) -> str:
    """GBNF for a reply that is one (``parallel``: one or more) ``<tool_call>`` block of ``name``
    (None: any of the tools), the arguments valid for that function's parameters."""
    chosen = [t for t in tools if name is None or t["function"]["name"] == name]
    schemas = [call_schema(t) for t in chosen]
    body = schema_grammar(schemas[0] if len(schemas) == 1 else {"anyOf": schemas})
    if re.search(rf"^{CALL_RULE}\s*::=", body, re.M):
        raise TliteError(None, f"the schema grammar already has a rule {CALL_RULE}")
    body = re.sub(r"^root(\s*::=)", rf"{CALL_RULE}\1", body, count=1, flags=re.M)
    block = f'"{CALL_OPEN}\\n" {CALL_RULE} "\\n{CALL_CLOSE}"'
    more = f' ("\\n" {block})*' if parallel else ""
    return f"root ::= {block}{more}\n{body}"
