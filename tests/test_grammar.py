"""Grammar-constrained replies: JSON schema → GBNF, checked on the random-weight stand-in (only the
grammar can make its answers valid) with a strict parser and ``jsonschema``."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tlite_edge.errors import TliteError
from tlite_edge.runtime import Chat, Engine
from tlite_edge.runtime.grammar import JSON_OBJECT_GRAMMAR, schema_grammar

# Every feature the tests need in one schema: nested required fields, enums, bounded strings
# (where a raw control character would be the stand-in's favourite), integers, numbers, arrays.
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 6},
        "year": {"type": "integer"},
        "kind": {"enum": ["town", "village", 3, None]},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "ok": {"type": "boolean"}},
            "required": ["lat", "ok"],
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 2}, "minItems": 1, "maxItems": 2},
        "note": {"type": ["string", "null"], "maxLength": 3},
    },
    "required": ["city", "year", "where", "tags"],
}


@pytest.fixture(scope="module")
def engine(bf16_gguf: Path) -> Engine:
    return Engine.load(bf16_gguf, ctx=1024, seed=0)


def strict(text: str) -> object:
    return json.loads(text, strict=True)  # strict: no raw control characters inside strings


def test_schema_answers_validate(engine: Engine) -> None:
    grammar = schema_grammar(SCHEMA)
    for seed, temp in ((1, 1.5),):
        reply = Chat(engine).send("JSON, пожалуйста", grammar=grammar, temp=temp, seed=seed, max_tokens=200)
        text = reply.result()
        assert reply.stats.finish_reason == "stop", text  # the grammar completed, then end of turn
        jsonschema.validate(strict(text), SCHEMA)


def test_json_object_grammar_and_strings(engine: Engine) -> None:
    """Strings are where llama-cpp-python's converter let control characters through."""
    schema = {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 3, "maxItems": 3}
    reply = Chat(engine).send("строки", grammar=schema_grammar(schema), temp=2.0, seed=3, max_tokens=120)
    items = strict(reply.result())
    jsonschema.validate(items, schema)
    assert reply.stats.finish_reason == "stop"
    # any JSON object: it starts as one, whatever the model prefers
    reply = Chat(engine).send("объект", grammar=JSON_OBJECT_GRAMMAR, temp=1.0, seed=4, max_tokens=2)
    assert reply.result().lstrip().startswith("{")


UNSUPPORTED = [
    ({"type": "integer", "minimum": 0}, "'minimum'"),
    ({"type": "string", "pattern": "^a+$"}, "'pattern'"),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "'oneOf'"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "email"}}}, "format 'email'"),
    ({"type": "object", "properties": {}, "required": ["a"]}, "required names 'a'"),
    ({"$ref": "https://example.com/s.json"}, "only local references"),
    ({"type": "array", "uniqueItems": True}, "'uniqueItems'"),
    ({"type": "array", "maxItems": 10**6}, "maxItems 1000000"),
    ({"type": "decimal"}, "type 'decimal'"),
    ({"not": {"type": "string"}}, "'not'"),
]


@pytest.mark.parametrize(("schema", "named"), UNSUPPORTED)
def test_unsupported_schema_features_are_named(schema: dict, named: str) -> None:
    with pytest.raises(TliteError, match="JSON schema at #") as err:
        schema_grammar({"type": "object", "properties": {"x": schema}})
    assert named in str(err.value) and "#/properties/x" in str(err.value)


def test_refs_and_grammar_errors(engine: Engine) -> None:
    tree = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 1}},
            }
        },
        "$ref": "#/$defs/node",
    }
    assert "root ::=" in schema_grammar(tree)
    with pytest.raises(TliteError, match="grammar does not parse"):
        Chat(engine).send("x", grammar="root ::= (")
