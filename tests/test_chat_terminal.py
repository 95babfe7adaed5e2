"""``tlite-edge chat`` in a real terminal (pexpect pty) and through a pipe, on rigged stand-ins."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pexpect
import pytest
from conftest import make_looping, make_rigged, run_cli

from tlite_edge.tui.session import HISTORY_ENV

REPLY = "Привет, **мир**! Ёж."
ANSI = r"(?:\x1b\[[0-9;]*m)*"
# The reply as rendered Markdown: "мир" in bold, no asterisks.
RENDERED = "Привет, " + ANSI + "мир" + ANSI + r"! Ёж\."
LOOP = " Раз два три четыре пять шесть."
PROMPT = ">>>"
TIMEOUT = 90


@pytest.fixture(scope="module")
def rigged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rigged(tmp_path_factory, REPLY, seed=6)[0]


@pytest.fixture(scope="module")
def looping(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_looping(tmp_path_factory, LOOP, seed=7)


def spawn(model: Path, history: Path, *args: str) -> pexpect.spawn:
    env = {
        **os.environ,
        "TERM": "xterm-256color",
        "PYTHONUTF8": "1",
        "PROMPT_TOOLKIT_NO_CPR": "1",  # the pty does not answer cursor-position requests
        HISTORY_ENV: str(history),
    }
    env.pop("NO_COLOR", None)
    argv = ["-m", "tlite_edge", "chat", str(model), "--temp", "0", "--ctx", "1024", *args]
    child = pexpect.spawn(
        sys.executable, argv, env=env, encoding="utf-8", timeout=TIMEOUT, dimensions=(40, 120)
    )
    child.expect(PROMPT)
    return child


def say(child: pexpect.spawn, line: str, expect: str) -> None:
    """Type a line, wait for ``expect`` and the next prompt."""
    child.sendline(line)
    child.expect(expect)
    child.expect(PROMPT)


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def test_slash_commands_save_and_load(rigged: Path, tmp_path: Path) -> None:
    history, first, second = tmp_path / "history", tmp_path / "первый.json", tmp_path / "второй.json"
    child = spawn(rigged, history, "--verbose")
    say(child, "Привет! Как дела?", RENDERED + r".*\n.*prompt \d+ tok \(\d+ new")
    say(child, "/set top_k 5", "top_k = 5")
    rule = "error: top_k must be a whole number >= 0 (0 = all tokens), got 'пять'"
    say(child, "/set top_k пять", re.escape(rule))
    say(child, "/system Ты — кот.", "system message set")
    say(child, "/system", "system: Ты — кот.")
    say(child, "/regen", RENDERED)
    say(child, "/stats", "stats off")
    say(child, "/help", "/load FILE")
    say(child, "/nope", "unknown command /nope")
    say(child, f"/save {first}", "saved 3 messages")
    child.sendline("/exit")
    assert finish(child) == 0
    data = json.loads(first.read_text(encoding="utf-8"))
    assert data["messages"] == [
        {"role": "system", "content": "Ты — кот."},
        {"role": "user", "content": "Привет! Как дела?"},
        {"role": "assistant", "content": REPLY},
    ]
    assert data["sampling"]["top_k"] == 5 and data["sampling"]["temp"] == 0.0

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "tlite-edge-chat", "messages": [{"role": "robot"', encoding="utf-8")
    child = spawn(rigged, history)
    say(child, f"/load {bad}", re.escape(f"error: {bad}: not JSON"))
    say(child, f"/load {first}", "loaded 3 messages")
    child.send("строка один\\\r")  # a trailing backslash continues the message
    child.send("строка два\x1b\r")  # Esc Enter (Alt-Enter) adds a line
    child.send("строка три\r")
    child.expect(RENDERED)
    child.expect(PROMPT)
    child.send('"""\r')
    child.send("блок\r")
    child.send("ещё строка\r")
    child.send('"""\r')
    child.expect(RENDERED)
    child.expect(PROMPT)
    say(child, f"/save {second}", "saved 7 messages")
    child.sendeof()
    assert finish(child) == 0
    data2 = json.loads(second.read_text(encoding="utf-8"))
    assert data2["messages"][:3] == data["messages"] and data2["sampling"] == data["sampling"]
    assert [m["content"] for m in data2["messages"][3:]] == [
        "строка один\nстрока два\nстрока три", REPLY, "блок\nещё строка", REPLY,
    ]  # fmt: skip


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(looping: Path, tmp_path: Path) -> None:
    transcript = tmp_path / "t.json"
    child = spawn(looping, tmp_path / "history", "--max-tokens", "100000")
    for message in ("Считай!", "Ещё раз"):
        child.sendline(message)
        child.expect("Раз два три")  # streaming has begun; the reply would run to the context's end
        child.sendintr()
        child.expect(re.escape("[stopped]"))
        child.expect(PROMPT)
    say(child, f"/save {transcript}", "saved 4 messages")
    child.sendintr()  # at an empty prompt: a hint, then a second Ctrl-C leaves
    child.expect("Ctrl-C again or Ctrl-D to leave")
    child.expect(PROMPT)
    child.sendintr()
    assert finish(child) == 0
    messages = json.loads(transcript.read_text(encoding="utf-8"))["messages"]
    assert [m["content"] for m in messages[::2]] == ["Считай!", "Ещё раз"]
    for m in messages[1::2]:  # the stopped replies stay in the conversation, cut mid-way
        assert m["content"].startswith(" Раз два три") and (LOOP * 200).startswith(m["content"])


def test_history_persists_across_runs(rigged: Path, tmp_path: Path) -> None:
    history = tmp_path / "state" / "history"
    child = spawn(rigged, history)
    say(child, "первая строка истории", RENDERED)
    child.sendline("/exit")
    assert finish(child) == 0
    assert "первая строка истории" in history.read_text(encoding="utf-8")
    child = spawn(rigged, history)
    child.send("\x1b[A")  # Up: /exit
    child.expect("/exit")
    child.send("\x1b[A")  # Up again: the message before it
    child.expect("первая строка истории")
    child.send("\r")
    child.expect(RENDERED)
    child.expect(PROMPT)
    child.sendeof()
    assert finish(child) == 0


def test_pipe_prints_only_the_answer(rigged: Path) -> None:
    proc = run_cli("chat", rigged, "--temp", "0", "--ctx", "512", input="Привет!\nКак дела?\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == REPLY + "\n"  # raw text, not rendered, nothing else
    assert "Traceback" not in proc.stderr
    verbose = run_cli("chat", rigged, "--temp", "0", "--ctx", "512", "--verbose", input="Привет!")
    assert verbose.stdout == REPLY + "\n"
    assert re.search(r"prompt \d+ tok .* reply \d+ tok .* stop\]", verbose.stderr), verbose.stderr
    empty = run_cli("chat", rigged, input="\n")
    assert empty.returncode == 2 and empty.stdout == ""
    assert empty.stderr.strip() == "tlite-edge chat: error: <stdin>: no message: stdin is empty"
