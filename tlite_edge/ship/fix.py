"""``inspect --fix``: a copy with corrected metadata. What the GGUF itself proves (eos/eot, BOS flags,
template, vocab size) is always fixed; the pre-tokenizer label only from the source tokenizer.json,
and then the copy must pass the tokenizer parity check before it is renamed into place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFValueType as VT
from gguf import Keys

from tlite_edge.checkpoint.hfconfig import read_json
from tlite_edge.checkpoint.tokenizer import detect_pre_tokenizer
from tlite_edge.errors import TliteError
from tlite_edge.fsutil import sidecar_notes
from tlite_edge.gguf.edit import Change, rewrite_metadata
from tlite_edge.gguf.reader import GGUFHeader, read_header
from tlite_edge.gguf_build.verify import verify_gguf
from tlite_edge.ship.checks import PRE_HELP, Finding, find_problems
from tlite_edge.source import TOKENIZER_PATTERNS, resolve_source

PRE_KEY = Keys.Tokenizer.PRE


@dataclass
class FixResult:
    path: Path
    data_sha256: str
    changes: dict[str, Change]
    label: str  # what was decided about the pre-tokenizer label, in words
    verified: list[str] = field(default_factory=list)
    left: list[Finding] = field(default_factory=list)


def tokenizer_file(spec: str, revision: str | None = None) -> Path:
    """``--tokenizer``: a tokenizer.json, a folder holding one, or a Hub repo id (only tokenizer files)."""
    local = Path(spec).expanduser()
    if local.is_file():
        return local
    folder = local if local.is_dir() else resolve_source(spec, revision, TOKENIZER_PATTERNS)[0]
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TliteError(path, "missing tokenizer (tokenizer.json is required)")
    return path


def check_same_vocab(header: GGUFHeader, tok: dict[str, Any], path: Path) -> None:
    """The tokenizer.json must hold the GGUF's own vocabulary (same text at every id)."""
    tokens = header.kv.get(Keys.Tokenizer.LIST) or []
    model = tok.get("model") if isinstance(tok.get("model"), dict) else {}
    entries = dict(model.get("vocab") or {})
    entries.update({a["content"]: a["id"] for a in tok.get("added_tokens") or [] if isinstance(a, dict)})
    wrong = [(text, i) for text, i in entries.items() if not isinstance(i, int) or not 0 <= i < len(tokens)]
    wrong += [(text, i) for text, i in entries.items() if (text, i) not in wrong and tokens[i] != text]
    if wrong:
        text, i = min(wrong, key=lambda e: e[1] if isinstance(e[1], int) else -1)
        here = tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else "nothing"
        raise TliteError(
            path,
            f"not this GGUF's tokenizer: {len(wrong)} of {len(entries)} tokens differ "
            f"(id {i} is {text!r} here, {here!r} in the GGUF)",
        )


def fix_gguf(src: Path, out: Path, tokenizer: str | None = None, revision: str | None = None) -> FixResult:
    """Write ``out``: ``src`` with its known metadata problems fixed, tensor data byte for byte."""
    header = read_header(src)
    changes = {k: v for f in find_problems(header, sidecar_notes(src)) for k, v in f.changes.items()}
    current = header.kv.get(PRE_KEY)
    if tokenizer is None:
        label = f"pre-tokenizer {current!r} left as it is (cannot be decided from the GGUF; {PRE_HELP})"
        if not changes:
            raise TliteError(src, "nothing that --fix can repair; no copy written")
        digest = rewrite_metadata(src, out, changes)
        return FixResult(out, digest, changes, label, left=find_problems(read_header(out)))

    tok_path = tokenizer_file(tokenizer, revision)
    tok = read_json(tok_path)
    wanted = detect_pre_tokenizer(tok, tok_path)
    check_same_vocab(header, tok, tok_path)
    if current != wanted:
        changes[PRE_KEY] = (VT.STRING, None, wanted)
        label = (
            f"pre-tokenizer {current!r} -> {wanted!r}, from the source tokenizer's split and ignore_merges"
        )
    else:
        label = f"pre-tokenizer {wanted!r} confirmed by the source tokenizer's split and ignore_merges"
    if not changes:
        proved = "; ".join(map(str, verify_gguf(src, src, tok_path)))
        raise TliteError(src, f"nothing that --fix can repair ({label}; {proved}); no copy written")
    verified: list[str] = []

    def check(tmp: Path) -> list[str]:
        verified.extend(map(str, verify_gguf(tmp, out, tok_path)))
        return verified

    digest = rewrite_metadata(src, out, changes, check)
    return FixResult(out, digest, changes, label, verified, find_problems(read_header(out), verified))
