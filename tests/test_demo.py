"""The demo's real-model step (7): SmolLM2-135M-Instruct quantized and asked a question, in-process.

The answer test reuses the session's SmolLM2 fixture (our F32 conversion) instead of converting again;
``tests/test_cli.py`` runs the whole demo as a user does."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import RealModel
from rich.console import Console

from tlite_edge.commands.demo import REAL_LEVEL, REAL_NAME, REAL_QUESTIONS, ask_real, real_model


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200), buf


def test_real_model_answers(smollm2: RealModel, tmp_path: Path) -> None:
    console, buf = _console()
    answers = ask_real(smollm2.ours, tmp_path, console)
    out = buf.getvalue()
    print(out)
    assert [q for q, _ in answers] == [q for q, _ in REAL_QUESTIONS]
    (question, answer), (_, russian) = answers
    assert "Paris" in answer, answer
    assert f"user: {question}\n   assistant: {answer}\n" in out
    first_chat = next(line for line in out.splitlines() if f"chat ({REAL_LEVEL}, greedy)" in line)
    assert "cut at" not in first_chat  # the model ended its turn
    assert russian  # an answer, whatever it is worth
    assert (tmp_path / f"{REAL_NAME}-{REAL_LEVEL}.gguf").is_file()


def test_real_model_skipped_without_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No wheel and nothing cached: one line says why, nothing is written, the demo goes on."""
    monkeypatch.setenv("TLITE_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TLITE_SMOLLM2_WHEEL", str(tmp_path / "missing.whl"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    console, buf = _console()
    real_model(out_dir, console)
    lines = buf.getvalue().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("7. a real model: skipped") and "missing.whl" in lines[0]
    assert "TLITE_SMOLLM2_WHEEL" in lines[0]
    assert list(out_dir.iterdir()) == []
