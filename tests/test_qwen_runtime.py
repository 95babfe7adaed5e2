"""Converted Qwen2/Qwen3 files in llama.cpp: logits equal an independent numpy Qwen forward pass, greedy
generation runs and stops at <|im_end|>, and the files quantize to Q8_0 and Q4_K_M.

The F32 GGUF holds the bf16 weights exactly, so only f32 vs float64 arithmetic differs from the
reference. The comparison is sharp: leaving the Qwen2 biases out of the reference gives a max |diff| of
17.7, leaving Qwen3's q/k norms out 11.9 (measured on these checkpoints).
"""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from conftest import QwenModel, llama_cpp_logits
from gguf import GGMLQuantizationType as QT
from qwen_fixtures import ENDOFTEXT, IM_END, NEWLINE, QWEN3_SHAPE, write_qwen
from reference_qwen import ReferenceQwen
from tokenizers import Tokenizer

from tlite_edge.gguf.reader import read_header
from tlite_edge.gguf_build.build import convert
from tlite_edge.quant.levels import quantize_levels

N_TOKENS = 48
F32_TOL = 1e-3  # measured (llama-cpp-python 0.3.36, CPU): qwen2 1.7e-5, qwen3 6.9e-6
PROMPT_RU = (
    "Утром над рекой стоял густой туман, рыбаки молча чинили сети, а старый паром медленно "
    "переплывал на другой берег, где уже открылась булочная с горячим хлебом и крепким чаем."
)
CHAT_PROMPT = "<|im_start|>user\nКак дела?<|im_end|>\n<|im_start|>assistant\n"


def _ids(qwen: QwenModel) -> list[int]:
    ids = Tokenizer.from_file(str(qwen.hf / "tokenizer.json")).encode(PROMPT_RU, add_special_tokens=False).ids
    assert len(ids) >= N_TOKENS
    return ids[:N_TOKENS]


def test_f32_logits_match_reference(qwen: QwenModel) -> None:
    ids = _ids(qwen)
    ref = ReferenceQwen(qwen.hf).logits(ids)
    assert np.isfinite(ref).all() and ref.std() > 1.0 and len(set(ref.argmax(axis=1).tolist())) > 1
    ours = llama_cpp_logits(qwen.f32, ids)
    diff = float(np.abs(ours - ref).max())
    print(f"\n{qwen.arch} F32 GGUF vs numpy reference: max |diff| {diff:.3e} (logit std {ref.std():.2f})")
    assert diff <= F32_TOL
    assert (ours.argmax(axis=1) == ref.argmax(axis=1)).all()


def _greedy(gguf: Path, prompt: str, max_tokens: int = 24) -> tuple[str, str, list[int]]:
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, n_threads=2, verbose=False)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        out: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1):
            if llama_cpp.llama_vocab_is_eog(vocab, token) or len(out) >= max_tokens:
                break
            out.append(token)
        finish = "stop" if len(out) < max_tokens else "length"
        return llm.detokenize(out).decode("utf-8", errors="replace"), finish, out
    finally:
        llm.close()


def test_random_model_greedy_generates(qwen: QwenModel) -> None:
    first = _greedy(qwen.f32, CHAT_PROMPT, 12)
    assert first == _greedy(qwen.f32, CHAT_PROMPT, 12)  # deterministic
    assert first[2], "nothing generated"


@pytest.fixture(scope="module")
def rigged(qwen_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A Qwen3 GGUF whose greedy reply is fixed text then <|im_end|>, followed (past the end of turn)
    by more text and <|endoftext|>: a runtime that ignored <|im_end|> would print the rest."""
    tok = Tokenizer.from_file(str(qwen_tokenizer / "tokenizer.json"))
    reply_text = "Всё хорошо, спасибо!"
    reply = tok.encode(reply_text, add_special_tokens=False).ids
    extra = tok.encode(" лишний текст", add_special_tokens=False).ids
    chain = [NEWLINE, *reply, IM_END, *extra, ENDOFTEXT]
    assert len(set(chain)) == len(chain)
    hf = write_qwen(
        tmp_path_factory.mktemp("rigged") / "Qwen-rigged", qwen_tokenizer, QWEN3_SHAPE, chain=chain
    )
    out = convert(hf, outtype="bf16", out_dir=tmp_path_factory.mktemp("rigged-gguf"), verify=False)
    return out.path, reply_text


def test_generation_stops_at_im_end(rigged: tuple[Path, str]) -> None:
    gguf, reply = rigged
    text, finish, _ = _greedy(gguf, CHAT_PROMPT, 40)
    assert (text, finish) == (reply, "stop")
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, n_threads=2, verbose=False)
    try:  # llama-cpp-python's own completion loop stops there too
        choice = llm.create_completion(CHAT_PROMPT, max_tokens=40, temperature=0.0)["choices"][0]
    finally:
        llm.close()
    assert (choice["text"], choice["finish_reason"]) == (reply, "stop")


def test_engine_and_chat_stop_at_im_end(rigged: tuple[Path, str]) -> None:
    """tlite-edge's own runtime (run, chat and serve use it) renders the model's ChatML template and
    ends the turn at <|im_end|>."""
    from tlite_edge.runtime import Chat, Engine

    gguf, reply = rigged
    engine = Engine.load(gguf, ctx=256, threads=2)
    try:
        assert engine.settings.architecture == "qwen3"
        answer = Chat(engine).send("Как дела?", temp=0.0, max_tokens=40)
        assert answer.result() == reply and answer.stats.finish_reason == "stop"
    finally:
        engine.close()


def test_ollama_export_writes_chatml(rigged: tuple[Path, str], tmp_path: Path) -> None:
    """A Qwen file gets a ChatML TEMPLATE and ChatML's stops, never the Llama-3 one."""
    from conftest import run_cli

    proc = run_cli("export", rigged[0], "--to", "ollama", "--dir", tmp_path / "mf")
    assert proc.returncode == 0, proc.stderr
    (modelfile,) = (tmp_path / "mf").glob("*.Modelfile")
    text = modelfile.read_text(encoding="utf-8")
    assert "<|im_start|>" in text and "<|start_header_id|>" not in text
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text


@pytest.mark.parametrize("level", ["Q8_0", "Q4_K_M"])
def test_quantize_and_run(qwen: QwenModel, level: str, tmp_path: Path) -> None:
    (result,) = quantize_levels(qwen.f32, [level], tmp_path, threads=2)
    assert result.path is not None and result.path.is_file()
    types = {name: qtype for name, _dims, qtype in read_header(result.path).tensors}
    wanted = {"Q8_0": QT.Q8_0, "Q4_K_M": QT.Q4_K}[level]
    assert types["blk.0.ffn_gate.weight"] == wanted
    assert all(types[n] == QT.F32 for n in types if n.endswith((".bias", "norm.weight")))
    text, _finish, out = _greedy(result.path, CHAT_PROMPT, 8)
    assert out
    print(f"\n{qwen.arch} {level}: {result.size_mib:.1f} MiB, {result.bpw:.2f} bpw, greedy {text[:30]!r}")
