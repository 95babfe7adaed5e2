"""The KLD-vs-file-size chart (matplotlib, the optional ``plot`` extra)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tlite_edge.errors import TliteError
from tlite_edge.fsutil import atomic_output

INSTALL_HINT = "pip install 'tlite-edge[plot]' (or pip install matplotlib)"
MIB = 2**20


@dataclass(frozen=True)
class Point:
    label: str
    file_bytes: int
    kld_mean: float
    kld_p99: float


def require_matplotlib(out: Path) -> None:
    """One line, before any work, when the chart cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise TliteError(out, f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    if not out.parent.is_dir():
        raise TliteError(out.parent, "output folder does not exist")


def short_labels(names: Sequence[str]) -> list[str]:
    """File stems without the prefix they all share (``SmolLM2-Q8_0``, ``SmolLM2-Q2_K`` -> Q8_0, Q2_K)."""
    if len(names) < 2:
        return list(names)
    prefix = names[0]
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    cut = prefix.rfind("-") + 1 if "-" in prefix else len(prefix)
    out = [n[cut:] for n in names]
    return out if all(out) else list(names)


def plot_kld_vs_size(series: dict[str, list[Point]], out: Path, title: str) -> Path:
    """Mean KLD (markers, p99 as a thin bar above) against file size; one line per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    all_points = [p for pts in series.values() for p in pts]
    for name, points in series.items():
        pts = sorted(points, key=lambda p: p.file_bytes)
        xs = [p.file_bytes / MIB for p in pts]
        ys = [p.kld_mean for p in pts]
        line = ax.plot(xs, ys, marker="o", label=f"{name} (mean)" if name else "mean KLD")[0]
        ax.vlines(xs, ys, [p.kld_p99 for p in pts], colors=line.get_color(), alpha=0.3, linewidth=3)
        for p, x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(p.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if all_points and all(p.kld_mean > 0 for p in all_points):
        ax.set_yscale("log")
    ax.set_xlabel("file size, MiB")
    ax.set_ylabel("KL divergence vs reference (nats/token); bar: to p99")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    with atomic_output(out) as fh:
        fh.write(buf.getvalue())
    return out
