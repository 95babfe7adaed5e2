"""Start the server: check the options, load the engines, build the app and run uvicorn until stopped.

``serve(ServerConfig(model=Path("m.gguf")))`` is ``tlite-edge serve m.gguf``: it checks the options
(one clear line each, named by their flags), refuses a non-loopback address without an API key,
listens, loads ``parallel`` engines, logs JSON lines on stderr and returns 0 on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import signal
import socket
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlite_edge.errors import TliteError

if TYPE_CHECKING:
    from tlite_edge.runtime.engine import Engine

API_KEY_ENV = "TLITE_EDGE_API_KEY"
# flag -> (ServerConfig field, smallest allowed value)
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


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``tlite-edge serve`` takes; the defaults are the command's."""

    model: Path
    host: str = "127.0.0.1"
    port: int = 8080  # 0 picks a free one
    api_key: str | None = None  # None: TLITE_EDGE_API_KEY, else no key
    insecure: bool = False  # allow a non-loopback address without a key
    ctx: int | None = None  # per slot; None: the model's, reduced if memory is short
    parallel: int = 1  # engines answering at once
    max_queue: int = 16  # requests waiting for a slot
    threads: int | None = None  # per slot; None: physical cores / parallel
    speculative: bool = True  # prompt-lookup speculative decoding
    draft: Path | None = None  # a draft model instead of prompt lookup
    max_body: int = 1 << 20
    max_messages: int = 256
    timeout: float = 300.0  # seconds a request may take, queue included
    allow_hosts: tuple[str, ...] = ()  # more names clients may use in Host ("*": any)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API
    trust_proxy: bool = False  # log the client from X-Forwarded-For
    header_timeout: float = 10.0
    body_timeout: float = 30.0  # also how long a stream may wait for a reader
    keep_alive: float = 5.0
    max_client_connections: int = 32  # open connections per client address
    prompt_cache: bool = True  # route requests to the slot holding their prefix, reuse its KV cache
    rpc: tuple[str, ...] = ()  # llama.cpp RPC workers (HOST:PORT) holding part of the layers
    tensor_split: str | None = None  # "A,B[,LOCAL]" shares of the layers (default: by free memory)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        object.__setattr__(self, "allow_hosts", tuple(self.allow_hosts))
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        object.__setattr__(self, "rpc", tuple(self.rpc))


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


def check_config(cfg: ServerConfig) -> str | None:
    """The API key to require (None: none); refuses bad values and a non-loopback bind without a key."""
    for flag, (attr, least) in MINIMUMS.items():
        value = getattr(cfg, attr)
        if value is not None and not (math.isfinite(value) and value >= least):
            raise TliteError(None, f"{flag} must be a number of at least {least}, got {value}")
    if cfg.rpc and not cfg.prompt_cache:
        raise TliteError(None, "--no-prompt-cache is not available with --rpc (the model runs in a child)")
    from tlite_edge.serve.guard import check_origin

    for origin in cfg.cors_origins:
        try:
            check_origin(origin)
        except ValueError as exc:
            raise TliteError(None, f"--cors-origin: {exc}") from None
    if cfg.draft is not None and cfg.rpc:
        raise TliteError(None, "--draft does not work with --rpc")
    if cfg.tensor_split and not cfg.rpc:
        raise TliteError(None, "--tensor-split needs --rpc")
    if cfg.rpc:
        from tlite_edge.runtime.rpc import parse_endpoints, parse_tensor_split

        endpoints = parse_endpoints(",".join(cfg.rpc))
        if cfg.tensor_split:
            parse_tensor_split(cfg.tensor_split, len(endpoints))
        if cfg.parallel > 1:
            raise TliteError(
                None,
                "--rpc works with --parallel 1: llama.cpp's RPC worker serves one client at a time "
                "(run more replicas behind a balancer for more users)",
            )
    if cfg.port > 65535:
        raise TliteError(None, f"--port must be at most 65535, got {cfg.port}")
    key = cfg.api_key if cfg.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    if key is not None and not (key.strip() and key.isascii() and key.isprintable() and " " not in key):
        raise TliteError(None, "the API key must be non-empty printable ASCII without spaces")
    if key is None and not cfg.insecure and not is_loopback(cfg.host):
        raise TliteError(
            None,
            f"refusing to listen on {cfg.host} without an API key: anyone who can reach it could use "
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


def load_engines(cfg: ServerConfig) -> list[Engine]:
    """``parallel`` engines on the same file (weights mmap'ed once, a KV cache each); with RPC workers
    one engine in a child process (serve/isolate.py: llama.cpp aborts when a worker is lost)."""
    from tlite_edge.progress import console
    from tlite_edge.runtime.engine import Engine
    from tlite_edge.runtime.hardware import probe

    hw = probe()
    threads = cfg.threads or max(1, hw.threads // cfg.parallel)
    if cfg.rpc:
        from tlite_edge.serve.isolate import IsolatedEngine

        spec = {
            "model": str(cfg.model),
            "ctx": cfg.ctx,
            "threads": threads,
            "rpc": list(cfg.rpc),
            "tensor_split": cfg.tensor_split,
            "speculative": cfg.speculative,
        }
        isolated = IsolatedEngine(spec)
        isolated.start()
        for warning in isolated.warnings:
            log_line({"event": "warning", "message": warning})
        return [isolated]  # type: ignore[list-item]
    engines: list[Engine] = []
    loading = f"loading {cfg.model.name} ×{cfg.parallel}"
    with console.status(loading) if sys.stderr.isatty() else nullcontext():
        for _ in range(cfg.parallel):
            engine = Engine.load(
                cfg.model, ctx=cfg.ctx, threads=threads, hardware=hw, speculative=cfg.speculative
            )
            if cfg.draft is not None and cfg.speculative:
                engine.use_draft(cfg.draft)
            engines.append(engine)
    for warning in engines[0].warnings:
        log_line({"event": "warning", "message": warning})
    return engines


def model_meta(engine: Engine) -> dict[str, Any]:
    """What ``/v1/models`` tells of the model besides the context (the fields llama-server's ``meta`` has)."""
    s = engine.settings
    meta = {"n_ctx_train": s.n_ctx_train, "n_params": s.n_params, "size": s.model_bytes}
    llm = getattr(engine, "llm", None)  # None: the model is in a child process (serve --rpc)
    if llm is not None:
        meta.update(n_vocab=llm.n_vocab(), n_embd=llm.n_embd())
    return meta


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(cfg: ServerConfig) -> int:
    """Run the server until Ctrl-C or SIGTERM (exit code 0); a bad option or file is a TliteError."""
    key = check_config(cfg)
    from tlite_edge.runtime.engine import check_model

    check_model(cfg.model)  # one clear line for a bad file before anything else
    sock = listen(cfg.host, cfg.port)
    import uvicorn

    from tlite_edge.serve.app import AccessLog, ServeConfig, build_app
    from tlite_edge.serve.guard import Guard, GuardConfig, check_origin
    from tlite_edge.serve.logs import json_logging
    from tlite_edge.serve.pool import Pool
    from tlite_edge.serve.wire import WireLimits, make_protocol

    json_logging(log_line)
    engines = load_engines(cfg)
    pool = Pool(engines, cfg.max_queue, prompt_cache=cfg.prompt_cache)
    pool.health = getattr(engines[0], "status", None)
    stem = cfg.model.name.removesuffix(".gguf")
    app_cfg = ServeConfig(
        model_id=stem,
        model_names=frozenset({stem, cfg.model.name}),
        created=int(cfg.model.stat().st_mtime),
        n_ctx=engines[0].n_ctx,
        api_key=key,
        max_body=cfg.max_body,
        max_messages=cfg.max_messages,
        timeout=cfg.timeout,
        stall_timeout=cfg.body_timeout,
        meta=model_meta(engines[0]),
    )
    host, port = sock.getsockname()[:2]
    origins = frozenset(check_origin(o) for o in cfg.cors_origins)
    guard = GuardConfig(bound=host, allow_hosts=frozenset(cfg.allow_hosts), cors_origins=origins)
    limits = WireLimits(
        header_timeout=cfg.header_timeout,
        body_timeout=cfg.body_timeout,
        max_per_client=cfg.max_client_connections,
        max_connections=max(512, 4 * (cfg.parallel + cfg.max_queue)),
    )

    def write(entry: dict[str, Any]) -> None:
        pool.metrics.request(entry)
        log_line(entry)

    app = AccessLog(Guard(build_app(pool, app_cfg), guard), write)
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
        proxy_headers=cfg.trust_proxy,
        forwarded_allow_ips="*" if cfg.trust_proxy else None,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=cfg.keep_alive,
        timeout_graceful_shutdown=5,
        limit_concurrency=None,  # the protocol's caps answer in JSON
    )
    shown = f"[{host}]" if ":" in host else host
    log_line(
        {
            "event": "listening",
            "url": f"http://{shown}:{port}/v1",
            "model": stem,
            "parallel": cfg.parallel,
            "max_queue": cfg.max_queue,
            "prompt_cache": cfg.prompt_cache,
            "ctx": app_cfg.n_ctx,
            "threads": engines[0].settings.threads,
            "auth": key is not None,
            **({"rpc": list(cfg.rpc)} if cfg.rpc else {}),
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
