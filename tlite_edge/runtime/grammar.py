"""JSON schema → GBNF grammar (llama.cpp's grammar format) that only strict JSON can come out of.

``schema_grammar(schema)`` turns the supported subset of JSON Schema into a grammar whose every
complete sentence parses with ``json.loads`` (strict) and validates against the schema;
``JSON_OBJECT_GRAMMAR`` allows any JSON object. What the grammar cannot guarantee (``minimum``,
``pattern``, ``oneOf``, ...) is refused with a ``TliteError`` naming the keyword and where it is,
never silently dropped.

The primitive rules are strict where llama-cpp-python's converter is not: string characters exclude
U+0000–U+001F, ``\\u`` escapes exclude lone surrogates, integers have at most 16 digits and
exponents 2, and whitespace is at most one space between tokens (a model cannot loop in it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tlite_edge.errors import TliteError
from tlite_edge.fsutil import read_json

HEX = "[0-9a-fA-F]"
PRIMITIVES: dict[str, str] = {
    "ws": '" "?',
    "char": (
        r'[^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ([0-9a-cA-CefEF] '
        + f"{HEX}{{3}}"
        + r" | [dD] [0-7] "
        + f"{HEX}{{2}}))"
    ),
    "string": r'"\"" char* "\"" ws',
    "int": '"-"? ("0" | [1-9] [0-9]{0,15})',
    "integer": "int ws",
    "number": 'int ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})? ws',
    "boolean": '("true" | "false") ws',
    "null": '"null" ws',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" ws (string ":" ws value ("," ws string ":" ws value)*)? "}" ws',
    "array": '"[" ws (value ("," ws value)*)? "]" ws',
}
# deps of each primitive (emitted only when used)
_DEPS = {
    "char": (),
    "string": ("char", "ws"),
    "int": (),
    "integer": ("int", "ws"),
    "number": ("int", "ws"),
    "boolean": ("ws",),
    "null": ("ws",),
    "value": ("object", "array", "string", "number", "boolean", "null"),
    "object": ("ws", "string", "value"),
    "array": ("ws", "value"),
    "ws": (),
}
FORMATS = {  # string formats the grammar guarantees (JSON Schema "format")
    "date": '[0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])',
    "time": '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? '
    '("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])',
    "uuid": ' "-" '.join(f"{HEX}{{{n}}}" for n in (8, 4, 4, 4, 12)),
}
FORMATS["date-time"] = f'{FORMATS["date"]} "T" {FORMATS["time"]}'
ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated"}
    | {"readOnly", "writeOnly", "$defs", "definitions"}
)
TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
# keywords each type reads (besides "type", annotations, enum/const)
TYPE_KEYWORDS = {
    "string": {"minLength", "maxLength", "format"},
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "prefixItems", "minItems", "maxItems"},
}
MAX_REPEAT = 4096  # largest minLength/maxLength/minItems/maxItems the grammar spells out
MAX_GRAMMAR = 256 * 1024  # characters of GBNF

JSON_OBJECT_GRAMMAR = "\n".join(
    ["root ::= object"]
    + [f"{n} ::= {PRIMITIVES[n]}" for n in ("object", *_DEPS["value"][1:], "value")]
    + [f"{n} ::= {PRIMITIVES[n]}" for n in ("char", "int", "ws")]
)


def _literal(value: Any) -> str:
    """A GBNF literal for the JSON text of ``value``, then optional whitespace."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '" ws'


def _where(path: str) -> str:
    return path if path.startswith("#") else f"#{path}"


class _Converter:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.rules: dict[str, str] = {}
        self.used: set[str] = set()
        self.refs: dict[str, str] = {}

    def fail(self, path: str, what: str) -> TliteError:
        return TliteError(None, f"JSON schema at {_where(path)}: {what}")

    def prim(self, name: str) -> str:
        todo = [name]
        while todo:
            n = todo.pop()
            if n not in self.used:
                self.used.add(n)
                todo += _DEPS[n]
        return name

    def add(self, body: str) -> str:
        name = f"r{len(self.rules)}"
        self.rules[name] = body
        return name

    def ref(self, ref: Any, path: str) -> str:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.fail(path, f"$ref {ref!r} is not supported (only local references like #/$defs/Name)")
        if ref not in self.refs:
            target: Any = self.root
            for part in filter(None, ref[1:].split("/")):
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, dict) or part not in target:
                    raise self.fail(path, f"$ref {ref!r} points to nothing")
                target = target[part]
            name = self.refs[ref] = self.add("")  # named first: a schema may refer to itself
            self.rules[name] = self.visit(target, ref)
        return self.refs[ref]

    def visit(self, schema: Any, path: str) -> str:
        """A GBNF expression for ``schema`` (a rule name or an alternation)."""
        if schema is True or schema == {}:
            return self.prim("value")
        if not isinstance(schema, dict):
            raise self.fail(path, "a schema must be an object (or true)")
        keys = set(schema) - ANNOTATIONS
        if "$ref" in schema:
            if keys - {"$ref"}:
                raise self.fail(path, f"{sorted(keys - {'$ref'})[0]!r} next to $ref is not supported")
            return self.ref(schema["$ref"], path)
        if "anyOf" in schema:
            alts = schema["anyOf"]
            if keys - {"anyOf"}:
                raise self.fail(path, f"{sorted(keys - {'anyOf'})[0]!r} next to anyOf is not supported")
            if not isinstance(alts, list) or not alts:
                raise self.fail(path, "anyOf must be a non-empty list")
            return self._alt([self.visit(s, f"{path}/anyOf/{i}") for i, s in enumerate(alts)])
        for key in ("enum", "const"):
            if key in schema:
                others = keys - {key, "type"}
                if others:
                    raise self.fail(path, f"{sorted(others)[0]!r} next to {key} is not supported")
                values = schema["enum"] if key == "enum" else [schema["const"]]
                if not isinstance(values, list) or not values:
                    raise self.fail(path, "enum must be a non-empty list")
                self.prim("ws")
                return self._alt([_literal(v) for v in values])
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind or not all(k in TYPES for k in kind):
                raise self.fail(path, f"type must be one of {', '.join(TYPES)} or a list of them")
            known = set().union(*(TYPE_KEYWORDS.get(k, set()) for k in kind))
            if keys - {"type"} - known:
                raise self.fail(path, f"{sorted(keys - {'type'} - known)[0]!r} is not supported")
            parts = []
            for k in kind:
                drop = known - TYPE_KEYWORDS.get(k, set())
                parts.append(
                    self.visit({n: v for n, v in schema.items() if n not in drop} | {"type": k}, path)
                )
            return self._alt(parts)
        if kind is None:
            guess = [t for t, words in TYPE_KEYWORDS.items() if words & keys]
            if len(guess) != 1:
                if keys:
                    raise self.fail(path, f"{sorted(keys)[0]!r} is not supported")
                return self.prim("value")
            kind = guess[0]
        if kind not in TYPES:
            raise self.fail(path, f"type {kind!r} is not one of {', '.join(TYPES)}")
        extra = keys - {"type"} - TYPE_KEYWORDS.get(kind, set())
        if extra:
            word = sorted(extra)[0]
            raise self.fail(
                path, f"{word!r} is not supported for type {kind} (the grammar cannot enforce it)"
            )
        return getattr(self, f"_{kind}", lambda s, p: self.prim(kind))(schema, path)

    @staticmethod
    def _alt(parts: list[str]) -> str:
        return parts[0] if len(parts) == 1 else "(" + " | ".join(parts) + ")"

    def _count(self, schema: dict[str, Any], key: str, path: str, default: int | None) -> int | None:
        value = schema.get(key, default)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.fail(path, f"{key} must be a non-negative integer")
        if value > MAX_REPEAT:
            raise self.fail(path, f"{key} {value} is more than this grammar spells out ({MAX_REPEAT})")
        return value

    def _bounds(self, schema: dict[str, Any], lo: str, hi: str, path: str) -> tuple[int, int | None]:
        low = self._count(schema, lo, path, 0) or 0
        high = self._count(schema, hi, path, None)
        if high is not None and high < low:
            raise self.fail(path, f"{hi} is less than {lo}: nothing can match")
        return low, high

    def _string(self, schema: dict[str, Any], path: str) -> str:
        fmt = schema.get("format")
        if fmt is not None:
            if fmt not in FORMATS:
                raise self.fail(path, f"format {fmt!r} is not supported (supported: {', '.join(FORMATS)})")
            if "minLength" in schema or "maxLength" in schema:
                raise self.fail(path, "minLength/maxLength next to format is not supported")
            self.prim("ws")
            return self.add(rf'"\"" {FORMATS[fmt]} "\"" ws')
        low, high = self._bounds(schema, "minLength", "maxLength", path)
        if not low and high is None:
            return self.prim("string")
        self.prim("char"), self.prim("ws")
        return self.add(rf'"\"" char{{{low},{"" if high is None else high}}} "\"" ws')

    def _array(self, schema: dict[str, Any], path: str) -> str:
        self.prim("ws")
        low, high = self._bounds(schema, "minItems", "maxItems", path)
        items = schema.get("items", True)
        prefix = schema.get("prefixItems", items if isinstance(items, list) else None)
        if prefix is not None:
            if not isinstance(prefix, list) or not (low <= len(prefix) <= (high or len(prefix))):
                raise self.fail(path, "prefixItems must be a list that minItems/maxItems allow")
            parts = [self.visit(s, f"{path}/prefixItems/{i}") for i, s in enumerate(prefix)]
            return self.add('"[" ws ' + ' "," ws '.join(parts) + ' "]" ws')
        item = self.visit(items, f"{path}/items")
        if high == 0:
            return self.add('"[" ws "]" ws')
        more = f'("," ws {item}){{{max(low - 1, 0)},{"" if high is None else high - 1}}}'
        body = f"{item} {more}"
        return self.add(f'"[" ws {body if low else f"({body})?"} "]" ws')

    def _object(self, schema: dict[str, Any], path: str) -> str:
        self.prim("ws")
        props = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", True)
        if not isinstance(props, dict):
            raise self.fail(path, "properties must be an object")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self.fail(path, "required must be a list of property names")
        missing = [r for r in required if r not in props]
        if missing:
            raise self.fail(path, f"required names {missing[0]!r}, which properties does not define")
        if not props:
            if extra is False:
                return self.add('"{" ws "}" ws')
            if extra is True or extra == {}:
                return self.prim("object")
            value = self.visit(extra, f"{path}/additionalProperties")
            self.prim("string")
            kv = self.add(f'string ":" ws {value}')
            return self.add(f'"{{" ws ({kv} ("," ws {kv})*)? "}}" ws')
        # Properties in their order; extra keys are never generated (a subset of what the schema allows).
        kvs = [
            (self.add(f'{_literal(k)} ":" ws {self.visit(s, f"{path}/properties/{k}")}'), k in required)
            for k, s in props.items()
        ]
        rest = ""  # members from here on once something is printed: each after a comma
        first: str | None = None  # rule: members from here on when nothing is printed yet
        for kv, req in reversed(kvs):
            head = f"{kv} {rest}".strip()
            first = self.add(head if req or first is None else f"{head} | {first}")
            rest = f'"," ws {kv} {rest}' if req else f'("," ws {kv})? {rest}'
        body = first if any(r for _, r in kvs) else f"({first})?"
        return self.add(f'"{{" ws {body} "}}" ws')

    def grammar(self, schema: Any) -> str:
        try:
            root = self.visit(schema, "")
        except RecursionError:
            raise self.fail("", "nested too deeply") from None
        lines = [f"root ::= {root}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        lines += [f"{name} ::= {PRIMITIVES[name]}" for name in PRIMITIVES if name in self.used]
        text = "\n".join(lines) + "\n"
        if len(text) > MAX_GRAMMAR:
            raise self.fail("", f"too large: its grammar is {len(text)} characters, at most {MAX_GRAMMAR}")
        return text


def schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF (root rule ``root``) for the JSON documents ``schema`` allows; a keyword the grammar
    cannot enforce → ``TliteError`` naming it and where it is."""
    return _Converter(schema).grammar(schema)


def load_schema_grammar(path: str | Path) -> str:
    """The grammar of the JSON schema in file ``path``; a missing, unreadable or unsupported file is
    one ``TliteError`` naming it."""
    schema = read_json(path)
    if not isinstance(schema, dict):
        raise TliteError(path, "a JSON schema must be an object")
    try:
        return schema_grammar(schema)
    except TliteError as exc:
        raise TliteError(path, exc.message) from None
