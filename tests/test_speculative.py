"""Prompt-lookup speculative decoding (runtime.speculate): the same reply as one token per step.

Checked on the real SmolLM2-135M-Instruct (a copy task, so drafts are accepted), on the random
stand-in (drafts are proposed and mostly rejected: the KV cache must drop them); the drafter
against a plain-Python lookup."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import run_cli

from tlite_edge.errors import TliteError
from tlite_edge.runtime import Chat, Engine, speculate
from tlite_edge.runtime.speculate import MAX_NGRAM, MIN_DRAFT, MIN_NGRAM, Drafter
from tlite_edge.samples.smollm2 import smollm2_gguf

TEXT = (
    "The lighthouse keeper wrote in the log every evening: wind from the north-west, sea moderate, "
    "two fishing boats back before dark, the lamp lit at 18:40 and checked at midnight. "
    "On Sundays he added the price of paraffin and the names of the visitors."
)
COPY = f"Repeat this text exactly, word for word: {TEXT}"


def naive_draft(ids: list[int], k: int) -> list[int]:
    """The lookup spelled out: longest suffix first, latest earlier occurrence leaving MIN_DRAFT tokens."""
    n = len(ids)
    for size in range(min(MAX_NGRAM, n - 1), MIN_NGRAM - 1, -1):
        for i in range(n - size - 1, -1, -1):
            if ids[i : i + size] == ids[n - size :] and i + size + MIN_DRAFT <= n:
                return ids[i + size : i + size + k]
    return []


def test_drafter_matches_plain_lookup() -> None:
    rng = random.Random(3)
    found = 0
    for _ in range(400):
        ids = [rng.randrange(6) for _ in range(rng.randrange(1, 40))]
        cut = rng.randrange(1, len(ids) + 1)  # indexed as prompt up to here, then pushed as reply
        drafter = Drafter(ids[:cut], len(ids))
        for t in ids[cut:]:
            drafter.push(t)
        k = rng.randrange(1, 9)
        assert drafter.draft(k) == naive_draft(ids, k), ids
        found += bool(naive_draft(ids, k))
    assert found > 100


# Flash attention off: with it, llama.cpp's logits for a batch differ from one token's by float rounding
# enough to flip near-ties, so only its absence makes token-for-token identity a fair requirement.
NO_FA = {"ctx": 1024, "threads": 2, "seed": 0, "flash_attn": False}


@pytest.fixture(scope="module")
def smol() -> Engine:
    return Engine.load(smollm2_gguf(), **NO_FA)


@pytest.fixture
def verify_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every draft verified: identity checks must not depend on how fast this machine's batches were."""
    monkeypatch.setattr(speculate.StepCosts, "best_draft", lambda self, n, p: n)


def reply(engine: Engine, speculative: bool, prompt: str = COPY, stop_after: int = 0, **sampling):
    engine.settings.speculative = speculative
    chat = Chat(engine, sampling=engine.sampling.with_(temp=0.0, max_tokens=40).with_(**sampling))
    r = chat.send(prompt)
    if stop_after:
        for i, _ in enumerate(r):
            if i + 1 == stop_after:
                r.stop()
        r.result()
    else:
        r.result()
    return chat, r


def same(a, b) -> None:
    assert a.text == b.text
    assert a.raw.tokens == b.raw.tokens
    assert a.stats.finish_reason == b.stats.finish_reason
    assert a.stats.generated_tokens == b.stats.generated_tokens


def test_greedy_copy_identical_and_accepted(smol: Engine, verify_all: None) -> None:
    _, off = reply(smol, False)
    chat, on = reply(smol, True)
    same(on, off)
    assert off.stats.drafted == 0
    assert on.stats.accepted > 0.5 * on.stats.generated_tokens, on.stats
    assert on.stats.accepted <= on.stats.drafted
    assert TEXT[:40] in on.text  # the model does copy: the drafts had something to match
    # the KV cache kept what a step-by-step reply keeps: the next turn is the same either way
    follow = chat.send("Now say it again.", max_tokens=12)
    follow.result()
    smol.settings.speculative = False
    chat.messages.pop()
    chat.messages.pop()
    again = chat.send("Now say it again.", max_tokens=12)
    again.result()
    same(follow, again)


def test_penalties_length_and_stop_identical(smol: Engine, verify_all: None) -> None:
    # penalties see exactly the kept tokens; a cut by max_tokens or stop() lands on the same token
    for options in ({"presence_penalty": 0.7, "repeat_penalty": 1.2, "max_tokens": 23}, {"stop_after": 9}):
        _, off = reply(smol, False, **options)
        _, on = reply(smol, True, **options)
        same(on, off)
        assert on.stats.drafted > 0
    assert on.stats.finish_reason == "stopped"


def test_sampled_logprobs_follow_the_model(smol: Engine, verify_all: None) -> None:
    # One seeded draw per kept token, as without speculation; the draws are not bit-identical per seed
    # because llama.cpp's logits for a token evaluated in a batch differ from one evaluated alone by
    # float rounding (up to ~0.1 nats on this Q4_1 model), so the check is the distribution at each position.
    _, off = reply(smol, False, temp=0.8, seed=11, logprobs=2, max_tokens=24)
    _, on = reply(smol, True, temp=0.8, seed=11, logprobs=2, max_tokens=24)
    assert on.stats.accepted > 0
    assert len(on.logprobs) == on.stats.generated_tokens == len(on.raw.tokens)
    assert [lp.token for lp in on.logprobs] == on.raw.tokens
    common = 0
    while (
        common < min(len(on.raw.tokens), len(off.raw.tokens))
        and on.raw.tokens[common] == off.raw.tokens[common]
    ):
        common += 1
    assert common >= 5
    for a, b in zip(on.logprobs[:common], off.logprobs[:common], strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=0.15)
        assert dict(a.top).keys() & dict(b.top).keys()


def test_standin_rejections_identical(bf16_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # drafts that are always wrong: every batch is rejected, so the KV cache must drop them each step
    monkeypatch.setattr(speculate.Drafter, "draft", lambda self, k: [1000, 2000, 3000][:k])
    engine = Engine.load(bf16_gguf, **NO_FA)
    prompt = "one two three four one two three four one two three four one two"
    _, off = reply(engine, False, prompt, max_tokens=40)
    _, adaptive = reply(engine, True, prompt, max_tokens=40)
    same(adaptive, off)
    # where drafts never hold, the batches stop once the acceptance estimate says they cannot pay
    assert 0 < adaptive.stats.drafted <= 36 and adaptive.stats.accepted == 0, adaptive.stats
    monkeypatch.setattr(speculate.StepCosts, "best_draft", lambda self, n, p: n)  # always verify them all
    _, on = reply(engine, True, prompt, max_tokens=40)
    same(on, off)
    assert on.stats.drafted > 60 and on.stats.accepted == 0


def test_step_costs_pick_the_draft_that_pays() -> None:
    costs = speculate.StepCosts()
    assert costs.best_draft(8, 0.9) == 0  # a plain step is timed first
    costs.record(1, 1.0)
    assert costs.best_draft(8, 0.1) == 8  # sizes not timed yet are tried
    for size, seconds in {2: 1.6, 3: 2.08, 4: 1.63, 5: 2.28, 6: 2.78, 7: 3.38, 8: 3.31, 9: 3.69}.items():
        costs.record(size, seconds)  # the 8B-shaped file's costs on a 2-core CPU (BENCHMARKS.md)
    assert costs.best_draft(8, 0.8) == 3  # 1 + .8 + .64 + .512 = 2.95 tokens for 1.63 steps
    assert costs.best_draft(2, 0.8) == 2  # 2.44 tokens for 2.08 steps still beat a plain step
    assert costs.best_draft(2, 0.5) == 0  # 1.75 tokens for 2.08 steps do not
    assert costs.best_draft(8, 0.3) == 0
    costs.record(4, 3.0)  # one slow batch: the low median of its timings is still 1.63
    assert costs.cost(4) == 1.63 and costs.best_draft(8, 0.8) == 3
    costs.record(4, 3.0)  # a second one: now it is what a 4-token batch costs
    assert costs.cost(4) == 3.0


def test_step_costs_retry_batches_that_timed_slow() -> None:
    # every batch size timed slow once (another process had the cores): drafts that hold are still
    # verified every RETRY-th step, so the timings can recover; drafts that do not hold are not
    costs = speculate.StepCosts()
    costs.record(1, 1.0)
    for size in range(2, speculate.MAX_DRAFT + 2):
        costs.record(size, 50.0)
    retry = speculate.RETRY
    picks = [costs.best_draft(8, 0.9) for _ in range(2 * retry)]
    assert [i for i, k in enumerate(picks) if k] == [retry - 1, 2 * retry - 1]
    assert picks[retry - 1] == 8  # the size nearest to paying: all 8 tokens for one (slow) step
    assert not any(costs.best_draft(8, 0.3) for _ in range(3 * retry))
    for _ in range(speculate.WINDOW):
        costs.record(3, 1.1)  # re-timed: a 3-token batch is cheap again
    assert costs.best_draft(8, 0.9) == 2


def test_cli_json_counts_and_switch() -> None:
    from tlite_edge.cli import build_parser

    for verb in ("run", "chat", "serve"):
        args = build_parser().parse_args(
            [verb, "m.gguf", *(["hi"] if verb == "run" else []), "--no-speculative"]
        )
        assert args.speculative is False
    cli = ("run", smollm2_gguf(), COPY, "--temp", "0", "--max-tokens", "24", "--ctx", "512", "--json")
    proc = run_cli(*cli)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert TEXT[:40] in out["answer"]
    assert (
        out["accepted"] > 0 and out["drafted"] >= out["accepted"] and out["settings"]["speculative"] is True
    )


def test_draft_model_identical_and_vocabulary_checked(bf16_gguf: Path, verify_all: None) -> None:
    # SmolLM2 drafting for itself: the same greedy reply, nearly every draft accepted
    engine = Engine.load(smollm2_gguf(), **NO_FA)
    engine.use_draft(smollm2_gguf())
    _, off = reply(engine, False, max_tokens=24)
    _, on = reply(engine, True, max_tokens=24)
    same(on, off)
    assert on.stats.accepted >= 0.8 * on.stats.drafted > 0
    with pytest.raises(TliteError, match="vocabulary differs"):
        engine.use_draft(bf16_gguf)
