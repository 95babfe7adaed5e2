"""An Ollama Modelfile for a Llama-3-format GGUF: Go-template chat format, stops, context, licence."""

from __future__ import annotations

import json
from pathlib import Path

from tlite_edge.errors import TliteError

# Llama-3 chat format in Ollama's Go-template syntax: the system prompt, every turn, then the
# assistant header. No <|begin_of_text|>: Ollama's runtime adds BOS itself (the GGUF says so).
LLAMA3_GO_TEMPLATE = (
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>\n"
    "{{- end }}\n"
    "{{- range .Messages }}\n"
    '{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n'
    "{{ .Content }}<|eot_id|>\n"
    "{{- end }}\n"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
STOPS = ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")
MAX_CTX = 8192


def _quoted(text: str, what: str) -> str:
    """A triple-quoted Modelfile value; Ollama has no escape for a literal triple quote."""
    if '"""' in text:
        raise TliteError(what, 'text may not contain """ (Ollama cannot quote it)')
    return f'"""{text}"""'


def modelfile(
    gguf: Path,
    folder: Path,
    *,
    context_length: int | None,
    system: str | None,
    license_text: str,
    title: str,
) -> str:
    """The Modelfile text; ``FROM`` is relative when the GGUF sits in the Modelfile's folder."""
    source = f"./{gguf.name}" if gguf.parent.resolve() == folder.resolve() else str(gguf.resolve())
    num_ctx = min(context_length or MAX_CTX, MAX_CTX)
    lines = [
        f"# {title} for Ollama, written by tlite-edge export",
        f"FROM {source}",
        f"TEMPLATE {_quoted(LLAMA3_GO_TEMPLATE, 'template')}",
        *(f"PARAMETER stop {json.dumps(stop)}" for stop in STOPS),
        f"PARAMETER num_ctx {num_ctx}",
    ]
    if system:
        lines.append(f"SYSTEM {_quoted(system, '--system')}")
    lines.append(f"LICENSE {_quoted(license_text, 'license')}")
    return "\n".join(lines) + "\n"
