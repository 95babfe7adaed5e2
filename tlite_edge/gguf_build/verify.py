"""Prove a written GGUF against its source: llama.cpp (vocab-only) tokenizes like HF ``tokenizers`` on
the checkpoint's own tokenizer.json, and llama-cpp-python renders the GGUF's chat template exactly as
Hugging Face semantics render the source's. Any difference is one line naming the first case."""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gguf import Keys

from tlite_edge.chat_template import render, template_failure
from tlite_edge.checkpoint.hfconfig import read_json
from tlite_edge.checkpoint.tokenizer import detect_pre_tokenizer
from tlite_edge.errors import TliteError

TOKENIZER_PARITY = "tokenizer parity "  # how the recorded line starts (inspect reads it back)
MAX_SHOWN = 40  # ids shown per side in a mismatch line

# 1- and 3-turn chats, with and without a system message.
TEMPLATE_CHATS: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "Привет! Как дела?"}],
    [
        {"role": "system", "content": "Ты полезный помощник."},
        {"role": "user", "content": "Сколько будет 2+2?"},
    ],
    [
        {"role": "user", "content": "Столица Франции?"},
        {"role": "assistant", "content": "Париж."},
        {"role": "user", "content": " А Италии? "},
    ],
    [
        {"role": "system", "content": "Отвечай кратко."},
        {"role": "user", "content": "Назови цвет неба."},
        {"role": "assistant", "content": "Голубой."},
        {"role": "user", "content": "А травы?\n"},
    ],
)


@dataclass(frozen=True)
class Parity:
    """One check's result: ``what`` parity passed/total (a failed check raises instead)."""

    what: str
    passed: int
    total: int
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.what} parity {self.passed}/{self.total}" + (f" ({self.detail})" if self.detail else "")


class VocabOnly:
    """A GGUF's vocabulary and metadata loaded in llama.cpp without its weights (``vocab_only``)."""

    def __init__(self, gguf: Path, origin: Path) -> None:
        import llama_cpp

        from tlite_edge.quant.llama_log import capture_log

        self.lib = llama_cpp
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        log: list[str] = []
        with capture_log(lambda level, line: log.append(line)):
            self.model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
        if not self.model:
            why = next((line.strip() for line in reversed(log) if "error" in line.lower()), "load failed")
            raise TliteError(origin, f"llama.cpp cannot load the written vocabulary ({why[:160]})")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)

    def close(self) -> None:
        if self.model:
            self.lib.llama_model_free(self.model)
            self.model = None

    def meta(self, key: str) -> str | None:
        size = self.lib.llama_model_meta_val_str(self.model, key.encode(), None, 0)
        if size < 0:
            return None
        buf = ctypes.create_string_buffer(size + 1)
        self.lib.llama_model_meta_val_str(self.model, key.encode(), buf, size + 1)
        return buf.raw[:size].decode("utf-8", errors="replace")

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        """Ids as llama.cpp makes them from user text (special markers are not parsed)."""
        raw = text.encode("utf-8")
        size = len(raw) + 2
        for _ in range(2):
            buf = (self.lib.llama_token * size)()
            n = self.lib.llama_tokenize(self.vocab, raw, len(raw), buf, size, add_bos, False)
            if n >= 0:
                return list(buf[:n])
            size = -n
        raise RuntimeError("llama_tokenize kept asking for a larger buffer")

    def text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.lib.llama_vocab_get_text(self.vocab, token).decode("utf-8", errors="replace")

    @property
    def bos(self) -> int:
        return int(self.lib.llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        return int(self.lib.llama_vocab_eos(self.vocab))

    @property
    def add_bos(self) -> bool:
        return bool(self.lib.llama_vocab_get_add_bos(self.vocab))


@contextlib.contextmanager
def vocab_only(gguf: Path, origin: Path) -> Iterator[VocabOnly]:
    """The GGUF's vocabulary loaded in llama.cpp (no weights read), freed afterwards."""
    loaded = VocabOnly(gguf, origin)
    try:
        yield loaded
    finally:
        loaded.close()


def _ids(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[:MAX_SHOWN]))
    return f"[{shown}{', …' if len(ids) > MAX_SHOWN else ''}]"


@functools.lru_cache(maxsize=2)
def _reference(tokenizer_json: Path, mtime_ns: int) -> tuple[list[str], list[list[int]], str]:
    """The probe strings, HF ``tokenizers`` ids and pre-tokenizer label of a tokenizer.json (the same
    for every level written from one checkpoint, so computed once)."""
    from tokenizers import Tokenizer

    from tlite_edge.gguf_build.probes import probe_strings

    tok = read_json(tokenizer_json)
    hf = Tokenizer.from_file(str(tokenizer_json))
    hf.encode_special_tokens = True  # like llama.cpp's special=False: user text never forges a marker
    probes = probe_strings(tok, hf)
    ids = [e.ids for e in hf.encode_batch(probes, add_special_tokens=False)]
    return probes, ids, detect_pre_tokenizer(tok, tokenizer_json)


def tokenizer_parity(llm: VocabOnly, tokenizer_json: Path, origin: Path) -> Parity:
    """llama.cpp ids == HF ``tokenizers`` ids over the probe set (special markers typed as text)."""
    probes, ref_ids, label = _reference(tokenizer_json, tokenizer_json.stat().st_mtime_ns)
    written = llm.meta(Keys.Tokenizer.PRE)
    for text, ref in zip(probes, ref_ids, strict=True):
        ours = llm.tokenize(text, add_bos=False)
        if ours != ref:
            raise TliteError(
                origin,
                f"tokenizer parity failed (pre-tokenizer {written!r}, the source needs {label!r}): "
                f"{text[:60]!r} -> llama.cpp {_ids(ours)} vs HF tokenizers {_ids(ref)}; no file written",
            )
    if llm.add_bos and llm.bos >= 0:
        first = llm.tokenize("Привет", add_bos=True)
        if first[:1] != [llm.bos] or first.count(llm.bos) != 1:
            raise TliteError(origin, f"raw text does not start with exactly one BOS ({_ids(first)})")
    return Parity("tokenizer", len(probes), len(probes), f"pre-tokenizer {written}")


def template_parity(llm: VocabOnly, template: str, bos: str, eos: str, origin: Path) -> Parity:
    """The GGUF's template as llama-cpp-python renders it == ``template`` rendered with HF semantics."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    written = llm.meta(Keys.Tokenizer.CHAT_TEMPLATE)
    if written != template:
        raise TliteError(
            origin, "template parity failed: the GGUF's chat template differs from the one written"
        )
    # as llama-cpp-python builds its chat handler from a GGUF: the GGUF's own bos/eos token texts
    formatter = Jinja2ChatFormatter(
        template=written, eos_token=llm.text(llm.eos), bos_token=llm.text(llm.bos)
    )
    for chat in TEMPLATE_CHATS:
        try:
            ours = render(template, chat, add_generation_prompt=True, bos_token=bos, eos_token=eos)
            theirs = formatter(messages=chat).prompt
        except Exception as exc:  # a template can make any operation fail
            raise TliteError(origin, f"template parity failed: {template_failure(exc)}") from None
        if ours != theirs:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
            at = min(len(ours), len(theirs)) if at is None else at
            raise TliteError(
                origin,
                f"template parity failed on a {len(chat)}-message chat: llama-cpp-python renders "
                f"{theirs[max(0, at - 20) : at + 30]!r}, HF semantics {ours[max(0, at - 20) : at + 30]!r} "
                f"(at character {at}); no file written",
            )
    return Parity(
        "template", len(TEMPLATE_CHATS), len(TEMPLATE_CHATS), "1- and 3-turn, with and without system"
    )


def end_of_generation(llm: VocabOnly, tokens: tuple[tuple[str, int], ...], origin: Path) -> Parity:
    """llama.cpp holds each (text, id) of ``tokens`` (a model data file's list) and ends generation there."""
    for text, token in tokens:
        if llm.text(token) != text or not llm.lib.llama_vocab_is_eog(llm.vocab, token):
            raise TliteError(
                origin,
                f"end of generation: llama.cpp does not stop at {text!r} (id {token}); no file written",
            )
    texts = ", ".join(text for text, _ in tokens)
    return Parity("end-of-generation", len(tokens), len(tokens), texts)


def verify_gguf(
    gguf: Path,
    origin: Path,
    tokenizer_json: Path,
    template: str | None = None,
    bos: str = "",
    eos: str = "",
    *,
    eog: tuple[tuple[str, int], ...] = (),
) -> list[Parity]:
    """Run the parity checks on ``gguf`` (e.g. a temporary file before it is renamed into place); with
    ``eog``, also that llama.cpp ends generation at each of those tokens."""
    with vocab_only(gguf, origin) as llm:
        results = [tokenizer_parity(llm, tokenizer_json, origin)]
        if template is not None:
            results.append(template_parity(llm, template, bos, eos, origin))
        if eog:
            results.append(end_of_generation(llm, eog, origin))
    return results
