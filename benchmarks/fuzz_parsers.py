"""Fuzz the two parsers that read untrusted bytes first: the safetensors header parser (convert) and
the GGUF header reader behind ``inspect`` (also quantize, imatrix and run).

Contract under test: any input either parses or raises ``TliteError``; any other exception, a hang
or a crash is a finding. With atheris installed, each target runs coverage-guided in its own
process (libFuzzer, seeded with valid files); otherwise a random-mutation driver runs in-process.

    nice -n 19 python benchmarks/fuzz_parsers.py --runs 500000            # per target
    nice -n 19 python benchmarks/fuzz_parsers.py --runs 20000 --engine mutate

Prints a rich table (executions, seconds, execs/s, findings) and, with ``--json FILE``, writes it.
Findings are saved under ``--artifacts`` (default ``fuzz-findings/``) for regression cases.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TARGETS = ("safetensors", "gguf")


def _imports() -> tuple[Callable[..., object], ...]:
    from tlite_edge.checkpoint.safetensors import parse_header
    from tlite_edge.errors import TliteError
    from tlite_edge.gguf.reader import header_from_buffer, summary_from_header

    return parse_header, header_from_buffer, summary_from_header, TliteError  # type: ignore[return-value]


def make_target(name: str) -> Callable[[bytes], None]:
    """``data -> None``; raises only on a finding (anything but TliteError)."""
    parse_header, header_from_buffer, summary_from_header, tlite_error = _imports()
    path = Path(f"fuzz.{name}")

    def safetensors(data: bytes) -> None:
        with contextlib.suppress(tlite_error):  # type: ignore[arg-type]
            parse_header(io.BytesIO(data).read, len(data), path)

    def gguf(data: bytes) -> None:
        try:
            header = header_from_buffer(data, path)
        except tlite_error:  # type: ignore[misc]
            return
        summary = summary_from_header(header, path, len(data))
        json.dumps(summary.as_dict(), ensure_ascii=False)  # what inspect --json prints

    return {"safetensors": safetensors, "gguf": gguf}[name]


def seeds(name: str) -> list[bytes]:
    """Small valid files of each kind (several shapes, dtypes and metadata types)."""
    import numpy as np
    from gguf import GGMLQuantizationType as QT
    from gguf import GGUFValueType as VT

    from tlite_edge.gguf.writer import GGUFLayout
    from tlite_edge.samples.standin import write_safetensors

    if name == "safetensors":
        out = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, (dtype, arrays) in enumerate(
                [
                    ("BF16", {"w": np.zeros((2, 3), np.uint16), "b": np.zeros(3, np.uint16)}),
                    ("F32", {"model.layers.0.mlp.up_proj.weight": np.zeros((4, 2), np.float32)}),
                    ("F16", {"a": np.zeros(1, np.float16), "z": np.zeros((1, 1, 2), np.float16)}),
                ]
            ):
                p = Path(tmp) / f"{i}.safetensors"
                write_safetensors(p, arrays, dtype=dtype)
                out.append(p.read_bytes())
        return out
    layouts = []
    small = GGUFLayout()
    small.add("general.architecture", VT.STRING, "llama")
    small.add("llama.block_count", VT.UINT32, 1)
    small.add("general.alignment", VT.UINT32, 32)
    small.add_tensor("token_embd.weight", (2, 32), QT.F32)
    small.add_tensor("output_norm.weight", (32,), QT.BF16)
    layouts.append(small)
    tok = GGUFLayout()
    tok.add("general.architecture", VT.STRING, "llama")
    tok.add("tokenizer.ggml.tokens", VT.ARRAY, ["<s>", "a", "б"], VT.STRING)
    tok.add("tokenizer.ggml.token_type", VT.ARRAY, [3, 1, 1], VT.INT32)
    tok.add("tokenizer.ggml.eos_token_id", VT.UINT32, 0)
    tok.add("llama.rope.freq_base", VT.FLOAT32, 500000.0)
    tok.add("tokenizer.ggml.add_bos_token", VT.BOOL, True)
    tok.add_tensor("blk.0.attn_q.weight", (256, 256), QT.Q4_K)
    layouts.append(tok)
    return [layout.header() + bytes(layout.data_size()) for layout in layouts]


# --- the random-mutation driver (no atheris needed) -------------------------------------------

INTERESTING = [0, 1, 2, 7, 8, 31, 32, 255, 256, 2**31 - 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1]


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip bits
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # random byte
            buf[pos % len(buf)] = rng.randrange(256)
        elif op == 2:  # insert bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and buf:  # delete a range
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 4 and len(buf) >= 8:  # an interesting little-endian integer
            width = rng.choice((4, 8))
            at = rng.randrange(max(1, len(buf) - width))
            buf[at : at + width] = (rng.choice(INTERESTING) % 2 ** (8 * width)).to_bytes(width, "little")
        elif op == 5:  # truncate
            del buf[pos:]
        else:  # splice with another input
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf[pos:] = other[cut:]
    return bytes(buf)


def run_mutate(name: str, runs: int, artifacts: Path, seed: int) -> dict:
    target = make_target(name)
    pool = seeds(name)
    rng = random.Random(seed)
    findings: dict[str, str] = {}
    t0 = time.perf_counter()
    for i in range(runs):
        data = mutate(rng.choice(pool), rng, pool)
        try:
            target(data)
        except Exception as exc:  # a finding: save one input per distinct error
            key = f"{type(exc).__name__}: {str(exc)[:60]}"
            if key not in findings:
                artifacts.mkdir(parents=True, exist_ok=True)
                (artifacts / f"{name}-{len(findings)}.bin").write_bytes(data)
                findings[key] = f"{name}-{len(findings)}.bin"
        if i % 64 == 0 and len(pool) < 256:
            pool.append(data)
    secs = time.perf_counter() - t0
    return {
        "target": name,
        "engine": "mutate",
        "execs": runs,
        "seconds": secs,
        "findings": len(findings),
        "errors": sorted(findings),
    }


# --- atheris (coverage-guided), one process per target ----------------------------------------


def atheris_child(name: str, runs: int, artifacts: Path, corpus: Path) -> None:
    import atheris

    with atheris.instrument_imports(include=["tlite_edge"]):
        target = make_target(name)
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds(name)):
        (corpus / f"seed-{i}").write_bytes(data)
    artifacts.mkdir(parents=True, exist_ok=True)
    args = [
        sys.argv[0],
        str(corpus),
        f"-runs={runs}",
        f"-artifact_prefix={artifacts}/{name}-",
        "-max_len=4096",
        "-timeout=20",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
    ]
    atheris.Setup(args, target)
    atheris.Fuzz()


def run_atheris(name: str, runs: int, artifacts: Path) -> dict:
    with tempfile.TemporaryDirectory() as corpus:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                name,
                "--runs",
                str(runs),
                "--artifacts",
                str(artifacts),
                "--corpus",
                corpus,
            ],
            capture_output=True,
            text=True,
            errors="replace",
        )
        secs = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    done = re.findall(r"Done (\d+) runs in (\d+) second", log)
    execs = (
        int(done[-1][0])
        if done
        else int((re.findall(r"stat::number_of_executed_units: (\d+)", log) or ["0"])[-1])
    )
    crashed = proc.returncode != 0
    errors = re.findall(r"=== Uncaught Python exception: ===\n(.*)", log)
    return {
        "target": name,
        "engine": "atheris",
        "execs": execs,
        "seconds": secs,
        "findings": int(crashed),
        "errors": errors or ([log[-400:]] if crashed else []),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=500_000, help="executions per target")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--engine", choices=("auto", "atheris", "mutate"), default="auto")
    ap.add_argument("--artifacts", type=Path, default=Path("fuzz-findings"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        atheris_child(args.child, args.runs, args.artifacts.resolve(), args.corpus)
        return 0
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "mutate"
    results = []
    for name in args.targets.split(","):
        if engine == "atheris":
            results.append(run_atheris(name, args.runs, args.artifacts))
        else:
            results.append(run_mutate(name, args.runs, args.artifacts, args.seed))
    from rich.console import Console
    from rich.table import Table

    table = Table("target", "engine", "executions", "seconds", "execs/s", "findings", title="parser fuzzing")
    for r in results:
        table.add_row(
            r["target"],
            r["engine"],
            f"{r['execs']:,}",
            f"{r['seconds']:.0f}",
            f"{r['execs'] / max(r['seconds'], 1e-9):,.0f}",
            str(r["findings"]),
        )
    Console().print(table)
    for r in results:
        for err in r["errors"]:
            print(f"{r['target']}: {err}")
    total = sum(r["execs"] for r in results)
    print(f"total executions: {total:,}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 1 if any(r["findings"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
