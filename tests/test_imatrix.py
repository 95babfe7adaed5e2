"""``tlite-edge imatrix``: statistics from real llama.cpp runs, checked against an independent numpy
forward pass; the file byte-identical to what ggml's own GGUF writer makes of the same calls as
``llama-imatrix``; validation against models; llama.cpp's quantizer accepting the result."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import llama_cpp
import llama_cpp._logger as lcpp_logger
import numpy as np
import pytest
from conftest import run_cli
from corpus import russian_text
from reference_llama import ReferenceLlama, rms_norm, silu
from tokenizers import Tokenizer

from tlite_edge.errors import TliteError
from tlite_edge.quant import ggml_ctypes as gg
from tlite_edge.quant.imatrix import (
    Imatrix,
    ImatrixEntry,
    collect,
    load_imatrix,
    read_imatrix,
    write_imatrix,
)
from tlite_edge.quant.llama_log import capture_log

CTX, CHUNKS, BOS = 128, 3, 128000


@pytest.fixture(scope="module")
def f32_imatrix(f32_gguf: Path) -> Imatrix:
    return collect(f32_gguf, russian_text(), ctx=CTX, chunks=CHUNKS, dataset="rus.txt")


def reference_sums(standin_dir: Path, text: str) -> dict[str, np.ndarray]:
    """Per-column sums of squared matmul inputs from the float64 reference, chunked as llama-imatrix."""
    ref = ReferenceLlama(standin_dir)
    tokens = Tokenizer.from_file(str(standin_dir / "tokenizer.json")).encode(text, add_special_tokens=False)
    ids = [BOS, *tokens.ids]  # the GGUF adds BOS; the upstream tokenizer.json does not
    cos, sin = ref._rope(CTX)
    sums: dict[str, np.ndarray] = {}

    def add(name: str, x: np.ndarray) -> None:
        sums[name] = sums.get(name, 0.0) + (x * x).sum(axis=0)

    for i in range(CHUNKS):
        chunk = np.array(ids[i * CTX : (i + 1) * CTX])
        chunk[0] = BOS
        x = ref.w["model.embed_tokens.weight"][chunk].astype(np.float64)
        for layer in range(ref.n_layers):
            p, blk = f"model.layers.{layer}.", f"blk.{layer}."
            h = rms_norm(x, ref._p(p + "input_layernorm.weight"), ref.eps)
            for proj in ("attn_q", "attn_k", "attn_v"):
                add(f"{blk}{proj}.weight", h)
            o_proj = ref.w[p + "self_attn.o_proj.weight"]
            ref.w[p + "self_attn.o_proj.weight"] = np.eye(*o_proj.shape, dtype=np.float32)
            add(blk + "attn_output.weight", ref._attention(h, p, cos, sin))  # o_proj's input
            ref.w[p + "self_attn.o_proj.weight"] = o_proj
            x = x + ref._attention(h, p, cos, sin)
            h = rms_norm(x, ref._p(p + "post_attention_layernorm.weight"), ref.eps)
            add(blk + "ffn_gate.weight", h)
            add(blk + "ffn_up.weight", h)
            gate, up = h @ ref._p(p + "mlp.gate_proj.weight").T, h @ ref._p(p + "mlp.up_proj.weight").T
            add(blk + "ffn_down.weight", silu(gate) * up)
            x = x + ref._mlp(h, p)
        add("output.weight", rms_norm(x, ref._p("model.norm.weight"), ref.eps))
    return sums


def test_values_match_numpy_reference(f32_imatrix: Imatrix, standin_dir: Path) -> None:
    expected = reference_sums(standin_dir, russian_text())
    assert sorted(f32_imatrix.entries) == sorted(expected)
    assert (f32_imatrix.chunk_count, f32_imatrix.chunk_size, f32_imatrix.datasets) == (
        CHUNKS,
        CTX,
        ["rus.txt"],
    )
    for name, want in expected.items():
        entry = f32_imatrix.entries[name]
        assert entry.in_sum2.shape == (1, want.size) and entry.in_sum2.dtype == np.float32
        assert entry.counts.tolist() == [CHUNKS * CTX]
        # layer 0's attention input is RMSNorm(embedding) * weight: exact up to float32 rounding;
        # deeper inputs go through llama.cpp's F16 KV cache
        rtol = 1e-5 if name.startswith("blk.0.attn_") and name != "blk.0.attn_output.weight" else 5e-3
        np.testing.assert_allclose(entry.in_sum2[0], want, rtol=rtol, err_msg=name)
        np.testing.assert_allclose(entry.in_sum2.sum(), want.sum(), rtol=1e-4, err_msg=name)


def ggml_write(imatrix: Imatrix, path: Path) -> None:
    """Write an imatrix with ggml's own GGUF writer, making the calls llama-imatrix's save makes."""
    lib = gg.libggml()

    class InitParams(ctypes.Structure):
        _fields_ = [
            ("mem_size", ctypes.c_size_t),
            ("mem_buffer", ctypes.c_void_p),
            ("no_alloc", ctypes.c_bool),
        ]

    c_p, c_s = ctypes.c_void_p, ctypes.c_char_p
    lib.ggml_init.restype, lib.ggml_init.argtypes = c_p, [InitParams]
    lib.ggml_new_tensor_2d.restype = gg.TensorP
    lib.ggml_new_tensor_2d.argtypes = [c_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    lib.ggml_set_name.restype, lib.ggml_set_name.argtypes = gg.TensorP, [gg.TensorP, c_s]
    lib.gguf_init_empty.restype = c_p
    lib.gguf_set_val_str.argtypes = [c_p, c_s, c_s]
    lib.gguf_set_arr_str.argtypes = [c_p, c_s, ctypes.POINTER(c_s), ctypes.c_size_t]
    lib.gguf_set_val_u32.argtypes = [c_p, c_s, ctypes.c_uint32]
    lib.gguf_add_tensor.argtypes = [c_p, gg.TensorP]
    lib.gguf_write_to_file.restype, lib.gguf_write_to_file.argtypes = ctypes.c_bool, [c_p, c_s, ctypes.c_bool]

    ctx = lib.ggml_init(InitParams(64 << 20, None, False))
    gctx = lib.gguf_init_empty()
    lib.gguf_set_val_str(gctx, b"general.type", b"imatrix")
    datasets = (c_s * len(imatrix.datasets))(*(d.encode() for d in imatrix.datasets))
    lib.gguf_set_arr_str(gctx, b"imatrix.datasets", datasets, len(imatrix.datasets))
    lib.gguf_set_val_u32(gctx, b"imatrix.chunk_count", imatrix.chunk_count)
    lib.gguf_set_val_u32(gctx, b"imatrix.chunk_size", imatrix.chunk_size)
    for name in sorted(imatrix.entries):
        entry = imatrix.entries[name]
        n_mat, n_cols = entry.in_sum2.shape
        for suffix, values, ne0 in ((".in_sum2", entry.in_sum2, n_cols), (".counts", entry.counts, 1)):
            t = lib.ggml_new_tensor_2d(ctx, gg.GGML_TYPE_F32, ne0, n_mat)
            lib.ggml_set_name(t, (name + suffix).encode())
            data = np.ascontiguousarray(values, dtype=np.float32)
            ctypes.memmove(t.contents.data, data.ctypes.data, data.nbytes)
            lib.gguf_add_tensor(gctx, t)
    assert lib.gguf_write_to_file(gctx, str(path).encode(), False)
    lib.gguf_free(gctx)
    lib.ggml_free(ctx)


def test_file_is_llama_imatrix_format(f32_imatrix: Imatrix, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.imatrix.gguf", tmp_path / "ggml.imatrix.gguf"
    write_imatrix(f32_imatrix, ours)
    ggml_write(f32_imatrix, theirs)
    assert ours.read_bytes() == theirs.read_bytes()
    back = read_imatrix(ours)
    assert (back.chunk_count, back.chunk_size, back.datasets) == (CHUNKS, CTX, ["rus.txt"])
    assert sorted(back.entries) == sorted(f32_imatrix.entries)
    for name, entry in f32_imatrix.entries.items():
        np.testing.assert_array_equal(back.entries[name].in_sum2, entry.in_sum2)
        np.testing.assert_array_equal(back.entries[name].counts, entry.counts)
    # stacked (expert-style) entries keep their [n_mat, n_cols] layout too
    moe = Imatrix(
        {
            "blk.0.ffn_up_exps.weight": ImatrixEntry(
                np.arange(12, dtype=np.float32).reshape(3, 4), np.array([5, 0, 7], np.float32)
            )
        },
        2,
        8,
        [],
    )
    write_imatrix(moe, ours)
    ggml_write(moe, theirs)
    assert ours.read_bytes() == theirs.read_bytes()
    np.testing.assert_array_equal(
        read_imatrix(ours).entries["blk.0.ffn_up_exps.weight"].in_sum2,
        moe.entries["blk.0.ffn_up_exps.weight"].in_sum2,
    )
    importance = moe.importance()["blk.0.ffn_up_exps.weight"]
    expected = np.array([0, 1, 2, 3, 1, 1, 1, 1, 8, 9, 10, 11], np.float32) / np.float32(
        [5] * 4 + [1] * 4 + [7] * 4
    )
    np.testing.assert_array_equal(importance, expected)  # in_sum2 / counts; 1 where counts == 0


def test_load_imatrix_validates_against_model(
    f32_imatrix: Imatrix, f32_gguf: Path, bf16_gguf: Path, tmp_path: Path
) -> None:
    path = write_imatrix(f32_imatrix, tmp_path / "good.imatrix.gguf")
    importance = load_imatrix(path, bf16_gguf)
    assert sorted(importance) == sorted(f32_imatrix.entries)
    q = f32_imatrix.entries["blk.0.attn_q.weight"]
    np.testing.assert_allclose(importance["blk.0.attn_q.weight"], q.in_sum2[0] / (CHUNKS * CTX), rtol=1e-6)
    assert all(v.dtype == np.float32 and v.ndim == 1 and v.flags.c_contiguous for v in importance.values())

    def variant(name: str, edit: dict[str, ImatrixEntry | None]) -> Path:
        entries = dict(f32_imatrix.entries)
        for key, value in edit.items():
            if value is None:
                entries.pop(key)
            else:
                entries[key] = value
        return write_imatrix(Imatrix(entries, CHUNKS, CTX, ["x"]), tmp_path / f"{name}.imatrix.gguf")

    wide = ImatrixEntry(np.ones((1, 1024), np.float32), np.array([384], np.float32))  # another ffn size
    cases = {
        "narrow": ({"blk.1.ffn_down.weight": wide}, "blk.1.ffn_down.weight has 1024 values, its rows in"),
        "deeper": ({"blk.2.attn_q.weight": q}, "blk.2.attn_q.weight is not a tensor of"),
        "partial": ({"blk.1.attn_v.weight": None}, "no data for 1 weights of"),
    }
    for name, (edit, message) in cases.items():
        with pytest.raises(TliteError, match=message) as info:
            load_imatrix(variant(name, edit), f32_gguf)
        assert "computed on another model?" in str(info.value) and "\n" not in str(info.value)
    not_imatrix = tmp_path / "model.imatrix.gguf"
    not_imatrix.symlink_to(f32_gguf)
    with pytest.raises(TliteError, match=r"not an imatrix \(no <weight>.in_sum2 tensors\)"):
        load_imatrix(not_imatrix, f32_gguf)
    legacy = tmp_path / "imatrix.dat"
    legacy.write_bytes(b"\x01\x00\x00\x00junk")
    with pytest.raises(TliteError, match="legacy imatrix.dat"):
        load_imatrix(legacy, f32_gguf)


def test_llama_quantizer_accepts_it(f32_imatrix: Imatrix, bf16_gguf: Path, tmp_path: Path) -> None:
    """IQ2_XXS refuses to run without an importance matrix; with ours llama.cpp quantizes."""
    importance = load_imatrix(write_imatrix(f32_imatrix, tmp_path / "i.gguf"), bf16_gguf)
    arr = (llama_cpp.llama_model_imatrix_data * (len(importance) + 1))()
    names = [n.encode() for n in importance]
    for i, (name, values) in enumerate(zip(names, importance.values(), strict=True)):
        arr[i].name, arr[i].size = name, values.size
        arr[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_IQ2_XXS, 2
    params.quantize_output_tensor, params.token_embedding_type = False, llama_cpp.GGML_TYPE_F16  # fast
    out, src, log = tmp_path / "iq2.gguf", str(bf16_gguf).encode(), []
    with capture_log(lambda level, line: log.append(line)):
        assert llama_cpp.llama_model_quantize(src, str(out).encode(), ctypes.byref(params)) != 0
        assert any("requires an imatrix" in line for line in log)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        log.clear()
        assert llama_cpp.llama_model_quantize(src, str(out).encode(), ctypes.byref(params)) == 0
    assert sum("converting to iq2_xxs" in line for line in log) >= 10 and out.stat().st_size > 0
    assert not any("did not find weights for blk." in line for line in log)


def test_cli_default_text(bf16_gguf: Path, f32_imatrix: Imatrix, tmp_path: Path) -> None:
    args = ("imatrix", bf16_gguf, "--ctx", CTX, "--chunks", CHUNKS)
    proc = run_cli(*args, cwd=tmp_path, env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "rus.txt" in proc.stdout and "default Russian calibration text" in proc.stdout
    assert f"{CHUNKS} chunks of {CTX}" in proc.stdout and "ETA" in proc.stdout
    out = tmp_path / bf16_gguf.name.replace(".gguf", ".imatrix.gguf")
    back = read_imatrix(out)
    assert back.datasets[0].startswith("dataset-build==") and back.datasets[0].endswith("rus.txt")
    assert back.entries["blk.1.ffn_down.weight"].counts.tolist() == [CHUNKS * CTX]
    # BF16 weights hold the same values as the F32 fixture: layer 0's inputs are the same
    np.testing.assert_allclose(
        back.entries["blk.0.attn_q.weight"].in_sum2,
        f32_imatrix.entries["blk.0.attn_q.weight"].in_sum2,
        rtol=1e-6,
    )


def test_cli_user_text(f32_gguf: Path, tmp_path: Path) -> None:
    text = tmp_path / "calib.txt"
    text.write_text("Съешь же ещё этих мягких французских булок, да выпей чаю. " * 12, encoding="utf-8")
    out = tmp_path / "user.imatrix.gguf"
    proc = run_cli("imatrix", f32_gguf, "--text", text, "--ctx", "64", "-o", out)
    assert proc.returncode == 0, proc.stderr
    back = read_imatrix(out)
    assert back.datasets == [str(text)] and back.chunk_size == 64 and back.chunk_count >= 2
    assert back.entries["output.weight"].counts.tolist() == [back.chunk_count * 64]


def test_cli_errors_one_line_no_output(f32_gguf: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("Привет, мир! " * 400, encoding="utf-8")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Привет".encode("cp1251"))
    empty, short, junk = tmp_path / "empty.txt", tmp_path / "short.txt", tmp_path / "junk.gguf"
    empty.write_text("  \n", encoding="utf-8")
    short.write_text("Привет, мир!", encoding="utf-8")
    junk.write_bytes(b"PK\x03\x04 not a gguf")
    out = tmp_path / "out" / "x.imatrix.gguf"
    out.parent.mkdir()
    cases = [
        ((f32_gguf, "--text", tmp_path / "none.txt"), "none.txt: no such file"),
        ((f32_gguf, "--text", tmp_path), "not a file"),
        ((f32_gguf, "--text", bad), "not UTF-8 text"),
        ((f32_gguf, "--text", empty), "calibration text is empty"),
        ((f32_gguf, "--text", short), "less than one chunk of 512"),
        ((tmp_path / "none.gguf", "--text", good), "none.gguf: no such file"),
        ((junk, "--text", good), "not a GGUF file"),
        ((f32_gguf, "--text", good, "--ctx", "8"), "--ctx must be at least 16"),
        ((f32_gguf, "--text", good, "--chunks", "0"), "--chunks must be at least 1"),
    ]
    for args, message in cases:
        proc = run_cli("imatrix", *args, "-o", out)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, (args, proc.stderr)
        assert list(out.parent.iterdir()) == []
    proc = run_cli("imatrix", f32_gguf, "--text", good, "-o", tmp_path / "missing" / "x.gguf")
    assert proc.returncode == 2 and "output folder does not exist" in proc.stderr


def test_log_after_an_interrupt_goes_nowhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After Ctrl-C the quantizer thread runs on until exit: its log must not print over our one line."""
    monkeypatch.setattr(lcpp_logger.logger, "level", logging.DEBUG)  # Llama(verbose=False) sets ERROR
    params = llama_cpp.llama_model_quantize_default_params()
    missing = str(tmp_path / "missing.gguf").encode()
    with pytest.raises(KeyboardInterrupt), capture_log(lambda level, line: None):
        raise KeyboardInterrupt
    try:
        assert llama_cpp.llama_model_quantize(missing, missing, ctypes.byref(params)) != 0
        assert capsys.readouterr().err == ""
    finally:
        with capture_log(lambda level, line: None):  # a clean exit restores llama-cpp-python's logger
            pass
    assert llama_cpp.llama_model_quantize(missing, missing, ctypes.byref(params)) != 0
    assert "missing.gguf" in capsys.readouterr().err
