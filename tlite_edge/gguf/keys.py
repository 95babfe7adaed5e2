"""GGUF metadata keys beyond gguf-py's single constants (``gguf.Keys``), built from those constants."""

from __future__ import annotations

from gguf import Keys

# Special-token role -> its id key.
SPECIAL_TOKEN_KEYS = {
    "bos": Keys.Tokenizer.BOS_ID,
    "eos": Keys.Tokenizer.EOS_ID,
    "eot": Keys.Tokenizer.EOT_ID,
    "padding": Keys.Tokenizer.PAD_ID,
    "unknown": Keys.Tokenizer.UNK_ID,
}
# The prefix of the tokenizer's vocabulary keys (tokens, types, merges, special ids, flags).
GGML_TOKENIZER_PREFIX = Keys.Tokenizer.MODEL.rsplit(".", 1)[0] + "."


def arch_key(key: str, arch: str) -> str:
    """A per-architecture key for one architecture: ``arch_key(Keys.LLM.BLOCK_COUNT, "llama")``."""
    return key.format(arch=arch)
# Sampling field -> llama.cpp's general.sampling.* key (defaults a model's authors recommend).
SAMPLING_KEYS = {
    "temp": Keys.General.SAMPLING_TEMP,
    "top_p": Keys.General.SAMPLING_TOP_P,
    "top_k": Keys.General.SAMPLING_TOP_K,
    "min_p": Keys.General.SAMPLING_MIN_P,
    "repeat_penalty": Keys.General.SAMPLING_PENALTY_REPEAT,
}
