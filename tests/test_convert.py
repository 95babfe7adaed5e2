"""What the converter writes, read back with gguf.GGUFReader (an independent reader)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import STANDIN_NAME, run_cli
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader

from tlite_edge.chat_template import LLAMA3_TEMPLATE
from tlite_edge.checkpoint.shards import Checkpoint
from tlite_edge.gguf.reader import read_header


def fields(reader: GGUFReader) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        is_array = len(fld.types) > 1
        out[key] = [fld.contents(i) for i in range(len(fld.data))] if is_array else fld.contents()
    return out


@pytest.fixture(scope="module")
def bf16_reader(bf16_gguf: Path) -> GGUFReader:
    """gguf-py's reader (the independent reference for what we wrote) on the BF16 file, opened once:
    it takes seconds on a 128k vocabulary."""
    return GGUFReader(bf16_gguf)


def test_metadata_round_trip(bf16_reader: GGUFReader, standin_dir: Path) -> None:
    meta = fields(bf16_reader)
    cfg = json.loads((standin_dir / "config.json").read_text())
    tok = json.loads((standin_dir / "tokenizer.json").read_text())
    vocab = {i: t for t, i in tok["model"]["vocab"].items()} | {
        a["id"]: a["content"] for a in tok["added_tokens"]
    }
    expected_scalars = {
        "general.architecture": "llama",
        "general.type": "model",
        "general.name": STANDIN_NAME,
        "general.basename": "T-lite-standin",
        "general.finetune": "instruct",
        "general.version": "0.1",
        "general.size_label": "67M",
        "general.file_type": 32,
        "general.quantization_version": 2,
        "general.languages": ["ru"],
        "general.license": "other",
        "llama.vocab_size": cfg["vocab_size"],
        "llama.context_length": cfg["max_position_embeddings"],
        "llama.embedding_length": cfg["hidden_size"],
        "llama.block_count": cfg["num_hidden_layers"],
        "llama.feed_forward_length": cfg["intermediate_size"],
        "llama.rope.dimension_count": cfg["hidden_size"] // cfg["num_attention_heads"],
        "llama.attention.key_length": 64,
        "llama.attention.value_length": 64,
        "llama.attention.head_count": cfg["num_attention_heads"],
        "llama.attention.head_count_kv": cfg["num_key_value_heads"],
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.bos_token_id": 128000,
        "tokenizer.ggml.eos_token_id": 128009,
        "tokenizer.ggml.eot_token_id": 128009,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.chat_template": LLAMA3_TEMPLATE,
    }
    for key, value in expected_scalars.items():
        assert meta[key] == value, key
    assert meta["llama.rope.freq_base"] == pytest.approx(cfg["rope_theta"])
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"])
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == 128256 and all(tokens[i] == t for i, t in vocab.items())
    types = meta["tokenizer.ggml.token_type"]
    assert set(types[:128000]) == {1} and set(types[128000:]) == {3}
    merges = meta["tokenizer.ggml.merges"]
    assert merges == [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    unexpected = (
        set(meta)
        - set(expected_scalars)
        - {
            "llama.rope.freq_base",
            "llama.attention.layer_norm_rms_epsilon",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
        }
    )
    assert not unexpected


def _unpermute(w: np.ndarray, head_dim: int) -> np.ndarray:
    heads = w.shape[0] // head_dim
    return w.reshape(heads, head_dim // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def test_tensors_lossless(bf16_reader: GGUFReader, f32_gguf: Path, standin_dir: Path) -> None:
    """BF16 output holds the source bits; F32 output holds them widened; q/k are the RoPE permutation."""
    bf16 = {t.name: t for t in bf16_reader.tensors}
    f32 = {t.name: t for t in GGUFReader(f32_gguf).tensors}
    assert len(bf16) == 2 + 2 * 9 + 1
    with Checkpoint(standin_dir) as ckpt:
        pairs = {
            "token_embd.weight": "model.embed_tokens.weight",
            "output.weight": "lm_head.weight",
            "output_norm.weight": "model.norm.weight",
            "blk.1.attn_q.weight": "model.layers.1.self_attn.q_proj.weight",
            "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj.weight",
            "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
        }
        for gg, hf in pairs.items():
            src = np.array(ckpt.shard_of(hf).array(hf))
            widened = (src.astype(np.uint32) << 16).view(np.float32)
            got_f32 = np.array(f32[gg].data).reshape(src.shape)
            if src.ndim == 1:  # norms are F32 in every output type
                assert bf16[gg].tensor_type == QT.F32
                assert np.array_equal(np.array(bf16[gg].data), widened) and np.array_equal(got_f32, widened)
                continue
            assert bf16[gg].tensor_type == QT.BF16
            got_bf16 = np.array(bf16[gg].data).view(np.uint16).reshape(src.shape)
            if "attn_q" in gg or "attn_k" in gg:
                assert not np.array_equal(got_bf16, src)
                got_bf16, got_f32 = _unpermute(got_bf16, 64), _unpermute(got_f32, 64)
            assert np.array_equal(got_bf16, src), gg
            assert np.array_equal(got_f32, widened), gg


@pytest.mark.parametrize(("outtype", "matrix", "file_type"), [("f16", QT.F16, 1), ("q8_0", QT.Q8_0, 7)])
def test_outtypes(standin_dir: Path, tmp_path: Path, outtype: str, matrix: QT, file_type: int) -> None:
    out = tmp_path / "x.gguf"
    proc = run_cli("convert", standin_dir, "--outtype", outtype, "--outfile", out)
    assert proc.returncode == 0, proc.stderr
    header = read_header(out)  # the format itself is checked with gguf-py's reader in the tests above
    kinds = {name: qtype for name, _, qtype in header.tensors}
    assert {k for n, k in kinds.items() if n.endswith("norm.weight")} == {QT.F32}
    assert {k for n, k in kinds.items() if not n.endswith("norm.weight")} == {matrix}
    assert header.kv["general.file_type"] == file_type
    assert (tmp_path / "x.gguf.sha256").exists()


def test_chat_template_override(standin_dir: Path, tmp_path: Path) -> None:
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}", encoding="utf-8")
    out = tmp_path / "o.gguf"
    proc = run_cli("convert", standin_dir, "--chat-template", tpl, "--outfile", out)
    assert proc.returncode == 0, proc.stderr
    assert read_header(out).kv["tokenizer.chat_template"] == tpl.read_text()
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}", encoding="utf-8")
    proc = run_cli("convert", standin_dir, "--chat-template", bad, "--outfile", tmp_path / "b.gguf")
    assert proc.returncode == 2 and "bad.jinja" in proc.stderr and "does not render" in proc.stderr
    assert not (tmp_path / "b.gguf").exists()
