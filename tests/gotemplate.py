"""A tiny interpreter for the Go text/template subset Ollama Modelfiles use here: ``{{ .Field }}``,
``{{ if .X }}`` / ``{{ if ne .Field "text" }}`` / ``{{ else }}`` / ``{{ end }}``, ``{{ range .List }}``,
and the ``{{-`` / ``-}}`` whitespace trimming markers (Go semantics: trim all adjacent whitespace)."""

from __future__ import annotations

import re
import shlex
from typing import Any

ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)


def _tokens(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)] with trim markers applied to the neighbouring text."""
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in ACTION.finditer(template):
        text = template[pos : m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = template[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def _value(expr: str, dot: dict[str, Any]) -> Any:
    if not expr.startswith("."):
        raise ValueError(f"unsupported expression {expr!r}")
    return dot.get(expr[1:], "")


def _cond(expr: str, dot: dict[str, Any]) -> bool:
    words = shlex.split(expr)
    if words[0] == "ne" and len(words) == 3:
        return str(_value(words[1], dot)) != words[2]
    if words[0] == "eq" and len(words) == 3:
        return str(_value(words[1], dot)) == words[2]
    if len(words) == 1:
        return bool(_value(words[0], dot))
    raise ValueError(f"unsupported condition {expr!r}")


def _block(tokens: list[tuple[str, str]], i: int) -> tuple[list, list, int]:
    """Body (and else body) of the block opened just before ``i``; index after its ``end``."""
    depth, body, other, cur = 0, [], [], None
    cur = body
    while i < len(tokens):
        kind, s = tokens[i]
        if kind == "action" and (s.startswith("if ") or s.startswith("range ")):
            depth += 1
        elif kind == "action" and s == "end":
            if depth == 0:
                return body, other, i + 1
            depth -= 1
        elif kind == "action" and s == "else" and depth == 0:
            cur = other
            i += 1
            continue
        cur.append(tokens[i])
        i += 1
    raise ValueError("unclosed block")


def _exec(tokens: list[tuple[str, str]], dot: dict[str, Any]) -> str:
    out, i = [], 0
    while i < len(tokens):
        kind, s = tokens[i]
        i += 1
        if kind == "text":
            out.append(s)
        elif s.startswith("if "):
            body, other, i = _block(tokens, i)
            out.append(_exec(body if _cond(s[3:], dot) else other, dot))
        elif s.startswith("range "):
            body, _, i = _block(tokens, i)
            for item in _value(s[6:].strip(), dot) or []:
                out.append(_exec(body, {**dot, **item}))
        else:
            out.append(str(_value(s, dot)))
    return "".join(out)


def render_go(template: str, data: dict[str, Any]) -> str:
    return _exec(_tokens(template), data)
