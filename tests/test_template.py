"""The chat prompt llama-cpp-python builds from our GGUF is the Llama-3 prompt, with BOS exactly once."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from tlite_edge.samples.standin import UPSTREAM_TEMPLATE

BOS = 128000
TURNS = [
    ("user", "Привет! Как дела?"),
    ("assistant", "Хорошо, спасибо.  "),
    ("user", "Расскажи о Казани."),
    ("assistant", "Казань — столица Татарстана."),
    ("user", "  А сколько там жителей?\n"),
]


def conversations() -> list[list[dict[str, str]]]:
    out = []
    for n in (1, 3, 5):
        turns = [{"role": r, "content": c} for r, c in TURNS[:n]]
        out += [turns, [{"role": "system", "content": "Ты — полезный ассистент."}, *turns]]
    return out


def llama3_prompt(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """The Llama-3 chat format, written out from its definition."""
    body = "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
        for m in messages
    )
    tail = "<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else ""
    return "<|begin_of_text|>" + body + tail


def hf_render(template: str, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token="<|begin_of_text|>"
    )


@pytest.fixture(scope="module")
def llm(bf16_gguf: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(bf16_gguf), vocab_only=True, verbose=False)


def formatter(llm: llama_cpp.Llama, add_generation_prompt: bool = True) -> Jinja2ChatFormatter:
    """Built exactly as llama-cpp-python builds its handler from GGUF metadata."""
    return Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
        add_generation_prompt=add_generation_prompt,
    )


@pytest.mark.parametrize("messages", conversations(), ids=lambda m: f"{len(m)}msg")
def test_prompt_matches_hf_rendering(llm: llama_cpp.Llama, messages: list[dict[str, str]]) -> None:
    result = formatter(llm)(messages=messages)
    expected = llama3_prompt(messages, add_generation_prompt=True)
    assert result.prompt == expected
    # Same as the upstream template under HF semantics with add_generation_prompt=True.
    assert result.prompt == hf_render(UPSTREAM_TEMPLATE, messages, True)
    ids = llm.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True)
    assert ids.count(BOS) == 1 and ids[0] == BOS
    assert ids[-2:] == llm.tokenize(b"<|end_header_id|>\n\n", add_bos=False, special=True)


def test_generation_prompt_is_honoured(llm: llama_cpp.Llama) -> None:
    messages = [{"role": "user", "content": "Привет"}, {"role": "assistant", "content": "Здравствуйте"}]
    prompt = formatter(llm, add_generation_prompt=False)(messages=messages).prompt
    assert prompt == llama3_prompt(messages, add_generation_prompt=False)
    assert hf_render(UPSTREAM_TEMPLATE, messages, False) != prompt  # the upstream quirk we fixed


def test_gguf_eos_is_end_of_turn(llm: llama_cpp.Llama) -> None:
    assert llm._model.token_get_text(llm.token_eos()) == "<|eot_id|>"
    assert llm.metadata["tokenizer.ggml.add_bos_token"] == "true"
