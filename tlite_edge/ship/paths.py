"""Where each desktop app keeps its models, per OS, as data: defaults, environment overrides and the
app's own settings file when it names another folder."""

from __future__ import annotations

import configparser
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tlite_edge.errors import TliteError

OSES = ("linux", "macos", "windows")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def current_os() -> str:
    """``linux``, ``macos`` or ``windows`` (tests replace this to lay out another OS under a fake HOME)."""
    return {"darwin": "macos", "win32": "windows", "cygwin": "windows"}.get(sys.platform, "linux")


def base_dirs(os_name: str) -> dict[str, Path]:
    """Per-user base folders: ``home``, ``data`` (roaming app data), ``local`` and ``config``."""
    env, home = os.environ, Path.home()
    if os_name == "windows":
        roaming = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
        local = Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return {"home": home, "data": roaming, "local": local, "config": roaming}
    if os_name == "macos":
        support = home / "Library" / "Application Support"
        return {"home": home, "data": support, "local": support, "config": home / ".config"}
    data = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    return {"home": home, "data": data, "local": data, "config": config}


Where = tuple[str, str]  # (base folder key, path below it)


@dataclass(frozen=True)
class AppFolder:
    """How to find one app's folder: env overrides, a settings file, per-OS defaults, older defaults."""

    title: str
    env: tuple[str, ...]
    defaults: dict[str, Where]
    legacy: dict[str, Where]
    settings: dict[str, Where]
    settings_key: str
    what: str


ALL = dict.fromkeys(OSES)
FOLDERS: dict[str, AppFolder] = {
    "ollama": AppFolder(
        "Ollama",
        ("OLLAMA_MODELS",),
        {o: ("home", ".ollama/models") for o in ALL},
        {},
        {},
        "",
        "models folder",
    ),
    "lmstudio": AppFolder(
        "LM Studio",
        ("TLITE_EDGE_LMSTUDIO_MODELS",),
        {o: ("home", ".lmstudio/models") for o in ALL},
        {o: ("home", ".cache/lm-studio/models") for o in ALL},
        {o: ("home", ".lmstudio/settings.json") for o in ALL},
        "downloadsFolder",
        "models folder",
    ),
    "jan": AppFolder(
        "Jan",
        ("TLITE_EDGE_JAN_DATA", "JAN_DATA_FOLDER"),
        {o: ("data", "Jan/data") for o in ALL},
        {},
        {
            "linux": ("config", "Jan/settings.json"),
            "macos": ("data", "Jan/settings.json"),
            "windows": ("data", "Jan/settings.json"),
        },
        "data_folder",
        "data folder",
    ),
    "gpt4all": AppFolder(
        "GPT4All",
        ("TLITE_EDGE_GPT4ALL_MODELS",),
        {
            "linux": ("data", "nomic.ai/GPT4All"),
            "macos": ("data", "nomic.ai/GPT4All"),
            "windows": ("local", "nomic.ai/GPT4All"),
        },
        {},
        {
            "linux": ("config", "nomic.ai/GPT4All.ini"),
            "macos": ("config", "nomic.ai/GPT4All.ini"),
            "windows": ("config", "nomic.ai/GPT4All.ini"),
        },
        "modelPath",
        "models folder",
    ),
}


@dataclass(frozen=True)
class Location:
    folder: Path
    origin: str  # how it was found, for the plan


def _json_key(path: Path, key: str) -> str | None:
    data = json.loads(path.read_text(encoding="utf-8"))
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def _ini_key(path: Path, key: str) -> str | None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text(encoding="utf-8"))
    for section in parser.sections():
        if parser.has_option(section, key):
            return parser.get(section, key).strip().strip('"') or None
    return None


SETTINGS_READERS: dict[str, Callable[[Path, str], str | None]] = {".json": _json_key, ".ini": _ini_key}


def _from_settings(path: Path, key: str) -> str | None:
    if not path.is_file():
        return None
    try:
        return SETTINGS_READERS[path.suffix](path, key)
    except (OSError, UnicodeDecodeError, ValueError, configparser.Error) as exc:
        raise TliteError(path, f"cannot read the app's settings ({exc})") from None


def locate(app: str, os_name: str | None = None) -> Location:
    """The app's folder: an environment override, else its settings file, else the default for the OS
    (an older default when only that one exists)."""
    spec = FOLDERS[app]
    os_name = os_name or current_os()
    for var in spec.env:
        if os.environ.get(var):
            return Location(Path(os.environ[var]).expanduser(), f"${var}")
    bases = base_dirs(os_name)
    if os_name in spec.settings:
        base, rel = spec.settings[os_name]
        settings = bases[base] / rel
        if value := _from_settings(settings, spec.settings_key):
            return Location(Path(value).expanduser(), f"{settings} ({spec.settings_key})")
    base, rel = spec.defaults[os_name]
    default = bases[base] / rel
    if os_name in spec.legacy and not default.exists():
        base, rel = spec.legacy[os_name]
        if (old := bases[base] / rel).is_dir():
            return Location(old, f"older {spec.title} default on {os_name}")
    return Location(default, f"{spec.title} default on {os_name}")


def check_name(name: str, what: str = "name", *, allow_tag: bool = False) -> str:
    """A name safe as one path component (and, for Ollama, ``model:tag``); else one clear line."""
    parts = name.split(":", 1) if allow_tag else [name]
    if ".." in name or any(not NAME_RE.fullmatch(p) for p in parts):
        raise TliteError(
            name,
            f"bad {what}: use letters, digits and . _ + - (no path separators, no '..', no leading dot"
            + (", one ':' before a tag)" if allow_tag else ")"),
        )
    return name


def nearest_existing(folder: Path) -> Path:
    """``folder`` or its nearest parent that exists."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def writable_root(folder: Path, link_from: Path | None = None) -> None:
    """One clear line unless ``folder`` (or its nearest existing parent) is a writable folder on a real
    filesystem (not /proc or /sys), and, for a hard link from ``link_from``, on the same filesystem."""
    probe = nearest_existing(folder)
    if not probe.is_dir():
        raise TliteError(probe, "is not a folder")
    try:
        fs = os.statvfs(probe)
    except (OSError, AttributeError):  # AttributeError: Windows has no statvfs
        fs = None
    if fs is not None and fs.f_blocks == 0:
        raise TliteError(probe, "is on a special filesystem (like /proc or /sys): cannot keep files there")
    if not os.access(probe, os.W_OK | os.X_OK) or (fs is not None and fs.f_flag & os.ST_RDONLY):
        raise TliteError(probe, "folder is read-only: cannot write there")
    if link_from is not None and os.stat(link_from).st_dev != os.stat(probe).st_dev:
        why = "is on another filesystem than the model: cannot hardlink; use --link copy or symlink"
        raise TliteError(probe, why)
