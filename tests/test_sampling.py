"""Sampling parity through llama.cpp's samplers, checked against llama.cpp's own logits: log-probabilities,
penalties, logit_bias, seeds; and the grammar through ``run --json-schema`` and chat's ``/format``."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from conftest import RealModel, llama_cpp_logits, run_cli

from tlite_edge.errors import TliteError
from tlite_edge.runtime import Chat, Engine

PROMPT = "List three colours."


@pytest.fixture(scope="module")
def smol(smollm2: RealModel) -> Engine:
    return Engine.load(smollm2.ours, ctx=512, seed=0, threads=2)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def test_logprobs_are_the_models(smol: Engine, smollm2: RealModel) -> None:
    reply = Chat(smol).send(PROMPT, temp=0, max_tokens=6, logprobs=5)
    reply.result()
    tokens, entries = reply.message.tokens, reply.logprobs
    assert tokens and entries and [e.token for e in entries] == tokens
    ref = llama_cpp_logits(smollm2.ours, reply.prompt + tokens[:-1])[len(reply.prompt) - 1 :]
    for row, e in zip(ref, entries, strict=True):
        lp = log_softmax(row)
        assert e.logprob == pytest.approx(lp[e.token], abs=2e-3)
        top = [t for t, _ in e.top]
        assert e.top[0][0] == e.token == int(np.argmax(row))  # greedy = top-1
        values = [v for _, v in e.top]
        assert values == sorted(values, reverse=True) and sum(np.exp(values)) <= 1 + 1e-6
        assert top == list(np.argsort(-lp, kind="stable")[:5])


def test_penalties_follow_llama_cpp_formula(smol: Engine, smollm2: RealModel) -> None:
    """Each greedy token is the argmax of the logits after OpenAI-style penalties on the reply so far."""
    ask = "Repeat the word cat ten times."
    plain = Chat(smol).send(ask, temp=0, max_tokens=8)
    plain.result()
    freq, pres = 2.0, 2.0
    reply = Chat(smol).send(ask, temp=0, max_tokens=8, frequency_penalty=freq, presence_penalty=pres)
    reply.result()
    tokens = reply.message.tokens
    assert tokens != plain.message.tokens  # the penalties changed the answer
    ref = llama_cpp_logits(smollm2.ours, reply.prompt + tokens[:-1])[len(reply.prompt) - 1 :]
    for i, row in enumerate(ref):
        counts = np.bincount(tokens[:i], minlength=len(row)) if i else np.zeros(len(row))
        z = row - counts * freq - (counts > 0) * pres
        assert tokens[i] == int(np.argmax(z)), i


def test_greedy_argmax_shortcut_picks_llama_cpps_greedy_token(
    smol: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy replies take numpy's argmax instead of llama.cpp's greedy sampler: the same tokens."""
    from tlite_edge.runtime import sampler as sampler_module

    monkeypatch.setattr(smol.settings, "speculative", False)  # one token per step on both sides
    fast = Chat(smol).send(PROMPT, temp=0, max_tokens=24)
    assert fast.sampler.argmax
    fast.result()
    init = sampler_module.Sampler.__init__

    def no_shortcut(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        self.argmax = False

    monkeypatch.setattr(sampler_module.Sampler, "__init__", no_shortcut)
    slow = Chat(smol).send(PROMPT, temp=0, max_tokens=24)
    assert not slow.sampler.argmax
    slow.result()
    assert len(fast.message.tokens) > 4 and fast.message.tokens == slow.message.tokens


def test_logit_bias_forces_and_bans(smol: Engine) -> None:
    greedy = Chat(smol).send(PROMPT, temp=0, max_tokens=4)
    greedy.result()
    first = greedy.message.tokens[0]
    banned = Chat(smol).send(PROMPT, temp=0, max_tokens=4, logit_bias=((first, -100.0),))
    banned.result()
    assert banned.message.tokens[0] != first
    word = smol.tokenize(" blue", special=False)[0]
    forced = Chat(smol).send(PROMPT, temp=1.0, seed=3, max_tokens=3, logit_bias=((word, 100.0),))
    forced.result()
    assert forced.message.tokens == [word] * 3


def test_seed_reproducible(smol: Engine) -> None:
    def text(seed: int) -> str:
        return (
            Chat(smol).send(PROMPT, temp=1.2, top_k=0, top_p=1.0, min_p=0.0, seed=seed, max_tokens=6).result()
        )

    assert text(7) == text(7) != text(8)


SCHEMA = {
    "type": "object",
    "properties": {
        "colours": {
            "type": "array",
            "items": {"enum": ["red", "green", "blue"]},
            "minItems": 1,
            "maxItems": 3,
        },
        "count": {"type": "integer"},
    },
    "required": ["colours", "count"],
}


def test_run_json_schema(smollm2: RealModel, tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA), encoding="utf-8")
    done = run_cli("run", smollm2.ours, PROMPT, "--json-schema", schema, "--temp", "0", "--max-tokens", "40")
    assert done.returncode == 0, done.stderr
    jsonschema.validate(json.loads(done.stdout, strict=True), SCHEMA)
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "integer", "minimum": 3}', encoding="utf-8")
    for path, why in ((bad, "'minimum' is not supported"), (tmp_path / "none.json", "no such file")):
        done = run_cli("run", smollm2.ours, PROMPT, "--json-schema", path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and str(path) in lines[0] and why in lines[0], lines
        assert done.stdout == ""


def test_chat_format_command(smol: Engine, tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from tlite_edge.tui.session import ChatSession

    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA), encoding="utf-8")
    console = Console(file=io.StringIO(), width=200, color_system=None)
    session = ChatSession(smol, Chat(smol), console)
    session.chat.sampling = session.chat.sampling.with_(temp=0.0, max_tokens=60)
    session.command(f"/format {schema}")
    jsonschema.validate(json.loads(session.send(PROMPT).result(), strict=True), SCHEMA)
    session.command("/format json")
    assert isinstance(json.loads(session.send(PROMPT).result(), strict=True), dict)
    session.command("/format off")
    assert session.chat.sampling.grammar is None
    with pytest.raises(TliteError, match="no such file"):
        session.format(str(tmp_path / "missing.json"))
