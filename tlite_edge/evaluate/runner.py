"""Logits from llama.cpp for evaluation: text into chunks, and the second half of each chunk scored.

Chunking follows ``llama-perplexity``: the text is tokenized once (as plain text: special-token
markup in it stays characters), cut into chunks of ``ctx`` tokens (BOS first when the model adds
BOS), every chunk is decoded from an empty cache, and the logits at positions ``ctx/2 .. ctx-2``
(each predicting the next token, all with at least half a window of context) are scored.

Models are loaded like the runtime loads them (same file checks, physical cores, GPU offload when
the build has it), with one batch per chunk and logits requested only for the scored positions.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
from gguf import Keys

from tlite_edge.errors import TliteError
from tlite_edge.runtime.engine import check_model
from tlite_edge.runtime.hardware import probe

MIN_CTX = 16
MAX_UBATCH = 512


def vocabulary(path: Path) -> list[str]:
    """The GGUF's token list (checked as a loadable Llama model first)."""
    tokens = check_model(path).kv.get(Keys.Tokenizer.LIST)
    if not tokens:
        raise TliteError(path, "no vocabulary (tokenizer.ggml.tokens)")
    return list(tokens)


def check_same_vocabulary(ref: Path, ref_tokens: list[str], cand: Path) -> None:
    """One line when ``cand`` cannot be compared token by token with ``ref``."""
    tokens = vocabulary(cand)
    if len(tokens) != len(ref_tokens):
        raise TliteError(
            cand, f"vocabulary has {len(tokens)} tokens, the reference {ref.name} has {len(ref_tokens)}"
        )
    diff = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens, strict=True)) if a != b), None)
    if diff is not None:
        raise TliteError(
            cand,
            f"vocabulary differs from the reference {ref.name} at token {diff} "
            f"({tokens[diff]!r} vs {ref_tokens[diff]!r})",
        )


@dataclass(frozen=True)
class Chunks:
    """Token chunks of one text and where scoring starts in each."""

    chunks: list[list[int]]
    text_tokens: int  # tokens read (a prefix of the text when the number of chunks is limited)
    ctx: int

    @property
    def first(self) -> int:
        return self.ctx // 2

    @property
    def scored_per_chunk(self) -> int:
        return self.ctx - 1 - self.first

    @property
    def scored(self) -> int:
        return len(self.chunks) * self.scored_per_chunk


class LogitsModel:
    """One GGUF in llama.cpp, decoding whole chunks and returning the scored positions' logits."""

    def __init__(self, path: Path, ctx: int, threads: int | None = None, gpu: bool | None = None):
        if ctx < MIN_CTX:
            raise TliteError(None, f"--ctx must be at least {MIN_CTX} tokens (got {ctx})")
        check_model(path)
        hw = probe()
        self.path = path
        self.ctx = ctx
        self.threads = threads or hw.threads
        use_gpu = hw.gpu_offload if gpu is None else gpu and hw.gpu_offload
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=ctx,
                n_batch=ctx,
                n_ubatch=min(ctx, MAX_UBATCH),
                n_threads=self.threads,
                n_threads_batch=self.threads,
                n_gpu_layers=-1 if use_gpu else 0,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise TliteError(path, f"llama.cpp could not load the model ({exc})") from None
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self._batch = llama_cpp.llama_batch_init(ctx, 0, 1)

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self.llm.close()

    def __enter__(self) -> LogitsModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chunks(self, text: str, n_chunks: int | None, source: Path) -> Chunks:
        """Tokenize ``text`` as plain text and cut it into chunks of ``ctx`` tokens."""
        per = self.ctx - 1 if self.add_bos else self.ctx
        ids = self._tokens(text, None if n_chunks is None else n_chunks * per)
        available = len(ids) // per
        if available == 0:
            raise TliteError(
                source, f"the text is {len(ids)} tokens, less than one chunk of {self.ctx} (lower --ctx)"
            )
        n = available if n_chunks is None else min(n_chunks, available)
        head = [self.bos] if self.add_bos else []
        return Chunks([head + ids[i * per : (i + 1) * per] for i in range(n)], len(ids), self.ctx)

    def _tokens(self, text: str, needed: int | None) -> list[int]:
        """Plain-text ids of ``text``, or of a prefix (cut at a line end) holding ``needed`` tokens."""
        size = len(text) if needed is None else needed * 8
        while True:
            cut = text.rfind("\n", 0, size) if size < len(text) else -1
            part = text[:cut] if cut > 0 else text
            ids = self.llm.tokenize(part.encode("utf-8"), add_bos=False, special=False)
            if part is text or len(ids) > needed + 1:  # type: ignore[operator]
                return ids
            size *= 2

    def scored_logits(self, chunk: list[int], first: int) -> np.ndarray:
        """Decode ``chunk`` from an empty cache; logits [len-1-first, vocab] of positions first..len-2."""
        ctx = self.llm.ctx
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        batch = self._batch
        batch.n_tokens = len(chunk)
        for pos, tok in enumerate(chunk):
            batch.token[pos] = tok
            batch.pos[pos] = pos
            batch.n_seq_id[pos] = 1
            batch.seq_id[pos][0] = 0
            batch.logits[pos] = first <= pos < len(chunk) - 1
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            raise TliteError(self.path, f"llama.cpp decode failed (code {rc})")
        n_out = len(chunk) - 1 - first
        ptr = llama_cpp.llama_get_logits(ctx)
        data = ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(data, shape=(n_out, self.n_vocab)).copy()

    def run(self, chunks: Chunks) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(logits, next-token ids) for every chunk's scored positions."""
        for chunk in chunks.chunks:
            logits = self.scored_logits(chunk, chunks.first)
            yield logits, np.asarray(chunk[chunks.first + 1 :], dtype=np.int32)
