"""The Hugging Face BPE tokenizer (``tokenizer.json`` + ``tokenizer_config.json``) as GGUF vocab data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlite_edge.checkpoint.hfconfig import read_json
from tlite_edge.errors import TliteError

# GGUF token types (llama.cpp's llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer split regex (exactly as written in tokenizer.json) -> llama.cpp pre-tokenizer name.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2/Qwen2.5/Qwen3: the Llama-3 regex with each digit alone (llama.cpp's "qwen2").
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Several stages are joined with " + ", in order. SmolLM/SmolLM2: each digit alone, then GPT-2's split
# (llama.cpp's "smollm": "\\p{N}", then the GPT-2 regex).
GPT2_SPLIT = "<ByteLevel use_regex>"
SMOLLM_SPLIT = "<Digits individual_digits> + <ByteLevel use_regex>"
# (split stages, tokenizer.json's model.ignore_merges) -> llama.cpp pre-tokenizer label. Both fields change
# how text splits: with ignore_merges, a whole pre-token found in the vocabulary is one token, without it
# the merges decide. llama.cpp applies ignore_merges for "llama-bpe" and not for "smaug-bpe", which share
# the Llama-3 regex, nor for "qwen2" (absent in tokenizer.json means false, as in HF tokenizers). A
# combination missing here has no llama.cpp label that tokenizes like the source, and is refused.
PRE_TOKENIZERS: dict[tuple[str, bool], str] = {
    (LLAMA3_SPLIT, True): "llama-bpe",
    (LLAMA3_SPLIT, False): "smaug-bpe",
    (GPT2_SPLIT, False): "gpt-2",
    (SMOLLM_SPLIT, False): "smollm",
    (QWEN2_SPLIT, False): "qwen2",
}
# Pre-tokenizers of model families that are always trained with BOS at the start (Llama-3 vocabularies,
# whichever ignore_merges label they need).
ALWAYS_BOS = frozenset({"llama-bpe", "smaug-bpe"})
# Embedding rows past the tokenizer's vocabulary become [PAD] tokens (common: rows padded to a
# multiple of 64 or 128); a tokenizer covering less than this share of the rows is the wrong one.
MIN_VOCAB_COVER = 0.9
# End-of-turn tokens, first found wins: Llama-3, ChatML.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>")


@dataclass
class Vocab:
    """Everything GGUF's ``tokenizer.ggml.*`` keys need."""

    path: Path
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int
    eot_id: int | None
    pad_id: int | None
    chat_template: str | None
    fixes: list[str] = field(default_factory=list)
    add_bos: bool = True
    # bos_token / eos_token as HF's apply_chat_template passes them to the template (tokenizer_config)
    template_bos: str = ""
    template_eos: str = ""

    def id_of(self, text: str) -> int | None:
        try:
            return self.tokens.index(text)
        except ValueError:
            return None


def split_key(tok: dict[str, Any], path: Path) -> str:
    """The tokenizer.json's pre-tokenizer stages as one key: split regexes and stage types, in order."""
    pre = tok.get("pre_tokenizer") or {}
    if not isinstance(pre, dict):
        raise TliteError(path, "pre_tokenizer is not an object")
    stages = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if not isinstance(stages, list):
        raise TliteError(path, "pre_tokenizer pretokenizers is not a list")
    patterns = []
    for stage in stages:
        if not isinstance(stage, dict):
            continue
        kind = stage.get("type")
        if kind == "Split":
            pattern = stage.get("pattern", {})
            patterns.append(pattern.get("Regex") if isinstance(pattern, dict) else None)
        elif kind == "ByteLevel":
            if stage.get("use_regex", True):
                patterns.append("<ByteLevel use_regex>")
        elif kind == "Digits":
            patterns.append("<Digits individual_digits>" if stage.get("individual_digits") else "<Digits>")
        else:
            patterns.append(f"<{kind}>")
    return " + ".join(map(str, patterns)) or f"<{pre.get('type')}>"


def ignore_merges(tok: dict[str, Any], path: Path) -> bool:
    """``model.ignore_merges`` of a tokenizer.json (absent means false, as in HF tokenizers)."""
    model = tok.get("model") if isinstance(tok.get("model"), dict) else {}
    value = model.get("ignore_merges", False)
    if not isinstance(value, bool):
        raise TliteError(path, f"model.ignore_merges is {value!r}, not true or false")
    return value


def supported_pre_tokenizers() -> str:
    names = {
        LLAMA3_SPLIT: "Llama-3 regex",
        GPT2_SPLIT: "GPT-2",
        SMOLLM_SPLIT: "SmolLM",
        QWEN2_SPLIT: "Qwen2 regex",
    }
    return ", ".join(
        f"{label} ({names[key]}, ignore_merges {str(flag).lower()})"
        for (key, flag), label in PRE_TOKENIZERS.items()
    )


def detect_pre_tokenizer(tok: dict[str, Any], path: Path) -> str:
    """Name the llama.cpp pre-tokenizer from the tokenizer.json's own fields: split regex + ignore_merges."""
    key, flag = split_key(tok, path), ignore_merges(tok, path)
    if (key, flag) in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[key, flag]
    known = any(k == key for k, _ in PRE_TOKENIZERS)
    what = f"pre-tokenizer {key[:80]!r}" + (f" with ignore_merges {str(flag).lower()}" if known else "")
    raise TliteError(path, f"unknown {what}; supported: {supported_pre_tokenizers()}")


def _merge(merge: Any, path: Path) -> str:
    if isinstance(merge, str):
        return merge
    if isinstance(merge, list) and len(merge) == 2 and all(isinstance(m, str) for m in merge):
        return " ".join(merge)
    raise TliteError(path, f"invalid merge {str(merge)[:40]!r}")


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(folder: Path, tcfg: dict[str, Any]) -> str | None:
    template = tcfg.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    jinja = folder / "chat_template.jinja"
    if not template and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    return template if isinstance(template, str) and template.strip() else None


def load_vocab(folder: Path, vocab_size: int) -> Vocab:
    """Read the tokenizer of a checkpoint folder into GGUF vocab data, fixing Llama-3 quirks."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TliteError(path, "missing tokenizer (tokenizer.json is required)")
    tok = read_json(path)
    tcfg = read_json(folder / "tokenizer_config.json", required=False)
    gen = read_json(folder / "generation_config.json", required=False)
    model = tok.get("model") if isinstance(tok.get("model"), dict) else {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise TliteError(
            path, f"tokenizer model {model.get('type')!r} is not supported (byte-level BPE only)"
        )
    pre = detect_pre_tokenizer(tok, path)

    tokens: list[str | None] = [None] * vocab_size
    types = [NORMAL] * vocab_size
    for text, idx in model["vocab"].items():
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < vocab_size:
            raise TliteError(path, f"token id {idx!r} outside vocab_size {vocab_size} from config.json")
        tokens[idx] = text
    added_tokens = tok.get("added_tokens") or []
    if not isinstance(added_tokens, list):
        raise TliteError(path, "added_tokens is not a list")
    for added in added_tokens:
        idx = added.get("id") if isinstance(added, dict) else None
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < vocab_size:
            raise TliteError(path, f"added token id {idx!r} outside vocab_size {vocab_size} from config.json")
        if not isinstance(added.get("content"), str):
            raise TliteError(path, f"added token {idx} has no content string")
        tokens[idx] = added["content"]
        types[idx] = CONTROL if added.get("special") else USER_DEFINED
    defined = vocab_size - tokens.count(None)
    if defined < vocab_size * MIN_VOCAB_COVER:
        raise TliteError(
            path, f"vocabulary of {defined} tokens is far smaller than the {vocab_size} embedding rows"
        )
    for idx, text in enumerate(tokens):
        if text is None:
            tokens[idx] = f"[PAD{idx}]"
            types[idx] = UNUSED
    merges = [_merge(m, path) for m in model.get("merges") or []]

    vocab = Vocab(path, pre, tokens, types, merges, None, -1, None, None, _chat_template(folder, tcfg))
    vocab.template_bos = _token_text(tcfg.get("bos_token")) or ""
    vocab.template_eos = _token_text(tcfg.get("eos_token")) or ""
    vocab.bos_id = vocab.id_of(vocab.template_bos or "<|begin_of_text|>")
    # Llama-3 models expect BOS once at the start whatever tokenizer_config says (T-lite's tokenizer.json
    # has no BOS post-processor); other families follow an explicit add_bos_token, else get BOS.
    declared = tcfg.get("add_bos_token")
    vocab.add_bos = pre in ALWAYS_BOS or declared is not False
    if pre in ALWAYS_BOS and declared is False:
        vocab.fixes.append("add_bos_token false -> true (Llama-3 expects <|begin_of_text|> once)")
    gen_bos = gen.get("bos_token_id")
    if vocab.bos_id is None and type(gen_bos) is int and 0 <= gen_bos < vocab_size:
        # No BOS named (Qwen): HF adds none, but llama.cpp fills an absent BOS key with token 11 of a BPE
        # vocabulary (","); name generation_config's, never added.
        vocab.bos_id, vocab.add_bos = gen_bos, False
    declared_eos = vocab.id_of(_token_text(tcfg.get("eos_token")) or "")
    eot = next((i for t in END_OF_TURN_TOKENS if (i := vocab.id_of(t)) is not None), None)
    vocab.eot_id = eot
    vocab.eos_id = eot if eot is not None else (declared_eos if declared_eos is not None else -1)
    if vocab.eos_id < 0:
        raise TliteError(folder / "tokenizer_config.json", "no end-of-sequence token declared")
    gen_eos = gen.get("eos_token_id")
    gen_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
    if eot is not None and eot not in gen_eos and gen_eos:
        vocab.fixes.append(
            f"eos {gen_eos} from generation_config.json -> {eot} {tokens[eot]} "
            "(end of turn, stops every runtime)"
        )
    pad = _token_text(tcfg.get("pad_token"))
    vocab.pad_id = vocab.id_of(pad) if pad else None
    return vocab
