"""The ASGI app: routes, API-key check, body limit, SSE streaming, JSON errors and the access log.

Every answer but ``/metrics`` (Prometheus text) is JSON (errors in OpenAI's ``{"error": {...}}``
shape, never a traceback, never a redirect); every request leaves one JSON line in the access log
(no message text, no key).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tlite_edge.runtime.types import reply_budget
from tlite_edge.serve.metrics import CONTENT_TYPE
from tlite_edge.serve.pool import Job, Outcome, Pool
from tlite_edge.serve.protocol import LOG_KEY, ApiError, bad, parse_json, parse_request
from tlite_edge.serve.shape import Shaper, sse
from tlite_edge.serve.wire import CLOSED_KEY, DROPPED_KEY, REFUSE_KEY

DRAIN_SECONDS = 5.0  # after a disconnect, how long to wait for the reply's own end (for the log)
CLIENT_CLOSED = 499  # logged status of a request whose client left before its answer (as nginx does)


@dataclass
class ServeConfig:
    model_id: str
    model_names: frozenset[str]  # what the "model" field may say
    created: int
    n_ctx: int
    api_key: str | None = None
    max_body: int = 1 << 20
    max_messages: int = 256
    timeout: float = 300.0
    stall_timeout: float = 30.0  # a streamed answer the client stops reading is dropped after this
    meta: dict[str, Any] = field(default_factory=dict)  # model facts for /v1/models (llama-server's "meta")


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    too_large = ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_large if length.isdigit() else bad("bad Content-Length header")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        if DROPPED_KEY in request.scope:  # the connection layer's body time limit
            raise ApiError(408, request.scope[DROPPED_KEY], code="timeout") from None
        raise ApiError(400, "the client closed the connection while sending the body") from None
    return b"".join(chunks)


async def _watch_disconnect(receive: Receive, job: Job) -> None:
    """Stop ``job`` when the client goes away (the body was read already: only a disconnect comes)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            job.cancel("disconnect")
            return


async def _finish(job: Job) -> Outcome:
    """Wait (a little) for a stopped job's thread to end, so the log counts what it generated."""
    end = time.monotonic() + DRAIN_SECONDS
    while not job.done.is_set() and time.monotonic() < end:
        await asyncio.sleep(0.01)
    return job.outcome


class EventStream(Response):
    """``text/event-stream`` of a job; a client that disconnects stops the generation."""

    media_type = "text/event-stream"

    def __init__(self, job: Job, body: AsyncGenerator[bytes, None], stall_timeout: float):
        self.status_code, self.background = 200, None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job, self.body_iter, self.stall_timeout = job, body, stall_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.ensure_future(_watch_disconnect(receive, self.job))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.body_iter:
                if self.job.outcome.cancelled == "disconnect":
                    break
                message = {"type": "http.response.body", "body": chunk, "more_body": True}
                await asyncio.wait_for(send(message), self.stall_timeout)  # waits while the client is slow
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away while we wrote
            self.job.cancel("disconnect")
        except asyncio.TimeoutError:  # the client stopped reading: free the slot, drop the connection
            self.job.cancel("stalled")
        finally:
            watcher.cancel()
            if self.job.outcome.cancelled:
                _log_outcome(scope, await _finish(self.job))
            await self.body_iter.aclose()


def _log_outcome(scope: Scope, outcome: Outcome) -> None:
    entry = scope.get(LOG_KEY, {})
    entry["finish_reason"] = outcome.finish or None
    if outcome.usage:
        entry.update(
            prompt_tokens=outcome.usage.prompt_tokens,
            cached_tokens=outcome.usage.cached_tokens,
            completion_tokens=outcome.usage.completion_tokens,
        )
    if outcome.cancelled:
        entry["cancelled"] = outcome.cancelled


def build_app(pool: Pool, cfg: ServeConfig) -> Starlette:
    """The OpenAI-compatible app over ``pool``."""

    def authorize(request: Request) -> None:
        if cfg.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if not (
            scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), cfg.api_key.encode())
        ):
            raise ApiError(
                401,
                "missing or wrong API key (send Authorization: Bearer KEY)",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def model_card() -> dict[str, Any]:
        return {
            "id": cfg.model_id,
            "object": "model",
            "created": cfg.created,
            "owned_by": "tlite-edge",
            "context_length": cfg.n_ctx,
            "meta": {"n_ctx": cfg.n_ctx, **cfg.meta},
        }

    async def health(request: Request) -> JSONResponse:
        extra = await asyncio.to_thread(pool.health) if pool.health else {}
        ok = extra.pop("ok", True)
        return JSONResponse(
            {
                "status": "ok" if ok else "degraded",
                "model": cfg.model_id,
                "slots": {"total": len(pool.engines), "busy": pool.busy},
                "queue": {"waiting": pool.waiting, "max": pool.max_queue},
                **extra,
            },
            status_code=200 if ok else 503,
        )

    async def metrics(request: Request) -> Response:
        authorize(request)
        return Response(pool.metrics.render(pool.gauges()), media_type=CONTENT_TYPE)

    async def models(request: Request) -> JSONResponse:
        authorize(request)
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request) -> JSONResponse:
        authorize(request)
        if request.path_params["name"] not in cfg.model_names:
            raise ApiError(404, f"model {request.path_params['name']!r} not found", code="model_not_found")
        return JSONResponse(model_card())

    async def complete(request: Request, kind: str) -> Response:
        entry = request.scope.get(LOG_KEY, {})
        authorize(request)
        req = parse_request(kind, parse_json(await read_body(request, cfg.max_body)), cfg.max_messages)
        entry.update(model=req.model, stream=req.stream)
        if req.model not in cfg.model_names:
            raise ApiError(
                404,
                f"model {req.model!r} not found (this server has {cfg.model_id!r})",
                code="model_not_found",
                param="model",
            )
        if req.max_tokens and reply_budget(cfg.n_ctx, 0, req.max_tokens) < req.max_tokens:
            raise bad(f"max_tokens is {req.max_tokens}, more than the context ({cfg.n_ctx})", "max_tokens")
        deadline = time.monotonic() + cfg.timeout
        job = await pool.submit(req, deadline)
        entry.update(queue_ms=round(job.queue_seconds * 1000, 1), slot=job.slot)
        events = job.stream(deadline)
        try:
            kind_, value = await anext(events)
        except BaseException:  # timed out (already stopped) or the server is shutting down
            job.cancel("aborted")
            raise
        if kind_ == "error":
            raise value  # type: ignore[misc]
        shaper = Shaper(req, cfg.model_id)
        if req.stream:
            return EventStream(job, _sse(shaper, events, request.scope), cfg.stall_timeout)
        watcher = asyncio.ensure_future(_watch_disconnect(request.receive, job))
        try:
            outcome = await _collect(events)
        except BaseException:  # timed out (already stopped) or the server is shutting down
            job.cancel("aborted")
            raise
        finally:
            watcher.cancel()
        _log_outcome(request.scope, outcome)
        assert outcome.usage is not None
        o = outcome
        return JSONResponse(shaper.full(o.text, o.finish, o.usage, o.logprobs, o.reasoning, o.tool_calls))

    async def chat(request: Request) -> Response:
        return await complete(request, "chat")

    async def completion(request: Request) -> Response:
        return await complete(request, "completion")

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        request.scope.get(LOG_KEY, {})["error"] = exc.code or exc.type
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed here"}
        err = ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail)), code="not_found")
        if exc.status_code == 405:
            err.code, err.headers = "method_not_allowed", dict(exc.headers or {})
        request.scope.get(LOG_KEY, {})["error"] = err.code
        return error_response(err)

    async def on_crash(request: Request, exc: Exception) -> Response:
        return error_response(ApiError(500, "internal server error", code="internal_error"))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completion, methods=["POST"]),
    ]
    handlers = {ApiError: on_api_error, HTTPException: on_http_error, Exception: on_crash}
    app = Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]
    app.router.redirect_slashes = False  # a 307 would echo the client's Host header in Location
    return app


async def _collect(events: AsyncIterator[tuple[str, object]]) -> Outcome:
    async for kind, value in events:
        if kind == "error":
            raise value  # type: ignore[misc]
        if kind == "end":
            return value  # type: ignore[return-value]
    raise ApiError(500, "the generation ended without a result")


async def _sse(
    shaper: Shaper, events: AsyncIterator[tuple[str, object]], scope: Scope
) -> AsyncGenerator[bytes, None]:
    """The stream: a role chunk, text chunks, a finish chunk, usage if asked, ``[DONE]``."""
    if shaper.req.kind == "chat":
        yield sse(shaper.chunk(first=True))
    logprobs = None  # the tokens of the next text chunk, when the request asked for them
    calls = 0
    try:
        async for kind, value in events:
            if kind == "logprobs":
                logprobs = value
            elif kind == "text":
                yield sse(shaper.chunk(str(value), logprobs=logprobs))  # type: ignore[arg-type]
                logprobs = None
            elif kind == "reasoning":
                yield sse(shaper.chunk(reasoning=str(value)))
            elif kind == "tool_call":
                for chunk in shaper.tool_call_chunks(calls, value):  # type: ignore[arg-type]
                    yield sse(chunk)
                calls += 1
            elif kind == "error":
                raise value  # type: ignore[misc]
            elif kind == "end":
                assert isinstance(value, Outcome) and value.usage is not None
                _log_outcome(scope, value)
                yield sse(shaper.chunk(finish=value.finish))
                if shaper.req.include_usage:
                    yield sse(shaper.usage_chunk(value.usage))
                yield sse("[DONE]")
    except ApiError as err:  # mid-stream: the status is sent already, the error goes in the stream
        scope.get(LOG_KEY, {})["error"] = err.code or err.type
        yield sse(err.body())


class AccessLog:
    """Outermost middleware: one JSON line per request, a request id header, no crash escapes."""

    def __init__(self, app: ASGIApp, write: Callable[[dict[str, Any]], None]) -> None:
        self.app, self.write = app, write

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        rid = f"req-{secrets.token_hex(6)}"
        client = scope.get("client") or ("", 0)
        entry: dict[str, Any] = {"event": "request", "id": rid, "client": client[0]}
        entry.update(method=scope["method"], path=scope["path"], status=0)
        scope[LOG_KEY] = entry

        async def send_logged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                if CLOSED_KEY in scope:  # nobody to answer: say so instead of the status not sent
                    entry.update(status=CLIENT_CLOSED, answer_status=message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            if REFUSE_KEY in scope:  # the connection layer's verdict (too many connections)
                err = scope[REFUSE_KEY]
                entry["error"] = err.code
                err.headers["Connection"] = "close"
                await error_response(err)(scope, receive, send_logged)
            else:
                await self.app(scope, receive, send_logged)
            if not entry["status"]:  # the app ended without an answer: never uvicorn's plain text
                await error_response(ApiError(500, "internal server error"))(scope, receive, send_logged)
        except Exception as exc:  # answered already by the app's 500 handler; keep it out of the logs' way
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            if CLOSED_KEY in scope:
                entry["client_closed"] = scope[CLOSED_KEY]
            entry["ms"] = round((time.monotonic() - t0) * 1000, 1)
            entry["ts"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
            self.write(entry)
