"""Runtime speed: our engine against a bare llama.cpp loop, multi-turn TTFT, and the bandwidth bound.

``run_bench`` measures, on one file and thread count: load time, prompt processing (pp) and token
generation (tg) through ``Chat.send`` (our whole path: template, tokenization, streaming, UTF-8),
time to first token, peak RSS; then the same prompt ids through ``BareLlama`` and, when given,
llama.cpp's own ``llama-bench`` (pp, tg at depth 0 and tg at the depth our prompt reaches, same
threads, batch sizes and flash attention); a multi-turn chat whose turns add equal numbers of new
tokens; and tg against memory bandwidth ÷ weight bytes per token.
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from tlite_edge.gguf.reader import GGUFHeader
from tlite_edge.runtime.bare import BareLlama
from tlite_edge.runtime.chat import Chat
from tlite_edge.runtime.engine import Engine, check_model
from tlite_edge.runtime.llamabench import LlamaBench, LlamaBenchResult
from tlite_edge.runtime.rpc import Endpoint
from tlite_edge.runtime.types import Sampling

# Text for synthetic prompts: a turn is "Вопрос N. " followed by as many of these words as needed.
FILLER_TEXT = (
    "Расскажи подробно, как устроена работа небольшой библиотеки в городе: кто выбирает новые книги, "
    "как читатели находят нужное издание, сколько времени занимает ремонт старых переплётов и почему "
    "вечером в читальном зале всегда тихо и светло."
)
FILLER = FILLER_TEXT.split()
# The targets: metric -> (comparison, threshold).
TARGETS = {
    "pp_vs_bare": (">=", 0.98),
    "tg_vs_bare": (">=", 0.98),
    "ttft_last_vs_first_turn": ("<=", 1.2),
    "tg_vs_bandwidth_bound": (">=", 0.9),
}
# With --llama-bench: against llama.cpp's own tool, tg compared at the same context depth.
LLAMA_BENCH_TARGETS = {"pp_vs_llama_bench": (">=", 0.97), "tg_vs_llama_bench": (">=", 0.97)}
RSS_UNIT = {"darwin": 1}  # ru_maxrss is bytes on macOS, KiB elsewhere


@dataclass(frozen=True)
class BenchConfig:
    pp: int = 512
    tg: int = 128
    reps: int = 3
    threads: int | None = None
    ctx: int | None = None
    turns: int = 5
    turn_tokens: int = 64  # new user-message tokens per turn
    turn_reply: int = 32  # reply tokens per turn
    bandwidth_mib: int = 1024
    rpc: tuple[Endpoint, ...] = ()  # llama.cpp RPC workers holding part of the layers
    tensor_split: str | None = None


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT.get(sys.platform, 1024)


def weight_bytes_per_token(header: GGUFHeader) -> int:
    """Bytes of weights one generated token reads: every tensor except the embedding table, of which
    one row is read (or all of it, when it doubles as the output layer)."""
    sizes = {name: header.tensor_nbytes(dims, t) for name, dims, t in header.tensors}
    dims = {name: d for name, d, _ in header.tensors}
    total = sum(sizes.values())
    embd = sizes.get("token_embd.weight", 0)
    if "output.weight" not in sizes:
        return total
    rows = dims["token_embd.weight"][-1] if "token_embd.weight" in dims else 1
    return total - embd + embd // max(rows, 1)


def read_bandwidth(nbytes: int, threads: int, sweeps: int = 5) -> float:
    """Best read bandwidth (bytes/s) over ``sweeps`` passes of ``threads`` numpy reductions."""
    buf = np.ones(nbytes, dtype=np.uint8)
    parts = np.array_split(buf, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(sweeps):
            t0 = time.perf_counter()
            list(pool.map(np.max, parts))  # numpy releases the GIL inside the reduction
            best = max(best, buf.nbytes / (time.perf_counter() - t0))
    return best


def user_text(engine: Engine, n_tokens: int, tag: str, *, exact: bool = False) -> str:
    """A user message of ``n_tokens`` tokens (at least; ``exact``: exactly, where some start in the
    filler gets there): ``tag`` then filler words."""
    text = tag
    for offset in range(len(FILLER) if exact else 1):
        words = [tag]
        while len(engine.tokenize(" ".join(words), special=False)) < n_tokens:
            words.append(FILLER[(offset + len(words) - 1) % len(FILLER)])
        text = " ".join(words)
        if len(engine.tokenize(text, special=False)) == n_tokens:
            return text
    return text


def pp_text(engine: Engine, n_tokens: int) -> str:
    """A user message whose whole prompt (template included) is about ``n_tokens`` tokens."""
    overhead = len(Chat(engine).prompt_for(""))
    return user_text(engine, max(n_tokens - overhead, 1), "Вопрос 0.")


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def _ours_run(engine: Engine, text: str, sampling: Sampling) -> tuple[list[int], Any, float]:
    """One cold pp + tg run through ``Chat.send``: (prompt ids, reply stats, seconds llama.cpp spent
    decoding the generated tokens: its perf counters, reset when the reply starts)."""
    engine.llm.reset()  # a cold prompt: evaluate it all
    reply = Chat(engine, sampling=sampling).send(text)
    reply.result()
    return reply.prompt, reply.stats, decode_seconds(engine.llm.ctx)


def decode_seconds(ctx: Any) -> float:
    """llama.cpp's time in single-token decodes since its perf counters were last reset."""
    perf = llama_cpp.llama_perf_context(ctx)
    return perf.t_eval_ms / 1000 if perf.n_eval > 0 else 0.0


def overhead_ms(wall: list[float], decode: list[float], tokens: list[int]) -> float:
    """Median per-token time outside llama_decode (sampling, Python) in generation, in ms."""
    return _median([1000 * (w - d) / n for w, d, n in zip(wall, decode, tokens, strict=True) if n > 0])


def _ours_summary(runs: list[tuple[list[int], Any, float]]) -> dict[str, Any]:
    stats = [s for _, s, _ in runs]
    return {
        "pp_tokens": len(runs[0][0]),
        "evaluated_tokens": min(s.evaluated_tokens for s in stats),
        "tg_tokens": min(s.decoded_tokens for s in stats),
        "pp_tok_s": _median([s.prompt_tokens / s.time_to_first_token for s in stats]),
        "tg_tok_s": _median([s.generation_tokens_per_s for s in stats]),
        "pp_samples": [s.prompt_tokens / s.time_to_first_token for s in stats],
        "tg_samples": [s.generation_tokens_per_s for s in stats],
        "ttft_s": _median([s.time_to_first_token for s in stats]),
        "tg_overhead_ms": overhead_ms(
            [s.generation_seconds for s in stats], [d for *_, d in runs], [s.decoded_tokens for s in stats]
        ),
    }


def _bare_summary(bare: BareLlama, runs: list[Any]) -> dict[str, Any]:
    return {
        "load_s": bare.load_seconds,
        "pp_tokens": runs[0].prompt_tokens,
        "tg_tokens": min(r.generated_tokens for r in runs),
        "pp_tok_s": _median([r.pp_tok_s for r in runs]),
        "tg_tok_s": _median([r.tg_tok_s for r in runs]),
        "pp_samples": [r.pp_tok_s for r in runs],
        "tg_samples": [r.tg_tok_s for r in runs],
        "tg_overhead_ms": overhead_ms(
            [r.generation_seconds for r in runs], [r.decode_seconds for r in runs],
            [r.generated_tokens for r in runs],
        ),
    }


def llama_bench_settings(engine: Engine) -> dict[str, Any]:
    """The engine's threads, batch sizes, flash attention and offload, for llama-bench to use too."""
    cp = engine.llm.context_params
    return {
        "threads": engine.settings.threads,
        "n_batch": int(cp.n_batch),
        "n_ubatch": int(cp.n_ubatch),
        "flash_attn": {-1: None, 0: False, 1: True}[int(cp.flash_attn_type)],
        "gpu_layers": engine.settings.gpu_layers,
    }


def _llama_bench_slot(
    lb: LlamaBench, path: str | Path, settings: dict[str, Any], pp: int, tg: int
) -> list[LlamaBenchResult]:
    """One repetition: pp``pp`` and tg``tg`` from an empty context, then tg``tg`` at depth ``pp``."""
    first = lb.run(path, pp=pp, tg=tg, depths=(0,), **settings)
    return first + lb.run(path, pp=0, tg=tg, depths=(pp,), **settings)


def _llama_bench_summary(
    lb: LlamaBench, runs: list[LlamaBenchResult], settings: dict[str, Any]
) -> dict[str, Any]:
    def pick(kind: str, deep: bool) -> list[float]:
        return [x for r in runs if r.kind == kind and (r.depth > 0) == deep for x in r.samples]

    depth = max((r.depth for r in runs), default=0)
    pp, tg, tg_deep = pick("pp", False), pick("tg", False), pick("tg", True)
    return {
        "binary": str(lb.path),
        "settings": settings,
        "depth": depth,
        "pp_tokens": next((r.n_prompt for r in runs if r.kind == "pp"), 0),
        "tg_tokens": next((r.n_gen for r in runs if r.kind == "tg"), 0),
        "pp_tok_s": _median(pp),
        "tg_tok_s": _median(tg),
        "tg_depth_tok_s": _median(tg_deep),
        "pp_samples": pp,
        "tg_samples": tg,
        "tg_depth_samples": tg_deep,
    }


def _turns(engine: Engine, cfg: BenchConfig, step: Callable[[str], None]) -> dict[str, Any]:
    """Median TTFT per turn of a chat whose user messages are all ``turn_tokens`` tokens long."""
    sampling = engine.sampling.with_(temp=0.0, repeat_penalty=1.0, max_tokens=cfg.turn_reply)
    texts = [user_text(engine, cfg.turn_tokens, f"Вопрос {k + 1}.", exact=True) for k in range(cfg.turns)]
    ttft: list[list[float]] = [[] for _ in texts]
    evaluated: list[int] = [0] * len(texts)
    for rep in range(cfg.reps):
        step(f"ours: {cfg.turns}-turn chat, run {rep + 1}/{cfg.reps}")
        engine.llm.reset()
        chat = Chat(engine, sampling=sampling)
        for k, text in enumerate(texts):
            reply = chat.send(text)
            reply.result()
            ttft[k].append(reply.stats.time_to_first_token)
            evaluated[k] = reply.stats.evaluated_tokens
    first, last = _median(ttft[0]), _median(ttft[-1])
    # "For the same number of new tokens": when the template trims a reply that began with whitespace,
    # the next turn evaluates that reply again, so the ratio is scaled to equal evaluated tokens.
    scale = evaluated[0] / evaluated[-1] if evaluated[-1] > 0 else 1.0
    return {
        "turns": [
            {"turn": k + 1, "ttft_s": _median(t), "evaluated_tokens": e}
            for k, (t, e) in enumerate(zip(ttft, evaluated, strict=True))
        ],
        "ttft_last_vs_first_turn": last / first * scale if first > 0 else math.nan,
        "ttft_last_vs_first_turn_raw": last / first if first > 0 else math.nan,
    }


def run_bench(
    path: str | Path, cfg: BenchConfig, step: Callable[[str], None], llama_bench: LlamaBench | None = None
) -> dict[str, Any]:
    """Every measurement of ``tlite-edge bench``, as one JSON-ready dict.

    On CPU both engines stay loaded (the weights are one shared mmap) and their runs alternate in ABBA
    order (with ``llama_bench``: ours, bare, llama-bench, llama-bench, bare, ours, ...), so drift in the
    machine's speed cancels out of the ratios; with GPU offload they run one after the other, one model
    in memory at a time."""
    header = check_model(path)
    step("ours: load")
    t0 = time.perf_counter()
    engine = Engine.load(
        path, ctx=cfg.ctx, threads=cfg.threads, seed=0, rpc=cfg.rpc, tensor_split=cfg.tensor_split
    )
    load_s = time.perf_counter() - t0
    text = pp_text(engine, cfg.pp)
    sampling = engine.sampling.with_(temp=0.0, repeat_penalty=1.0, max_tokens=cfg.tg)
    Chat(engine, sampling=sampling).send(text, max_tokens=4).result()  # warm-up: buffers for the batch size
    turns = _turns(engine, cfg, step)
    rss = peak_rss()  # before the bare loop maps the weights a second time
    settings, llm = engine.settings, engine.llm
    params = [type(p).from_buffer_copy(p) for p in (llm.model_params, llm.context_params)]
    prompt = Chat(engine).prompt_for(text)
    lb_settings = llama_bench_settings(engine)
    lb_runs: list[LlamaBenchResult] = []
    lb_rounds: list[list[LlamaBenchResult]] = []  # per interleaved round, to pair with ours
    interleave = settings.gpu_layers == 0
    ours_runs: list[tuple[list[int], Any, float]] = []
    if not interleave:
        for rep in range(cfg.reps):
            step(f"ours: pp{cfg.pp} + tg{cfg.tg}, run {rep + 1}/{cfg.reps}")
            ours_runs.append(_ours_run(engine, text, sampling))
        engine.close()
    step("bare llama.cpp: load")
    bare = BareLlama(path, *params)
    bare_runs = []
    try:
        bare.run(prompt, 4)  # warm-up
        who_all = ("ours", "bare", "llama-bench") if llama_bench else ("ours", "bare")
        for rep in range(cfg.reps):
            order = who_all if rep % 2 == 0 else who_all[::-1]
            for who in order if interleave else ("bare",):
                step(f"{who}: pp{len(prompt)} + tg{cfg.tg}, run {rep + 1}/{cfg.reps}")
                n_gen = min(s.decoded_tokens for _, s, _ in ours_runs) if ours_runs else cfg.tg
                if who == "ours":
                    ours_runs.append(_ours_run(engine, text, sampling))
                elif who == "bare":
                    bare_runs.append(bare.run(prompt, max(n_gen, 1)))
                elif llama_bench is not None:
                    lb_rounds.append(
                        _llama_bench_slot(llama_bench, path, lb_settings, len(prompt), max(n_gen, 1))
                    )
                    lb_runs += lb_rounds[-1]
        bare_out = _bare_summary(bare, bare_runs)
    finally:
        bare.close()
        if interleave:
            engine.close()
    if llama_bench is not None and not interleave:  # after both models are gone from the GPU
        for rep in range(cfg.reps):
            step(f"llama-bench: pp{len(prompt)} + tg{cfg.tg}, run {rep + 1}/{cfg.reps}")
            lb_runs += _llama_bench_slot(llama_bench, path, lb_settings, len(prompt), max(cfg.tg - 1, 1))
    ours = _ours_summary(ours_runs)
    ours.update(load_s=load_s, peak_rss_bytes=rss)
    step("memory bandwidth")
    bandwidth = read_bandwidth(cfg.bandwidth_mib * 2**20, settings.threads)
    per_token = weight_bytes_per_token(header)
    bound = bandwidth / per_token
    ratios = {
        "pp_vs_bare": ours["pp_tok_s"] / bare_out["pp_tok_s"],
        "tg_vs_bare": ours["tg_tok_s"] / bare_out["tg_tok_s"],
        "ttft_last_vs_first_turn": turns["ttft_last_vs_first_turn"],
        "tg_vs_bandwidth_bound": ours["tg_tok_s"] / bound,
    }
    targets = dict(TARGETS)
    lb_out = None
    if llama_bench is not None:
        lb_out = _llama_bench_summary(llama_bench, lb_runs, lb_settings)
        ratios["tg_vs_llama_bench_depth0"] = _ratio(ours["tg_tok_s"], lb_out["tg_tok_s"])
        rounds = _paired(ours, lb_rounds) if lb_rounds else {}
        for key, mine, theirs in (("pp", "pp_tok_s", "pp_tok_s"), ("tg", "tg_tok_s", "tg_depth_tok_s")):
            per_round = rounds.get(key, [])
            lb_out[f"{key}_ratio_rounds"] = per_round
            ratios[f"{key}_vs_llama_bench"] = (
                _median(per_round) if per_round else _ratio(ours[mine], lb_out[theirs])
            )
        targets.update(LLAMA_BENCH_TARGETS)
    return {
        "model": str(path),
        "threads": settings.threads,
        "n_ctx": settings.n_ctx,
        "gpu_layers": settings.gpu_layers,
        "rpc": settings.rpc,
        "interleaved": interleave,
        "config": asdict(cfg),
        "ours": ours,
        "bare": bare_out,
        "llama_bench": lb_out,
        "chat": turns,
        "bandwidth": {
            "read_bytes_per_s": bandwidth,
            "weight_bytes_per_token": per_token,
            "tg_bound_tok_s": bound,
            "bare_tg_vs_bound": bare_out["tg_tok_s"] / bound,
        },
        "ratios": ratios,
        "targets": {k: _meets(ratios[k], *targets[k]) for k in targets},
    }


def _paired(ours: dict[str, Any], rounds: list[list[LlamaBenchResult]]) -> dict[str, list[float]]:
    """Ours / llama-bench within each interleaved round (pp; tg at ours' depth): runs minutes apart
    drift by more than the gap being measured, runs of one round by less."""
    out: dict[str, list[float]] = {"pp": [], "tg": []}
    for mine_pp, mine_tg, slot in zip(ours["pp_samples"], ours["tg_samples"], rounds, strict=True):
        pp = [x for r in slot if r.kind == "pp" for x in r.samples]
        tg = [x for r in slot if r.kind == "tg" and r.depth > 0 for x in r.samples]
        out["pp"].append(_ratio(mine_pp, _median(pp)))
        out["tg"].append(_ratio(mine_tg, _median(tg)))
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _meets(value: float, op: str, threshold: float) -> bool:
    return value >= threshold if op == ">=" else value <= threshold
