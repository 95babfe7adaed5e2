"""The Hub model card of a release: YAML front-matter, files and sizes, quality, how to run, caution."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlite_edge.errors import TliteError
from tlite_edge.known_models import KnownModel, default_model, find_model, generic_model

UPSTREAM = default_model().hub_id
# The upstream card's warning, in our own words (the default model's data file).
CAUTION = default_model().caution
EVAL_FIELDS = ("size", "ppl", "kld_mean", "kld_p99", "top1")
# Template family -> what the conversion guarantees, for the card's opening paragraph.
FAMILY_NOTES = {
    "llama3": (
        "ends turns at `<|eot_id|>` (eos = eot = 128009), labels the pre-tokenizer from the source "
        "tokenizer.json (split regex and `ignore_merges`) and proves on the written file that llama.cpp "
        "tokenizes exactly as Hugging Face `tokenizers` does, adds `<|begin_of_text|>` exactly once, and "
        "carries a Llama-3 chat template that honours `add_generation_prompt`."
    ),
    "chatml": (
        "ends turns at `<|im_end|>` (eos = eot; `<|endoftext|>` ends generation too, proved in llama.cpp), "
        "adds no BOS, labels the pre-tokenizer from the source tokenizer.json and proves on the written file "
        "that llama.cpp tokenizes exactly as Hugging Face `tokenizers` does, and carries the model's own "
        "ChatML template (tools included)."
    ),
}
FAMILY_NOTES["chatml-think"] = FAMILY_NOTES["chatml"].replace("(tools included)", "(reasoning and tools)")
ARCH_TAGS = {"LlamaForCausalLM": "llama-3", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}


def model_for(name: str | None, architecture: str | None, base_model: str = "") -> KnownModel:
    """The known model a GGUF's ``general.name`` (or the card's base model) names; a Llama file of another
    name is taken for T-lite-instruct-0.1 (the default), any other one for a generic model of its
    architecture."""
    for found in (find_model(name), find_model(base_model)):
        if found is not None and architecture in (None, found.gguf_arch):
            return found
    if architecture in (None, "llama"):
        return default_model()
    return generic_model(name or "model", architecture, base_model)


def license_text(license_id: str | None, model: KnownModel | None = None) -> str:
    """Licence note for the Modelfile and the card: the weights keep the upstream licence."""
    model = model if model is not None else default_model()
    lic = license_id or model.license or "as stated by the upstream model card"
    return f"Model weights: licence {lic}; see {model.license_url}.\n\n{model.caution}"


@dataclass(frozen=True)
class FileRow:
    """One file of the release as the card lists it."""

    name: str
    size: int
    level: str | None = None  # quantization level, None for non-model files
    bpw: float | None = None
    target: str = ""
    description: str = ""


def read_eval(path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Quality rows keyed by file name from an ``eval`` JSON, and warnings for what was skipped.

    Tolerant: a list of candidates, ``{"candidates": [...]}`` or ``{"results": [...]}``, or a mapping
    of file name -> fields; missing fields are shown as a dash, unknown fields ignored.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TliteError(path, f"cannot read the eval JSON ({exc})") from None
    if isinstance(data, dict):
        items = data.get("candidates", data.get("results"))
        if items is None:
            items = [{"file": k, **v} for k, v in data.items() if isinstance(v, dict)]
    else:
        items = data
    rows: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("file"), str):
            warnings.append(f"{path.name}: skipped an entry without a file name")
            continue
        rows[Path(item["file"]).name] = {k: item.get(k) for k in EVAL_FIELDS}
    if not rows:
        warnings.append(f"{path.name}: no candidates found; the card has no quality table")
    return rows, warnings


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def front_matter(
    base_model: str, license_id: str | None, quantized_by: str, imatrix: bool, arch_tag: str = "llama-3"
) -> str:
    tags = ["gguf", "llama-cpp", arch_tag, "russian", "t-lite", "quantized"]
    tags += ["imatrix"] if imatrix else []
    fields: list[tuple[str, Any]] = [
        ("base_model", base_model),
        ("base_model_relation", "quantized"),
        ("language", ["ru"]),
        ("license", license_id or "other"),
        ("tags", tags),
        ("pipeline_tag", "text-generation"),
        ("quantized_by", quantized_by),
    ]
    lines = ["---"]
    for key, value in fields:
        if isinstance(value, list):
            lines += [f"{key}:", *(f"- {json.dumps(v)}" for v in value)]
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join([*lines, "---", ""])


def render_card(
    *,
    title: str,
    base_model: str,
    license_id: str | None,
    quantized_by: str,
    files: list[FileRow],
    extra_files: dict[str, str],
    quality: dict[str, dict[str, Any]],
    repo: str | None,
    model: KnownModel | None = None,
) -> str:
    """README.md of a release. ``extra_files``: file name -> what it is (imatrix, checksums...);
    ``model``: the known model (licence, caution, template family), T-lite-instruct-0.1 by default."""
    model = model if model is not None else default_model()
    license_id = license_id or model.license
    models = [f for f in files if f.level]
    repo_ref = repo or f"<you>/{title}-GGUF"
    pick = next((f for f in models if f.level == "Q4_K_M"), models[0] if models else None)
    example = pick.name if pick else f"{title}-Q4_K_M.gguf"
    level = pick.level if pick else "Q4_K_M"
    imatrix = any("imatrix" in n for n in extra_files)
    out = [front_matter(base_model, license_id, quantized_by, imatrix, ARCH_TAGS[model.architecture])]
    out += [
        f"# {title} — GGUF",
        "",
        f"GGUF files of [{base_model}](https://huggingface.co/{base_model}) for llama.cpp and the apps "
        "built on it, converted and quantized with tlite-edge. The conversion "
        + FAMILY_NOTES[model.template_family],
        "",
        "## Intended use",
        "",
        model.caution,
        "",
        "## Files",
        "",
        "| file | level | size (GiB) | bits/weight | for | notes |",
        "|---|---|---:|---:|---|---|",
    ]
    for f in models:
        bpw = _fmt(f.bpw, ".2f") if f.bpw else "—"
        size = f"{f.size / 2**30:.2f}"
        out.append(f"| `{f.name}` | {f.level} | {size} | {bpw} | {f.target} | {f.description} |")
    out.append("")
    out += [f"- `{name}` — {what}" for name, what in extra_files.items()]
    if quality:
        out += [
            "",
            "## Quality",
            "",
            "Measured with `tlite-edge eval` against the unquantized model (lower perplexity and KL "
            "divergence are better; top-1 is how often the most likely next token is unchanged).",
            "",
            "| file | size (GiB) | perplexity | KLD mean | KLD p99 | top-1 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for f in files:
            q = quality.get(f.name)
            if q is None:
                continue
            size = q.get("size") if isinstance(q.get("size"), (int, float)) else f.size
            top1 = q.get("top1")
            top1_s = _fmt(top1 * 100 if isinstance(top1, float) and top1 <= 1 else top1, ".1f")
            out.append(
                f"| `{f.name}` | {size / 2**30:.2f} | {_fmt(q.get('ppl'), '.3f')} | "
                f"{_fmt(q.get('kld_mean'), '.4f')} | {_fmt(q.get('kld_p99'), '.3f')} | {top1_s} % |"
            )
    out += [
        "",
        "## Run it",
        "",
        "llama.cpp:",
        "",
        "```sh",
        f"llama-cli -m {example} -cnv -c 8192",
        f"llama-server -m {example} -c 8192",
        "```",
        "",
        "Ollama (straight from the Hub, or from a downloaded file with its own Modelfile):",
        "",
        "```sh",
        f"ollama run hf.co/{repo_ref}:{level}",
        f"tlite-edge export {example} --to ollama",
        "```",
        "",
        f"LM Studio: search for `{repo_ref}` in the app, or put a downloaded file in place with "
        f"`tlite-edge export {example} --to lmstudio` (also `--to jan` and `--to gpt4all`).",
        "",
        "tlite-edge (Python, llama.cpp through llama-cpp-python; one chat turn, streamed):",
        "",
        "```sh",
        f'tlite-edge run {example} "Привет! Расскажи о себе."',
        "```",
        "",
        "## Checksums",
        "",
        "`sha256sum -c SHA256SUMS` checks every file.",
        "",
        "## Licence",
        "",
        license_text(license_id, model).split("\n\n")[0],
        "",
    ]
    return "\n".join(out)
