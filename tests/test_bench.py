"""``tlite-edge bench`` on a tiny looping stand-in: schema and sanity (not timing), and the bare loop."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import make_looping, run_cli

from tlite_edge.errors import TliteError
from tlite_edge.gguf.reader import GGUFHeader, read_header
from tlite_edge.runtime import Chat, Engine
from tlite_edge.runtime.bare import BareLlama
from tlite_edge.runtime.bench import LLAMA_BENCH_TARGETS, TARGETS, _paired, weight_bytes_per_token
from tlite_edge.runtime.llamabench import LlamaBench, LlamaBenchResult, parse_json

LOOP = " Раз два три четыре пять шесть."
ARGS = ("--pp", "48", "--tg", "12", "--reps", "1", "--ctx", "512", "--turns", "3", "--turn-tokens", "12")


@pytest.fixture(scope="module")
def looping(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_looping(tmp_path_factory, LOOP, seed=8)


@pytest.fixture(scope="module")
def result(looping: Path) -> dict[str, Any]:
    proc = run_cli("bench", looping, *ARGS, "--turn-reply", "6", "--bandwidth-mib", "64", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _positive(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_bench_json(result: dict[str, Any], looping: Path) -> None:
    ours, bare, chat, bw = result["ours"], result["bare"], result["chat"], result["bandwidth"]
    assert result["n_ctx"] == 512 and result["threads"] >= 1
    assert 48 <= ours["pp_tokens"] < 60 and ours["evaluated_tokens"] == ours["pp_tokens"]  # a cold prompt
    assert ours["tg_tokens"] == 11  # 12 generated, 11 fed back: the reply never ends by itself
    assert (bare["pp_tokens"], bare["tg_tokens"]) == (ours["pp_tokens"], ours["tg_tokens"])
    for value in (ours["pp_tok_s"], ours["tg_tok_s"], ours["ttft_s"], ours["load_s"]):
        assert _positive(value)
    assert _positive(bare["pp_tok_s"]) and _positive(bare["tg_tok_s"]) and _positive(bare["load_s"])
    assert ours["peak_rss_bytes"] > 100 * 2**20
    assert set(result["ratios"]) == set(TARGETS) == set(result["targets"])
    assert all(_positive(v) for v in result["ratios"].values())
    assert all(isinstance(v, bool) for v in result["targets"].values())
    assert result["ratios"]["tg_vs_bare"] == pytest.approx(ours["tg_tok_s"] / bare["tg_tok_s"])
    assert [t["turn"] for t in chat["turns"]] == [1, 2, 3]
    later = {t["evaluated_tokens"] for t in chat["turns"][1:]}
    assert len(later) == 1 and all(_positive(t["ttft_s"]) for t in chat["turns"])  # equal new tokens per turn
    header = read_header(looping)
    assert bw["weight_bytes_per_token"] == weight_bytes_per_token(header)
    assert bw["read_bytes_per_s"] > 1e8
    assert bw["tg_bound_tok_s"] == pytest.approx(bw["read_bytes_per_s"] / bw["weight_bytes_per_token"])
    assert bw["bare_tg_vs_bound"] == pytest.approx(bare["tg_tok_s"] / bw["tg_bound_tok_s"])
    for who in (ours, bare):  # time outside llama_decode per generated token: some, less than all of it
        assert 0 < who["tg_overhead_ms"] < 1000 / who["tg_tok_s"]
    assert result["llama_bench"] is None
    assert result["interleaved"] is (result["gpu_layers"] == 0)  # on CPU both stay loaded, runs alternate


def test_bench_table(result: dict[str, Any]) -> None:
    from rich.console import Console

    from tlite_edge.commands.bench import render

    out = io.StringIO()
    render(result, Console(file=out, width=140, color_system=None))
    text = out.getvalue()
    assert f"pp{result['ours']['pp_tokens']} (tok/s)" in text and "tg11 (tok/s)" in text
    assert "multi-turn chat" in text and all(k in text for k in TARGETS)
    assert "outside llama_decode" in text and "against llama-bench" not in text


def test_weight_bytes_per_token() -> None:
    f32 = 0  # GGML_TYPE_F32
    tensors = [("token_embd.weight", (8, 100), f32), ("blk.0.ffn_up.weight", (8, 16), f32)]
    untied = GGUFHeader({}, [*tensors, ("output.weight", (8, 100), f32)])
    assert weight_bytes_per_token(untied) == 4 * (8 + 8 * 16 + 8 * 100)  # one embedding row read
    assert weight_bytes_per_token(GGUFHeader({}, tensors)) == 4 * (8 * 100 + 8 * 16)  # tied: all of it


def test_bare_loop_decodes_like_the_engine(looping: Path) -> None:
    engine = Engine.load(looping, ctx=256, seed=0)
    reply = Chat(engine).send("Считай", temp=0.0, max_tokens=10)
    reply.result()
    params = [type(p).from_buffer_copy(p) for p in (engine.llm.model_params, engine.llm.context_params)]
    engine.close()
    bare = BareLlama(looping, *params)
    try:
        run = bare.run(reply.prompt, 9)
    finally:
        bare.close()
    assert run.tokens == reply.message.tokens and run.generated_tokens == 9
    assert _positive(run.pp_tok_s) and _positive(run.tg_tok_s)


def test_bench_bad_arguments(looping: Path) -> None:
    proc = run_cli("bench", looping, "--pp", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "tlite-edge bench: error: --pp must be at least 1, got 0"


# ---- llama-bench, the anchor -------------------------------------------------------------------


def _llama_bench_binary() -> Path | None:
    """A built llama-bench (benchmarks/build_llama_bench.py): ``$TLITE_LLAMA_BENCH``, else the cached
    build for the installed llama-cpp-python; None when there is none (CI does not build it)."""
    import llama_cpp

    from tlite_edge.samples.smollm2 import cache_root

    given = os.environ.get("TLITE_LLAMA_BENCH")
    path = Path(given) if given else cache_root() / f"llama-bench-{llama_cpp.__version__}" / "llama-bench"
    return path if path.is_file() else None


def _script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def test_llama_bench_option_errors(
    looping: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tlite_edge.cli import main

    help_ok = "case $1 in --help) echo '-d, --n-depth <n>'; exit 0;; esac\n"
    not_exec = tmp_path / "plain"
    not_exec.write_text("", encoding="utf-8")
    cases = {
        tmp_path / "absent": "llama-bench binary not found",
        not_exec: "llama-bench binary is not executable",
        _script(tmp_path, "fails", "echo 'boom' >&2; exit 3"): "llama-bench failed with exit code 3: boom",
        _script(tmp_path, "other", "echo 'usage: something else'"): "not a llama-bench binary",
    }
    for binary, why in cases.items():
        argv = ["bench", str(looping), *ARGS, "--reps", "1", "--turns", "2", "--llama-bench", str(binary)]
        assert main(argv) == 2
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"tlite-edge bench: error: {binary}: "), err
        assert why in lines[0] and out == ""
    garbage = LlamaBench(_script(tmp_path, "garbage", help_ok + "echo 'not json'"))  # --help passes
    with pytest.raises(TliteError, match=f"^{garbage.path}: output is not llama-bench JSON"):
        garbage.run(looping, threads=1, pp=8)


def test_llama_bench_json_errors() -> None:
    bad = {
        "{": "output is not llama-bench JSON",
        '{"n_prompt": 1}': "expected an array of tests",
        '[{"n_prompt": 512, "n_gen": 0, "avg_ts": 1.0}]': "without n_depth",
        '[{"n_prompt": 512, "n_gen": 0, "n_depth": 0, "avg_ts": "fast"}]': "bad value",
    }
    for text, why in bad.items():
        with pytest.raises(TliteError, match=why):
            parse_json(text, "lb")


NO_LLAMA_BENCH = "llama-bench not built (benchmarks/build_llama_bench.py)"


@pytest.mark.skipif(_llama_bench_binary() is None, reason=NO_LLAMA_BENCH)
def test_llama_bench_real_output(looping: Path) -> None:
    """llama-bench's own JSON, captured now, parses into the tests asked for; then the bench verb with
    ``--llama-bench`` reports it next to ours."""
    binary = _llama_bench_binary()
    assert binary is not None
    lb = LlamaBench(binary)
    results = lb.run(looping, threads=1, pp=16, tg=4, depths=(0, 8), reps=2, n_batch=64, n_ubatch=32)
    got = sorted((r.kind, r.n_prompt, r.n_gen, r.depth) for r in results)
    assert got == [("pp", 16, 0, 0), ("pp", 16, 0, 8), ("tg", 0, 4, 0), ("tg", 0, 4, 8)]
    for r in results:
        assert len(r.samples) == 2 and all(_positive(x) for x in r.samples)
        assert r.tok_s == pytest.approx(sum(r.samples) / 2, rel=0.05)  # avg_ts: the mean over repetitions
        assert (r.n_threads, r.n_batch, r.n_ubatch, r.flash_attn) == (1, 64, 32, -1)

    proc = run_cli("bench", looping, *ARGS, "--turn-reply", "4", "--bandwidth-mib", "64", "--reps", "1",
                   "--turns", "2", "--tg", "6", "--llama-bench", binary, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    ours, anchor = r["ours"], r["llama_bench"]
    assert anchor["binary"] == str(binary) and anchor["depth"] == ours["pp_tokens"] == anchor["pp_tokens"]
    assert anchor["tg_tokens"] == ours["tg_tokens"]
    assert anchor["settings"]["threads"] == r["threads"]
    assert len(anchor["pp_samples"]) == len(anchor["tg_samples"]) == len(anchor["tg_depth_samples"]) == 1
    assert r["ratios"]["pp_vs_llama_bench"] == pytest.approx(ours["pp_tok_s"] / anchor["pp_tok_s"])
    assert anchor["pp_ratio_rounds"] == [pytest.approx(r["ratios"]["pp_vs_llama_bench"])]  # one round
    assert anchor["tg_ratio_rounds"] == [pytest.approx(r["ratios"]["tg_vs_llama_bench"])]
    assert r["ratios"]["tg_vs_llama_bench"] == pytest.approx(ours["tg_tok_s"] / anchor["tg_depth_tok_s"])
    assert set(r["targets"]) == set(TARGETS) | set(LLAMA_BENCH_TARGETS)
    from rich.console import Console

    from tlite_edge.commands.bench import render

    out = io.StringIO()
    render(r, Console(file=out, width=160, color_system=None))
    assert "against llama-bench" in out.getvalue() and "tg_vs_llama_bench" in out.getvalue()


def test_llama_bench_ratios_pair_runs_of_one_round() -> None:
    def slot(pp: float, tg0: float, tg_deep: float) -> list[LlamaBenchResult]:
        def res(n_prompt: int, n_gen: int, depth: int, x: float) -> LlamaBenchResult:
            return LlamaBenchResult(n_prompt, n_gen, depth, x, (x,), 2, 512, 512, 0)

        return [res(512, 0, 0, pp), res(0, 128, 0, tg0), res(0, 128, 512, tg_deep)]

    # the machine runs at full speed in round 1 and at half speed in round 2: each round's ratio is 0.9
    ours = {"pp_samples": [90.0, 45.0], "tg_samples": [18.0, 9.0]}
    got = _paired(ours, [slot(100.0, 99.0, 20.0), slot(50.0, 99.0, 10.0)])
    assert got["pp"] == [pytest.approx(0.9), pytest.approx(0.9)]
    assert got["tg"] == [pytest.approx(0.9), pytest.approx(0.9)]  # against tg at depth, not at depth 0

