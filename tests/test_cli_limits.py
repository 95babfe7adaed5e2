"""The CLI's own flags against bad values: one line naming the flag or folder, exit 2, no traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_cli


def one_line(proc, *needles: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "unexpected" not in lines[0] and all(n in lines[0] for n in needles), lines[0]


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--temp", "nan"), ("--temp", "inf"), ("--temp", "1e308"), ("--temp", "-1"), ("--top-p", "nan"),
     ("--top-p", "0"), ("--seed", "-1"), ("--max-tokens", "0"), ("--ctx", "5"), ("--threads", "0")],
)  # fmt: skip
def test_run_flags(bf16_gguf: Path, flag: str, value: str) -> None:
    one_line(run_cli("run", bf16_gguf, "hi", flag, value, "--json"), flag, "got")


def test_chat_small_context(bf16_gguf: Path) -> None:
    one_line(run_cli("chat", bf16_gguf, "--ctx", "5", input="hi\n"), "--ctx", "at least 64")


def test_small_context_too_short_prompt(bf16_gguf: Path) -> None:
    """At the smallest context a long prompt is a clear error, not llama-cpp-python's broadcast crash."""
    one_line(run_cli("run", bf16_gguf, "слово " * 60, "--ctx", "64", "--max-tokens", "4"), "too long")
    ok = run_cli("run", bf16_gguf, "hi", "--ctx", "64", "--max-tokens", "4", "--temp", "0")
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr


@pytest.mark.parametrize(("flag", "value"), [("--header-timeout", "nan"), ("--body-timeout", "0"),
                                             ("--timeout", "inf"), ("--cors-origin", "evil")])  # fmt: skip
def test_serve_flags(bf16_gguf: Path, flag: str, value: str) -> None:
    one_line(run_cli("serve", bf16_gguf, "--port", "0", flag, value), flag)


special = pytest.mark.skipif(
    not Path("/proc/self").exists() or os.statvfs("/proc").f_blocks != 0, reason="needs Linux's /proc"
)


@special
@pytest.mark.parametrize("app", ["ollama", "lmstudio", "jan", "gpt4all"])
@pytest.mark.parametrize("dry", [False, True])
def test_export_into_proc(bf16_gguf: Path, tmp_path: Path, app: str, dry: bool) -> None:
    env = {"HOME": str(tmp_path), "OLLAMA_MODELS": str(tmp_path / "ollama")}
    args = ("export", bf16_gguf, "--to", app, "--dir", "/proc", *(["--dry-run"] if dry else []))
    one_line(run_cli(*args, env=env), "/proc", "special filesystem")
    assert not (tmp_path / "ollama").exists()


def test_export_dry_run_checks_hardlink_filesystem(bf16_gguf: Path, tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(bf16_gguf).st_dev:
        pytest.skip("needs a folder on another filesystem than the model")
    target = shm / f"tlite-edge-test-{os.getpid()}"
    target.mkdir()
    try:
        args = ("export", bf16_gguf, "--to", "lmstudio", "--dir", target, "--link", "hardlink", "--dry-run")
        one_line(run_cli(*args, env={"HOME": str(tmp_path)}), "cannot hardlink")
        assert list(target.iterdir()) == []
    finally:
        target.rmdir()
