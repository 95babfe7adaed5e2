"""``tlite-edge doctor [MODEL]``: what this machine offers llama.cpp and which quantization level to pick.

CPU SIMD features and backends as llama.cpp reports them, physical cores, RAM (and GPU memory when
the build offloads), and for each quantization profile whether it fits at the model's context:
weights (bits per weight × parameters of MODEL, or of a known model's data file: T-lite-instruct-0.1
by default, another with ``--for``) + KV cache + buffers. With
``--rpc HOST:PORT,...`` each worker's memory is shown and the levels are sized for the whole pool.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from gguf import Keys
from rich.console import Console
from rich.table import Table

from tlite_edge.errors import TliteError
from tlite_edge.runtime.hardware import rebuild_command

GIB = 2**30
FIT_LABELS = {(True, False): "[green]yes[/]", (False, True): "[yellow]tight[/]", (False, False): "[red]no[/]"}


AMX_WARNING = (
    "this llama.cpp build has AMX kernels (AMX_INT8), which stopped with an illegal instruction on a "
    "Sapphire-Rapids-class VM; if prompts crash, rebuild without them: {command}"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check this machine and pick a quantization level", description=__doc__)
    p.add_argument("model", type=Path, nargs="?", help="GGUF file (default: size a known model, --for)")
    p.add_argument(
        "--for",
        dest="known",
        metavar="NAME",
        help="without MODEL: size this known model (name or Hub id; default T-lite-instruct-0.1)",
    )
    p.add_argument("--ctx", type=int, help="context to size for (default: the model's)")
    p.add_argument(
        "--profiles", type=Path, action="append", default=[], metavar="PATH", help="extra profiles"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--rpc", metavar="HOST:PORT[,...]", help="also count these llama.cpp RPC workers' memory (the pool)"
    )
    p.set_defaults(func=run)


def _workers(rpc: str | None) -> list[dict[str, Any]]:
    """Each worker's protocol version and memory (one line for a worker that is down)."""
    if not rpc:
        return []
    from tlite_edge.runtime.rpc import parse_endpoints, probe

    infos = [probe(ep) for ep in parse_endpoints(rpc)]
    return [
        {
            "endpoint": str(i.endpoint),
            "version": i.version,
            "devices": len(i.devices),
            "free": i.free,
            "total": i.total,
        }
        for i in infos
    ]


def diagnose(
    model: Path | None,
    ctx: int | None,
    extra_profiles: list[Path],
    rpc: str | None = None,
    known: str | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as plain data; with ``rpc`` the levels are sized for the pool;
    without ``model``, for the known model ``known`` (default T-lite-instruct-0.1)."""
    from tlite_edge.known_models import default_model, require_model
    from tlite_edge.quant.profiles import load_profiles
    from tlite_edge.runtime.engine import check_model
    from tlite_edge.runtime.fit import (
        HEADROOM,
        model_context,
        profile_fits,
        ram_needed,
        recommend,
    )
    from tlite_edge.runtime.hardware import probe

    if ctx is not None and ctx < 1:
        raise TliteError(None, f"--ctx must be at least 1, got {ctx}")
    if model is not None and known is not None:
        raise TliteError(model, "give a GGUF file or --for NAME, not both")
    sized = require_model(known) if known is not None else default_model()
    assert sized.shape is not None
    workers = _workers(rpc)
    hw = probe()
    model_info = None
    meta, n_params = sized.gguf_meta(), sized.shape.n_params
    if model is not None:
        header = check_model(model)
        meta = {k: v for k, v in header.kv.items() if not k.startswith("tokenizer.")}
        n_params = sum(math.prod(dims) for _, dims, _ in header.tensors)
        weights = sum(header.tensor_nbytes(dims, t) for _, dims, t in header.tensors)
        model_info = {
            "path": str(model),
            "name": meta.get(Keys.General.NAME),
            "n_params": n_params,
            "weights_bytes": weights,
            "bits_per_weight": round(8 * weights / max(n_params, 1), 3),
            "context_length": model_context(meta),
        }
    ctx = ctx or model_context(meta)
    gpus = hw.gpu_devices() if hw.gpu_offload else []
    budget, kind = (gpus[0].memory_free, gpus[0].name) if gpus else (hw.ram_available, "RAM")
    if workers:
        budget += sum(w["free"] for w in workers)
        kind += f" + {len(workers)} RPC worker(s)"
    fits = profile_fits(load_profiles(extra_profiles), n_params, meta, ctx, budget)
    if model_info is not None:
        need = ram_needed(model_info["weights_bytes"], meta, ctx)
        model_info.update(ram_needed=need, fits=need <= budget * HEADROOM)
    pick = recommend(fits)
    return {
        "hardware": hw.as_dict(),
        "model": model_info,
        "ctx": ctx,
        "memory_kind": kind,
        "memory_available": budget,
        "profiles": [f.as_dict() for f in fits],
        "recommended": pick.profile if pick else None,
        "rpc": workers,
        "rpc_backend": _rpc_backend(),
        "known_model": None
        if model is not None
        else {
            "name": sized.name,
            "hub_id": sized.hub_id,
            "n_params": n_params,
            "recommended_levels": list(sized.recommended_levels),
        },
    }


def _rpc_backend() -> bool:
    from tlite_edge.runtime.rpc_ggml import has_rpc

    try:
        return has_rpc()
    except TliteError:  # another llama-cpp-python version than the binding was checked against
        return False


def _known_title(known: dict[str, Any]) -> str:
    return f"{known['name']} ({known['n_params'] / 1e9:.2f} B)"


def render(report: dict[str, Any], console: Console) -> None:
    hw = report["hardware"]
    table = Table(title="this machine (as llama.cpp sees it)", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    flags = [k for k, on in hw["cpu_features"].items() if on and k not in hw["simd"]]
    rows = {
        "physical cores": f"{hw['physical_cores']} ({hw['logical_cpus']} logical, {hw['usable_cpus']} usable)"
        f" → {hw['threads']} threads",
        "RAM": f"{hw['ram_available'] / GIB:.1f} GiB available of {hw['ram_total'] / GIB:.1f} GiB",
        "SIMD": " ".join(hw["simd"]) or "none reported",
        "build flags": " ".join(flags) or "-",
        "backends": ", ".join(hw["backends"]),
        "GPU offload": "yes" if hw["gpu_offload"] else "no (CPU build)",
        "RPC backend": "yes (worker, --rpc)" if report["rpc_backend"] else "no (rebuild with -DGGML_RPC=on)",
    }
    for w in report["rpc"]:
        rows[f"RPC worker {w['endpoint']}"] = (
            f"{w['free'] / GIB:.1f} / {w['total'] / GIB:.1f} GiB free · {w['devices']} device(s) · "
            f"protocol {w['version']}"
        )
    for dev in hw["devices"]:
        rows[f"device {dev['name']}"] = (
            f"{dev['type']} · {dev['description']} · {dev['memory_free'] / GIB:.1f} / "
            f"{dev['memory_total'] / GIB:.1f} GiB free"
        )
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)
    if hw["cpu_features"].get("AMX_INT8"):
        console.print(f"[yellow]warning:[/] {AMX_WARNING.format(command=rebuild_command())}", soft_wrap=True)
    model = report["model"]
    if model:
        console.print(
            f"model {model['path']}: {model['n_params'] / 1e9:.2f} B weights, {model['bits_per_weight']:.2f} "
            f"bits/weight, needs {model['ram_needed'] / GIB:.2f} GiB at {report['ctx']} ctx: "
            + ("[green]fits[/]" if model["fits"] else "[red]does not fit[/]")
        )
    fits = Table(
        "level",
        "bits/weight",
        "weights GiB",
        f"GiB @ {report['ctx']} ctx",
        f"fits {report['memory_available'] / GIB:.1f} GiB {report['memory_kind']}",
        title="quantization levels" + ("" if model else f" for {_known_title(report['known_model'])}"),
    )
    for f in report["profiles"]:
        fits.add_row(
            f["profile"],
            f"{f['bits_per_weight']:.2f}",
            f"{f['weights'] / GIB:.2f}",
            f"{f['ram_needed'] / GIB:.2f}",
            FIT_LABELS[(f["fits"], f["tight"])],
        )
    console.print(fits)
    pick = report["recommended"]
    console.print(
        f"pick: [bold green]{pick}[/] (the largest level that fits with headroom)"
        if pick
        else "[red]no level fits[/]: free memory, or use a smaller context (--ctx)"
    )


def run(args: argparse.Namespace) -> int:
    report = diagnose(args.model, args.ctx, args.profiles, args.rpc, args.known)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=1))
    else:
        render(report, Console())
    return 0
