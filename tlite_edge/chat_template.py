"""Chat templates rendered with Hugging Face semantics, and the corrected Llama-3 template."""

from __future__ import annotations

from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tlite_edge.errors import TliteError

# Llama-3 chat format: BOS once, one header + content + <|eot_id|> per message, and the assistant
# header only when the caller asks for a generation prompt.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- endif %}"
)

PROBES: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "Привет!"}],
    [{"role": "system", "content": "Ты помощник."}, {"role": "user", "content": "Сколько будет 2+2?"}],
    [
        {"role": "system", "content": "Отвечай кратко."},
        {"role": "user", "content": "Столица Франции?"},
        {"role": "assistant", "content": "Париж."},
        {"role": "user", "content": " А Италии? "},
    ],
)


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def render(
    template: str,
    messages: list[dict[str, str]],
    *,
    add_generation_prompt: bool,
    bos_token: str = "<|begin_of_text|>",
    eos_token: str = "<|eot_id|>",
) -> str:
    """Render like ``transformers``' ``apply_chat_template`` (sandboxed, trim/lstrip blocks)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(template).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )


def _renders(template: str, origin: str | Path) -> dict[bool, list[str]]:
    try:
        return {
            flag: [render(template, m, add_generation_prompt=flag) for m in PROBES] for flag in (False, True)
        }
    except jinja2.TemplateError as exc:
        raise TliteError(origin, f"chat template does not render ({exc})") from None


def resolve_chat_template(source: str | None, origin: Path, override: Path | None, fixes: list[str]) -> str:
    """The template to write: the override, the source's when correct, else the corrected Llama-3 one."""
    if override is not None:
        try:
            text = override.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TliteError(override, f"cannot read chat template ({exc})") from None
        _renders(text, override)
        fixes.append(f"chat template from {override.name}")
        return text
    if source is None:
        fixes.append("no chat template in the source: wrote the Llama-3 template")
        return LLAMA3_TEMPLATE
    out = _renders(source, origin)
    if out[False] != out[True]:
        return source
    canonical = _renders(LLAMA3_TEMPLATE, "Llama-3 template")
    if out[True] == canonical[True]:
        fixes.append(
            "chat template ignored add_generation_prompt: replaced by the Llama-3 template that honours it"
        )
        return LLAMA3_TEMPLATE
    raise TliteError(
        origin,
        "chat template ignores add_generation_prompt and is not a Llama-3 template; "
        "pass --chat-template FILE",
    )
