"""``tlite-edge worker``: lend this machine's memory and cores to a model run elsewhere (llama.cpp RPC).

Starts llama.cpp's RPC server in this process; ``run/chat/serve/bench --rpc HOST:PORT`` on another
machine then puts part of the model's layers here. The RPC protocol has no authentication and no
encryption: anyone who reaches the port can run code on this machine's backend and read what it
computes. It listens on loopback unless ``--host`` says otherwise, and another address needs
``--insecure``: use it on a private network only.
"""

from __future__ import annotations

import argparse
import math
import socket
import sys
from pathlib import Path

from tlite_edge.errors import TliteError
from tlite_edge.runtime.rpc import DEFAULT_PORT, Endpoint

GIB = 2**30
EXPOSED = (
    "llama.cpp's RPC protocol has no authentication and no encryption: anyone who can reach "
    "{endpoint} can use this machine's memory and cores and see the model's data. Keep it on a "
    "private network."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="serve this machine's memory to --rpc clients", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    p.add_argument("--mem", type=float, metavar="GiB", help="memory to offer (default: what is free)")
    p.add_argument("--cache", type=Path, metavar="DIR", help="keep received tensors here (faster reloads)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback address (no auth!)")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise TliteError(None, f"--port must be 1..65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise TliteError(None, f"--threads must be at least 1, got {args.threads}")
    if args.mem is not None and not (math.isfinite(args.mem) and args.mem > 0):
        raise TliteError(None, f"--mem must be a positive number of GiB, got {args.mem}")
    if ":" in args.host:
        raise TliteError(None, f"--host {args.host}: llama.cpp's RPC server takes an IPv4 address or a name")


def _check_port(endpoint: Endpoint) -> None:
    """One line for an address in use or not ours, before llama.cpp tries (it only prints a failure)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((socket.gethostbyname(endpoint.host), endpoint.port))
    except OSError as exc:
        raise TliteError(None, f"cannot listen on {endpoint} ({exc.strerror or exc})") from None


def run(args: argparse.Namespace) -> int:
    _check(args)
    from tlite_edge.serve.server import is_loopback

    endpoint = Endpoint(args.host, args.port)
    if not is_loopback(args.host):
        if not args.insecure:
            raise TliteError(
                None,
                f"refusing to listen on {args.host}: {EXPOSED.format(endpoint=endpoint)} "
                "Pass --insecure to do it anyway",
            )
        print(f"tlite-edge worker: warning: {EXPOSED.format(endpoint=endpoint)}", file=sys.stderr)
    from tlite_edge.runtime.hardware import probe
    from tlite_edge.runtime.rpc_ggml import device_memory, require_rpc, run_worker, worker_devices

    require_rpc()
    hw = probe()
    threads = args.threads or hw.threads
    devices = worker_devices(None if args.mem is None else int(args.mem * GIB))
    _check_port(endpoint)
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    free = sum(device_memory(d)[0] for d in devices)
    print(
        f"tlite-edge worker on {endpoint}: {free / GIB:.1f} GiB offered, {threads} threads"
        f"{f', cache {args.cache}' if args.cache else ''} (Ctrl-C stops it)",
        file=sys.stderr,
        flush=True,
    )
    run_worker(endpoint, devices, threads=threads, cache_dir=str(args.cache) if args.cache else None)
    return 0
