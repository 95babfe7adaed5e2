"""Structured output, log-probabilities and sampling fields over HTTP, through the ``openai`` client,
on SmolLM2-135M-Instruct (a real model, so answers end on their own)."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import openai
import pytest
from conftest import RealModel, llama_cpp_logits
from servers import Server

from tlite_edge.runtime import Engine, Message

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "population": {"type": "integer"},
        "sights": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 1},
    },
    "required": ["city", "population"],
}
ASK = [{"role": "user", "content": "Describe Paris as JSON."}]


@pytest.fixture(scope="module")
def srv(smollm2: RealModel):
    server = Server(smollm2.ours, "--ctx", "512", "--threads", "2")
    yield server
    assert server.stop() == 0


def client(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=120)


def test_json_schema_and_json_object(srv: Server, smollm2: RealModel) -> None:
    c = client(srv)
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}
    out = c.chat.completions.create(
        model=smollm2.ours.stem, messages=ASK, response_format=fmt, temperature=0, max_tokens=80
    )
    assert out.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(out.choices[0].message.content, strict=True), SCHEMA)
    stream = c.chat.completions.create(
        model=smollm2.ours.stem, messages=ASK, response_format={"type": "json_object"}, temperature=0,
        max_tokens=80, stream=True,
    )  # fmt: skip
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert isinstance(json.loads(text, strict=True), dict)


def test_logprobs_chat_and_completions(srv: Server, smollm2: RealModel) -> None:
    c = client(srv)
    out = c.chat.completions.create(
        model=smollm2.ours.stem, messages=ASK, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3
    )
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens == 5
    assert "".join(t.token for t in content) == out.choices[0].message.content
    engine = Engine.load(smollm2.ours, ctx=512, threads=1)
    try:
        prompt = engine.prompt_tokens([Message("user", ASK[0]["content"])])
        ids = [engine.tokenize(t.token, special=False) for t in content]
    finally:
        engine.close()
    assert all(len(i) == 1 for i in ids)
    gen = [i[0] for i in ids]
    ref = llama_cpp_logits(smollm2.ours, prompt + gen[:-1])[len(prompt) - 1 :]
    for row, tok in zip(ref, content, strict=True):
        z = row - row.max()
        lp = z - np.log(np.exp(z).sum())
        assert tok.logprob == pytest.approx(lp[int(np.argmax(row))], abs=2e-2)  # greedy: top-1
        assert [t.logprob for t in tok.top_logprobs] == sorted(
            (t.logprob for t in tok.top_logprobs), reverse=True
        )
        assert tok.top_logprobs[0].token == tok.token and bytes(tok.bytes) == tok.token.encode()
        assert sum(np.exp([t.logprob for t in tok.top_logprobs])) <= 1 + 1e-6
    # completions: the legacy columns, in the stream too
    stream = c.completions.create(
        model=smollm2.ours.stem, prompt="The capital of France is", temperature=0, max_tokens=4, logprobs=2,
        stream=True,
    )  # fmt: skip
    chunks = [ch.choices[0] for ch in stream if ch.choices and ch.choices[0].logprobs]
    tokens = [t for ch in chunks for t in ch.logprobs.tokens]
    offsets = [o for ch in chunks for o in ch.logprobs.text_offset]
    assert len(tokens) == 4 and offsets == list(np.cumsum([0] + [len(t) for t in tokens[:-1]]))
    assert all(len(top) == 2 for ch in chunks for top in ch.logprobs.top_logprobs)


BAD = [
    ({"logit_bias": {"49152": 5}}, "logit_bias"),  # SmolLM2's vocabulary ends at 49151
    ({"logit_bias": {"x": 5}}, "logit_bias"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": {"type": "integer", "minimum": 1}},
            }
        },
        "response_format.json_schema.schema",
    ),  # fmt: skip
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"n": 2}, "n"),
]


def test_bad_values_are_400(srv: Server, smollm2: RealModel) -> None:
    for extra, param in BAD:
        body = {"model": smollm2.ours.stem, "messages": ASK, "max_tokens": 2, **extra}
        status, _, out = srv.request("POST", "/v1/chat/completions", body)
        assert status == 400 and out["error"]["param"] == param, (extra, out)
    pattern = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^x$"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": pattern}}
    body = {"model": smollm2.ours.stem, "messages": ASK, "response_format": fmt}
    status, _, out = srv.request("POST", "/v1/chat/completions", body)
    assert (
        status == 400
        and "'pattern'" in out["error"]["message"]
        and "#/properties/a" in out["error"]["message"]
    )
