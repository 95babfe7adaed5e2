"""The quality table people compare: every candidate against the reference (rich)."""

from __future__ import annotations

from rich.table import Table

from tlite_edge.evaluate.core import EvalReport

MIB = 2**20


def results_table(report: EvalReport) -> Table:
    ref = report.reference
    t = report.text
    table = Table(
        "model",
        "size MiB",
        "bits/weight",
        "PPL",
        "ΔPPL",
        "mean KLD",
        "p99 KLD",
        "top-1",
        title=f"quality vs {ref['name']}: {t['chunks']} chunks × {report.settings['ctx']} tokens, "
        f"{t['scored_tokens']} scored",
    )
    table.add_row(
        f"{ref['name']} (reference)",
        f"{ref['file_bytes'] / MIB:,.1f}",
        f"{ref['bits_per_weight']:.2f}",
        f"{ref['ppl']:.3f}",
        "",
        "",
        "",
        "",
    )
    for c in report.candidates:
        m = c.model
        table.add_row(
            m.name,
            f"{m.file_bytes / MIB:,.1f}",
            f"{m.bits_per_weight:.2f}",
            f"{c.ppl:.3f}",
            f"{(c.ppl_ratio - 1) * 100:+.2f} %",
            f"{c.kld_mean:.5f} ± {c.kld_mean_stderr:.5f}",
            f"{c.kld_p99:.4f}",
            f"{c.top1 * 100:.2f} %",
        )
    return table
