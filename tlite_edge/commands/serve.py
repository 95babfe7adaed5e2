"""``tlite-edge serve MODEL.gguf``: an OpenAI-compatible HTTP server (chat, completions, models, health).

Loopback by default; another address needs ``--api-key`` (or ``TLITE_EDGE_API_KEY``) unless
``--insecure``. Requests must name this server in ``Host`` (``--allow-host`` adds names), browsers of
other origins are refused unless ``--cors-origin`` lists them, bodies must be JSON. ``--parallel N``
engines answer at once, ``--max-queue`` more wait, the rest get 503 with Retry-After. Slow clients
are dropped (``--header-timeout``, ``--body-timeout``). The access log is JSON lines on stderr.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from tlite_edge.errors import TliteError

API_KEY_ENV = "TLITE_EDGE_API_KEY"
# flag -> (attribute, smallest allowed value)
MINIMUMS = {
    "--parallel": ("parallel", 1),
    "--max-queue": ("max_queue", 0),
    "--ctx": ("ctx", 64),
    "--threads": ("threads", 1),
    "--max-body": ("max_body", 1024),
    "--max-messages": ("max_messages", 1),
    "--timeout": ("timeout", 1),
    "--header-timeout": ("header_timeout", 1),
    "--body-timeout": ("body_timeout", 1),
    "--keep-alive": ("keep_alive", 1),
    "--max-client-connections": ("max_client_connections", 1),
    "--port": ("port", 0),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server for a GGUF model", description=__doc__)
    p.add_argument("model", type=Path, help="GGUF file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' (or set {API_KEY_ENV})")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback address without a key")
    p.add_argument("--ctx", type=int, help="context per slot (default: the model's, reduced if RAM is short)")
    p.add_argument("--parallel", type=int, default=1, help="requests answered at once (engines; default 1)")
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting for a slot (default 16)")
    p.add_argument("--threads", type=int, help="CPU threads per slot (default: physical cores / parallel)")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (1 MiB)")
    p.add_argument("--max-messages", type=int, default=256, help="most messages in one chat request")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take, queue included")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another name clients may use in Host (repeatable; '*' allows any)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin allowed to call the API, like http://localhost:3000 (repeatable)",
    )
    p.add_argument(
        "--trust-proxy",
        action="store_true",
        help="log the client from X-Forwarded-For (only behind a proxy that sets it)",
    )
    p.add_argument("--header-timeout", type=float, default=10.0, help="seconds to send request headers (10)")
    p.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        help="seconds to send a request body; also how long a stream may wait for a reader (30)",
    )
    p.add_argument("--keep-alive", type=float, default=5.0, help="seconds an idle connection stays open (5)")
    p.add_argument("--max-client-connections", type=int, default=32,
                   help="open connections per client address (32)")  # fmt: skip
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` stands for is a loopback one."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TliteError(None, f"--host {host}: cannot resolve ({exc})") from None
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def check_args(args: argparse.Namespace) -> str | None:
    """The API key to require (None: none); refuses bad values and a non-loopback bind without a key."""
    for flag, (attr, least) in MINIMUMS.items():
        value = getattr(args, attr)
        if value is not None and not (math.isfinite(value) and value >= least):
            raise TliteError(None, f"{flag} must be a number of at least {least}, got {value}")
    from tlite_edge.serve.guard import check_origin

    for origin in args.cors_origin:
        try:
            check_origin(origin)
        except ValueError as exc:
            raise TliteError(None, f"--cors-origin: {exc}") from None
    if args.port > 65535:
        raise TliteError(None, f"--port must be at most 65535, got {args.port}")
    key = args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    if key is not None and not (key.strip() and key.isascii() and key.isprintable() and " " not in key):
        raise TliteError(None, "the API key must be non-empty printable ASCII without spaces")
    if key is None and not args.insecure and not is_loopback(args.host):
        raise TliteError(
            None,
            f"refusing to listen on {args.host} without an API key: anyone who can reach it could use "
            f"the model; pass --api-key KEY (or set {API_KEY_ENV}), or --insecure",
        )
    return key


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (so the real port is known before the server starts)."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        return socket.create_server(addr[:2], family=family, backlog=128)
    except OSError as exc:
        raise TliteError(None, f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def log_line(entry: dict[str, Any]) -> None:
    """One JSON line on stderr (the access log and server events)."""
    entry.setdefault("ts", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    sys.stderr.write(json.dumps(entry, ensure_ascii=False) + "\n")
    sys.stderr.flush()


def load_engines(args: argparse.Namespace) -> list[Any]:
    """``--parallel`` engines on the same file (weights mmap'ed once, a KV cache each)."""
    from tlite_edge.progress import console
    from tlite_edge.runtime import Engine
    from tlite_edge.runtime.hardware import probe

    hw = probe()
    threads = args.threads or max(1, hw.threads // args.parallel)
    engines: list[Engine] = []
    with console.status(f"loading {args.model.name} ×{args.parallel}") if sys.stderr.isatty() else _null():
        for _ in range(args.parallel):
            engines.append(Engine.load(args.model, ctx=args.ctx, threads=threads, hardware=hw))
    for warning in engines[0].warnings:
        log_line({"event": "warning", "message": warning})
    return engines


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(0)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def run(args: argparse.Namespace) -> int:
    key = check_args(args)
    from tlite_edge.runtime.engine import check_model

    check_model(args.model)  # one clear line for a bad file before anything else
    sock = listen(args.host, args.port)
    import uvicorn

    from tlite_edge.serve.app import AccessLog, ServeConfig, build_app
    from tlite_edge.serve.guard import Guard, GuardConfig, check_origin
    from tlite_edge.serve.logs import json_logging
    from tlite_edge.serve.pool import Pool
    from tlite_edge.serve.wire import WireLimits, make_protocol

    json_logging(log_line)
    engines = load_engines(args)
    pool = Pool(engines, args.max_queue)
    stem = args.model.name.removesuffix(".gguf")
    cfg = ServeConfig(
        model_id=stem,
        model_names=frozenset({stem, args.model.name}),
        created=int(args.model.stat().st_mtime),
        n_ctx=engines[0].n_ctx,
        api_key=key,
        max_body=args.max_body,
        max_messages=args.max_messages,
        timeout=args.timeout,
        stall_timeout=args.body_timeout,
    )
    host, port = sock.getsockname()[:2]
    origins = frozenset(check_origin(o) for o in args.cors_origin)
    guard = GuardConfig(bound=host, allow_hosts=frozenset(args.allow_host), cors_origins=origins)
    limits = WireLimits(
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_per_client=args.max_client_connections,
        max_connections=max(512, 4 * (args.parallel + args.max_queue)),
    )
    app = AccessLog(Guard(build_app(pool, cfg), guard), log_line)
    config = uvicorn.Config(
        app,
        loop="asyncio",
        http=make_protocol(limits, log_line),
        ws="none",
        lifespan="off",
        log_config=None,
        log_level="error",  # uvicorn's warnings are plain text about what the log lines already say
        access_log=False,
        server_header=False,
        proxy_headers=args.trust_proxy,
        forwarded_allow_ips="*" if args.trust_proxy else None,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=args.keep_alive,
        timeout_graceful_shutdown=5,
        limit_concurrency=None,  # the protocol's caps answer in JSON
    )
    shown = f"[{host}]" if ":" in host else host
    log_line(
        {
            "event": "listening",
            "url": f"http://{shown}:{port}/v1",
            "model": stem,
            "parallel": args.parallel,
            "max_queue": args.max_queue,
            "ctx": cfg.n_ctx,
            "threads": engines[0].settings.threads,
            "auth": key is not None,
        }
    )
    # uvicorn shuts down on SIGTERM, then re-raises it: end through the finally below, exit code 0
    signal.signal(signal.SIGTERM, _terminated)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        pool.close()
        log_line({"event": "stopped"})
    return 0
