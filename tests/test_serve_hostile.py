"""``tlite-edge serve`` against hostile clients on loopback: DNS rebinding and other origins, slow and
stalled sockets, malformed HTTP, long stop strings, lone surrogates, fields it used to ignore, and a
log stream with nothing but JSON lines.

Both servers run on the random stand-in (long replies) with short connection time limits.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from servers import Server

MODEL = "T-lite-standin-instruct-0.1-BF16"
KEY = "hostile-key-0123456789"
HEADER_TIMEOUT, BODY_TIMEOUT = 1.5, 2.0
PER_CLIENT = 12
ORIGIN = "http://localhost:3000"
LIMITS = ("--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT), "--threads", "1")
ATTACK = {"Host": "attacker.example", "Origin": "http://attacker.example", "Content-Type": "text/plain"}


@pytest.fixture(scope="module")
def srv(bf16_gguf: Path):
    """Keyless (the loopback default), one CORS origin allowed."""
    s = Server(bf16_gguf, "--ctx", "1024", "--max-client-connections", str(PER_CLIENT), "--cors-origin",
               ORIGIN, *LIMITS)  # fmt: skip
    yield s
    assert s.stop() == 0
    assert not s.other, s.other  # nothing but JSON lines on the log stream (llama.cpp's lines too)


@pytest.fixture(scope="module")
def keyed(bf16_gguf: Path):
    s = Server(bf16_gguf, "--ctx", "256", "--api-key", KEY, "--allow-host", "api.example", "--trust-proxy",
               *LIMITS)  # fmt: skip
    yield s
    assert s.stop() == 0
    assert not s.other, s.other


def chat(**extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Привет"}], "max_tokens": 4, **extra}


def connect(s: Server, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection((s.host, s.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def parse(raw: bytes) -> tuple[int, dict[str, str], dict]:
    """(status, lower-case headers, JSON body) of one raw HTTP answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers.get("content-type", "").startswith("application/json"), raw[:300]
    return int(lines[0].split()[1]), headers, json.loads(body)


def raw_request(s: Server, data: bytes, timeout: float = 10) -> tuple[int, dict[str, str], dict]:
    sock = connect(s, timeout)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered and closed early
        sock.sendall(data)
    try:
        return parse(read_all(sock))
    finally:
        sock.close()


def post(s: Server, body: dict | bytes, headers: dict[str, str], path: str = "/v1/chat/completions"):
    """A request whose headers are exactly ``headers`` (plus Content-Length)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        *(f"{k}: {v}" for k, v in headers.items()),
        f"Content-Length: {len(data)}",
    ]
    return raw_request(s, ("\r\n".join(lines) + "\r\n\r\n").encode() + data)


def is_error(out: dict, code: str) -> bool:
    return set(out["error"]) == {"message", "type", "param", "code"} and out["error"]["code"] == code


# ---- who may call ------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["keyless", "keyed"])
def test_rebinding_request_refused(which: str, request: pytest.FixtureRequest) -> None:
    s = request.getfixturevalue("srv" if which == "keyless" else "keyed")
    auth = {"Authorization": f"Bearer {KEY}"} if which == "keyed" else {}
    status, headers, out = post(s, chat(), {**ATTACK, **auth})  # a web page's "simple request"
    assert status == 403 and is_error(out, "host_refused") and "access-control-allow-origin" not in headers
    json_attack = {**ATTACK, "Content-Type": "application/json", **auth}
    assert post(s, chat(), json_attack)[0] == 403
    # the right Host, but a page of another origin (no rebinding needed): refused too
    other = {
        "Host": f"127.0.0.1:{s.port}",
        "Origin": "http://evil.example",
        "Content-Type": "application/json",
    }
    status, _, out = post(s, chat(), {**other, **auth})
    assert status == 403 and is_error(out, "origin_refused")
    assert (
        post(s, chat(), {"Host": f"localhost:{s.port}", "Content-Type": "application/json", **auth})[0] == 200
    )


def test_allowed_host_and_forwarded_for(keyed: Server, srv: Server) -> None:
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    status, headers, _ = post(
        keyed, chat(), {"Host": "api.example", "X-Forwarded-For": "203.0.113.9", **auth}
    )
    assert status == 200 and keyed.entry(headers["x-request-id"])["client"] == "203.0.113.9"  # --trust-proxy
    status, headers, _ = post(srv, chat(), {"Host": "localhost", "X-Forwarded-For": "203.0.113.9",
                                            "Content-Type": "application/json"})  # fmt: skip
    assert status == 200 and srv.entry(headers["x-request-id"])["client"] == "127.0.0.1"


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
def test_body_must_be_json(srv: Server, ctype: str | None) -> None:
    headers = {"Host": "localhost"} | ({"Content-Type": ctype} if ctype else {})
    status, _, out = post(srv, chat(), headers)
    assert status == 415 and is_error(out, "unsupported_media_type")
    assert (
        post(srv, chat(), {"Host": "localhost", "Content-Type": "application/json; charset=utf-8"})[0] == 200
    )


def test_cors_for_a_listed_origin(srv: Server) -> None:
    preflight = (
        f"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: localhost:{srv.port}\r\nOrigin: {ORIGIN}\r\n"
        "Access-Control-Request-Method: POST\r\n"
        "Access-Control-Request-Headers: content-type, authorization\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    sock = connect(srv)
    sock.sendall(preflight.encode())
    head = sock.recv(65536).decode("latin-1").lower()
    sock.close()
    assert head.startswith("http/1.1 204") and f"access-control-allow-origin: {ORIGIN}" in head
    assert "access-control-allow-methods: get, post, options" in head and "content-type" in head
    status, headers, _ = post(
        srv, chat(), {"Host": "localhost", "Origin": ORIGIN, "Content-Type": "application/json"}
    )
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
    status, _, out = raw_request(srv, preflight.replace(ORIGIN, "http://evil.example").encode())
    assert status == 403 and is_error(out, "origin_refused")


# ---- slow and stalled clients ------------------------------------------------------------------------


def _slowloris(s: Server, sock: socket.socket, closed: dict[int, float], t0: float) -> None:
    """Send a header byte every 0.3 s until the server closes the socket; note when it did."""
    request = f"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Pad: {'a' * 100}".encode()
    sock.settimeout(0.3)
    for byte in request:
        try:
            sock.send(bytes([byte]))
            if sock.recv(4096) == b"":
                break
        except TimeoutError:
            continue
        except OSError:
            break
    closed[sock.fileno()] = time.monotonic() - t0


def test_slowloris_sockets_closed_within_the_header_timeout(srv: Server) -> None:
    t0 = time.monotonic()
    socks = [connect(srv) for _ in range(PER_CLIENT - 2)]
    closed: dict[int, float] = {}
    threads = [
        threading.Thread(target=_slowloris, args=(srv, s, closed, t0)) for s in socks[: len(socks) // 2]
    ]
    for t in threads:  # the other half stay silent
        t.start()
    assert srv.request("GET", "/health")[0] == 200  # a normal request is served meanwhile
    for t in threads:
        t.join(HEADER_TIMEOUT + 5)
    for sock in socks[len(socks) // 2 :]:
        sock.settimeout(HEADER_TIMEOUT + 5)
        assert read_all(sock) == b""  # closed (nothing was asked, nothing answered)
        closed[sock.fileno()] = time.monotonic() - t0
    for sock in socks:
        sock.close()
    assert len(closed) == len(socks) and max(closed.values()) < HEADER_TIMEOUT + 1.5, closed


def test_stalled_bodies_released(srv: Server) -> None:
    """A chunked body announcing a huge chunk, and a body shorter than its Content-Length: both get 408
    within the body timeout; neither ever held a slot or a queue place."""
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    stalls = [
        head + 'Transfer-Encoding: chunked\r\n\r\nfffffff\r\n{"model"',
        head + "Content-Length: 5000\r\n\r\n{",
    ]
    for data in stalls:
        t0 = time.monotonic()
        sock = connect(srv)
        sock.sendall(data.encode())
        time.sleep(0.3)
        health = srv.request("GET", "/health")[2]
        assert health["slots"]["busy"] == 0 and health["queue"]["waiting"] == 0
        status, headers, out = parse(read_all(sock))
        sock.close()
        assert status == 408 and is_error(out, "timeout") and time.monotonic() - t0 < BODY_TIMEOUT + 1.5
        assert srv.entry(headers["x-request-id"])["status"] == 408
    assert srv.request("POST", "/v1/chat/completions", chat())[0] == 200


def test_connections_per_client_capped(srv: Server) -> None:
    socks = [connect(srv) for _ in range(PER_CLIENT)]
    try:
        status, headers, out = raw_request(srv, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status == 429 and is_error(out, "too_many_connections") and headers["connection"] == "close"
    finally:
        for sock in socks:
            sock.close()
    time.sleep(0.2)
    assert srv.request("GET", "/health")[0] == 200


def test_half_closed_client_logged(srv: Server) -> None:
    sock = connect(srv)
    body = json.dumps(chat(max_tokens=900)).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    sock.shutdown(socket.SHUT_WR)  # "that is all I have to say"
    read_all(sock)
    sock.close()
    srv.wait_idle(timeout=10)
    entry = [e for e in srv.log if e.get("path") == "/v1/chat/completions"][-1]
    assert (
        entry["client_closed"] == "half_close"
        and entry["status"] == 499
        and entry["cancelled"] == "disconnect"
    )


# ---- malformed HTTP: JSON errors, never plain text or redirects -------------------------------------


MALFORMED = {
    "bad Content-Length": (
        b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n",
        400,
    ),
    "two Content-Lengths": (
        b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        400,
    ),
    "1 MB header": (b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 2**20 + b"\r\n\r\n", 431),
    "1 MB URL": (b"GET /" + b"a" * 2**20 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 431),
    "not HTTP": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64 + b"\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_http_gets_json(srv: Server, case: str) -> None:
    data, want = MALFORMED[case]
    status, _, out = raw_request(srv, data)
    assert (
        status == want
        and out["error"]["message"]
        and set(out["error"]) == {"message", "type", "param", "code"}
    )
    assert srv.request("GET", "/health")[0] == 200


def test_trailing_slash_no_redirect(srv: Server) -> None:
    for path in ("/v1/chat/completions/", "/v1/models/", "/health/"):
        for host in ("localhost", "attacker.example"):
            sock = connect(srv)
            method = "POST" if "chat" in path else "GET"
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                         "Content-Length: 2\r\n\r\n{}".encode())  # fmt: skip
            status, headers, out = parse(read_all(sock))
            sock.close()
            assert status in (403, 404) and "location" not in headers and out["error"]["message"]


# ---- request contents --------------------------------------------------------------------------------


SURROGATE = '"a\\ud800"'


@pytest.mark.parametrize(
    ("template", "param"),
    [
        ('{"model": "M", "messages": [{"role": "user", "content": S}]}', "messages[0].content"),
        ('{"model": "M", "stream": true, "messages": [{"role": "user", "content": S}]}',
         "messages[0].content"),
        ('{"model": "M", "messages": [{"role": "user", "content": [{"type": "text", "text": S}]}]}',
         "messages[0].content[0].text"),
        ('{"model": "M", "stop": [S], "messages": [{"role": "user", "content": "x"}]}', "stop[0]"),
        ('{"model": "M", "stream": true, "prompt": S}', "prompt"),
    ],
)  # fmt: skip
def test_lone_surrogate_is_400(srv: Server, template: str, param: str) -> None:
    body = template.replace("M", MODEL).replace("S", SURROGATE).encode()
    path = "/v1/completions" if '"prompt"' in template else "/v1/chat/completions"
    status, _, out = post(srv, body, {"Host": "localhost", "Content-Type": "application/json"}, path)
    assert status == 400 and out["error"]["param"] == param, out


def test_stop_bytes_limit(srv: Server) -> None:
    body = json.dumps(chat(stop=["я" * 450_000]), ensure_ascii=False).encode()  # 900 KB
    status, _, out = srv.request("POST", "/v1/chat/completions", body)
    assert status == 400 and out["error"]["param"] == "stop" and "bytes" in out["error"]["message"]


def test_long_stops_accepted(srv: Server) -> None:
    """The largest allowed stops (4 × 8 KB) are taken and run to the length limit (their cost per token is
    measured by benchmarks/bench_stop.py; the matcher's work is counted below)."""
    body = {"model": MODEL, "prompt": "x", "max_tokens": 24, "temperature": 0, "seed": 3}
    status, _, out = srv.request("POST", "/v1/completions", {**body, "stop": ["q" * 8_000] * 4})
    assert status == 200 and out["usage"]["completion_tokens"] == 24, out
    assert out["choices"][0]["finish_reason"] == "length", out


class _Counted(str):
    """A stop string that counts how often the matcher looks into it."""

    looks = 0

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        _Counted.looks += 1
        return str.__getitem__(self, key)


def test_stop_matcher_linear() -> None:
    """The matcher looks into a stop string a bounded number of times per generated character, whatever
    the stop's length (the old one tested every prefix of every stop on every token: quadratic)."""
    from tlite_edge.serve.stops import StopMatcher

    pieces = ["При", "вет", " q", "qq", "q ", "мир", "!"] * 300
    chars = sum(map(len, pieces))

    def looks(stop: str) -> int:
        matcher = StopMatcher([_Counted(stop), _Counted(stop[::-1])])
        _Counted.looks = 0  # building the failure tables is linear in the stop, once per request
        for piece in pieces:
            assert not matcher.feed(piece)[1]
        return _Counted.looks

    small, large = looks("q" * 1_000 + "!"), looks("q" * 32_000 + "!")
    assert small == large and large <= 2 * 3 * chars, (small, large, chars)


# ---- fields: honoured or refused, never dropped ------------------------------------------------------


REFUSED = {
    "top_logprobs": 5,  # without logprobs: true
    "tool_choice": "auto",
    "function_call": "auto",
    "logprobs": 3,  # chat takes true/false (the count goes in top_logprobs)
    "presence_penalty": 2.5,
    "frequency_penalty": -3,
    "logit_bias": {"12": 101},
    "response_format": {"type": "yaml"},
    "min_tokens": 3,
}


@pytest.mark.parametrize("field", list(REFUSED))
def test_unsupported_field_refused(srv: Server, field: str) -> None:
    status, _, out = srv.request("POST", "/v1/chat/completions", chat(**{field: REFUSED[field]}))
    assert status == 400 and out["error"]["param"] == field, out


def test_sampling_fields_honoured(srv: Server) -> None:
    def text(**extra: object) -> str:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 24, "seed": 11, **extra}
        status, _, out = srv.request("POST", "/v1/completions", body)
        assert status == 200, out
        return out["choices"][0]["text"]

    greedy = text(temperature=0)
    assert text(temperature=1.5, top_k=1) == greedy  # top_k=1 is greedy whatever the temperature
    assert text(temperature=1.5, top_k=0) != greedy


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_sampling_fields_reach_the_sampler(bf16_gguf: Path, kind: str) -> None:
    """What a request asks for is what llama.cpp samples with (a penalty shows only on repeats)."""
    from tlite_edge.runtime import Engine
    from tlite_edge.serve.pool import start_reply
    from tlite_edge.serve.protocol import parse_request

    fields = {"top_k": 5, "repetition_penalty": 1.3, "top_p": 0.5, "temperature": 0.7, "seed": 9}
    fields |= {"presence_penalty": -0.5, "frequency_penalty": 1.5, "logit_bias": {"42": -7}}
    data = chat(**fields) if kind == "chat" else {"model": MODEL, "prompt": "x", "max_tokens": 4, **fields}
    engine = Engine.load(bf16_gguf, ctx=256, threads=1)
    try:
        reply = start_reply(engine, parse_request(kind, data, 8))
        s = reply.sampling
        assert (s.top_k, s.repeat_penalty, s.top_p, s.temp, s.seed) == (5, 1.3, 0.5, 0.7, 9)
        assert (s.presence_penalty, s.frequency_penalty, s.logit_bias) == (-0.5, 1.5, ((42, -7.0),))
        reply.close()
    finally:
        engine.close()


def test_readme_lists_the_fields_the_code_takes() -> None:
    import re

    from tlite_edge.serve.protocol import OPTIONS, STRUCTURED

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    bullets = re.split(r"\n(?=- )", readme)  # a bullet with its continuation lines

    def names(start: str) -> set[str]:
        (bullet,) = [b for b in bullets if b.startswith(start)]
        return set(re.findall(r"`([a-z_]+)`", bullet))

    honoured = {*STRUCTURED, *(k for k, o in OPTIONS.items() if o.honoured)}
    assert names("- Request fields honoured") == honoured
    assert names("- Request fields accepted only at their default") == {
        k for k, o in OPTIONS.items() if not o.honoured
    }
