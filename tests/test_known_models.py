"""Known models as data (models/*.toml): the schema check, what convert applies and proves from a data
file (Hub id through a fake Hub, no network), the generic path, doctor's sizes and the release card."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from gguf import Keys

from tlite_edge.cli import main
from tlite_edge.errors import TliteError
from tlite_edge.gguf.reader import read_header
from tlite_edge.gguf_build.verify import vocab_only
from tlite_edge.known_models import (
    Shape,
    default_model,
    find_model,
    known_models,
    load_models,
    model_files,
    read_model_file,
)
from tlite_edge.runtime.fit import TLITE_META, TLITE_PARAMS, kv_cache_bytes
from tlite_edge.runtime.types import Sampling

IM_END, ENDOFTEXT = 151645, 151643


def shape_of(fixture_shape) -> Shape:
    s = fixture_shape
    return Shape(s.hidden, s.layers, s.heads, s.kv_heads, s.head_dim, s.ffn, s.vocab, s.context, s.tied,
                 s.arch == "qwen2", s.arch == "qwen3")  # fmt: skip


def test_builtin_files_load_and_agree_with_the_llama_table() -> None:
    models = known_models()
    assert {p.stem for p in model_files()} == set(models) and len(models) >= 5
    assert default_model().name == "T-lite-instruct-0.1"
    tlite = default_model()
    assert tlite.shape is not None and tlite.shape.n_params == TLITE_PARAMS  # the measured 8.03 B
    assert {k: tlite.gguf_meta()[k] for k in TLITE_META} == TLITE_META
    assert find_model("t-tech/T-lite-it-1.0").name == "T-lite-it-1.0"
    assert find_model("AnatoliiPotapov/T-lite-instruct-0.1") is tlite
    assert find_model("/data/models/T-pro-it-2.0/").name == "T-pro-it-2.0"
    assert find_model("someone/Other-7B") is None
    lite1 = models["T-lite-it-1.0"]
    assert (lite1.architecture, lite1.template_family, lite1.end_of_turn) == (
        "Qwen2ForCausalLM", "chatml", "<|im_end|>",
    )  # fmt: skip
    assert lite1.sampling == {"temp": 0.7, "top_p": 0.8, "top_k": 70, "repeat_penalty": 1.05}
    for model in models.values():
        assert model.caution and model.license_url.startswith("https://huggingface.co/")
        assert model.shape is not None and model.shape.n_params > 7e9


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_shape_params_equal_the_converters_count(arch: str, qwen_models) -> None:
    """Shape.n_params counts what the converter writes (doctor sizes unconverted models by it)."""
    from qwen_fixtures import QWEN2_SHAPE, QWEN3_SHAPE

    shape = shape_of({"qwen2": QWEN2_SHAPE, "qwen3": QWEN3_SHAPE}[arch])
    header = read_header(qwen_models(arch).f32)
    assert shape.n_params == sum(math.prod(dims) for _, dims, _ in header.tensors)
    meta = {k: v for k, v in header.kv.items() if not k.startswith("tokenizer.")}
    known_meta = {**meta, **{k: v for k, v in _meta_of(shape, arch).items()}}
    assert kv_cache_bytes(known_meta, 4096) == kv_cache_bytes(meta, 4096)


def _meta_of(shape: Shape, arch: str) -> dict:
    hf = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[arch]
    model = next(m for m in known_models().values() if m.architecture == hf)
    return type(model)(**{**model.__dict__, "shape": shape}).gguf_meta()


GOOD = (Path(__file__).parents[1] / "models" / "T-lite-it-1.0.toml").read_text(encoding="utf-8")
# mutation of the T-lite-it-1.0 file -> the field the one-line error names
BAD = {
    "missing": (lambda t: re.sub(r'(?m)^caution = """(.|\n)*?"""\n', "", t), "caution: missing"),
    "unknown-field": (lambda t: 'colour = "red"\n' + t, "colour: unknown field"),
    "architecture": (lambda t: t.replace("Qwen2ForCausalLM", "MistralForCausalLM"), "architecture"),
    "family": (lambda t: t.replace('"chatml"', '"vicuna"'), "template_family"),
    "eot-not-eog": (lambda t: t.replace('turn = "<|im_end|>"', 'turn = "<|x|>"'), "end_of_generation"),
    "level": (lambda t: t.replace('"Q6_K"', '"Q9_X"'), "recommended_levels: Q9_X"),
    "sampling-range": (lambda t: t.replace("temp = 0.7", "temp = 9.0"), "sampling.temp"),
    "sampling-field": (lambda t: t.replace("temp = 0.7", "heat = 0.7"), "sampling.heat"),
    "shape-type": (lambda t: t.replace("layers = 28", 'layers = "28"'), "shape.layers"),
    "shape-heads": (lambda t: t.replace("kv_heads = 4", "kv_heads = 5"), "shape.kv_heads"),
    "quirk": (lambda t: t.replace("fix = ", "fixed = ", 1), "quirks[0]"),
    "toml": (lambda t: t + "\n[[[", "not valid TOML"),
    "url": (lambda t: t.replace("https://huggingface.co/t-tech", "http://x"), "license_url"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_model_file_is_one_line_naming_file_and_field(case: str, tmp_path: Path) -> None:
    mutate, field = BAD[case]
    path = tmp_path / "T-lite-it-1.0.toml"
    path.write_text(mutate(GOOD), encoding="utf-8")
    with pytest.raises(TliteError) as err:
        read_model_file(path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(path)) and field in line, line


def test_model_set_rules(tmp_path: Path) -> None:
    one, two = tmp_path / "T-lite-it-1.0.toml", tmp_path / "b" / "Other.toml"
    two.parent.mkdir()
    one.write_text(GOOD.replace('name = "T-lite-it-1.0"', 'name = "T-lite-it-1.0"\ndefault = true'), "utf-8")
    two.write_text(GOOD.replace('name = "T-lite-it-1.0"', 'name = "Other"'), encoding="utf-8")
    with pytest.raises(TliteError, match="t-tech/T-lite-it-1.0 is also in T-lite-it-1.0"):
        load_models([one, two])
    two.write_text(
        GOOD.replace('name = "T-lite-it-1.0"', 'name = "Other"').replace("t-tech/T-lite", "x/T"), "utf-8"
    )
    assert set(load_models([one, two])) == {"T-lite-it-1.0", "Other"}
    with pytest.raises(TliteError, match="exactly one model file must say default = true"):
        load_models([two])


@pytest.fixture(scope="module")
def lite1_gguf(qwen_models, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`tlite-edge convert t-tech/T-lite-it-1.0` with the Hub replaced by the tiny Qwen2 checkpoint."""
    import tlite_edge.source as source

    hf = qwen_models("qwen2").hf
    out = tmp_path_factory.mktemp("lite1")
    mp = pytest.MonkeyPatch()
    mp.setattr(
        source,
        "_download",
        lambda repo_id, revision, patterns: hf if repo_id == "t-tech/T-lite-it-1.0" else None,
    )
    try:
        rc = main(["convert", "t-tech/T-lite-it-1.0", "--out-dir", str(out)])
    finally:
        mp.undo()
    assert rc == 0
    return out / "T-lite-it-1.0-BF16.gguf", (out / "T-lite-it-1.0-BF16.gguf.sha256").read_text(
        encoding="utf-8"
    )


def test_convert_hub_id_applies_the_data_file(lite1_gguf: tuple[Path, str], qwen_models) -> None:
    path, sidecar = lite1_gguf
    with vocab_only(path, path) as llm:  # llama.cpp reads the metadata back
        value = llm.meta
        assert value(Keys.General.NAME) == "T-lite-it-1.0"
        assert float(value(Keys.General.SAMPLING_TEMP)) == pytest.approx(0.7)
        assert float(value(Keys.General.SAMPLING_TOP_P)) == pytest.approx(0.8)
        assert value(Keys.General.SAMPLING_TOP_K) == "70"
        assert float(value(Keys.General.SAMPLING_PENALTY_REPEAT)) == pytest.approx(1.05)
        assert value(Keys.General.LICENSE_LINK) == "https://huggingface.co/t-tech/T-lite-it-1.0/blob/main/LICENSE"
        assert llm.eos == IM_END and llm.text(llm.eos) == "<|im_end|>" and not llm.add_bos
        assert value(Keys.Tokenizer.EOT_ID) == str(IM_END)
        assert llm.lib.llama_vocab_is_eog(llm.vocab, ENDOFTEXT)
    # the runtime takes the recommended sampling from the file
    kv = read_header(path).kv
    got = Sampling.from_metadata(kv)
    assert (got.temp, got.top_p, got.top_k, got.repeat_penalty) == pytest.approx((0.7, 0.8, 70, 1.05))
    assert "# end-of-generation parity 2/2 (<|im_end|>, <|endoftext|>)" in sidecar
    # the generic path (same checkpoint under its own name) writes none of it
    generic = read_header(qwen_models("qwen2").f32).kv
    assert not [k for k in generic if k.startswith("general.sampling.") or k == Keys.General.LICENSE_LINK]


def test_export_of_a_known_model_carries_its_sampling_and_licence(lite1_gguf, tmp_path: Path) -> None:
    from test_export import parse_modelfile

    path, _ = lite1_gguf
    assert main(["export", str(path), "--to", "ollama", "--dir", str(tmp_path), "--name", "t-lite-it"]) == 0
    pairs = parse_modelfile((tmp_path / "t-lite-it.Modelfile").read_text(encoding="utf-8"))
    params = dict(v.split(" ", 1) for d, v in pairs if d == "PARAMETER" and not v.startswith("stop"))
    assert {k: float(v) for k, v in params.items()} == {
        "num_ctx": 8192, "temperature": 0.7, "top_p": 0.8, "top_k": 70, "repeat_penalty": 1.05,
    }  # fmt: skip
    licence = dict(pairs)["LICENSE"]
    assert "t-tech/T-lite-it-1.0/blob/main/LICENSE" in licence and "fine-tuning" in licence


def _folder_named(name: str, src: Path, root: Path) -> Path:
    folder = root / name
    folder.mkdir()
    for item in src.iterdir():
        (folder / item.name).symlink_to(item)
    return folder


def test_data_file_contradicted_by_the_checkpoint(qwen_models, tmp_path: Path, capsys) -> None:
    """A folder named like a Qwen3 model holding a Qwen2 checkpoint: one line, nothing written."""
    folder = _folder_named("T-lite-it-2.1", qwen_models("qwen2").hf, tmp_path)
    assert main(["convert", str(folder), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "T-lite-it-2.1.toml: architecture: the data file says Qwen3ForCausalLM" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unsupported_architecture_keeps_its_line(qwen_models, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "Some-Mistral"
    shutil.copytree(qwen_models("qwen2").hf, folder, symlinks=True)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["MistralForCausalLM"]}))
    assert main(["convert", str(folder), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not supported (supported: LlamaForCausalLM, Qwen2ForCausalLM" in err


@pytest.mark.parametrize("name", ["T-lite-it-1.0", "t-tech/T-pro-it-2.0", "T-lite-it-2.1"])
def test_doctor_sizes_each_known_model(name: str, capsys) -> None:
    assert main(["doctor", "--for", name, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = find_model(name)
    assert model is not None and model.shape is not None
    assert (
        report["known_model"]["name"] == model.name
        and report["known_model"]["n_params"] == model.shape.n_params
    )
    assert report["ctx"] == model.shape.context
    q4 = next(p for p in report["profiles"] if p["profile"] == "Q4_K_M")
    s = model.shape
    kv = 2 * s.layers * s.context * s.kv_heads * s.head_dim * 2  # f16 K and V
    assert q4["ram_needed"] - q4["weights"] >= kv and q4["weights"] == math.ceil(4.90 * s.n_params / 8)


def test_release_card_per_model() -> None:
    from tlite_edge.ship.card import FileRow, render_card

    rows = [FileRow("T-pro-it-2.0-Q4_K_M.gguf", 2**34, "Q4_K_M", 4.9, "32 GB", "default")]
    model = known_models()["T-pro-it-2.0"]
    card = render_card(title="T-pro-it-2.0", base_model=model.hub_id, license_id=None, quantized_by="x",
                       files=rows, extra_files={}, quality={}, repo=None, model=model)  # fmt: skip
    assert model.caution in card and model.license_url in card and '- "qwen3"' in card
    assert "<|im_end|>" in card and "<|eot_id|>" not in card and default_model().caution not in card
    tlite = render_card(title="T-lite-instruct-0.1", base_model=default_model().hub_id, license_id=None,
                        quantized_by="x", files=rows, extra_files={}, quality={}, repo=None)  # fmt: skip
    assert default_model().caution in tlite and '- "llama-3"' in tlite and "<|eot_id|>" in tlite
