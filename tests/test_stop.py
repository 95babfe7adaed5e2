"""Generation through llama-cpp-python's chat completion stops at <|eot_id|>."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest
from conftest import STANDIN_NAME
from tokenizers import Tokenizer

from tlite_edge.gguf_build.convert import convert
from tlite_edge.standin import llama3_tokenizer_json, write_standin

EOT, END_OF_TEXT, DOUBLE_NEWLINE = 128009, 128001, 271
REPLY = "Привет, мир!"


@pytest.fixture(scope="module")
def rigged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """A stand-in whose greedy reply after the assistant header is REPLY then <|eot_id|>."""
    tok = Tokenizer.from_file(str(llama3_tokenizer_json()))
    reply = tok.encode(REPLY, add_special_tokens=False).ids
    extra = tok.encode(" лишний текст", add_special_tokens=False).ids
    # Past <|eot_id|> the chain would go on to <|end_of_text|> and more text: a runtime that ignored
    # the end of turn would print it.
    chain = [DOUBLE_NEWLINE, *reply, EOT, *extra, END_OF_TEXT]
    assert len(set(chain)) == len(chain)
    folder = write_standin(tmp_path_factory.mktemp("rigged") / STANDIN_NAME, chain=chain, seed=1)
    out = convert(folder, name=STANDIN_NAME, outtype="bf16", out_dir=tmp_path_factory.mktemp("rigged-gguf"))
    return out.path, reply


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
