"""Benchmark HF safetensors -> BF16 GGUF conversion: tlite-edge vs llama.cpp's converter.

Each converter runs as a child process: wall time, CPU time, peak RSS (``os.wait4``
rusage; counts mmap'ed file pages) and sampled peak ``RssAnon`` (memory that really
needs RAM). Without root the page cache cannot be dropped, so by default (``--cache
cold``) the checkpoint is evicted with ``posix_fadvise(DONTNEED)`` before each run.
Outputs are deleted after each run unless ``--keep``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

SECTION = "## Convert: 8B-shaped BF16 checkpoint → BF16 GGUF"
OURS_CMD = "{python} -m tlite_edge convert {checkpoint} --outfile {outfile} --outtype bf16"
LLAMACPP_CMD = "{python} {script} {checkpoint} --outfile {outfile} --outtype bf16"
GGML_TYPES = {0: "F32", 1: "F16", 8: "Q8_0", 30: "BF16"}


@dataclass
class Run:
    """One measured converter run."""

    rc: int
    wall_s: float
    sync_s: float
    cpu_s: float
    maxrss_kb: int
    anon_kb: int
    out_bytes: int
    tensors: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    kv_keys: set[str] = field(default_factory=set)


def _read(fh: BinaryIO, fmt: str) -> tuple[int, ...]:
    return struct.unpack("<" + fmt, fh.read(struct.calcsize("<" + fmt)))


def _skip_value(fh: BinaryIO, vtype: int) -> None:
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    if vtype == 8:
        fh.seek(_read(fh, "Q")[0], os.SEEK_CUR)
    elif vtype == 9:
        itype, count = _read(fh, "IQ")
        if itype in sizes:
            fh.seek(sizes[itype] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip_value(fh, itype)
    else:
        fh.seek(sizes[vtype], os.SEEK_CUR)


def gguf_summary(path: Path) -> tuple[dict[str, tuple[tuple[int, ...], str]], set[str]]:
    """Return {tensor name: (dims, type)} and the metadata keys of a GGUF v2/v3 file."""
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        _version, n_tensors, n_kv = _read(fh, "IQQ")
        keys: set[str] = set()
        for _ in range(n_kv):
            keys.add(fh.read(_read(fh, "Q")[0]).decode())
            _skip_value(fh, _read(fh, "I")[0])
        tensors: dict[str, tuple[tuple[int, ...], str]] = {}
        for _ in range(n_tensors):
            name = fh.read(_read(fh, "Q")[0]).decode()
            dims = _read(fh, f"{_read(fh, 'I')[0]}Q")
            ttype, _offset = _read(fh, "IQ")
            tensors[name] = (tuple(dims), GGML_TYPES.get(ttype, str(ttype)))
    return tensors, keys


def set_cache(files: list[Path], mode: str) -> None:
    """Evict (cold) or pre-read (warm) the checkpoint files in the page cache."""
    if mode == "asis":
        return
    os.sync()
    buf = bytearray(16 << 20)
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            if mode == "cold":
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            while mode == "warm" and fh.readinto(buf):
                pass


def _sample_anon(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """Poll /proc/PID/status for RssAnon and keep the maximum (kB) in peak[0]."""
    status = Path(f"/proc/{pid}/status")
    while not stop.wait(0.1):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        except OSError:
            return


def measure(cmd: list[str], log: Path, outfile: Path, timeout: float | None) -> Run:
    """Run cmd with output to log; return its wall/CPU time, peak memory and output size."""
    outfile.unlink(missing_ok=True)
    with open(log, "wb") as logfh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=logfh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        stop, peak = threading.Event(), [0]
        sampler = threading.Thread(target=_sample_anon, args=(proc.pid, stop, peak), daemon=True)
        sampler.start()
        killer = threading.Timer(timeout, proc.kill) if timeout else None
        if killer:
            killer.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        if killer:
            killer.cancel()
    sync_s, size = 0.0, 0
    if outfile.exists():
        t1 = time.perf_counter()
        with open(outfile, "rb") as fh:
            os.fsync(fh.fileno())
        sync_s, size = time.perf_counter() - t1, outfile.stat().st_size
    return Run(proc.returncode, wall, sync_s, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, peak[0], size)


def _proc_field(path: str, prefix: str) -> str:
    """Value of the first 'prefix: value' line in a /proc file ('unknown' if absent)."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(prefix):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine_facts() -> dict[str, str]:
    """CPU model, core counts, RAM, kernel and Python version of this machine."""
    mem_kb = int(_proc_field("/proc/meminfo", "MemTotal:").split()[0])
    return {
        "CPU": _proc_field("/proc/cpuinfo", "model name"),
        "cores": f"{len(os.sched_getaffinity(0))} usable / {os.cpu_count()} online",
        "RAM": f"{mem_kb / 2**20:.1f} GiB",
        "kernel": platform.release(),
        "Python": platform.python_version(),
    }


def llamacpp_versions(python: str) -> str:
    """Versions of gguf/torch/transformers seen by the llama.cpp interpreter."""
    code = (
        "import importlib.metadata as m\nprint(', '.join(f'{p} {m.version(p)}' "
        "for p in ('gguf', 'torch', 'transformers')))"
    )
    try:
        res = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
        return res.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def gib(n: float) -> str:
    """Format bytes as GiB."""
    return f"{n / 2**30:.2f}"


METRICS: dict[str, Callable[[Run], float]] = {
    "wall s": lambda r: r.wall_s,
    "wall+fsync s": lambda r: r.wall_s + r.sync_s,
    "CPU s": lambda r: r.cpu_s,
    "peak RSS GiB": lambda r: r.maxrss_kb / 2**20,
    "peak anon GiB": lambda r: r.anon_kb / 2**20,
    "GGUF GiB": lambda r: r.out_bytes / 2**30,
}
HEADER = ["converter", *METRICS, "tensors"]


def summarize(name: str, runs: list[Run]) -> list[str]:
    """One table row: the median of each metric over the successful runs, and the tensor count."""
    ok = [r for r in runs if r.rc == 0] or runs
    label = name if all(r.rc == 0 for r in runs) else f"{name} (FAILED rc={runs[-1].rc})"
    cells = [f"{statistics.median(map(f, ok)):.2f}" for f in METRICS.values()]
    return [label, *cells, str(len(ok[-1].tensors)) if ok[-1].tensors else "-"]


def ratio_row(ours: list[Run], ref: list[Run]) -> list[str]:
    """ours / llama.cpp for every metric (medians)."""
    cells = []
    for f in METRICS.values():
        a, b = statistics.median(map(f, ours)), statistics.median(map(f, ref))
        cells.append(f"{a / b:.2f}×" if b else "-")
    return ["ours / llama.cpp", *cells, ""]


def print_table(rows: list[list[str]], title: str) -> None:
    """Print rows with rich if available, else as plain aligned text."""
    try:
        from rich.console import Console  # type: ignore[import-not-found, unused-ignore]
        from rich.table import Table  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
        print(title)
        for r in [HEADER, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        return
    table = Table(title=title)
    for i, h in enumerate(HEADER):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=None if sys.stdout.isatty() else 150).print(table)


def tensor_diff(a: Run, b: Run) -> list[str]:
    """Describe differences in tensor names/shapes/types and metadata keys (ours vs llama.cpp)."""
    out = [f"only in ours: {k} {a.tensors[k]}" for k in sorted(a.tensors.keys() - b.tensors.keys())]
    out += [f"only in llama.cpp: {k} {b.tensors[k]}" for k in sorted(b.tensors.keys() - a.tensors.keys())]
    out += [
        f"differs: {k} ours={a.tensors[k]} llama.cpp={b.tensors[k]}"
        for k in sorted(a.tensors.keys() & b.tensors.keys())
        if a.tensors[k] != b.tensors[k]
    ]
    out += [f"metadata key only in ours: {k}" for k in sorted(a.kv_keys - b.kv_keys)]
    out += [f"metadata key only in llama.cpp: {k}" for k in sorted(b.kv_keys - a.kv_keys)]
    return out


def update_markdown(path: Path, body: str, section: str = SECTION) -> None:
    """Replace the benchmark section in path (or append it, creating the file if needed)."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    new = [section, "", *body.rstrip().splitlines(), ""]
    if section in lines:
        start = lines.index(section)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = new
    else:
        if lines and lines[-1].strip():
            lines.append("")
        lines += new
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


def md_table(rows: list[list[str]]) -> str:
    """Render rows as a GitHub markdown table."""
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = ap.add_argument
    add("--checkpoint", type=Path, required=True, help="HF checkpoint directory")
    add("--work", type=Path, required=True, help="directory for output GGUFs and logs")
    add("--skip-llamacpp", action="store_true", help="only run our converter")
    add("--llamacpp-script", type=Path, default=Path("llama.cpp/convert_hf_to_gguf.py"), help="%(default)s")
    add("--python-llamacpp", default=sys.executable, help="interpreter for llama.cpp (default: this one)")
    add("--ours-cmd", default=OURS_CMD, help="our command; {checkpoint} {outfile} {python} are filled in")
    add("--repeat", type=int, default=1, help="runs per converter, interleaved (default 1)")
    add("--cache", choices=["cold", "warm", "asis"], default="cold", help="page cache before each run")
    add("--timeout", type=float, default=None, help="kill a converter after this many seconds")
    add("--keep", action="store_true", help="keep the output GGUFs")
    add("--update-md", type=Path, default=None, help="markdown file to write the results section into")
    add("--section", default=SECTION, help="markdown section title (default: the Llama 8B one)")
    add("--shape", default="T-lite-instruct-0.1", help="what the checkpoint is shaped like, for the text")
    args = ap.parse_args(argv)
    if not args.skip_llamacpp and not args.llamacpp_script.is_file():
        ap.error(f"{args.llamacpp_script} not found (use --llamacpp-script or --skip-llamacpp)")
    return args


def run_leg(name: str, cmd: list[str], args: argparse.Namespace, shards: list[Path], i: int) -> Run:
    """Prepare the page cache, run one converter, inspect and delete its output."""
    tag = "ours" if name == "tlite-edge" else "llamacpp"
    outfile, log = args.work / f"{tag}-BF16.gguf", args.work / f"{tag}-{i + 1}.log"
    cmd = [c.replace("{outfile}", str(outfile)) for c in cmd]
    st = os.statvfs(args.work)
    if st.f_bavail * st.f_frsize < sum(f.stat().st_size for f in shards) * 1.05:
        print(f"warning: only {gib(st.f_bavail * st.f_frsize)} GiB free in {args.work}", file=sys.stderr)
    set_cache(shards, args.cache)
    print(f"[{i + 1}/{args.repeat}] {name}: {shlex.join(cmd)}", flush=True)
    run = measure(cmd, log, outfile, args.timeout)
    if run.rc == 0 and run.out_bytes:
        try:
            run.tensors, run.kv_keys = gguf_summary(outfile)
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            print(f"  could not parse GGUF header: {exc}", file=sys.stderr)
    else:
        tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-15:])
        print(f"  FAILED rc={run.rc}; {log} ends:\n    {tail}", file=sys.stderr)
    print(f"  rc={run.rc} " + " ".join(f"{k}={f(run):.2f}" for k, f in METRICS.items()), flush=True)
    if not args.keep:
        outfile.unlink(missing_ok=True)
    return run


def markdown_body(
    args: argparse.Namespace, argv: list[str], results: dict[str, list[Run]], shards: list[Path]
) -> str:
    """The results section: machine facts, table, per-run walls, command lines, GGUF differences."""
    rows, diffs = compare(results)
    ckpt_bytes = sum(f.stat().st_size for f in shards)
    facts = machine_facts()
    if not args.skip_llamacpp:
        facts["llama.cpp env"] = llamacpp_versions(args.python_llamacpp)
    walls = "; ".join(f"{n} " + ", ".join(f"{r.wall_s:.1f}" for r in rs) for n, rs in results.items())
    body = [
        f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on: "
        + "; ".join(f"{k} {v}" for k, v in facts.items())
        + ".",
        "",
        f"Random bf16 checkpoint with {args.shape} shapes ({len(shards)} shards, "
        f"{gib(ckpt_bytes)} GiB) from `benchmarks/make_8b_checkpoint.py`; {args.repeat} run(s) per "
        f"converter (medians), page cache `{args.cache}` before each run. Peak RSS is `wait4` "
        "`ru_maxrss` (counts mmap'ed file pages); peak anon is sampled `RssAnon`; wall+fsync adds "
        "flushing the output to disk.",
        "",
        md_table(rows),
        "",
        f"Wall time per run (s): {walls}.",
        "",
        "```sh",
        shlex.join(["python", *argv]),
        "```",
        "",
        "Converters: " + "; ".join(f"`{t}`" for t in templates(args).values()) + ".",
    ]
    if diffs:
        body += ["", f"GGUF differences, ours vs llama.cpp ({len(diffs)}, at most 20 shown):", ""]
        body += [f"- {d}" for d in diffs[:20]]
    return "\n".join(body)


def templates(args: argparse.Namespace) -> dict[str, str]:
    """Command templates of the converters to run, by name."""
    return {"tlite-edge": args.ours_cmd, **({} if args.skip_llamacpp else {"llama.cpp": LLAMACPP_CMD})}


def render(template: str, **values: str) -> list[str]:
    """Split a command template and fill in the {name} placeholders given."""
    out = shlex.split(template)
    for key, val in values.items():
        out = [c.replace("{" + key + "}", val) for c in out]
    return out


def compare(results: dict[str, list[Run]]) -> tuple[list[list[str]], list[str]]:
    """Table rows (plus the ratio row when both converters succeeded) and GGUF differences."""
    rows = [summarize(name, runs) for name, runs in results.items()]
    ours, ref = results["tlite-edge"], results.get("llama.cpp", [])
    if not ref or not all(r.rc == 0 for r in ours + ref):
        return rows, []
    return [*rows, ratio_row(ours, ref)], tensor_diff(ours[-1], ref[-1])


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    args = parse_args(argv)
    shards = sorted(args.checkpoint.glob("*.safetensors"))
    if not shards:
        sys.exit(f"error: no *.safetensors in {args.checkpoint}")
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = str(args.checkpoint)
    cmds = {"tlite-edge": render(args.ours_cmd, python=sys.executable, checkpoint=ckpt)}
    if not args.skip_llamacpp:
        script = str(args.llamacpp_script)
        cmds["llama.cpp"] = render(LLAMACPP_CMD, python=args.python_llamacpp, script=script, checkpoint=ckpt)
    size = gib(sum(f.stat().st_size for f in shards))
    print(f"checkpoint {ckpt}: {len(shards)} shards, {size} GiB", flush=True)

    results: dict[str, list[Run]] = {k: [] for k in cmds}
    for i in range(args.repeat):
        for name in list(cmds) if i % 2 == 0 else list(cmds)[::-1]:
            results[name].append(run_leg(name, cmds[name], args, shards, i))

    rows, diffs = compare(results)
    print_table(rows, f"HF BF16 → GGUF BF16, {size} GiB, {args.repeat} run(s), cache={args.cache}")
    if diffs:
        print(f"GGUF differences ({len(diffs)}):\n  " + "\n  ".join(diffs[:40]))
    if args.update_md:
        shown = sys.argv if argv is None else ["benchmarks/bench_convert.py", *argv]
        update_markdown(args.update_md, markdown_body(args, shown, results, shards), args.section)
        print(f"updated {args.update_md}")
    return 0 if all(r.rc == 0 for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
