"""The chat's slash commands, /set validation and transcripts, on real llama.cpp (no terminal)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import make_rigged

from tlite_edge.errors import TliteError
from tlite_edge.runtime import Chat, Engine
from tlite_edge.tui.session import (
    EXIT,
    HISTORY_ENV,
    SETTINGS,
    ChatSession,
    history_path,
    load_transcript,
    parse_setting,
)
from tlite_edge.tui.terminal import unwrap

REPLY = "Привет, **мир**! Ёж."


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    path, _ = make_rigged(tmp_path_factory, REPLY, seed=5)
    engine = Engine.load(path, ctx=512, seed=0)
    engine.sampling = engine.sampling.with_(temp=0.0, max_tokens=32)
    return engine


def session(engine: Engine, system: str | None = None) -> tuple[ChatSession, io.StringIO]:
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False, color_system=None)
    return ChatSession(engine, Chat(engine, system=system), console), out


GOOD = [
    ("temp", "0", 0.0),
    ("temp", "1.5", 1.5),
    ("top-p", "0.5", 0.5),
    ("top_k", "0", 0),
    ("min_p", "1", 1.0),
    ("repeat_penalty", "1.1", 1.1),
    ("max_tokens", "7", 7),
    ("max_tokens", "none", None),
    ("seed", "42", 42),
    ("seed", "random", None),
]
BAD = [
    ("temp", "-1"),
    ("temp", "warm"),
    ("temp", "nan"),
    ("top_p", "0"),
    ("top_p", "1.01"),
    ("top_k", "2.5"),
    ("top_k", "-3"),
    ("min_p", "2"),
    ("repeat_penalty", "0"),
    ("max_tokens", "0"),
    ("seed", "-1"),
    ("seed", str(2**32 - 1)),
]


@pytest.mark.parametrize(("key", "value", "expected"), GOOD)
def test_set_accepts(key: str, value: str, expected: object) -> None:
    name, parsed = parse_setting(key, value)
    assert name == key.replace("-", "_") and parsed == expected and type(parsed) is type(expected)


@pytest.mark.parametrize(("key", "value"), BAD)
def test_set_rejects_with_the_rule(key: str, value: str) -> None:
    with pytest.raises(TliteError) as err:
        parse_setting(key, value)
    assert str(err.value) == f"{key} must be {SETTINGS[key].rule}, got {value!r}"


def test_set_unknown_key_lists_the_keys() -> None:
    with pytest.raises(TliteError, match="unknown setting 'tempo'; settings: temp, top_p, top_k"):
        parse_setting("tempo", "1")


def test_commands(engine: Engine) -> None:
    s, out = session(engine)
    assert s.command("/set temp 0.3") is None and s.chat.sampling.temp == 0.3
    assert s.command("/set temp hot") is None and s.chat.sampling.temp == 0.3
    assert "error: temp must be a number >= 0 (0 = greedy), got 'hot'" in out.getvalue()
    s.command("/set")
    assert "repeat_penalty" in out.getvalue().splitlines()[-3]
    s.command("/set temp 0")
    assert s.send("Привет").result() == REPLY
    s.command("/system Ты — кот.")
    assert [m.role for m in s.chat.window()] == ["system", "user", "assistant"]
    s.command("/system")
    assert "system: Ты — кот." in out.getvalue()
    regen = s.command("/regen")
    assert regen is not None and regen.result() == REPLY
    assert [m.content for m in s.chat.messages] == ["Ты — кот.", "Привет", REPLY]
    s.command("/system -")
    assert [m.role for m in s.chat.window()] == ["user", "assistant"]
    s.command("/clear")
    assert s.chat.messages == []
    s.command("/regen")
    assert "error: nothing to regenerate" in out.getvalue()
    s.command("/frobnicate")
    assert "unknown command /frobnicate; /help lists the commands" in out.getvalue()
    s.command("/stats")
    assert s.show_stats
    s.command("/help")
    assert all(c in out.getvalue() for c in ("/save FILE", "/load FILE", "Alt-Enter", '"""'))
    assert s.command("/exit") is EXIT and s.command("/quit") is EXIT


def test_save_load_round_trip(engine: Engine, tmp_path: Path) -> None:
    s, out = session(engine, system="Отвечай кратко.")
    s.command("/set top_k 7")
    s.send("Первый <|eot_id|> вопрос").result()
    s.send("Второй").result()
    path = tmp_path / "чат.json"
    s.command(f"/save {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "tlite-edge-chat" and data["sampling"]["top_k"] == 7
    assert [m["content"] for m in data["messages"]] == [
        "Отвечай кратко.", "Первый <|eot_id|> вопрос", REPLY, "Второй", REPLY,
    ]  # fmt: skip
    assert not list(tmp_path.glob(".*partial"))
    t, _ = session(engine)
    t.command(f"/load {path}")
    assert [m.as_dict() for m in t.chat.messages] == data["messages"]
    assert t.chat.sampling.top_k == 7 and t.chat.sampling.temp == 0.0
    reply = t.send("Третий")
    assert reply.result() == REPLY
    # The loaded transcript matches the cache left by the first session: only the new turn is evaluated.
    assert reply.stats.evaluated_tokens < reply.stats.prompt_tokens / 2


def _transcript(**changes: object) -> dict:
    base = {
        "format": "tlite-edge-chat",
        "version": 1,
        "sampling": {"temp": 0.5, "seed": None, "max_tokens": None},
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
    }
    return {**base, **changes}


BAD_FILES = {
    "not json": ("{oops", "not JSON (line 1, column 2"),
    "list": ("[]", 'not a saved chat (no "format": "tlite-edge-chat")'),
    "version": (_transcript(version=9), "unsupported version 9"),
    "messages": (_transcript(messages={}), '"messages" must be a list'),
    "role": (_transcript(messages=[{"role": "tool", "content": "x"}]), "messages[0].role must be"),
    "late system": (
        _transcript(messages=[{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]),
        "messages[1].role must be system/user/assistant (system only first)",
    ),
    "content": (
        _transcript(messages=[{"role": "user", "content": 5}]),
        "messages[0].content must be a string",
    ),
    "keys": (_transcript(messages=[{"role": "user"}]), 'messages[0] must be an object with "role"'),
    "sampling": (_transcript(sampling={"top_p": 3}), "sampling: top_p must be a number in (0, 1], got '3'"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_load_rejects_bad_files(case: str, engine: Engine, tmp_path: Path) -> None:
    content, message = BAD_FILES[case]
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    with pytest.raises(TliteError) as err:
        load_transcript(path, engine.sampling)
    assert message in str(err.value) and str(err.value).startswith(str(path))
    s, out = session(engine)
    s.send("Привет").result()
    before = [m.as_dict() for m in s.chat.messages]
    s.command(f"/load {path}")
    lines = out.getvalue().strip().splitlines()
    assert lines[-1].startswith(f"error: {path}: ") and message in lines[-1]
    assert [m.as_dict() for m in s.chat.messages] == before  # unchanged


def test_good_file_loads_with_defaults(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(_transcript()), encoding="utf-8")
    messages, sampling = load_transcript(path, engine.sampling)
    assert messages[0] == {"role": "system", "content": "s"}
    assert (sampling.temp, sampling.seed, sampling.max_tokens) == (0.5, None, None)
    with pytest.raises(TliteError, match="no such file"):
        load_transcript(tmp_path / "missing.json", engine.sampling)


def test_history_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(HISTORY_ENV, str(tmp_path / "h"))
    assert history_path() == tmp_path / "h"
    monkeypatch.delenv(HISTORY_ENV)
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert history_path() == tmp_path / "state" / "tlite-edge" / "chat_history"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert history_path() == tmp_path / ".local/state/tlite-edge/chat_history"


def test_unwrap_blocks() -> None:
    assert unwrap('"""\nстрока 1\nстрока 2\n"""') == "строка 1\nстрока 2"
    assert unwrap('"""') == '"""' and unwrap("просто текст") == "просто текст"
