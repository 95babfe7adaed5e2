"""Quantization profiles: one TOML file per level in ``quant_profiles/``, validated on load.

Fields: ``name``, ``ftype`` (llama.cpp's ``LLAMA_FTYPE_*`` without the prefix), ``description``,
``target`` (the machine it is meant for), ``requires_imatrix``, optional ``output_type``,
``token_embedding_type`` (GGML type names) and ``[overrides]`` (tensor-name regex -> GGML type),
and ``default = true`` on exactly one built-in profile.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType

from tlite_edge.errors import TliteError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Profile field -> (python type, required)
FIELDS: dict[str, tuple[type, bool]] = {
    "name": (str, True),
    "ftype": (str, True),
    "description": (str, True),
    "target": (str, True),
    "requires_imatrix": (bool, True),
    "output_type": (str, False),
    "token_embedding_type": (str, False),
    "overrides": (dict, False),
    "default": (bool, False),
}
NAME_RE = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class Profile:
    name: str
    ftype: str
    description: str
    target: str
    requires_imatrix: bool
    output_type: GGMLQuantizationType | None = None
    token_embedding_type: GGMLQuantizationType | None = None
    overrides: tuple[tuple[str, GGMLQuantizationType], ...] = field(default_factory=tuple)
    default: bool = False
    source: str = ""

    @property
    def ftype_id(self) -> int:
        import llama_cpp

        return int(getattr(llama_cpp, f"LLAMA_FTYPE_{self.ftype}"))

    def output_name(self, basename: str) -> str:
        return f"{basename}-{self.name}.gguf"


def _ggml_type(value: str, where: Path, key: str) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType[value.upper()]
    except KeyError:
        raise TliteError(where, f"{key}: unknown GGML type {value!r}") from None


def _known_ftype(ftype: str) -> bool:
    import llama_cpp

    return hasattr(llama_cpp, f"LLAMA_FTYPE_{ftype}")


def parse_profile(data: dict[str, Any], where: Path) -> Profile:
    """Validate one profile's table; every problem names the file and the field."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise TliteError(where, f"unknown field {unknown[0]!r} (known: {', '.join(FIELDS)})")
    for key, (kind, required) in FIELDS.items():
        if key not in data:
            if required:
                raise TliteError(where, f"missing field {key!r}")
            continue
        if not isinstance(data[key], kind):
            raise TliteError(where, f"{key} must be a {kind.__name__}, got {type(data[key]).__name__}")
    if not NAME_RE.fullmatch(data["name"]):
        raise TliteError(where, f"name {data['name']!r} may hold only letters, digits and _")
    ftype = data["ftype"].upper().removeprefix("LLAMA_FTYPE_")
    if not _known_ftype(ftype):
        raise TliteError(where, f"ftype {data['ftype']!r} is not a llama.cpp file type")
    overrides = []
    for pattern, type_name in data.get("overrides", {}).items():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise TliteError(where, f"overrides: bad regex {pattern!r} ({exc})") from None
        if not isinstance(type_name, str):
            raise TliteError(where, f"overrides: type for {pattern!r} must be a string")
        overrides.append((pattern, _ggml_type(type_name, where, "overrides")))
    typed = ("output_type", "token_embedding_type")
    optional = {k: _ggml_type(data[k], where, k) for k in typed if k in data}
    return Profile(
        name=data["name"],
        ftype=ftype,
        description=data["description"],
        target=data["target"],
        requires_imatrix=data["requires_imatrix"],
        overrides=tuple(overrides),
        default=data.get("default", False),
        source=str(where),
        **optional,
    )


def read_profile_file(path: Path) -> Profile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TliteError(path, f"cannot read profile ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise TliteError(path, f"not valid TOML ({exc})") from None
    return parse_profile(data, path)


def builtin_profile_files() -> list[Path]:
    """The profiles shipped with the package (``quant_profiles/`` in the repo and in the wheel)."""
    folder = resources.files("tlite_edge.quant_profiles")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml"))


def load_profiles(extra: list[Path] | None = None) -> dict[str, Profile]:
    """Built-in profiles plus user files or folders; later ones replace earlier ones of the same name."""
    files = builtin_profile_files()
    for item in extra or []:
        if item.is_dir():
            files += sorted(item.glob("*.toml"))
        elif item.is_file():
            files.append(item)
        else:
            raise TliteError(item, "no such profile file or folder")
    profiles: dict[str, Profile] = {}
    for path in files:
        profile = read_profile_file(path)
        profiles[profile.name.upper()] = profile
    return profiles


def default_profile(profiles: dict[str, Profile]) -> Profile:
    defaults = [p for p in profiles.values() if p.default]
    return defaults[-1] if defaults else profiles["Q4_K_M"]


def select(profiles: dict[str, Profile], levels: str | None) -> list[Profile]:
    """``"q4_k_m,q8_0"`` -> profiles in that order; None -> the default; unknown -> one clear line."""
    if not levels:
        return [default_profile(profiles)]
    chosen = []
    for level in (x.strip() for x in levels.split(",") if x.strip()):
        if level.upper() not in profiles:
            raise TliteError(level, f"unknown quantization level (known: {', '.join(sorted(profiles))})")
        chosen.append(profiles[level.upper()])
    return chosen
