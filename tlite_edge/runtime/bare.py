"""A bare llama.cpp decode loop (llama_decode on a llama_batch, greedy sampler chain), for comparison.

``BareLlama`` loads the same file with the same model and context parameters as an ``Engine`` and
runs prompt + generation with nothing of ours in between: the yardstick ``tlite-edge bench`` divides by.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp

from tlite_edge.errors import TliteError


@dataclass
class BareRun:
    prompt_tokens: int
    prompt_seconds: float  # decode of the prompt plus sampling the first token
    generated_tokens: int  # decoded after the first token
    generation_seconds: float
    tokens: list[int] = field(default_factory=list)  # the greedy tokens sampled
    decode_seconds: float = 0.0  # of generation_seconds, llama.cpp's time in llama_decode (perf counters)

    @property
    def pp_tok_s(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def tg_tok_s(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0


def _copy(params: ctypes.Structure) -> ctypes.Structure:
    return type(params).from_buffer_copy(params)


class BareLlama:
    """llama.cpp through its C API only: model, context, one batch, a greedy sampler chain."""

    def __init__(
        self, path: str | Path, model_params: ctypes.Structure, context_params: ctypes.Structure
    ) -> None:
        llama_cpp.llama_backend_init()
        t0 = time.perf_counter()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), _copy(model_params))
        if not self.model:
            raise TliteError(path, "llama.cpp could not load the model (bare loop)")
        self.ctx = llama_cpp.llama_init_from_model(self.model, _copy(context_params))
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise TliteError(path, "llama.cpp could not create a context (bare loop)")
        self.load_seconds = time.perf_counter() - t0
        self.n_batch = int(llama_cpp.llama_n_batch(self.ctx))
        self.n_ctx = int(llama_cpp.llama_n_ctx(self.ctx))
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.sampler = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(self.sampler, llama_cpp.llama_sampler_init_greedy())

    def _decode(self, tokens: Sequence[int], pos: int) -> None:
        b = self.batch
        b.n_tokens = len(tokens)
        for i, tok in enumerate(tokens):
            b.token[i] = tok
            b.pos[i] = pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = i == len(tokens) - 1
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise TliteError(None, f"llama_decode failed with code {rc} (bare loop)")

    def run(self, prompt: Sequence[int], n_gen: int) -> BareRun:
        """Clear the cache, decode ``prompt`` in batches, then sample and decode ``n_gen`` tokens."""
        if len(prompt) + n_gen > self.n_ctx:
            raise TliteError(None, f"{len(prompt)} + {n_gen} tokens do not fit the context ({self.n_ctx})")
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        llama_cpp.llama_sampler_reset(self.sampler)
        t0 = time.perf_counter()
        for i in range(0, len(prompt), self.n_batch):
            self._decode(prompt[i : i + self.n_batch], i)
        tokens = [llama_cpp.llama_sampler_sample(self.sampler, self.ctx, -1)]
        t1 = time.perf_counter()
        llama_cpp.llama_perf_context_reset(self.ctx)
        for pos in range(len(prompt), len(prompt) + n_gen):
            self._decode(tokens[-1:], pos)
            tokens.append(llama_cpp.llama_sampler_sample(self.sampler, self.ctx, -1))
        t2 = time.perf_counter()
        perf = llama_cpp.llama_perf_context(self.ctx)
        decode = perf.t_eval_ms / 1000 if perf.n_eval > 0 else 0.0
        return BareRun(len(prompt), t1 - t0, n_gen, t2 - t1, tokens, decode)

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.sampler)
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)
