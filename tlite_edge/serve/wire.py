"""The HTTP/1.1 connection layer under the app: uvicorn's h11 protocol with time limits, connection caps
and protocol errors answered in OpenAI's JSON shape.

- headers must arrive within ``header_timeout`` of the connection (or of the previous answer), a
  body within ``body_timeout`` of its headers: a slow or stalled client is dropped (408) long before
  it could reach a generation slot or a queue place, since a request is queued only once its body
  is complete;
- at most ``max_per_client`` open connections per client address (429) and ``max_connections``
  in all (503), answered as JSON to the next request on the connection, which is then closed;
- malformed requests (bad Content-Length, oversized request line or headers, ...) get a JSON error,
  not uvicorn's plain text.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from tlite_edge.serve.protocol import LOG_KEY, ApiError

REFUSE_KEY = "tlite_edge.refuse"  # an ApiError the app must answer with (and then close)
DROPPED_KEY = "tlite_edge.dropped"  # why the server dropped the connection while the body came
CLOSED_KEY = "tlite_edge.closed"  # how the client went away before its answer: "half_close" or "reset"
# h11's hint for a malformed request -> (status, code, message)
PROTOCOL_ERRORS: dict[int, tuple[int, str, str]] = {
    431: (431, "request_too_large", "the request line or headers are larger than {limit} bytes"),
    501: (501, "not_implemented", "unsupported Transfer-Encoding ({detail})"),
}


@dataclass(frozen=True)
class WireLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_per_client: int = 32
    max_connections: int = 512
    max_header_bytes: int = 16 * 1024


def raw_response(err: ApiError) -> bytes:
    """A complete HTTP/1.1 answer with ``err`` as JSON, closing the connection."""
    body = json.dumps(err.body()).encode()
    head = [f"HTTP/1.1 {err.status} {STATUS_PHRASES.get(err.status, b'').decode()}"]
    head += ["Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in err.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _refusing(app: ASGIApp, err: ApiError) -> ASGIApp:
    async def refusing(scope: Scope, receive: Receive, send: Send) -> None:
        scope[REFUSE_KEY] = err
        await app(scope, receive, send)

    return refusing


class GuardedH11(H11Protocol):
    """One client connection (see the module doc); ``make_protocol`` sets the limits and log."""

    limits: ClassVar[WireLimits] = WireLimits()
    per_client: ClassVar[Counter[str]] = Counter()
    write: ClassVar[Callable[[dict[str, Any]], None]] = staticmethod(lambda entry: None)

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer: Any = None
        self._phase = ""
        self._peer: str | None = self.client[0] if self.client else ""
        self.per_client[self._peer] += 1
        if len(self.connections) > self.limits.max_connections:
            err = ApiError(503, "the server has too many open connections", code="server_busy")
            self.app = _refusing(self.app, err)
        elif self.per_client[self._peer] > self.limits.max_per_client:
            message = f"more than {self.limits.max_per_client} open connections from {self._peer}"
            self.app = _refusing(self.app, ApiError(429, message, code="too_many_connections"))
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is not None:
            self.per_client[self._peer] -= 1
            if self.per_client[self._peer] <= 0:
                del self.per_client[self._peer]
            self._peer = None
        self._cancel()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.scope.setdefault(CLOSED_KEY, "reset")  # type: ignore[misc]
        super().connection_lost(exc)

    def eof_received(self) -> None:
        # A client that half-closes before its answer cannot be told from one that left: both end the
        # request (its generation stops), and the log says which happened.
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.scope.setdefault(CLOSED_KEY, "half_close")  # type: ignore[misc]
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        """A timer per phase: waiting for headers, or for the rest of the body; none otherwise."""
        phase = {h11.IDLE: "headers", h11.SEND_BODY: "body"}.get(self.conn.their_state, "")
        if self.transport.is_closing() or phase == self._phase:
            return
        self._cancel()
        self._phase = phase
        if phase:
            delay = self.limits.header_timeout if phase == "headers" else self.limits.body_timeout
            self._timer = self.loop.call_later(delay, self._expired, phase)

    def _expired(self, phase: str) -> None:
        self._timer = None
        if self.transport.is_closing() or phase != self._phase:
            return
        if phase == "headers":
            if self.conn.trailing_data[0]:  # part of a request came: tell it why it ends
                message = f"the request headers did not arrive within {self.limits.header_timeout:g} s"
                self.transport.write(raw_response(ApiError(408, message, code="timeout")))
        else:
            message = f"the request body did not arrive within {self.limits.body_timeout:g} s"
            cycle = self.cycle
            cycle.scope[DROPPED_KEY] = message  # type: ignore[typeddict-unknown-key]
            if not cycle.response_started:
                rid = cycle.scope.get(LOG_KEY, {}).get("id")  # type: ignore[attr-defined]
                headers = {"X-Request-Id": rid} if rid else None
                self.transport.write(raw_response(ApiError(408, message, code="timeout", headers=headers)))
            cycle.disconnected = True  # the app's reads end now, its answer goes nowhere
            cycle.message_event.set()
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse: JSON instead of plain text, and a log line."""
        exc = sys.exc_info()[1]
        hint = getattr(exc, "error_status_hint", 400)
        detail = str(exc) if exc is not None else msg
        status, code, text = PROTOCOL_ERRORS.get(hint, (400, "invalid_request", "bad request ({detail})"))
        err = ApiError(status, text.format(limit=self.limits.max_header_bytes, detail=detail), code=code)
        entry = {"event": "request", "client": self._peer or "", "status": status, "error": code}
        self.write({**entry, "detail": detail[:200]})
        self.transport.write(raw_response(err))
        self.transport.close()


def make_protocol(limits: WireLimits, write: Callable[[dict[str, Any]], None]) -> type[GuardedH11]:
    """A protocol class for ``uvicorn.Config(http=...)`` with its own limits, counters and log."""
    attrs = {"limits": limits, "per_client": Counter(), "write": staticmethod(write)}
    return type("TliteH11Protocol", (GuardedH11,), attrs)
