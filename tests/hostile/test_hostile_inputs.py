"""Every crafted input through the real CLI: one line naming the file and the problem, exit != 0,
no traceback, nothing written, bounded memory and time."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from cases import CASES, Area
from hostile_kit import RSS_LIMIT, WALL_LIMIT, leftovers, run_bounded


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input(case: str, standin_dir: Path, bf16_gguf: Path, tmp_path: Path) -> None:
    build, command, culprit, message = CASES[case]
    area = Area(tmp_path, standin_dir, bf16_gguf)
    before = sorted(p.name for p in bf16_gguf.parent.iterdir())
    build(area)
    args = [area.fill(part) for part in command]
    result = run_bounded(*args)
    try:
        assert result.returncode not in (0, 1), (result.returncode, result.stderr[-2000:])
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert len(result.lines) == 1, result.stderr[-2000:]
        line = result.lines[0]
        assert area.fill(culprit) in line, line
        assert re.search(message, line), line
        assert list(area.out.iterdir()) == [], "output written"
        assert sorted(p.name for p in bf16_gguf.parent.iterdir()) == before
        if area._hf is not None:
            assert leftovers(area.hf) == []
            assert not (area.hf / "PWNED").exists() and not Path("PWNED").exists()
        assert result.wall < WALL_LIMIT and result.max_rss < RSS_LIMIT, (result.wall, result.max_rss)
    finally:
        shutil.rmtree(tmp_path / "hf", ignore_errors=True)  # a mutated stand-in copy is ~150 MB


def test_case_count() -> None:
    """The issue asks for at least 40 crafted inputs."""
    assert len(CASES) >= 40
