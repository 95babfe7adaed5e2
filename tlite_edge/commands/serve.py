"""``tlite-edge serve MODEL.gguf``: an OpenAI-compatible HTTP server (chat, completions, models, health).

Loopback by default; another address needs ``--api-key`` (or ``TLITE_EDGE_API_KEY``) unless
``--insecure``. Requests must name this server in ``Host`` (``--allow-host`` adds names), browsers of
other origins are refused unless ``--cors-origin`` lists them, bodies must be JSON. ``--parallel N``
engines answer at once, ``--max-queue`` more wait, the rest get 503 with Retry-After. Slow clients
are dropped (``--header-timeout``, ``--body-timeout``). The access log is JSON lines on stderr.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tlite_edge.commands._options import add_rpc_arguments, add_speculative_argument
from tlite_edge.serve.server import API_KEY_ENV, ServerConfig, serve

D = ServerConfig(Path("MODEL.gguf"))  # the defaults


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server for a GGUF model", description=__doc__)

    def number(flag: str, kind: type, text: str) -> None:
        """A numeric flag whose default is ServerConfig's (``{}`` in ``text`` shows it)."""
        default = getattr(D, flag[2:].replace("-", "_"))
        p.add_argument(flag, type=kind, default=default, help=text.format(default))

    p.add_argument("model", type=Path, help="GGUF file")
    p.add_argument("--host", default=D.host, help=f"address to listen on (default {D.host})")
    number("--port", int, "port (default {}; 0 picks a free one)")
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' (or set {API_KEY_ENV})")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback address without a key")
    number("--ctx", int, "context per slot (default: the model's, reduced if RAM is short)")
    number("--parallel", int, "requests answered at once (engines; default {})")
    number("--max-queue", int, "requests waiting for a slot (default {})")
    number("--threads", int, "CPU threads per slot (default: physical cores / parallel)")
    add_speculative_argument(p)
    number("--max-body", int, "largest request body in bytes (1 MiB)")
    number("--max-messages", int, "most messages in one chat request")
    number("--timeout", float, "seconds a request may take, queue included")
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
    number("--header-timeout", float, "seconds to send request headers ({:g})")
    number(
        "--body-timeout",
        float,
        "seconds to send a request body; also how long a stream may wait for a reader ({:g})",
    )
    number("--keep-alive", float, "seconds an idle connection stays open ({:g})")
    number("--max-client-connections", int, "open connections per client address ({})")
    p.add_argument(
        "--no-prompt-cache",
        dest="prompt_cache",
        action="store_false",
        help="evaluate every prompt whole: no slot affinity, each slot's KV cache cleared per request",
    )
    add_rpc_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return serve(
        ServerConfig(
            model=args.model,
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            insecure=args.insecure,
            ctx=args.ctx,
            parallel=args.parallel,
            max_queue=args.max_queue,
            threads=args.threads,
            speculative=args.speculative,
            draft=args.draft,
            max_body=args.max_body,
            max_messages=args.max_messages,
            timeout=args.timeout,
            allow_hosts=tuple(args.allow_host),
            cors_origins=tuple(args.cors_origin),
            trust_proxy=args.trust_proxy,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            keep_alive=args.keep_alive,
            max_client_connections=args.max_client_connections,
            prompt_cache=args.prompt_cache,
            rpc=tuple(args.rpc.split(",")) if args.rpc else (),
            tensor_split=args.tensor_split,
        )
    )
