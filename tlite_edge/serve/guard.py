"""Who may talk to the server: a Host allow-list (against DNS rebinding), an Origin policy with CORS for
listed origins, and JSON-only request bodies (no "simple" cross-site form posts).

Runs before routing and before the API-key check, so the same rules hold with or without a key.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from tlite_edge.serve.protocol import LOG_KEY, ApiError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "localhost.localdomain", "ip6-localhost")
ANY_ADDRESS = ("0.0.0.0", "::")
CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = ("authorization", "content-type", "x-request-id")
# Sec-Fetch-Site values a browser sends for a request made by another site's page
CROSS_SITE = ("cross-site", "same-site")
BODY_METHODS = ("POST", "PUT", "PATCH")
REFUSED = "origin_refused"


def host_name(value: str) -> str:
    """``Host`` header -> lower-case name or address without port and brackets ("" when malformed)."""
    value = value.strip().lower()
    if value.startswith("["):
        addr, sep, rest = value[1:].partition("]")
        ok = sep and (not rest or (rest.startswith(":") and rest[1:].isdigit()))
        return addr if ok else ""
    name, _, port = value.partition(":")
    if port and not port.isdigit():
        return ""
    return name.rstrip(".")


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_origin(value: str) -> str:
    """A ``--cors-origin`` value as browsers send it (``scheme://host[:port]``), or ValueError."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise ValueError(f"{value!r} is not an origin like http://localhost:3000")
    return value.rstrip("/").lower()


@dataclass
class GuardConfig:
    """The names the server answers to and the browser origins allowed to call it."""

    bound: str  # the address the server listens on
    allow_hosts: frozenset[str] = frozenset()  # extra Host names; "*" turns the check off
    cors_origins: frozenset[str] = frozenset()
    names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        extra = {host_name(h) or h.lower() for h in self.allow_hosts}
        self.names = frozenset({*LOOPBACK_NAMES, host_name(self.bound) or self.bound.lower(), *extra})

    def host_allowed(self, host: str) -> bool:
        name = host_name(host)
        if "*" in self.allow_hosts or name in self.names:
            return True
        # On 0.0.0.0 / :: the addresses are the machine's: any IP literal (a page cannot rebind one).
        return self.bound in ANY_ADDRESS and is_ip(name)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _answer(send: Send, status: int, body: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
    data = b"" if body is None else json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode("latin-1")) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """ASGI middleware: Host, Origin (and CORS preflight) and Content-Type checks, answered as JSON."""

    def __init__(self, app: ASGIApp, cfg: GuardConfig) -> None:
        self.app, self.cfg = app, cfg

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        origin = headers.get("origin")
        cors = self._cors(origin, headers)
        try:
            if scope["method"] == "OPTIONS" and origin and "access-control-request-method" in headers:
                await _answer(send, 204, None, self._preflight(headers, cors))
                return
            self._check(scope, headers, origin, cors)
        except ApiError as err:
            scope.get(LOG_KEY, {})["error"] = err.code
            await _answer(send, err.status, err.body(), [*err.headers.items(), *cors])
            return
        if not cors:
            await self.app(scope, receive, send)
            return

        async def send_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.lower().encode(), v.encode()) for k, v in cors]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_cors)

    def _cors(self, origin: str | None, headers: dict[str, str]) -> list[tuple[str, str]]:
        """CORS answer headers for a listed origin (none otherwise)."""
        if not origin or origin.rstrip("/").lower() not in self.cfg.cors_origins:
            return []
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]

    def _preflight(self, headers: dict[str, str], cors: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if not cors:
            raise ApiError(403, f"origin {headers['origin'][:100]!r} may not call this server", code=REFUSED)
        asked = [h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",")]
        refused = [h for h in asked if h and h not in CORS_HEADERS]
        if refused or headers["access-control-request-method"].upper() not in ("GET", "POST"):
            what = ", ".join(refused) or headers["access-control-request-method"]
            raise ApiError(403, f"CORS preflight asks for {what[:100]}, which is not allowed", code=REFUSED)
        allow = [("Access-Control-Allow-Methods", CORS_METHODS), ("Access-Control-Max-Age", "600")]
        return [*cors, *allow, ("Access-Control-Allow-Headers", ", ".join(CORS_HEADERS))]

    def _check(self, scope: Scope, headers: dict[str, str], origin: str | None, cors: list) -> None:
        host = headers.get("host")
        if host is not None and not self.cfg.host_allowed(host):
            raise ApiError(
                403,
                f"Host {host[:100]!r} is not a name of this server (see --allow-host)",
                code="host_refused",
            )
        if origin is not None and not cors and not self._same_origin(origin, host):
            raise ApiError(
                403,
                f"origin {origin[:100]!r} may not call this server (see --cors-origin)",
                code=REFUSED,
            )
        if origin is None and headers.get("sec-fetch-site") in CROSS_SITE:
            raise ApiError(403, "cross-site browser requests are refused (see --cors-origin)", code=REFUSED)
        if scope["method"] in BODY_METHODS:
            media = headers.get("content-type", "").partition(";")[0].strip().lower()
            if media != "application/json":
                raise ApiError(
                    415,
                    f"Content-Type must be application/json, got {media or 'none'!r}",
                    code="unsupported_media_type",
                )

    @staticmethod
    def _same_origin(origin: str, host: str | None) -> bool:
        parts = urlsplit(origin)
        return host is not None and parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
