"""llama.cpp's own ``llama-bench`` as the anchor for ``tlite-edge bench``.

``LlamaBench(path)`` checks a binary once (it must run ``--help``); ``run`` times prompt processing and
generation on a GGUF with given threads, batch sizes and flash attention, one repetition per call (so
the caller can interleave it with its own runs), and parses llama-bench's ``-o json`` output.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlite_edge.errors import TliteError

HELP_TIMEOUT_S = 30
FIELDS = ("n_prompt", "n_gen", "n_depth", "avg_ts")  # what each result must carry


@dataclass(frozen=True)
class LlamaBenchResult:
    """One llama-bench test: pp (n_gen 0) or tg (n_prompt 0), at ``depth`` tokens already in context."""

    n_prompt: int
    n_gen: int
    depth: int
    tok_s: float  # llama-bench's avg_ts
    samples: tuple[float, ...]  # tokens/s of each repetition
    n_threads: int
    n_batch: int
    n_ubatch: int
    flash_attn: int  # -1 auto, 0 off, 1 on

    @property
    def kind(self) -> str:
        return "pp" if self.n_gen == 0 else "tg"


def parse_json(text: str, source: str = "llama-bench") -> list[LlamaBenchResult]:
    """llama-bench's ``-o json`` output (a JSON array of tests) -> results; anything else is a
    TliteError naming ``source``."""
    try:
        tests = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TliteError(source, f"output is not llama-bench JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(tests, list) or not all(isinstance(t, dict) for t in tests):
        raise TliteError(source, "output is not llama-bench JSON (expected an array of tests)")
    return [_result(t, source) for t in tests]


def _result(t: dict[str, Any], source: str) -> LlamaBenchResult:
    missing = [f for f in FIELDS if f not in t]
    if missing:
        raise TliteError(source, f"llama-bench JSON test without {', '.join(missing)}")
    try:
        return LlamaBenchResult(
            n_prompt=int(t["n_prompt"]),
            n_gen=int(t["n_gen"]),
            depth=int(t["n_depth"]),
            tok_s=float(t["avg_ts"]),
            samples=tuple(float(x) for x in t.get("samples_ts", [t["avg_ts"]])),
            n_threads=int(t.get("n_threads", 0)),
            n_batch=int(t.get("n_batch", 0)),
            n_ubatch=int(t.get("n_ubatch", 0)),
            flash_attn=int(t.get("flash_attn", -1)),
        )
    except (TypeError, ValueError) as exc:
        raise TliteError(source, f"llama-bench JSON test with a bad value ({exc})") from None


class LlamaBench:
    """A ``llama-bench`` binary, checked to run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise TliteError(self.path, "llama-bench binary not found")
        if not os.access(self.path, os.X_OK):
            raise TliteError(self.path, "llama-bench binary is not executable")
        out = self._call(["--help"], HELP_TIMEOUT_S)
        if "n-depth" not in out:
            raise TliteError(
                self.path, "not a llama-bench binary with --n-depth (its --help does not list it)"
            )

    def _call(self, args: Sequence[str], timeout: float | None) -> str:
        try:
            proc = subprocess.run(
                [str(self.path), *args], capture_output=True, text=True, timeout=timeout, errors="replace"
            )
        except subprocess.TimeoutExpired:
            raise TliteError(self.path, f"llama-bench did not finish in {timeout:.0f} s") from None
        except OSError as exc:
            raise TliteError(self.path, f"llama-bench does not run ({exc.strerror or exc})") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise TliteError(self.path, f"llama-bench failed with exit code {proc.returncode}: {last}")
        return proc.stdout

    def run(
        self,
        model: str | Path,
        *,
        threads: int,
        pp: int = 0,
        tg: int = 0,
        depths: Sequence[int] = (0,),
        reps: int = 1,
        n_batch: int = 2048,
        n_ubatch: int = 512,
        flash_attn: bool | None = None,
        gpu_layers: int = 0,
        timeout: float | None = None,
    ) -> list[LlamaBenchResult]:
        """pp``pp`` and/or tg``tg`` at each depth (``pp``/``tg`` 0: not measured), ``reps`` repetitions
        after llama-bench's own warm-up. ``flash_attn`` None is llama-bench's auto."""
        fa = "auto" if flash_attn is None else ("on" if flash_attn else "off")
        args = [
            "-m", str(model), "-t", str(threads), "-p", str(pp), "-n", str(tg),
            "-d", ",".join(str(d) for d in depths), "-r", str(reps), "-b", str(n_batch),
            "-ub", str(n_ubatch), "-fa", fa, "-ngl", str(99 if gpu_layers < 0 else gpu_layers), "-o", "json",
        ]  # fmt: skip
        results = parse_json(self._call(args, timeout), str(self.path))
        if not results:
            raise TliteError(self.path, "llama-bench reported no tests")
        return results
