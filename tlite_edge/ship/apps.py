"""Each desktop app's layout as data plus one small builder per app: what goes where, and in what order."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gguf import Keys

from tlite_edge.errors import TliteError
from tlite_edge.gguf.keys import SAMPLING_KEYS
from tlite_edge.gguf.reader import read_header
from tlite_edge.ship.card import license_text, model_for
from tlite_edge.ship.modelfile import CHATML_STOPS, MAX_CTX, STOPS, chat_format, modelfile
from tlite_edge.ship.paths import FOLDERS, Location, check_name, locate

# Jan's legacy (model.json) prompt format; BOS is left to the runtime, as in the GGUF.
JAN_LEGACY_PROMPT = (
    "<|start_header_id|>system<|end_header_id|>\n\n{system_message}<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
JAN_CHATML_PROMPT = (
    "<|im_start|>system\n{system_message}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
# GGUF architecture -> (Jan legacy prompt, its stops).
JAN_LEGACY = {"llama": (JAN_LEGACY_PROMPT, STOPS[:1])}
JAN_LEGACY.update({arch: (JAN_CHATML_PROMPT, CHATML_STOPS) for arch in ("qwen2", "qwen3")})


@dataclass(frozen=True)
class ModelFacts:
    """What the plan needs from the GGUF header."""

    path: Path
    title: str
    context_length: int | None
    license: str | None
    size: int
    architecture: str = "llama"
    chat_template: str | None = None
    sampling: dict[str, float] = field(default_factory=dict)  # the GGUF's general.sampling.* values

    @classmethod
    def read(cls, path: Path) -> ModelFacts:
        kv = read_header(path).kv
        arch = kv.get(Keys.General.ARCHITECTURE, "llama")
        sampling = {k: float(kv[key]) for k, key in SAMPLING_KEYS.items() if kv.get(key) is not None}
        return cls(
            path,
            str(kv.get(Keys.General.NAME) or path.stem),
            kv.get(Keys.LLM.CONTEXT_LENGTH.format(arch=arch)),
            kv.get(Keys.General.LICENSE),
            path.stat().st_size,
            str(arch),
            kv.get(Keys.Tokenizer.CHAT_TEMPLATE),
            sampling,
        )


@dataclass
class Step:
    """``place`` the GGUF at ``path`` (copy/hardlink/symlink) or ``write`` text rendered from its sha256."""

    action: str
    path: Path
    render: Callable[[str], str] | None = None


@dataclass
class ExportPlan:
    app: str
    location: Location
    name: str
    steps: list[Step] = field(default_factory=list)
    command: list[str] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExportOptions:
    link: str = "copy"
    name: str | None = None
    publisher: str = "tlite-edge"
    system: str | None = None
    folder: Path | None = None  # replaces the app's folder (Ollama: where the Modelfile goes)


def _pick(given: str | None, default: str) -> str:
    return default if given is None else given


def _ollama(facts: ModelFacts, opts: ExportOptions, loc: Location) -> ExportPlan:
    chat = chat_format(facts.chat_template, facts.path)
    known = model_for(facts.title, facts.architecture)
    # the GGUF's sampling keys, and what the data file recommends beyond them (presence_penalty)
    sampling = {**{k: v for k, v in known.sampling.items() if k not in SAMPLING_KEYS}, **facts.sampling}
    name = check_name(_pick(opts.name, facts.path.stem.lower()), "Ollama model name", allow_tag=True)
    folder = opts.folder or facts.path.parent  # a missing --dir is created when the plan runs
    target = folder / f"{name.replace(':', '-')}.Modelfile"
    text = modelfile(
        facts.path,
        folder,
        context_length=facts.context_length,
        system=opts.system,
        license_text=license_text(facts.license, known),
        title=facts.title,
        chat=chat,
        sampling=sampling,
    )
    plan = ExportPlan("ollama", loc, name, [Step("write", target, lambda _sha: text)])
    plan.command = ["ollama", "create", name, "-f", str(target)]
    return plan


def _lmstudio(facts: ModelFacts, opts: ExportOptions, loc: Location) -> ExportPlan:
    publisher = check_name(opts.publisher, "publisher")
    name = check_name(_pick(opts.name, f"{facts.title}-GGUF"), "model folder name")
    dst = loc.folder / publisher / name / facts.path.name
    return ExportPlan("lmstudio", loc, name, [Step(opts.link, dst)])


def _jan(facts: ModelFacts, opts: ExportOptions, loc: Location) -> ExportPlan:
    name = check_name(_pick(opts.name, facts.path.stem), "model name")
    legacy = (loc.folder / "models").is_dir() and not (loc.folder / "llamacpp").is_dir()
    if legacy:
        folder = loc.folder / "models" / name
        plan = ExportPlan("jan", loc, name, [Step(opts.link, folder / facts.path.name)])
        plan.steps.append(Step("write", folder / "model.json", lambda sha: _jan_legacy(facts, name)))
        plan.notes.append("the data folder holds the older models/<id>/model.json layout")
        return plan
    publisher = check_name(opts.publisher, "publisher")
    folder = loc.folder / "llamacpp" / "models" / publisher / name
    rel = (folder / facts.path.name).relative_to(loc.folder).as_posix()
    steps = [Step(opts.link, folder / facts.path.name)]
    steps.append(Step("write", folder / "model.yml", lambda sha: _jan_yml(rel, name, facts.size, sha)))
    return ExportPlan("jan", loc, name, steps)


def _jan_yml(model_path: str, name: str, size: int, sha: str) -> str:
    fields = {"model_path": model_path, "name": name, "size_bytes": size, "model_sha256": sha}
    body = "".join(f"{k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in fields.items())
    return body + "embedding: false\n"


def _jan_legacy(facts: ModelFacts, name: str) -> str:
    prompt, stops = JAN_LEGACY.get(facts.architecture, JAN_LEGACY["llama"])
    data = {
        "sources": [{"filename": facts.path.name, "url": facts.path.name}],
        "id": name,
        "object": "model",
        "name": facts.title,
        "version": "1.0",
        "description": f"{facts.title} (GGUF), exported by tlite-edge",
        "format": "gguf",
        "settings": {
            "ctx_len": min(facts.context_length or MAX_CTX, MAX_CTX),
            "prompt_template": prompt,
            "llama_model_path": facts.path.name,
        },
        "parameters": {"stop": list(stops), "max_tokens": 2048},
        "metadata": {"size": facts.size, "tags": ["gguf", "ru"]},
        "engine": "nitro",
    }
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def _gpt4all(facts: ModelFacts, opts: ExportOptions, loc: Location) -> ExportPlan:
    name = check_name(_pick(opts.name, facts.path.stem), "file name")
    plan = ExportPlan("gpt4all", loc, name, [Step(opts.link, loc.folder / f"{name}.gguf")])
    plan.notes.append("GPT4All reads the chat template from the GGUF; set its context length to 8192")
    return plan


BUILDERS: dict[str, Callable[[ModelFacts, ExportOptions, Location], ExportPlan]] = {
    "ollama": _ollama,
    "lmstudio": _lmstudio,
    "jan": _jan,
    "gpt4all": _gpt4all,
}
APPS = tuple(BUILDERS)


def plan_export(app: str, gguf: Path, opts: ExportOptions) -> ExportPlan:
    """Where every file goes for ``app``; one clear line when the app's folder is missing."""
    facts = ModelFacts.read(gguf)
    use_dir = opts.folder is not None and app != "ollama"  # Ollama: --dir is where the Modelfile goes
    loc = Location(opts.folder, "--dir") if use_dir and opts.folder else locate(app)
    if opts.folder is not None and opts.folder.exists() and not opts.folder.is_dir():
        raise TliteError(opts.folder, "--dir is not a folder")
    if app != "ollama" and not use_dir and not loc.folder.is_dir():  # a missing --dir is created
        spec = FOLDERS[app]
        hint = f"set ${spec.env[0]} or pass --dir" if spec.env else "pass --dir"
        raise TliteError(
            loc.folder, f"{spec.title} {spec.what} not found (is {spec.title} installed and run once? {hint})"
        )
    return BUILDERS[app](facts, opts, loc)
