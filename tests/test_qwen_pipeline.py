"""The rest of the pipeline on Qwen2/Qwen3 GGUFs: an importance matrix on the default Russian text, the
built-in quantization profiles on the tiny Qwen fixtures, and eval against the F32 conversion.

Every profile runs once (split between the two architectures) with ``TLITE_ALL_PROFILES=1``: about two
minutes on a 2-core machine, because Qwen's 151,936-row embedding and output dominate (the IQ levels
take 20-30 s each). By default four of them run, two per architecture, two with the importance matrix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import llama_cpp
import pytest
from corpus import russian_text
from gguf import Keys

from tlite_edge.evaluate import evaluate
from tlite_edge.gguf.reader import read_header
from tlite_edge.quant.imatrix import load_imatrix
from tlite_edge.quant.levels import calibrate, quantize_levels
from tlite_edge.quant.profiles import load_profiles

# Every built-in profile, split between the two architectures (each profile runs once).
ALL = {"qwen2": ("Q8_0", "Q5_K_M", "Q3_K_M", "IQ4_XS", "IQ2_M"), "qwen3": ("Q6_K", "Q4_K_M", "Q2_K", "IQ3_M")}
QUICK = {"qwen2": ("Q8_0", "Q3_K_M"), "qwen3": ("Q6_K", "Q2_K")}
SPLIT = ALL if os.environ.get("TLITE_ALL_PROFILES") == "1" else QUICK


def test_split_covers_every_profile() -> None:
    assert sorted(sum(ALL.values(), ())) == sorted(load_profiles())


@pytest.fixture(scope="module")
def imatrices(qwen_models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An importance matrix per architecture on the packaged Russian text (2 chunks of 64 tokens)."""
    out = {}
    for arch in SPLIT:
        target = tmp_path_factory.mktemp(f"imx-{arch}") / "q.imatrix.gguf"
        out[arch], _ = calibrate(qwen_models(arch).f32, target, ctx=64, chunks=2)
    return out


@pytest.fixture(scope="module")
def levels(qwen_models, imatrices, tmp_path_factory) -> dict[str, Path]:
    """The levels of SPLIT; the first of each architecture without the importance matrix (unless it
    needs one), the others with it."""
    files = {}
    for arch, names in SPLIT.items():
        src, out = qwen_models(arch).f32, tmp_path_factory.mktemp(f"levels-{arch}")
        for name in names:
            use = imatrices[arch] if name != names[0] or load_profiles()[name].requires_imatrix else None
            (result,) = quantize_levels(src, [name], out, imatrix=use, threads=2, base=f"q-{arch}")
            assert result.path is not None
            files[result.profile] = result.path
    return files


@pytest.mark.parametrize("arch", list(SPLIT))
def test_imatrix_on_default_russian_text(arch: str, imatrices, qwen_models) -> None:
    model = qwen_models(arch).f32
    imatrix = load_imatrix(imatrices[arch], model)  # validated against the model's tensors
    attn_q = [name for name in imatrix if name.endswith("attn_q.weight")]
    assert len(attn_q) == 2  # both layers
    header = read_header(imatrices[arch])
    assert header.kv.get("imatrix.chunk_count") == 2 and header.kv.get("imatrix.chunk_size") == 64


@pytest.mark.parametrize("level", sorted(sum(SPLIT.values(), ())))
def test_each_profile_on_qwen(level: str, levels: dict[str, Path]) -> None:
    path = levels[level]
    kv = read_header(path).kv
    profile = load_profiles()[level]
    assert kv[Keys.General.FILE_TYPE] == profile.ftype_id
    assert kv[Keys.General.ARCHITECTURE] in ("qwen2", "qwen3")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, verbose=False)
    try:
        ids = llm.tokenize("Привет, мир".encode(), add_bos=False)
        out = llm.generate(ids, temp=0.0)
        assert isinstance(next(out), int)  # llama.cpp runs a forward pass on it
    finally:
        llm.close()


def test_eval_on_qwen(qwen_models, levels: dict[str, Path], tmp_path: Path) -> None:
    text = tmp_path / "ru.txt"
    text.write_text(russian_text(), encoding="utf-8")
    ref = qwen_models("qwen3").f32
    report = evaluate(ref, [levels["Q6_K"], levels["Q2_K"]], text, ctx=48, chunks=1, threads=2)
    q6, q2 = (c.as_dict() for c in report.candidates)
    assert 0 < q6["kld_mean"] < q2["kld_mean"] and q6["top1"] >= q2["top1"]
    json.dumps(report.as_dict())  # serialisable as the CLI writes it


@pytest.mark.parametrize("app", ["lmstudio", "jan", "jan-legacy", "gpt4all"])
def test_desktop_apps_take_qwen_files(app: str, qwen_models, tmp_path: Path) -> None:
    """LM Studio, Jan and GPT4All read the template from the GGUF: the file is placed as for Llama; Jan's
    older model.json layout gets the ChatML prompt and stops."""
    from tlite_edge.cli import main

    src = qwen_models("qwen3").f32
    folder = tmp_path / app
    if app == "jan-legacy":
        (folder / "models").mkdir(parents=True)
    to = app.removesuffix("-legacy")
    assert (
        main(["export", str(src), "--to", to, "--dir", str(folder), "--link", "symlink", "--name", "q3"]) == 0
    )
    placed = [p for p in folder.rglob("*.gguf")]
    assert len(placed) == 1 and placed[0].resolve() == src.resolve()
    if app == "jan-legacy":
        settings = json.loads((folder / "models" / "q3" / "model.json").read_text(encoding="utf-8"))
        assert settings["settings"]["prompt_template"].startswith(
            "<|im_start|>system\n{system_message}<|im_end|>"
        )
        assert settings["parameters"]["stop"] == ["<|im_end|>", "<|endoftext|>"]
