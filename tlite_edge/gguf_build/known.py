"""What a known model's data file (``models/<Name>.toml``) changes in a conversion, and what it checks.

The file's facts are applied as data: the end-of-turn token by its text, whether BOS is added, the
recommended sampling as ``general.sampling.*`` keys, the licence link. What the checkpoint itself
contradicts (another architecture, no such end-of-turn token, a template of another family) is one
line naming the data file and the field.
"""

from __future__ import annotations

from gguf import GGUFValueType as VT
from gguf import Keys

from tlite_edge.chat_template import render
from tlite_edge.checkpoint.hfconfig import ModelConfig
from tlite_edge.checkpoint.tokenizer import Vocab
from tlite_edge.errors import TliteError
from tlite_edge.gguf.keys import SAMPLING_KEYS
from tlite_edge.gguf.writer import GGUFLayout
from tlite_edge.known_models import KnownModel

# Template family -> text every rendered chat of that family holds, and text its template must hold.
FAMILY_MARKERS: dict[str, tuple[str, str]] = {
    "llama3": ("<|start_header_id|>user<|end_header_id|>", ""),
    "chatml": ("<|im_start|>user\n", ""),
    "chatml-think": ("<|im_start|>user\n", "<think>"),
}


def apply_to_vocab(known: KnownModel, cfg: ModelConfig, vocab: Vocab) -> None:
    """Check the architecture, set end of turn and BOS as the data file says (recorded as fixes)."""
    where = known.path or known.name
    if cfg.architecture != known.architecture:
        raise TliteError(
            where,
            f"architecture: the data file says {known.architecture}, config.json says {cfg.architecture}",
        )
    eot = vocab.id_of(known.end_of_turn)
    if eot is None:
        raise TliteError(where, f"end_of_turn: {known.end_of_turn!r} is not in the checkpoint's vocabulary")
    missing = [t for t in known.end_of_generation if vocab.id_of(t) is None]
    if missing:
        raise TliteError(where, f"end_of_generation: {missing[0]!r} is not in the checkpoint's vocabulary")
    if (vocab.eot_id, vocab.eos_id) != (eot, eot):
        vocab.fixes.append(f"eos/eot -> {eot} {known.end_of_turn} ({known.name} data file)")
        vocab.eot_id = vocab.eos_id = eot
    if vocab.add_bos != known.add_bos:
        vocab.fixes.append(f"add_bos -> {str(known.add_bos).lower()} ({known.name} data file)")
        vocab.add_bos = known.add_bos


def check_template(known: KnownModel, template: str, vocab: Vocab) -> None:
    """The template that will be written renders a chat of the data file's template family."""
    rendered_marker, source_marker = FAMILY_MARKERS[known.template_family]
    chat = [{"role": "user", "content": "Привет!"}]
    text = render(
        template,
        chat,
        add_generation_prompt=True,
        bos_token=vocab.template_bos,
        eos_token=vocab.template_eos,
    )
    if rendered_marker not in text or source_marker not in template:
        raise TliteError(
            known.path or known.name,
            f"template_family: the checkpoint's chat template is not {known.template_family} "
            f"(a user turn renders as {text[:60]!r})",
        )


def add_known_metadata(layout: GGUFLayout, known: KnownModel) -> None:
    """Recommended sampling (the keys llama.cpp defines) and the licence link."""
    for name, key in SAMPLING_KEYS.items():
        if name in known.sampling:
            value = known.sampling[name]
            layout.add(key, VT.INT32 if name == "top_k" else VT.FLOAT32, value)
    layout.add(Keys.General.LICENSE_LINK, VT.STRING, known.license_url)
