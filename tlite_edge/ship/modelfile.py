"""An Ollama Modelfile for a GGUF: Go-template chat format of its family, stops, sampling, context, licence.

Two families: Llama-3 (T-lite-instruct-0.1) and ChatML (Qwen2.5-style T-lite/T-pro 1.0; Qwen3-style
2.x with ``<think>`` reasoning). The family, and a ChatML template's default system prompt, come from
the GGUF's own chat template. The ChatML TEMPLATE renders what the Hugging Face template renders for
the same conversation, in Ollama's terms: ``.System``, ``.Messages`` (``.Role``, ``.Content``,
``.Thinking``, ``.ToolCalls``), ``.Tools``, ``.Think``/``.IsThinkSet`` (tests/test_ollama_template.py
proves it with Go's text/template).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tlite_edge.chat_template import render
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
CHATML_STOPS = ("<|im_end|>", "<|endoftext|>")
MAX_CTX = 8192

# Qwen's tool-calling system block, as the Hugging Face templates write it around the tool list.
TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call><|im_end|>\n"
)
# One assistant tool call (Ollama prints .Function.Arguments as JSON).
TOOL_CALL = (
    '<tool_call>\n{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}\n</tool_call>'
)


def chatml_go_template(default_system: str = "", think: bool = False) -> str:
    """ChatML in Go-template form. ``default_system``: what the HF template writes when no system message
    is given (Qwen2.5's "You are Qwen..."); ``think``: the Qwen3 form (reasoning after the last user
    turn kept as ``<think>…</think>``, and an empty think block when Ollama's think is set to false)."""
    if "{{" in default_system or "}}" in default_system:
        raise TliteError("chat template", "the default system prompt holds '{{' or '}}'")
    alt = f"{{{{ else }}}}{default_system}\n\n" if default_system else ""
    alt_block = f"{{{{ else }}}}<|im_start|>system\n{default_system}<|im_end|>\n" if default_system else ""
    thinking = (
        "{{ if and (gt $i $lastUser) (or $last .Thinking) }}<think>\n{{ .Thinking }}\n</think>\n\n{{ end }}"
        if think
        else ""
    )
    no_think = "{{ if and $.IsThinkSet (not $.Think) }}<think>\n\n</think>\n\n{{ end }}" if think else ""
    return "".join(
        [
            "{{ if .Tools }}<|im_start|>system\n{{ if .System }}{{ .System }}\n\n",
            alt,
            "{{ end }}",
            TOOLS_INTRO,
            '{{ range .Tools }}\n{"type": "function", "function": {{ .Function }}}{{ end }}',
            TOOLS_OUTRO,
            "{{ else if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n",
            alt_block,
            "{{ end }}",
            '{{ $lastUser := -1 }}{{ $prev := "" }}',
            '{{ range $i, $m := .Messages }}{{ if eq $m.Role "user" }}{{ $lastUser = $i }}{{ end }}{{ end }}',
            "{{ range $i, $m := .Messages }}",
            "{{ $rest := slice $.Messages $i }}{{ $last := eq (len $rest) 1 }}",
            '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n',
            '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n',
            thinking,
            "{{ .Content }}{{ $content := .Content }}",
            "{{ range $j, $call := .ToolCalls }}{{ if or $j $content }}\n{{ end }}",
            TOOL_CALL,
            "{{ end }}{{ if not $last }}<|im_end|>\n{{ end }}",
            '{{ else if eq .Role "tool" }}{{ if ne $prev "tool" }}<|im_start|>user{{ end }}',
            "\n<tool_response>\n{{ .Content }}\n</tool_response>",
            '{{ if or $last (ne (index $rest 1).Role "tool") }}<|im_end|>\n{{ end }}',
            "{{ end }}{{ $prev = .Role }}",
            "{{ end }}",
            '{{ if ne $prev "assistant" }}<|im_start|>assistant\n',
            no_think,
            "{{ end }}",
        ]
    )


@dataclass(frozen=True)
class ChatFormat:
    """What the Modelfile writes for one GGUF chat template."""

    family: str  # "llama3", "chatml" or "chatml-think"
    template: str  # the Go template
    stops: tuple[str, ...]


def default_system_prompt(gguf_template: str) -> str:
    """The system prompt a ChatML template writes for a chat without one ("" when it writes none)."""
    text = render(gguf_template, [{"role": "user", "content": "x"}], add_generation_prompt=False)
    head = "<|im_start|>system\n"
    return text[len(head) : text.index("<|im_end|>")] if text.startswith(head) else ""


def chat_format(gguf_template: str | None, where: Path) -> ChatFormat:
    """The Ollama chat format for a GGUF's chat template; one line when no family fits."""
    template = gguf_template or ""
    if "<|start_header_id|>" in template:
        return ChatFormat("llama3", LLAMA3_GO_TEMPLATE, STOPS)
    if "<|im_start|>" in template:
        think = "<think>" in template
        go = chatml_go_template(default_system_prompt(template), think=think)
        return ChatFormat("chatml-think" if think else "chatml", go, CHATML_STOPS)
    raise TliteError(
        where,
        "no Ollama TEMPLATE for this chat template (Llama-3 and ChatML are supported); "
        "LM Studio, Jan and GPT4All read the template from the GGUF",
    )


# Sampling field (runtime.types.Sampling / model data files) -> Ollama PARAMETER name.
OLLAMA_PARAMETERS = {
    "temp": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
}


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
    chat: ChatFormat | None = None,
    sampling: dict[str, float] | None = None,
) -> str:
    """The Modelfile text; ``FROM`` is relative when the GGUF sits in the Modelfile's folder."""
    chat = chat or ChatFormat("llama3", LLAMA3_GO_TEMPLATE, STOPS)
    source = f"./{gguf.name}" if gguf.parent.resolve() == folder.resolve() else str(gguf.resolve())
    num_ctx = min(context_length or MAX_CTX, MAX_CTX)
    params = [(OLLAMA_PARAMETERS[k], v) for k, v in (sampling or {}).items() if k in OLLAMA_PARAMETERS]
    lines = [
        f"# {title} for Ollama, written by tlite-edge export",
        f"FROM {source}",
        f"TEMPLATE {_quoted(chat.template, 'template')}",
        *(f"PARAMETER stop {json.dumps(stop)}" for stop in chat.stops),
        f"PARAMETER num_ctx {num_ctx}",
        *(f"PARAMETER {name} {value:g}" for name, value in params),
    ]
    if system:
        lines.append(f"SYSTEM {_quoted(system, '--system')}")
    lines.append(f"LICENSE {_quoted(license_text, 'license')}")
    return "\n".join(lines) + "\n"
