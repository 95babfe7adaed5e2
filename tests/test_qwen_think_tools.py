"""Thinking and tools end to end on Qwen3-shaped files: the reply splitter on real token streams,
``run --json``, and the OpenAI API through the ``openai`` client (plain and streamed).

The rigged Qwen3 model's greedy reply is fixed: after ``assistant\\n`` (thinking on) it thinks
``<think>REASONING</think>`` then answers; after the no-think prompt's ``</think>\\n\\n`` it answers
directly. Tool calls need JSON that a rigged chain cannot spell (a chain never repeats a token), so the
one test of the HTTP tool-call shape feeds the reply's generated text; the turn after it is generated
by llama.cpp.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import run_cli
from qwen_fixtures import ENDOFTEXT, IM_END, NEWLINE, QWEN3_SHAPE, write_qwen
from starlette.testclient import TestClient
from tokenizers import Tokenizer

from tlite_edge.gguf_build.build import convert
from tlite_edge.runtime import Engine
from tlite_edge.runtime.parts import ReplyParser, Utf8Stream
from tlite_edge.runtime.reply import Reply
from tlite_edge.serve.app import ServeConfig, build_app
from tlite_edge.serve.pool import Pool

THINK_OPEN, THINK_CLOSE, DOUBLE_NEWLINE = 151667, 151668, 271
REASONING, ANSWER, DIRECT = "Думаю", "Ответ готов.", "Привет без раздумий"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Погода в городе",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def tok(qwen_tokenizer: Path) -> Tokenizer:
    return Tokenizer.from_file(str(qwen_tokenizer / "tokenizer.json"))


@pytest.fixture(scope="module")
def thinker(qwen_tokenizer: Path, tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    def ids(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    chain = [NEWLINE, THINK_OPEN, *ids(REASONING), THINK_CLOSE, *ids(ANSWER), IM_END]
    chain += [DOUBLE_NEWLINE, *ids(DIRECT), ENDOFTEXT]
    assert len(set(chain[:-1])) == len(chain) - 1  # every token leads to one next token
    hf = write_qwen(
        tmp_path_factory.mktemp("thinker") / "Qwen-thinker", qwen_tokenizer, QWEN3_SHAPE, chain=chain
    )
    return convert(hf, outtype="bf16", out_dir=tmp_path_factory.mktemp("thinker-gguf"), verify=False).path


@pytest.fixture(scope="module")
def engine(thinker: Path) -> Iterator[Engine]:
    engine = Engine.load(thinker, ctx=1024, threads=2)
    yield engine
    engine.close()


# ---- the splitter on real token streams -------------------------------------------------------------

STREAMS = {
    "think": ("<think>\nОбдумываю: 2+2.\n</think>\n\nЧетыре.", {}, "Обдумываю: 2+2.", "Четыре.", 0),
    "open-in-prompt": ("Обдумываю.\n</think>\n\nЧетыре.", {"in_think": True}, "Обдумываю.", "Четыре.", 0),
    "empty-think": ("<think>\n\n</think>\n\nЧетыре.", {}, "", "Четыре.", 0),
    "tool": (
        'Проверю.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Тула"}}\n</tool_call>',
        {"tools": True},
        "",
        "Проверю.",
        1,
    ),
    "malformed": ("<tool_call>\n{name: get_weather}\n</tool_call>", {"tools": True}, "", None, 0),
}


@pytest.mark.parametrize("case", STREAMS)
def test_splitter_on_tokens(engine: Engine, tok: Tokenizer, case: str) -> None:
    """Qwen's own token ids (``<think>`` and ``<tool_call>`` as single added tokens) decoded one by
    one as the runtime does, through the splitter."""
    text, options, reasoning, answer, calls = STREAMS[case]
    ids = tok.encode(text, add_special_tokens=False).ids
    assert {THINK_OPEN, 151657} & set(ids) or case == "open-in-prompt"
    parser, utf8 = ReplyParser(reasoning=True, **options), Utf8Stream()
    parts = [p for t in ids for p in parser.feed(utf8.feed(engine.token_bytes(t)))] + parser.flush()
    assert "".join(p.text for p in parts if p.kind == "reasoning") == reasoning
    assert "".join(p.text for p in parts if p.kind == "content") == (text if answer is None else answer)
    got = [p.call for p in parts if p.kind == "tool_call"]
    assert len(got) == calls
    if calls:
        assert got[0]["id"].startswith("call_") and got[0]["type"] == "function"
        assert got[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Тула"}'}


# ---- run --json and the library ----------------------------------------------------------------------


def test_run_json_splits_thinking(thinker: Path) -> None:
    proc = run_cli("run", thinker, "Привет", "--json", "--temp", "0", "--ctx", "512")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["reasoning_content"], out["content"], out["finish_reason"]) == (REASONING, ANSWER, "stop")
    proc = run_cli("run", thinker, "Привет", "--temp", "0", "--ctx", "512")  # thinking to stderr
    assert proc.returncode == 0 and proc.stdout == ANSWER + "\n" and REASONING in proc.stderr


def test_chat_history_keeps_reasoning(engine: Engine) -> None:
    from tlite_edge.runtime import Chat

    chat = Chat(engine)
    reply = chat.send("Привет", temp=0.0, max_tokens=40)
    kinds = [p.kind for p in reply.parts()]
    assert kinds.index("reasoning") < kinds.index("content")
    assert (reply.reasoning, reply.text) == (REASONING, ANSWER)
    assert chat.messages[-1].as_dict() == {
        "role": "assistant",
        "content": ANSWER,
        "reasoning_content": REASONING,
    }
    # Qwen3's template drops the thinking of earlier turns: the next prompt holds the answer only
    text = engine.llm.detokenize(chat.prompt_for("Ещё?"), special=True).decode()
    assert ANSWER in text and REASONING not in text
    chat.think = False
    assert chat.send("Ещё?", temp=0.0, max_tokens=40).result() == DIRECT


# ---- the OpenAI API -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(engine: Engine) -> Iterator[TestClient]:
    pool = Pool([engine], max_queue=4)
    cfg = ServeConfig(model_id="qwen", model_names=frozenset({"qwen"}), created=0, n_ctx=engine.n_ctx)
    with TestClient(build_app(pool, cfg), base_url="http://testserver") as client:
        yield client
    pool.executor.shutdown(wait=True)


@pytest.fixture(scope="module")
def api(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http, max_retries=0)


ASK = [{"role": "user", "content": "Привет"}]


def test_http_reasoning_content(api: openai.OpenAI) -> None:
    msg = api.chat.completions.create(model="qwen", messages=ASK, temperature=0).choices[0].message
    assert (msg.content, msg.model_extra["reasoning_content"]) == (ANSWER, REASONING)
    stream = api.chat.completions.create(model="qwen", messages=ASK, temperature=0, stream=True)
    reasoning, content, finish = "", "", None
    for chunk in stream:
        delta = chunk.choices[0].delta
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        content += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert (reasoning, content, finish) == (REASONING, ANSWER, "stop")
    off = api.chat.completions.create(
        model="qwen",
        messages=ASK,
        temperature=0,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert (
        off.choices[0].message.content == DIRECT
        and "reasoning_content" not in off.choices[0].message.model_extra
    )


def _scripted(monkeypatch: pytest.MonkeyPatch, text: str) -> list[list[int]]:
    """The next reply's generated text is ``text`` (the splitting and shaping are what is tested);
    the prompts it was asked for are recorded."""
    real, prompts = Reply._run, []

    def run(self: Reply) -> Iterator[str]:
        prompts.append(self.prompt)
        if len(prompts) > 1:
            yield from real(self)
            return
        self.stats.finish_reason = "stop"
        for i in range(0, len(text), 5):
            self.raw.content += text[i : i + 5]
            yield text[i : i + 5]

    monkeypatch.setattr(Reply, "_run", run)
    return prompts


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Тула"}}\n</tool_call>'
CALL_TEXT = "<think>\nНужна погода.\n</think>\n\n" + CALL


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_round_trip(
    api: openai.OpenAI, engine: Engine, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    prompts = _scripted(monkeypatch, CALL_TEXT)
    ask: list[dict[str, Any]] = [{"role": "user", "content": "Погода в Туле?"}]
    if stream:
        with api.chat.completions.stream(model="qwen", messages=ask, tools=[WEATHER]) as events:
            done = events.get_final_completion()
    else:
        done = api.chat.completions.create(model="qwen", messages=ask, tools=[WEATHER])
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Тула"})
    assert choice.message.model_extra.get("reasoning_content") == "Нужна погода."
    # the call and its result go back; the answer is generated by llama.cpp from that prompt
    result = "-5 °C <|im_end|>"
    ask += [
        choice.message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"}),
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    final = api.chat.completions.create(model="qwen", messages=ask, tools=[WEATHER], temperature=0)
    assert final.choices[0].message.content == ANSWER and final.choices[0].finish_reason == "stop"
    prompt = engine.llm.detokenize(prompts[1], special=True).decode()
    assert CALL in prompt
    assert f"<tool_response>\n{result}\n</tool_response>" in prompt
    assert prompts[1].count(IM_END) == prompt.count("<|im_end|>") - 1  # the typed one stayed text


def test_tools_refused_without_tool_template(bf16_gguf: Path) -> None:
    engine = Engine.load(bf16_gguf, ctx=256, threads=2)
    pool = Pool([engine], max_queue=2)
    cfg = ServeConfig(model_id="m", model_names=frozenset({"m"}), created=0, n_ctx=engine.n_ctx)
    try:
        with TestClient(build_app(pool, cfg), base_url="http://testserver") as http:
            client = openai.OpenAI(
                base_url="http://testserver/v1", api_key="k", http_client=http, max_retries=0
            )
            with pytest.raises(openai.BadRequestError) as err:
                client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER])
            assert err.value.body["param"] == "tools" and "does not take tools" in err.value.body["message"]
            ok = client.chat.completions.create(
                model="m", messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=2
            )
            assert ok.choices[0].finish_reason in ("stop", "length")
    finally:
        pool.close()


BOOKING = {
    "type": "function",
    "function": {
        "name": "book",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Тула", "Омск"]},
                "nights": {"type": "integer"},
                "late": {"type": "boolean"},
            },
            "required": ["city", "nights", "late"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "book"}}], ids=["required", "named"]
)
def test_forced_tool_choice_validates(api: openai.OpenAI, choice: Any) -> None:
    """The rigged model wants to answer in text; the grammar alone makes it call ``book`` with
    arguments that validate against the function's parameters."""
    jsonschema = pytest.importorskip("jsonschema")
    for seed in (1,):
        done = api.chat.completions.create(
            model="qwen",
            messages=ASK,
            # "required" may pick any tool: only bounded arguments, so a random model must finish
            tools=[BOOKING] if choice == "required" else [WEATHER, BOOKING],
            tool_choice=choice,
            parallel_tool_calls=False,
            temperature=1.0,
            seed=seed,
            max_tokens=200,
        )
        out = done.choices[0]
        assert out.finish_reason == "tool_calls", out
        (call,) = out.message.tool_calls
        assert call.function.name == "book"
        jsonschema.validate(json.loads(call.function.arguments), BOOKING["function"]["parameters"])


def test_langchain_tool_call(http: TestClient) -> None:
    """LangChain's ChatOpenAI with a bound, forced tool: the call comes back parsed and valid."""
    jsonschema = pytest.importorskip("jsonschema")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url="http://testserver/v1",
        api_key="k",
        model="qwen",
        http_client=http,
        temperature=1.0,
        seed=3,
        max_tokens=200,
        max_retries=0,
    )
    bound = llm.bind_tools([BOOKING], tool_choice="book", parallel_tool_calls=False)
    msg = bound.invoke([HumanMessage("Забронируй Омск")])
    (call,) = msg.tool_calls
    assert call["name"] == "book" and call["id"].startswith("call_")
    jsonschema.validate(call["args"], BOOKING["function"]["parameters"])
    # the result goes back as a tool message; the model then answers in text (tools offered, not forced)
    answer = llm.bind_tools([BOOKING]).invoke(
        [HumanMessage("Забронируй Омск"), msg, ToolMessage("готово <|im_end|>", tool_call_id=call["id"])],
        temperature=0,
        max_tokens=8,
    )
    assert isinstance(answer.content, str) and answer.response_metadata["finish_reason"] in ("stop", "length")
