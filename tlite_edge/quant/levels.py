"""Every chosen level of one source GGUF, and the importance matrix they use: the one place that
"quantizes these levels" (the quantize, convert, release and demo verbs, and the benchmarks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from gguf import Keys

from tlite_edge.errors import TliteError
from tlite_edge.fsutil import make_dirs
from tlite_edge.gguf.reader import read_header
from tlite_edge.quant.imatrix import Imatrix
from tlite_edge.quant.profiles import Profile, load_profiles, select
from tlite_edge.quant.quantize import QuantResult, estimate, quantize

# level, tensor i, of n tensors, tensor name
Advance = Callable[[str, int, int, str], None]


def base_name(src: Path) -> str:
    """Output file prefix: the GGUF's ``general.name``, else its file name without the level."""
    return str(read_header(src).kv.get(Keys.General.NAME) or src.stem.rsplit("-", 1)[0])


def choose(
    levels: str | Sequence[str | Profile] | None = None, extra_profiles: Sequence[Path] = ()
) -> list[Profile]:
    """Profiles for ``"q4_k_m,q8_0"``, a list of names or profiles; None -> the default level."""
    if levels is not None and not isinstance(levels, str):
        if all(isinstance(p, Profile) for p in levels):
            return list(levels)  # type: ignore[arg-type]
        levels = ",".join(p.name if isinstance(p, Profile) else p for p in levels)
    return select(load_profiles(list(extra_profiles)), levels)


def importance(imatrix: Path | dict[str, np.ndarray] | None, src: Path) -> dict[str, np.ndarray] | None:
    """An imatrix file validated against ``src`` (or an already loaded one) as quantizer input."""
    if imatrix is None or isinstance(imatrix, dict):
        return imatrix
    from tlite_edge.quant.imatrix import load_imatrix

    return load_imatrix(imatrix, src)


def plan_levels(
    src: Path,
    levels: str | Sequence[str | Profile] | None = None,
    *,
    imatrix: Path | dict[str, np.ndarray] | None = None,
    extra_profiles: Sequence[Path] = (),
) -> list[tuple[Profile, QuantResult]]:
    """Exact size and bits per weight of each level from llama.cpp's dry run; nothing is written."""
    imp = importance(imatrix, src)
    return [(p, estimate(src, p, imp)) for p in choose(levels, extra_profiles)]


def quantize_levels(
    src: Path,
    levels: str | Sequence[str | Profile] | None = None,
    out_dir: Path | None = None,
    *,
    imatrix: Path | dict[str, np.ndarray] | None = None,
    threads: int | None = None,
    extra_profiles: Sequence[Path] = (),
    base: str | None = None,
    advance: Advance | None = None,
    done: Callable[[QuantResult], None] | None = None,
) -> list[QuantResult]:
    """Quantize ``src`` to every level in ``out_dir`` (default: next to it; created if missing), each
    as ``<base>-<LEVEL>.gguf`` with its ``.sha256``, written atomically. ``advance`` sees every tensor,
    ``done`` every finished file."""
    profiles = choose(levels, extra_profiles)
    imp = importance(imatrix, src)
    missing = [p.name for p in profiles if p.requires_imatrix and not imp]
    if missing:
        raise TliteError(
            src,
            f"level {', '.join(missing)} needs an importance matrix: make one with "
            f"`tlite-edge imatrix {src.name}` and pass --imatrix FILE",
        )
    folder = out_dir if out_dir is not None else src.parent
    make_dirs(folder)
    prefix = base or base_name(src)
    results = []
    for profile in profiles:

        def step(i: int, n: int, name: str, level: str = profile.name) -> None:
            if advance is not None:
                advance(level, i, n, name)

        result = quantize(
            src, profile, folder / profile.output_name(prefix), imatrix=imp, threads=threads, advance=step
        )
        results.append(result)
        if done is not None:
            done(result)
    return results


def calibrate(
    model: Path,
    out: Path | None = None,
    *,
    text: Path | None = None,
    ctx: int = 512,
    chunks: int | None = None,
    threads: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> tuple[Path, Imatrix]:
    """An importance matrix of ``model`` on ``text`` (default: the packaged Russian calibration text),
    written in llama-imatrix's GGUF format to ``out`` (default ``<model>.imatrix.gguf`` next to it).
    ``progress(done, total_chunks, n_tokens)`` is called before the first chunk and after each."""
    from tlite_edge.quant.imatrix import collect, write_imatrix
    from tlite_edge.texts import default_text, read_text

    path, dataset = default_text() if text is None else (text, str(text))
    target = out or model.with_name(f"{model.name.removesuffix('.gguf')}.imatrix.gguf")
    imatrix = collect(
        model,
        read_text(path, "calibration text"),
        ctx=ctx,
        chunks=chunks,
        threads=threads,
        dataset=dataset,
        progress=progress,
    )
    return write_imatrix(imatrix, target), imatrix
