"""Known ways a Llama-3-family GGUF breaks in runtimes, found from its header, and metadata-only fixes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from gguf import GGUFValueType as VT
from gguf import Keys

from tlite_edge.chat_template import LLAMA3_TEMPLATE, PROBES, render
from tlite_edge.fsutil import sidecar_notes
from tlite_edge.gguf.edit import Change
from tlite_edge.gguf.keys import SPECIAL_TOKEN_KEYS
from tlite_edge.gguf.reader import GGUFHeader, GGUFSummary, read_header, summarize
from tlite_edge.gguf_build.verify import TOKENIZER_PARITY

BOS, EOT = "<|begin_of_text|>", "<|eot_id|>"
LLAMA3_MARKERS = (BOS, EOT, "<|start_header_id|>", "<|end_header_id|>")
# Pre-tokenizer labels llama.cpp knows (a GGUF with another label is refused by llama.cpp).
KNOWN_PRE = frozenset(
    {
        "default",
        "llama3",
        "llama-v3",
        "llama-bpe",
        "llama4",
        "deepseek-llm",
        "deepseek-coder",
        "deepseek-v3",
        "falcon",
        "falcon3",
        "mpt",
        "starcoder",
        "gpt-2",
        "gpt2",
        "phi-2",
        "jina-es",
        "jina-de",
        "jina-v1-en",
        "jina-v2-es",
        "jina-v2-de",
        "jina-v2-code",
        "refact",
        "command-r",
        "qwen2",
        "qwen35",
        "stablelm2",
        "olmo",
        "dbrx",
        "smaug-bpe",
        "poro-chat",
        "chatglm-bpe",
        "viking",
        "jais",
        "tekken",
        "smollm",
        "codeshell",
        "bloom",
        "gpt3-finnish",
        "exaone",
        "chameleon",
        "minerva-7b",
        "megrez",
        "gpt-4o",
        "superbpe",
        "trillion",
        "bailingmoe",
        "seed-coder",
        "kimi-k2",
        "grok-2",
        "hunyuan",
        "pixtral",
    }
)


@dataclass
class Finding:
    """One problem: a short code, a line for the user, and the metadata changes that repair it."""

    code: str
    message: str
    changes: dict[str, Change] = field(default_factory=dict)

    @property
    def fixable(self) -> bool:
        return bool(self.changes)


@dataclass
class Model:
    """The header plus what the checks look up often."""

    header: GGUFHeader
    tokens: list[str]
    ids: dict[str, int]
    parity_proved: bool = False  # a tokenizer parity check against the source passed when it was written

    @classmethod
    def of(cls, header: GGUFHeader, verified: Sequence[str] = ()) -> Model:
        tokens = header.kv.get(Keys.Tokenizer.LIST) or []
        ids = {t: i for i, t in enumerate(tokens) if t.startswith("<|") and t.endswith("|>")}
        return cls(header, tokens, ids, any(v.startswith(TOKENIZER_PARITY) for v in verified))

    @property
    def kv(self) -> dict[str, Any]:
        return self.header.kv

    @property
    def llama3(self) -> bool:
        return self.kv.get(Keys.Tokenizer.MODEL) == "gpt2" and all(m in self.ids for m in LLAMA3_MARKERS)

    def token(self, key: str) -> str | None:
        tid = self.kv.get(SPECIAL_TOKEN_KEYS[key])
        return self.tokens[tid] if isinstance(tid, int) and 0 <= tid < len(self.tokens) else None


SMAUG = "smaug-bpe"
PRE_HELP = "decide it with --fix OUT --tokenizer SOURCE (the checkpoint's tokenizer.json, folder or Hub id)"


def check_pre(m: Model) -> Finding | None:
    """The label cannot be proved from the GGUF alone: llama-bpe and smaug-bpe share the Llama-3 regex and
    differ in ignore_merges, a field of the source tokenizer.json. Only that file (or a recorded parity
    check against it) decides; without it the label is reported and left alone."""
    pre = m.kv.get(Keys.Tokenizer.PRE)
    if m.kv.get(Keys.Tokenizer.MODEL) != "gpt2" or m.parity_proved:
        return None
    if pre == SMAUG and m.llama3:
        return Finding(
            "pre-tokenizer",
            f"pre-tokenizer {SMAUG!r} on a Llama-3 vocabulary: the same regex without ignore_merges; "
            "right only if the source tokenizer.json has ignore_merges false — cannot tell from the GGUF "
            f"alone; {PRE_HELP}",
        )
    if pre in KNOWN_PRE:
        return None
    why = (
        "llama.cpp falls back to the default split"
        if pre is None
        else "llama.cpp refuses unknown pre-tokenizers"
    )
    vocab = "a Llama-3 vocabulary" if m.llama3 else "this vocabulary"
    return Finding("pre-tokenizer", f"pre-tokenizer {pre!r} on {vocab}: {why}; {PRE_HELP}")


def check_eos(m: Model) -> Finding | None:
    if EOT not in m.ids:
        return None
    eot = m.ids[EOT]
    fix: dict[str, Change] = {}
    problems = []
    if m.token("eos") != EOT:
        eos_id = m.kv.get(Keys.Tokenizer.EOS_ID)
        problems.append(f"eos is {eos_id} {m.token('eos')}, not the end of turn")
        fix[Keys.Tokenizer.EOS_ID] = (VT.UINT32, None, eot)
    if m.token("eot") != EOT:
        problems.append("no eot token id")
        fix[Keys.Tokenizer.EOT_ID] = (VT.UINT32, None, eot)
    if not problems:
        return None
    return Finding("eos", f"{'; '.join(problems)} ({eot} {EOT}): some runtimes generate past the answer", fix)


def _render(template: str, messages: list[dict[str, str]], gen: bool) -> str | None:
    try:
        return render(template, messages, add_generation_prompt=gen)
    except jinja2.TemplateError:
        return None


def check_template(m: Model) -> Finding | None:
    template = m.kv.get(Keys.Tokenizer.CHAT_TEMPLATE)
    fix = {Keys.Tokenizer.CHAT_TEMPLATE: (VT.STRING, None, LLAMA3_TEMPLATE)} if m.llama3 else {}
    if not template:
        return Finding("template", "no chat template: apps fall back to a guess", fix)
    with_prompt = [_render(template, p, True) for p in PROBES]
    if None in with_prompt:
        return Finding("template", "chat template does not render", fix)
    if with_prompt == [_render(template, p, False) for p in PROBES]:
        return Finding("template", "chat template ignores add_generation_prompt", fix)
    if any((text or "").count(BOS) > 1 for text in with_prompt):
        return Finding("double-bos", "chat template writes <|begin_of_text|> more than once", fix)
    return None


def check_bos(m: Model) -> Finding | None:
    if not m.llama3:
        return None
    fix: dict[str, Change] = {}
    problems = []
    if m.token("bos") != BOS:
        problems.append(f"bos is {m.token('bos')}")
        fix[Keys.Tokenizer.BOS_ID] = (VT.UINT32, None, m.ids[BOS])
    if m.kv.get(Keys.Tokenizer.ADD_BOS) is not True:
        state = "missing" if Keys.Tokenizer.ADD_BOS not in m.kv else "false"
        problems.append(f"add_bos_token {state}: raw text (completion, perplexity) gets no {BOS}")
        fix[Keys.Tokenizer.ADD_BOS] = (VT.BOOL, None, True)
    if m.kv.get(Keys.Tokenizer.ADD_EOS) is True:
        problems.append("add_eos_token true: every prompt would end with an end token")
        fix[Keys.Tokenizer.ADD_EOS] = (VT.BOOL, None, False)
    return Finding("bos", "; ".join(problems), fix) if problems else None


def check_vocab(m: Model) -> Finding | None:
    n = len(m.tokens)
    vocab_tensors = ("token_embd.weight", "output.weight")
    rows = {name: dims[1] for name, dims, _ in m.header.tensors if name in vocab_tensors}
    bad_rows = {k: v for k, v in rows.items() if v != n}
    if bad_rows:
        detail = ", ".join(f"{k} has {v} rows" for k, v in bad_rows.items())
        return Finding("vocab", f"vocabulary has {n} tokens but {detail} (not fixable by metadata)")
    arch = m.kv.get(Keys.General.ARCHITECTURE, "llama")
    declared = m.kv.get(Keys.LLM.VOCAB_SIZE.format(arch=arch))
    if declared is not None and declared != n:
        fix: dict[str, Change] = {Keys.LLM.VOCAB_SIZE.format(arch=arch): (VT.UINT32, None, n)}
        return Finding("vocab", f"{arch}.vocab_size = {declared} but {n} tokens", fix)
    types = m.kv.get(Keys.Tokenizer.TOKEN_TYPE)
    if types is not None and len(types) != n:
        return Finding("vocab", f"{len(types)} token types for {n} tokens (not fixable by metadata)")
    return None


CHECKS: tuple[Callable[[Model], Finding | None], ...] = (
    check_pre,
    check_eos,
    check_template,
    check_bos,
    check_vocab,
)


def find_problems(header: GGUFHeader, verified: Sequence[str] = ()) -> list[Finding]:
    """Known problems of a GGUF; ``verified`` are the parity lines recorded with it (its sidecar)."""
    model = Model.of(header, verified)
    return [f for check in CHECKS if (f := check(model)) is not None]


@dataclass
class Inspection:
    """What ``inspect`` reports: the summary, known problems, and what was proved when it was written."""

    summary: GGUFSummary
    findings: list[Finding]
    verified: list[str]

    def as_dict(self) -> dict[str, Any]:
        info = self.summary.as_dict()
        info["warnings"] = [
            {"code": f.code, "message": f.message, "fixable": f.fixable} for f in self.findings
        ]
        info["verified"] = self.verified
        return info


def inspect_gguf(path: Path) -> Inspection:
    """Summary, problems and recorded proofs (the ``.sha256`` file's notes) of one GGUF."""
    verified = sidecar_notes(path)
    return Inspection(summarize(path), find_problems(read_header(path), verified), verified)
