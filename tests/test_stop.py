"""Generation through llama-cpp-python's chat completion stops at <|eot_id|>."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest
from conftest import EOT, make_rigged

REPLY = "Привет, мир!"


@pytest.fixture(scope="module")
def rigged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """A stand-in whose greedy reply after the assistant header is REPLY then <|eot_id|>."""
    return make_rigged(tmp_path_factory, REPLY, seed=1)


def test_chat_completion_stops_at_eot(rigged: tuple[Path, list[int]]) -> None:
    path, reply = rigged
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False, seed=0)
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": "Поздоровайся."}], max_tokens=32, temperature=0.0
    )
    choice = out["choices"][0]
    assert choice["message"]["content"] == REPLY
    assert choice["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] <= len(reply) + 1


def test_raw_generation_emits_eot_token(rigged: tuple[Path, list[int]]) -> None:
    """Token by token: the model emits the reply then 128009, which llama.cpp treats as end of generation."""
    path, reply = rigged
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False)
    prompt = llm.tokenize(b"<|start_header_id|>assistant<|end_header_id|>\n\n", add_bos=True, special=True)
    emitted = []
    for tok in llm.generate(prompt, temp=0.0):
        emitted.append(tok)
        if llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), tok) or len(emitted) > 20:
            break
    assert emitted == [*reply, EOT]
