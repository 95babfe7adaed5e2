"""SOURCE -> a local Hugging Face folder: a directory as is, or a Hub repo id through huggingface_hub."""

from __future__ import annotations

import contextlib
import importlib
import re
from pathlib import Path

from tlite_edge.errors import TliteError

HUB_IDS = ("t-bank-ai/T-lite-instruct-0.1", "AnatoliiPotapov/T-lite-instruct-0.1")
DEFAULT_SOURCE = HUB_IDS[0]
REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]{0,95}/[A-Za-z0-9][\w.\-]{0,95}")
# Only what conversion reads: weights (safetensors only, never pickles), configs, tokenizer, card.
ALLOW_PATTERNS = [
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "README.md",
]


# What a tokenizer check reads (inspect --fix --tokenizer HUB_ID).
TOKENIZER_PATTERNS = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def resolve_source(
    source: str, revision: str | None = None, patterns: list[str] = ALLOW_PATTERNS
) -> tuple[Path, str]:
    """Return (local folder, model name); from the Hub only the files matching ``patterns``. Hub downloads
    resume and honour HF_HUB_OFFLINE and the cache."""
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            raise TliteError(local, "SOURCE must be a folder with a Hugging Face checkpoint or a Hub repo id")
        return local, local.resolve().name
    if not REPO_ID.fullmatch(source) or ".." in source:
        raise TliteError(source, "no such folder, and not a Hub repo id (owner/name)")
    return _download(source, revision, patterns), source.split("/")[1]


# Base exception of each HTTP client huggingface_hub has used (module, class).
NETWORK_ERRORS = (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException"))


def _network_errors() -> tuple[type[BaseException], ...]:
    """The HTTP clients' own connection errors (a dropped connection is not always an OSError)."""
    kinds: list[type[BaseException]] = []
    for module, name in NETWORK_ERRORS:
        with contextlib.suppress(ImportError, AttributeError):
            kinds.append(getattr(importlib.import_module(module), name))
    return tuple(kinds)


def _download(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # First match wins: specific Hub errors before the generic HTTP and OS ones.
    failures: tuple[tuple[type[BaseException], str, bool], ...] = (
        (GatedRepoError, "gated repo: accept its terms on the Hub and log in (`hf auth login`)", False),
        (RepositoryNotFoundError, "repo not found on the Hub (or private: log in)", False),
        (RevisionNotFoundError, f"revision {revision!r} not found", False),
        (
            LocalEntryNotFoundError,
            "not in the local Hugging Face cache and the Hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1)",
            False,
        ),
        (HfHubHTTPError, "Hub request failed", True),
        (OSError, "download failed", True),
        *((kind, "download interrupted (run again to retry)", True) for kind in _network_errors()),
    )
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:
        for kind, text, with_detail in failures:
            if isinstance(exc, kind):
                detail = str(exc).strip().splitlines()[0][:160] if with_detail and str(exc).strip() else ""
                raise TliteError(repo_id, text + (f" ({detail})" if detail else "")) from None
        raise
