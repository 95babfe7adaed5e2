"""Load a GGUF into llama.cpp with settings that suit the machine, and build safe chat prompts.

``Engine.load`` checks the file first (one clear line for a foreign, truncated or non-Llama file),
uses physical cores, the model's own context (reduced only when memory is short), full GPU offload
when the build has it, and mmap. Prompts come from the GGUF's own chat template, but message
contents are tokenized as plain text: typing ``<|eot_id|>`` cannot end a turn.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import llama_cpp
from gguf import Keys

from tlite_edge.chat_template import check_size, compile_template, render, template_failure
from tlite_edge.errors import TliteError
from tlite_edge.gguf.keys import GGML_TOKENIZER_PREFIX
from tlite_edge.gguf.reader import GGUFHeader, read_header
from tlite_edge.runtime.fit import context_for_memory, model_context, profile_fits, ram_needed, recommend
from tlite_edge.runtime.hardware import Hardware, probe
from tlite_edge.runtime.prompt import Prompt, TemplateCaps, build_prompt, template_caps
from tlite_edge.runtime.rpc import Endpoint, parse_endpoint
from tlite_edge.runtime.speculate import DraftModel, StepCosts
from tlite_edge.runtime.types import Generation, Message, Sampling

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")  # what the converter writes
# Flash attention off by default (llama-cpp-python's default). On: prompts ~7 % faster on the 2-core
# CPU, generation ~3 % (BENCHMARKS.md, flash attention section); but a verify batch's logits then
# differ from one-token decodes enough to flip greedy near-ties, so speculative replies could change.
FLASH_ATTN_DEFAULT = False
GIB = 2**30


@dataclass
class EngineSettings:
    """What ``Engine.load`` chose, and why (``warnings``)."""

    path: str
    architecture: str
    n_ctx: int
    n_ctx_train: int
    threads: int
    gpu_layers: int
    flash_attn: bool
    mmap: bool
    seed: int
    model_bytes: int
    n_params: int
    memory_available: int
    memory_kind: str  # "RAM" or the GPU device the weights go to
    speculative: bool = True  # prompt-lookup speculative decoding in replies (runtime.speculate)
    draft: str | None = None  # a draft model instead of prompt lookup (``Engine.use_draft``)
    warnings: list[str] = field(default_factory=list)
    rpc: list[str] = field(default_factory=list)  # the RPC workers holding layers
    rpc_layers: int = 0  # layers (of n_layer + output) on them

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_model(path: str | Path) -> GGUFHeader:
    """The GGUF header, or one line: not a GGUF, damaged/truncated, or not a supported architecture."""
    header = read_header(path)
    arch = header.kv.get(Keys.General.ARCHITECTURE)
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise TliteError(path, f"architecture {arch!r} is not supported (supported: {supported})")
    if Keys.LLM.BLOCK_COUNT.format(arch=arch) not in header.kv or not header.tensors:
        raise TliteError(path, "no model in this GGUF (vocabulary or metadata only)")
    return header


def _gpu_layers(gpu: bool | int | None, hw: Hardware, warnings: list[str]) -> int:
    if gpu is None:
        return -1 if hw.gpu_offload else 0
    if gpu is False or gpu == 0:
        return 0
    if not hw.gpu_offload:
        warnings.append("GPU offload asked for, but this llama.cpp build has no GPU backend: running on CPU")
        return 0
    return -1 if gpu is True else int(gpu)


def _memory_budget(hw: Hardware, gpu_layers: int) -> tuple[int, str]:
    gpus = hw.gpu_devices()
    if gpu_layers != 0 and gpus and gpus[0].memory_free:
        return gpus[0].memory_free, gpus[0].name
    return hw.ram_available, "RAM"


def _size_warning(header: GGUFHeader, weights: int, n_params: int, ctx: int, budget: int, kind: str) -> str:
    need = ram_needed(weights, header.kv, ctx)
    msg = (
        f"the model needs ~{need / GIB:.2f} GiB at {ctx} context but only {budget / GIB:.2f} GiB of "
        f"{kind} is free: expect swapping and slow generation"
    )
    from tlite_edge.quant.profiles import load_profiles

    bpw = 8 * weights / max(n_params, 1)
    smaller = [
        f for f in profile_fits(load_profiles(), n_params, header.kv, ctx, budget) if f.bits_per_weight < bpw
    ]
    pick = recommend(smaller)
    if pick is not None:
        msg += (
            f"; a smaller level fits: {pick.profile} (tlite-edge quantize MODEL-BF16.gguf -q {pick.profile})"
        )
    return msg


def _rpc_split(
    meta: dict[str, Any], hw: Hardware, rpc: Sequence[Endpoint], tensor_split: str | None
) -> tuple[int, list[float], int, str]:
    """Register the workers; (layers they take, per-device shares, memory of the pool, its name)."""
    from tlite_edge.runtime.rpc import layer_split, parse_tensor_split
    from tlite_edge.runtime.rpc_ggml import register_workers

    given = parse_tensor_split(tensor_split, len(rpc)) if tensor_split else None
    workers = register_workers(rpc)
    if given:
        shares, local = given
    else:
        shares, local = [float(w.free) for w in workers], float(hw.ram_available)
    n_layers = int(meta[Keys.LLM.BLOCK_COUNT.format(arch=meta[Keys.General.ARCHITECTURE])])
    offloaded, _ = layer_split(n_layers, shares, local)
    per_device = [s / len(w.devices) for w, s in zip(workers, shares, strict=True) for _ in w.devices]
    budget = hw.ram_available + sum(w.free for w in workers)
    return offloaded, per_device, budget, f"RAM + {len(workers)} RPC worker(s)"


class Engine:
    """One llama.cpp model and context. Not thread-safe: one reply at a time per engine."""

    def __init__(self, llm: llama_cpp.Llama, settings: EngineSettings, meta: dict[str, Any], hw: Hardware):
        self.llm = llm
        self.settings = settings
        self.meta = meta
        self.hardware = hw
        self.sampling = Sampling.from_metadata(meta)
        self._active: Generation | None = None  # the reply generating on this context
        self.draft_model: DraftModel | None = None  # set by ``use_draft``
        self.step_costs = StepCosts()  # seconds per decode by batch size (speculative replies)
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self._pieces: dict[int, bytes] = {}  # token -> bytes, filled as tokens are seen
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.template: str = meta[Keys.Tokenizer.CHAT_TEMPLATE]
        self.template_tokens = {
            "bos_token": self.token_text(self.bos),
            "eos_token": self.token_text(int(llama_cpp.llama_vocab_eos(self.vocab))),
        }
        compile_template(self.template)  # a template that does not compile fails the load

    @property
    def warnings(self) -> list[str]:
        return self.settings.warnings

    @property
    def n_ctx(self) -> int:
        return self.settings.n_ctx

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        ctx: int | None = None,
        threads: int | None = None,
        gpu: bool | int | None = None,
        flash_attn: bool = FLASH_ATTN_DEFAULT,
        seed: int = llama_cpp.LLAMA_DEFAULT_SEED,
        verbose: bool = False,
        hardware: Hardware | None = None,
        rpc: Sequence[Endpoint | str] = (),
        tensor_split: str | None = None,
        speculative: bool = True,
    ) -> Engine:
        """Check, size and load ``path``. ``gpu``: None auto, False CPU, True all layers, int layers.
        ``flash_attn``: llama.cpp's flash attention kernels (off by default). ``rpc``: llama.cpp RPC
        workers that take a share of the layers (``tensor_split``: "A,B[,LOCAL]" shares; default: in
        proportion to each one's free memory). ``speculative``: draft tokens from the prompt and check
        them in one batch (``runtime.speculate``)."""
        header = check_model(path)
        meta = {k: v for k, v in header.kv.items() if not k.startswith(GGML_TOKENIZER_PREFIX)}
        meta[Keys.Tokenizer.CHAT_TEMPLATE] = header.kv.get(Keys.Tokenizer.CHAT_TEMPLATE)
        if not meta[Keys.Tokenizer.CHAT_TEMPLATE]:
            raise TliteError(path, "the GGUF has no chat template (tokenizer.chat_template)")
        hw = hardware or probe()
        warnings: list[str] = []
        weights = sum(header.tensor_nbytes(dims, t) for _, dims, t in header.tensors)
        n_params = sum(math.prod(dims) for _, dims, _ in header.tensors)
        gpu_layers = _gpu_layers(gpu, hw, warnings)
        budget, kind = _memory_budget(hw, gpu_layers)
        split: list[float] | None = None
        rpc = [e if isinstance(e, Endpoint) else parse_endpoint(e) for e in rpc]
        if rpc:
            gpu_layers, split, budget, kind = _rpc_split(meta, hw, rpc, tensor_split)
        train_ctx = model_context(meta)
        if ctx is None:
            ctx = context_for_memory(weights, meta, train_ctx, budget) if budget else train_ctx
            if ctx < train_ctx:
                warnings.append(
                    f"context reduced to {ctx} tokens (the model's is {train_ctx}): "
                    f"{budget / GIB:.1f} GiB of {kind} free"
                )
        if budget and ram_needed(weights, meta, ctx) > budget:
            warnings.append(_size_warning(header, weights, n_params, ctx, budget, kind))
        threads = threads or hw.threads
        try:
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=ctx,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=gpu_layers,
                flash_attn=flash_attn,
                use_mmap=True,
                seed=seed,
                verbose=verbose,
                tensor_split=split,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise TliteError(path, f"llama.cpp could not load the model ({exc})") from None
        except jinja2.TemplateError as exc:  # llama-cpp-python compiles the GGUF's template on load
            raise TliteError(path, f"chat template does not compile ({template_failure(exc)})") from None
        settings = EngineSettings(
            path=str(path),
            architecture=str(meta[Keys.General.ARCHITECTURE]),
            # llama.cpp pads its context (to 256), llama-cpp-python's token arrays keep the size asked for
            n_ctx=min(llm.n_ctx(), ctx),
            n_ctx_train=train_ctx,
            threads=threads,
            gpu_layers=gpu_layers,
            flash_attn=flash_attn,
            mmap=True,
            seed=seed,
            model_bytes=weights,
            n_params=n_params,
            memory_available=budget,
            memory_kind=kind,
            speculative=speculative,
            warnings=warnings,
            rpc=[str(e) for e in rpc],
            rpc_layers=gpu_layers if rpc else 0,
        )
        try:
            return cls(llm, settings, meta, hw)
        except jinja2.TemplateError as exc:
            llm.close()
            raise TliteError(path, f"chat template does not compile ({template_failure(exc)})") from None

    @property
    def active(self) -> Generation | None:
        """The reply generating on this context, if any (set through ``claim``)."""
        return self._active

    def claim(self, reply: Generation | None = None) -> None:
        """Give the context to ``reply`` (None: to the reply about to be made). One generation at a
        time per llama.cpp context: an unfinished one is closed first (its text stays in its chat)."""
        active = self._active
        if active is not None and active is not reply and not active.done:
            active.close()
        self._active = reply

    def use_draft(self, path: str | Path) -> None:
        """Draft with the model at ``path`` (same vocabulary, loaded with this engine's context and
        threads) instead of prompt lookup."""
        draft = Engine.load(path, ctx=self.n_ctx, threads=self.settings.threads, speculative=False)
        if draft.n_vocab != self.n_vocab or any(
            draft.token_bytes(t) != self.token_bytes(t) for t in range(0, self.n_vocab, 97)
        ):
            draft.close()
            raise TliteError(path, f"the draft model's vocabulary differs from {self.settings.path}'s")
        self.draft_model = DraftModel(draft.llm, draft.n_vocab)
        self.settings.draft = str(path)

    def close(self) -> None:
        self.llm.close()

    def kv_tokens(self) -> list[int]:
        """The ids the KV cache holds: what the next prompt is prefix-matched against (no reply running)."""
        return self.llm.input_ids[: self.llm.n_tokens].tolist()

    def clear_kv(self) -> None:
        """Forget the KV cache: the next prompt is evaluated whole (no reply running)."""
        self.llm.reset()

    # ---- tokens --------------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """Text -> ids, never adding BOS; ``special=False`` keeps ``<|eot_id|>`` as plain characters."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special) if text else []

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of a token (a byte-level token may be half of a UTF-8 character)."""
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        return llama_cpp.llama_vocab_get_text(self.vocab, token).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def is_control(self, token: int) -> bool:
        return bool(self.token_attr(token) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL)

    def token_attr(self, token: int) -> int:
        """llama.cpp's attribute bits of a token (``LLAMA_TOKEN_ATTR_*``)."""
        return int(llama_cpp.llama_vocab_get_attr(self.vocab, token))

    # ---- prompts -------------------------------------------------------------------------------

    def render(self, messages: Sequence[dict[str, Any]], **variables: Any) -> str:
        """The prompt text the GGUF's template makes, with Hugging Face semantics (``variables``:
        ``tools``, ``enable_thinking``, ...), bounded in time and output; a template that fails or runs
        away is one clear error."""
        try:
            prompt = render(
                self.template,
                list(messages),
                add_generation_prompt=True,
                **self.template_tokens,
                **variables,
            )
            check_size(prompt)
        except Exception as exc:
            why = template_failure(exc)
            raise TliteError(self.settings.path, f"chat template does not render ({why})") from None
        return prompt

    @functools.cached_property
    def caps(self) -> TemplateCaps:
        """Whether the template takes tools and a thinking switch (found by rendering it)."""
        return template_caps(self.template, self.render)

    def prompt(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        think: bool | None = None,
    ) -> Prompt:
        """Prompt ids (template markers as control tokens, every user text as plain text, BOS once)
        and whether the reply starts inside a ``<think>`` block. ``tools`` (OpenAI function list) and
        ``think`` (``enable_thinking``; None: the template's default) go to the template."""
        variables: dict[str, Any] = {}
        if tools:
            variables["tools"] = list(tools)
        if think is not None:
            variables["enable_thinking"] = think
        return build_prompt(self, messages, variables)

    def prompt_tokens(self, messages: Sequence[Message], **options: Any) -> list[int]:
        """The ids of ``prompt(messages, **options)``. Assistant messages that carry their generated
        ids reuse them while the content still matches them (so the KV cache matches exactly)."""
        return self.prompt(messages, **options).ids
