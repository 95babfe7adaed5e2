"""Chat templates rendered with Hugging Face semantics, and the corrected Llama-3 template."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from tlite_edge.errors import TliteError

# Bounds on rendering a template that came from a file: wall time, output and string sizes, and
# size-like integer arguments of filters (a real chat template comes nowhere near them).
RENDER_SECONDS = 5.0
MAX_CHARS = 16 * 1024 * 1024
MAX_SIZE_ARG = 256
# String methods whose integer argument multiplies memory.
UNSAFE_STR_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
WIDE_FORMAT = re.compile(r"%[-+ #0]*(\*|\d{5,})")

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


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    """``transformers``' ``tojson``: plain ``json.dumps`` (not jinja's HTML-safe one), non-ASCII kept."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return dt.datetime.now().strftime(fmt)


class TemplateLimit(SecurityError):
    """A template went past a rendering bound (time, output or size)."""


def check_size(value: Any) -> None:
    if isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > MAX_CHARS:
        raise TemplateLimit(f"template value larger than {MAX_CHARS} items")


def _check_args(what: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_SIZE_ARG:
            raise TemplateLimit(f"{what}: argument {arg} larger than {MAX_SIZE_ARG}")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox with size bounds on the operations that can exhaust memory."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals.pop("lipsum", None)
        # what transformers' apply_chat_template adds to jinja
        self.filters["tojson"] = _bounded_filter("tojson", _tojson)
        self.globals.update(raise_exception=_raise, strftime_now=_strftime_now)
        for name in ("center", "indent", "wordwrap", "truncate", "format", "batch", "slice"):
            self.filters[name] = _bounded_filter(name, self.filters[name])

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in UNSAFE_STR_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(n, int) and hasattr(seq, "__len__") and len(seq) * n > MAX_CHARS:
                    raise TemplateLimit(f"repetition to {len(seq) * n} items")
        elif operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise TemplateLimit(f"exponent {right} too large")
        elif operator == "+" and hasattr(left, "__len__") and hasattr(right, "__len__"):
            if len(left) + len(right) > MAX_CHARS:
                raise TemplateLimit(f"concatenation to {len(left) + len(right)} items")
        elif operator == "%" and isinstance(left, str) and WIDE_FORMAT.search(left):
            raise TemplateLimit("format width too large")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        result = super().call(__context, __obj, *args, **kwargs)
        check_size(result)
        return result


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_args(name, tuple(a for a in args if isinstance(a, int)), kwargs)
        result = func(*args, **kwargs)
        check_size(result)
        return result

    if hasattr(func, "jinja_pass_arg"):  # keep jinja's context/environment passing marker
        bounded.jinja_pass_arg = func.jinja_pass_arg  # type: ignore[attr-defined]
    return bounded


@contextlib.contextmanager
def time_limit(seconds: float = RENDER_SECONDS) -> Iterator[None]:
    """Abort template code (every ``<template>`` frame, line by line) that runs past ``seconds``."""
    deadline = time.monotonic() + seconds

    def on_line(frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        if time.monotonic() > deadline:
            raise TemplateLimit(f"rendering took longer than {seconds:g} s")
        return on_line

    def on_call(frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        if frame.f_code.co_filename == "<template>":
            return on_line(frame, event, arg)
        return None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)


def bounded_output(chunks: Iterator[str]) -> str:
    """Join rendered chunks, refusing output beyond ``MAX_CHARS``."""
    out: list[str] = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > MAX_CHARS:
            raise TemplateLimit(f"output longer than {MAX_CHARS} characters")
        out.append(chunk)
    return "".join(out)


@functools.lru_cache(maxsize=8)
def compile_template(template: str) -> jinja2.Template:
    """The template compiled in the bounded sandbox with ``transformers``' settings (trim/lstrip blocks,
    loop controls, ``tojson``, ``raise_exception``, ``strftime_now``); compiled once per text."""
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    return env.from_string(template)


def render(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    bos_token: str = "<|begin_of_text|>",
    eos_token: str = "<|eot_id|>",
    **variables: Any,
) -> str:
    """Render like ``transformers``' ``apply_chat_template`` (sandboxed, trim/lstrip blocks), bounded
    in time, output and memory; a template that breaks a bound raises ``TemplateLimit``. ``variables``
    are further template variables (``tools``, ``enable_thinking``, ...)."""
    with time_limit():
        return bounded_output(
            compile_template(template).generate(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
                **variables,
            )
        )


def _renders(template: str, origin: str | Path) -> dict[bool, list[str]]:
    try:
        return {
            flag: [render(template, m, add_generation_prompt=flag) for m in PROBES] for flag in (False, True)
        }
    except Exception as exc:  # a template can make any operation fail (TypeError, OverflowError, ...)
        raise TliteError(origin, f"chat template does not render ({template_failure(exc)})") from None


def template_failure(exc: BaseException) -> str:
    """One line about why a template failed to render."""
    kinds = {RecursionError: "endless recursion", MemoryError: "out of memory"}
    text = kinds.get(type(exc)) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {text[:200]}"


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
