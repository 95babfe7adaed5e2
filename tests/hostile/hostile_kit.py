"""Helpers for the hostile-input tests: cheap mutable copies of the stand-in, byte-level GGUF and
safetensors surgery, and a CLI runner that bounds and measures the child (address space, wall time,
peak RSS from ``wait4``)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from tlite_edge.gguf.writer import GGUFLayout

SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"
AS_LIMIT = 8 * 2**30  # address space of the child: generous (llama.cpp maps the model, threads reserve)
RSS_LIMIT = 1536 * 2**20  # measured peak resident memory of the child
WALL_LIMIT = 180.0  # seconds; the machine running the tests may be shared and slow


def linked_copy(src: Path, dst: Path) -> Path:
    """Cheap copy (hard links); change files only through ``replace_file``, never in place."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def replace_file(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    replace_file(path, json.dumps(data).encode())


def shard_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + hlen]), raw[8 + hlen :]


def write_shard(path: Path, header: dict | bytes, data: bytes, hlen: int | None = None) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    replace_file(path, struct.pack("<Q", len(raw) if hlen is None else hlen) + raw + data)


def edit_shard_header(path: Path, change: Callable[[dict], object]) -> None:
    header, data = shard_parts(path)
    change(header)
    write_shard(path, header, data)


def first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


# --- GGUF ---------------------------------------------------------------------------------------


def tiny_model_gguf(
    kv: dict[str, tuple[GGUFValueType, object]] | None = None, second: str = "output_norm.weight"
) -> bytes:
    """A small, well-formed GGUF: llama metadata and two F32 tensors (not loadable as a model)."""
    layout = GGUFLayout()
    base = {
        "general.architecture": (GGUFValueType.STRING, "llama"),
        "general.name": (GGUFValueType.STRING, "tiny"),
        "llama.block_count": (GGUFValueType.UINT32, 1),
    }
    for key, (vtype, value) in {**base, **(kv or {})}.items():
        item = GGUFValueType.STRING if vtype == GGUFValueType.ARRAY else None
        layout.add(key, vtype, value, item)
    layout.add_tensor("token_embd.weight", (4, 256), GGMLQuantizationType.F32)
    layout.add_tensor(second, (256,), GGMLQuantizationType.F32)
    data = np.ones(4 * 256 + 256, dtype="<f4").tobytes()
    return layout.header() + data


def kv_value_offset(raw: bytes, key: str) -> int:
    """Offset of the value type (u32) that follows ``key`` in a GGUF's metadata."""
    needle = struct.pack("<Q", len(key.encode())) + key.encode()
    at = raw.index(needle)
    return at + len(needle)


def tensor_info_offset(raw: bytes, name: str) -> int:
    """Offset of the n_dims (u32) that follows tensor ``name`` in the tensor infos."""
    needle = struct.pack("<Q", len(name.encode())) + name.encode()
    return raw.rindex(needle) + len(needle)


def patch(raw: bytes, offset: int, fmt: str, *values: object) -> bytes:
    buf = bytearray(raw)
    struct.pack_into(fmt, buf, offset, *values)
    return bytes(buf)


def replace_template(src: Path, dst: Path, template: str) -> None:
    """Copy a GGUF with its chat template replaced, padded with spaces to the same byte length so
    that every tensor offset stays valid."""
    raw = src.read_bytes()
    at = kv_value_offset(raw, "tokenizer.chat_template")
    (vtype, length) = struct.unpack_from("<IQ", raw, at)
    assert vtype == GGUFValueType.STRING
    new = template.encode()
    assert len(new) <= length, "hostile template longer than the original"
    new += b" " * (length - len(new))
    dst.write_bytes(raw[: at + 12] + new + raw[at + 12 + length :])


# --- running the CLI as a user would, bounded and measured -------------------------------------


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    wall: float
    max_rss: int  # bytes

    @property
    def lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


def _limit_child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_bounded(
    *args: str | Path,
    timeout: float = WALL_LIMIT,
    env: dict[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> Outcome:
    """``python -m tlite_edge ARGS`` under an address-space limit; killed after ``timeout``."""

    def setup() -> None:
        _limit_child()
        if preexec is not None:
            preexec()

    full_env = {**os.environ, "PYTHONUTF8": "1", "COLUMNS": "200", **(env or {})}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlite_edge", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full_env,
        preexec_fn=setup,
    )
    out: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda k=k, s=s: out.__setitem__(k, s.read()))
        for k, s in (("out", proc.stdout), ("err", proc.stderr))
    ]
    for r in readers:
        r.start()
    timer = threading.Timer(timeout, lambda: os.kill(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    return Outcome(
        proc.returncode,
        out["out"].decode("utf-8", errors="strict"),
        out["err"].decode("utf-8", errors="strict"),
        time.monotonic() - t0,
        usage.ru_maxrss * 1024,
    )


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".partial")


# --- the work area of one hostile case ---------------------------------------------------------


@dataclass
class Area:
    """Where one case works: a stand-in copy (made on demand), an empty output folder, crafted files."""

    root: Path
    standin: Path
    model: Path

    def __post_init__(self) -> None:
        self.out = self.root / "out"
        self.out.mkdir()
        self.bad = self.root / "bad.gguf"
        self.imatrix = self.root / "bad.imatrix.gguf"
        self.template = self.root / "evil.jinja"
        self._hf: Path | None = None

    @property
    def hf(self) -> Path:
        if self._hf is None:
            self._hf = linked_copy(self.standin, self.root / "hf")
        return self._hf

    def fill(self, text: str) -> str:
        return text.format(
            hf=self.hf if "{hf}" in text else "",
            out=self.out,
            bad=self.bad,
            model=self.model,
            imatrix=self.imatrix,
            template=self.template,
        )


Builder = Callable[[Area], object]
CONVERT = ("convert", "{hf}", "--out-dir", "{out}")
CONVERT_T = (*CONVERT, "--chat-template", "{template}")
INSPECT = ("inspect", "{bad}")
QUANTIZE = ("quantize", "{bad}", "--out-dir", "{out}", "-q", "q8_0")
RUN = ("run", "{bad}", "Привет", "--max-tokens", "8", "--ctx", "256")
IMATRIX = ("quantize", "{model}", "--out-dir", "{out}", "-q", "q4_k_m", "--imatrix", "{imatrix}")
