"""tlite-edge export: Ollama Modelfile, LM Studio / Jan / GPT4All layouts per OS under a fake HOME."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from gotemplate import render_go

from tlite_edge import cli
from tlite_edge.chat_template import render
from tlite_edge.gguf.reader import read_header
from tlite_edge.ship import paths

CLEARED = (
    "XDG_DATA_HOME", "XDG_CONFIG_HOME", "APPDATA", "LOCALAPPDATA", "OLLAMA_MODELS",
    "TLITE_EDGE_LMSTUDIO_MODELS", "TLITE_EDGE_JAN_DATA", "JAN_DATA_FOLDER", "TLITE_EDGE_GPT4ALL_MODELS",
)  # fmt: skip
# Where each app's folder is on each OS, relative to HOME (DESIGN §5).
APP_DIRS = {
    ("lmstudio", "linux"): ".lmstudio/models",
    ("lmstudio", "macos"): ".lmstudio/models",
    ("lmstudio", "windows"): ".lmstudio/models",
    ("jan", "linux"): ".local/share/Jan/data",
    ("jan", "macos"): "Library/Application Support/Jan/data",
    ("jan", "windows"): "AppData/Roaming/Jan/data",
    ("gpt4all", "linux"): ".local/share/nomic.ai/GPT4All",
    ("gpt4all", "macos"): "Library/Application Support/nomic.ai/GPT4All",
    ("gpt4all", "windows"): "AppData/Local/nomic.ai/GPT4All",
}
CHAT = [
    {"role": "system", "content": "Ты вежливый помощник."},
    {"role": "user", "content": "Привет! Как дела?"},
    {"role": "assistant", "content": "Хорошо, спасибо."},
    {"role": "user", "content": "Сколько будет 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "А 3+3?"},
]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake HOME with no app-related environment."""
    for var in CLEARED:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USERPROFILE", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def model(bf16_gguf: Path, tmp_path: Path) -> Path:
    """The BF16 stand-in in a folder of its own (with its .sha256 sidecar)."""
    folder = tmp_path / "models"
    folder.mkdir()
    os.link(bf16_gguf, folder / bf16_gguf.name)  # never written to by the tests
    sidecar = bf16_gguf.name + ".sha256"
    shutil.copyfile(bf16_gguf.with_name(sidecar), folder / sidecar)
    return folder / bf16_gguf.name


def export(*args: str | Path) -> int:
    return cli.main(["export", *map(str, args)])


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))
    }


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(DIRECTIVE, value) pairs: triple-quoted values may span lines; comments skipped."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        directive, _, value = line.partition(" ")
        if value.startswith('"""'):
            body = value[3:]
            while not body.endswith('"""'):
                body += "\n" + lines[i]
                i += 1
            value = body[:-3]
        out.append((directive.upper(), value))
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_modelfile_parses_back_and_renders_like_the_gguf(model: Path, home: Path) -> None:
    assert export(model, "--to", "ollama", "--system", CHAT[0]["content"], "--name", "t-lite:test") == 0
    modelfile = model.parent / "t-lite-test.Modelfile"
    pairs = parse_modelfile(modelfile.read_text(encoding="utf-8"))
    directives = [d for d, _ in pairs]
    assert directives[0] == "FROM" and set(directives) == {
        "FROM", "TEMPLATE", "PARAMETER", "SYSTEM", "LICENSE",
    }  # fmt: skip
    values = dict(pairs)
    assert values["FROM"] == f"./{model.name}" and (modelfile.parent / values["FROM"]).samefile(model)
    params = [v.split(" ", 1) for d, v in pairs if d == "PARAMETER"]
    stops = [json.loads(v) for k, v in params if k == "stop"]
    assert stops == ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    assert ["num_ctx", "8192"] in params
    assert values["SYSTEM"] == CHAT[0]["content"]
    assert "T-lite-instruct-0.1" in values["LICENSE"] and "fine-tuning" in values["LICENSE"]

    template = values["TEMPLATE"]
    assert "<|begin_of_text|>" not in template
    gguf_template = read_header(model).kv["tokenizer.chat_template"]
    for chat in (CHAT[:4], CHAT, CHAT[1:]):  # 3 user turns with and without a system prompt
        system = "\n\n".join(m["content"] for m in chat if m["role"] == "system")
        go = render_go(
            template,
            {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in chat]},
        )
        expected = render(gguf_template, chat, add_generation_prompt=True)
        assert expected.startswith("<|begin_of_text|>")
        assert go == expected.removeprefix("<|begin_of_text|>")
        assert go.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_ollama_prints_the_exact_command_without_ollama(model: Path, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = run_cli(
        "export", model, "--to", "ollama", "--dir", tmp_path / "mf" / "new",
        env={"PATH": str(empty), "HOME": str(tmp_path), "OLLAMA_MODELS": "/srv/ollama", "COLUMNS": "300"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr  # a missing --dir is created, parents too
    name = model.stem.lower()
    target = tmp_path / "mf" / "new" / f"{name}.Modelfile"
    assert f"ollama create {name} -f {target}" in proc.stdout
    assert "/srv/ollama ($OLLAMA_MODELS)" in proc.stdout
    from_line = target.read_text(encoding="utf-8").splitlines()[1]
    assert from_line == f"FROM {model.resolve()}"  # another folder: absolute path


def test_missing_app_dir_is_created(model: Path, home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "apps" / "lmstudio-models"
    proc = run_cli("export", model, "--to", "lmstudio", "--dir", folder, env={"COLUMNS": "300"})
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in folder.rglob("*.gguf")] == [model.name]


@pytest.mark.parametrize("os_name", paths.OSES)
@pytest.mark.parametrize("app", ["lmstudio", "jan", "gpt4all", "ollama"])
def test_layout_per_os(
    app: str, os_name: str, model: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(paths, "current_os", lambda: os_name)
    if app == "ollama":
        assert export(model, "--to", app, "--dry-run") == 0
        assert str(home / ".ollama" / "models") in capsys.readouterr().out.replace("\n", "")
        return
    app_dir = home / APP_DIRS[app, os_name]
    assert export(model, "--to", app, "--link", "symlink") == 2  # app folder missing
    assert "not found" in capsys.readouterr().err and not any(home.rglob("*.gguf"))
    app_dir.mkdir(parents=True)
    assert export(model, "--to", app, "--link", "symlink") == 0
    placed = {
        "lmstudio": app_dir / "tlite-edge" / "T-lite-standin-instruct-0.1-GGUF" / model.name,
        "jan": app_dir / "llamacpp" / "models" / "tlite-edge" / model.stem / model.name,
        "gpt4all": app_dir / model.name,
    }[app]
    assert placed.is_symlink() and placed.resolve() == model.resolve()
    assert sorted(p for p in home.rglob("*") if p.is_file() or p.is_symlink()) == sorted(
        [placed] + ([placed.with_name("model.yml")] if app == "jan" else [])
    )
    if app == "jan":
        meta = yaml.safe_load(placed.with_name("model.yml").read_text(encoding="utf-8"))
        assert (app_dir / meta["model_path"]).samefile(model)
        assert meta["size_bytes"] == model.stat().st_size
        assert meta["model_sha256"] == sha256(model) and meta["name"] == model.stem


def test_copy_is_verified_and_overrides_apply(model: Path, home: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(paths, "current_os", lambda: "linux")
    custom = tmp_path / "lm-models"
    custom.mkdir()
    settings = home / ".lmstudio" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(json.dumps({"downloadsFolder": str(custom)}), encoding="utf-8")
    assert export(model, "--to", "lmstudio", "--publisher", "t-bank", "--name", "T-lite") == 0
    copy = custom / "t-bank" / "T-lite" / model.name
    assert not copy.is_symlink() and sha256(copy) == sha256(model)
    assert not (home / ".lmstudio" / "models").exists()

    ini = home / ".config" / "nomic.ai" / "GPT4All.ini"
    ini.parent.mkdir(parents=True)
    gpt_dir = tmp_path / "gpt4all-models"
    gpt_dir.mkdir()
    ini.write_text(f"[General]\nmodelPath={gpt_dir}\n", encoding="utf-8")
    assert export(model, "--to", "gpt4all", "--link", "hardlink", "--name", "t-lite-q") == 0
    assert (gpt_dir / "t-lite-q.gguf").samefile(model)

    jan = tmp_path / "jan-data"
    (jan / "models").mkdir(parents=True)  # the older layout
    monkeypatch.setenv("TLITE_EDGE_JAN_DATA", str(jan))
    assert export(model, "--to", "jan", "--link", "symlink") == 0
    legacy = json.loads((jan / "models" / model.stem / "model.json").read_text(encoding="utf-8"))
    assert legacy["id"] == model.stem and legacy["settings"]["llama_model_path"] == model.name
    assert legacy["settings"]["ctx_len"] == 8192 and legacy["parameters"]["stop"] == ["<|eot_id|>"]
    assert (jan / "models" / model.stem / model.name).samefile(model)
    assert not (jan / "llamacpp").exists()


@pytest.mark.parametrize("app", ["ollama", "lmstudio", "jan", "gpt4all"])
def test_dry_run_writes_nothing(app: str, model: Path, home: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(paths, "current_os", lambda: "linux")
    for rel in {v for (a, o), v in APP_DIRS.items() if o == "linux"}:
        (home / rel).mkdir(parents=True)
    before = tree(tmp_path)
    assert export(model, "--to", app, "--dry-run") == 0
    assert tree(tmp_path) == before


def test_force_rules_and_nothing_half_written(model: Path, home: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(paths, "current_os", lambda: "linux")
    data = home / ".local/share/Jan/data"
    data.mkdir(parents=True)
    assert export(model, "--to", "jan") == 0
    folder = data / "llamacpp/models/tlite-edge" / model.stem
    before = tree(data)
    capsys.readouterr()
    assert export(model, "--to", "jan") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists; pass --force" in err[0]
    assert tree(data) == before
    assert export(model, "--to", "jan", "--force") == 0
    assert sha256(folder / model.name) == sha256(model)

    # A step that fails after the model was placed: everything this run created is removed.
    (folder / model.name).unlink()
    (folder / "model.yml").unlink()
    (folder / "model.yml").mkdir()
    assert export(model, "--to", "jan", "--force") == 2
    assert sorted(p.name for p in folder.iterdir()) == ["model.yml"]
    assert not list(folder.parent.rglob(".*.partial"))


def test_sha256_sidecar_mismatch_leaves_nothing(model: Path, home: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(paths, "current_os", lambda: "linux")
    target = home / ".local/share/nomic.ai/GPT4All"
    target.mkdir(parents=True)
    model.with_name(model.name + ".sha256").write_text(f"{'0' * 64}  {model.name}\n", encoding="utf-8")
    assert export(model, "--to", "gpt4all") == 2
    assert "does not match its .sha256 sidecar" in capsys.readouterr().err
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "a\\b", "x..y", "", "a:b"])
def test_bad_names(name: str, model: Path, home: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(paths, "current_os", lambda: "linux")
    (home / ".lmstudio/models").mkdir(parents=True)
    before = tree(home.parent)
    assert export(model, "--to", "lmstudio", "--name", name) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad model folder name" in err[0]
    assert tree(home.parent) == before


def test_ollama_name_rules(model: Path, home: Path, capsys) -> None:
    assert export(model, "--to", "ollama", "--name", "t-lite:q4/../x", "--dry-run") == 2
    assert "bad Ollama model name" in capsys.readouterr().err
    assert export(model, "--to", "ollama", "--system", 'say """hi"""', "--dry-run") == 2
    assert 'may not contain """' in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to read-only folders")
def test_read_only_folder(model: Path, home: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(paths, "current_os", lambda: "linux")
    target = home / ".local/share/nomic.ai/GPT4All"
    target.mkdir(parents=True)
    target.chmod(0o500)
    try:
        assert export(model, "--to", "gpt4all") == 2
        assert "read-only" in capsys.readouterr().err
    finally:
        target.chmod(0o700)


def test_locate_precedence(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment first, then the app's settings file, then the OS default (or an older default)."""
    assert paths.locate("jan", "linux").folder == home / ".local/share/Jan/data"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert paths.locate("jan", "linux").folder == tmp_path / "xdg/Jan/data"
    settings = home / ".config/Jan/settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"data_folder": str(tmp_path / "jan-elsewhere")}), encoding="utf-8")
    assert paths.locate("jan", "linux").folder == tmp_path / "jan-elsewhere"
    monkeypatch.setenv("TLITE_EDGE_JAN_DATA", str(tmp_path / "env-jan"))
    assert paths.locate("jan", "linux") == paths.Location(tmp_path / "env-jan", "$TLITE_EDGE_JAN_DATA")
    settings.write_text("{broken", encoding="utf-8")
    monkeypatch.delenv("TLITE_EDGE_JAN_DATA")
    with pytest.raises(paths.TliteError, match="cannot read the app's settings"):
        paths.locate("jan", "linux")

    (home / ".cache/lm-studio/models").mkdir(parents=True)  # only the older LM Studio folder exists
    assert paths.locate("lmstudio", "macos").folder == home / ".cache/lm-studio/models"
    (home / ".lmstudio/models").mkdir(parents=True)
    assert paths.locate("lmstudio", "macos").folder == home / ".lmstudio/models"
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    assert paths.locate("gpt4all", "windows").folder == tmp_path / "Local/nomic.ai/GPT4All"


def test_ollama_create_runs_when_ollama_is_on_path(model: Path, tmp_path: Path) -> None:
    """An ``ollama`` executable on PATH is called as ``ollama create NAME -f MODELFILE``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.txt"
    fake = bin_dir / "ollama"
    fake.write_text(
        f'#!/bin/sh\necho "$@" >> {log}\ntest -f "$4" || exit 3\nexit "${{OLLAMA_RC:-0}}"\n', encoding="utf-8"
    )
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "300"}
    proc = run_cli("export", model, "--to", "ollama", "--name", "t-lite:q", env=env)
    assert proc.returncode == 0, proc.stderr
    modelfile = model.parent / "t-lite-q.Modelfile"
    assert log.read_text(encoding="utf-8").split() == ["create", "t-lite:q", "-f", str(modelfile)]
    proc = run_cli(
        "export", model, "--to", "ollama", "--name", "t-lite:q", "--force", env={**env, "OLLAMA_RC": "1"}
    )
    assert proc.returncode == 2 and "failed with exit code 1" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
