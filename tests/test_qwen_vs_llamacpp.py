"""Our Qwen2/Qwen3 GGUFs against llama.cpp's own converter (convert_hf_to_gguf.py) on the same folder:
the same tensors byte for byte, the same hyper-parameters, the same vocabulary and merges. What
differs is listed and deliberate."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import QwenModel
from gguf import Keys
from llamacpp_convert import llamacpp_convert
from qwen_fixtures import ENDOFTEXT, IM_END, QWEN2_SHAPE, write_qwen

from tlite_edge.checkpoint.tokenizer import CONTROL, USER_DEFINED
from tlite_edge.gguf.reader import field_value, open_gguf, read_header
from tlite_edge.gguf_build.build import convert

# Keys only we write, on purpose: the head sizes, vocabulary size and end-of-turn token (llama.cpp
# derives the others from the tensors and the vocabulary).
OURS_ONLY = (
    Keys.LLM.VOCAB_SIZE,
    Keys.Rope.DIMENSION_COUNT,
    Keys.Attention.KEY_LENGTH,
    Keys.Attention.VALUE_LENGTH,
    Keys.Tokenizer.EOT_ID,
)
# Naming is each converter's own reading of the folder name; token types are compared below.
SKIPPED = (
    Keys.General.NAME,
    Keys.General.BASENAME,
    Keys.General.FINETUNE,
    Keys.General.VERSION,
    Keys.General.SIZE_LABEL,
    Keys.Tokenizer.TOKEN_TYPE,
)


@pytest.fixture(scope="module")
def llamacpp_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("llamacpp") if cache is not None else tmp_path_factory.mktemp("llamacpp")


def test_same_file_as_llamacpp(qwen: QwenModel, llamacpp_cache: Path, tmp_path: Path) -> None:
    ref = llamacpp_convert(qwen.hf, tmp_path / "ref-BF16.gguf", "bf16", cache=llamacpp_cache)
    ours = convert(qwen.hf, outtype="bf16", out_dir=tmp_path / "ours", verify=False).path
    a, b = read_header(ref), read_header(ours)
    assert {n: (d, t) for n, d, t in a.tensors} == {n: (d, t) for n, d, t in b.tensors}
    ra, rb = open_gguf(ref), open_gguf(ours)
    data = {t.name: t.data.tobytes() for t in rb.tensors}
    assert all(t.data.tobytes() == data[t.name] for t in ra.tensors)

    skip = {k.format(arch=qwen.arch) for k in (*OURS_ONLY, *SKIPPED)}
    differ = {
        k: (a.kv.get(k), b.kv.get(k))
        for k in set(a.kv) | set(b.kv)
        if k not in skip and a.kv.get(k) != b.kv.get(k)
    }
    assert not differ, differ
    assert b.kv[Keys.Tokenizer.EOT_ID] == b.kv[Keys.Tokenizer.EOS_ID] == IM_END
    assert a.kv[Keys.Tokenizer.BOS_ID] == b.kv[Keys.Tokenizer.BOS_ID] == ENDOFTEXT

    # Token types: llama.cpp makes every "<|...|>" added token a control token; we keep tokenizer.json's
    # "special": false ones (<|fim_prefix|>, <|repo_name|>, ...) user-defined, as HF matches them in text.
    tokens = field_value(rb, Keys.Tokenizer.LIST)
    types_a, types_b = field_value(ra, Keys.Tokenizer.TOKEN_TYPE), field_value(rb, Keys.Tokenizer.TOKEN_TYPE)
    changed = {tokens[i]: (x, y) for i, (x, y) in enumerate(zip(types_a, types_b, strict=True)) if x != y}
    assert changed and all(t.startswith("<|") and v == (CONTROL, USER_DEFINED) for t, v in changed.items())


def test_yarn_keys_as_llamacpp(qwen_tokenizer: Path, llamacpp_cache: Path, tmp_path: Path) -> None:
    """YaRN rope scaling: the same rope keys and values as llama.cpp's converter writes."""
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "beta_fast": 32.0}
    hf = write_qwen(tmp_path / "Qwen-yarn", qwen_tokenizer, QWEN2_SHAPE, rope_scaling=yarn)
    ref = llamacpp_convert(hf, tmp_path / "ref-BF16.gguf", "bf16", cache=llamacpp_cache)
    ours = convert(hf, outtype="bf16", out_dir=tmp_path / "ours", verify=False).path
    a, b = read_header(ref).kv, read_header(ours).kv
    rope = {k: a[k] for k in a if k.startswith("qwen2.rope.scaling.")}
    assert rope == {k: b[k] for k in b if k.startswith("qwen2.rope.scaling.")}
    assert rope[Keys.Rope.SCALING_TYPE.format(arch="qwen2")] == "yarn" and len(rope) == 4
