"""llama.cpp RPC workers seen from the client: endpoints, a protocol probe, and the layer split.

llama.cpp's RPC client aborts the whole process when a worker cannot be reached or drops the
connection, so nothing here goes through it: ``probe`` speaks the first three messages of the RPC
protocol (HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY; ggml/src/ggml-rpc/ggml-rpc.cpp of the llama.cpp
that llama-cpp-python 0.3.36 vendors) over a plain socket with timeouts, so a worker that is down,
busy with another client or of another protocol version is one clear line before llama.cpp sees it.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tlite_edge.errors import TliteError

PROTO_MAJOR = 7  # RPC_PROTO_MAJOR_VERSION in ggml-rpc.h (0.3.36); servers of another major refuse us
CMD_GET_DEVICE_MEMORY = 11  # enum rpc_cmd
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15
CONN_CAPS = 24  # RPC_CONN_CAPS_SIZE (transport.h): all zero = plain TCP
DEFAULT_PORT = 50052  # llama.cpp's rpc-server default
MAX_WORKERS = 16  # GGML_RPC_MAX_SERVERS
PROBE_TIMEOUT = 5.0
BUSY = "busy with another client: llama.cpp's RPC server serves one client at a time"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker reports: protocol version and (free, total) bytes per device."""

    endpoint: Endpoint
    version: str
    devices: tuple[tuple[int, int], ...]

    @property
    def free(self) -> int:
        return sum(f for f, _ in self.devices)

    @property
    def total(self) -> int:
        return sum(t for _, t in self.devices)


def parse_endpoint(text: str, flag: str = "--rpc") -> Endpoint:
    """``HOST:PORT`` (port 1..65535), else one line naming the flag."""
    host, colon, port = text.strip().rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TliteError(
            None, f"{flag}: {text.strip()!r} is not HOST:PORT (e.g. 192.168.1.20:{DEFAULT_PORT})"
        )
    if host.startswith("[") or ":" in host:
        raise TliteError(
            None, f"{flag}: {text.strip()!r}: llama.cpp's RPC client takes an IPv4 address or a name"
        )
    return Endpoint(host, int(port))


def parse_endpoints(text: str, flag: str = "--rpc") -> list[Endpoint]:
    """A comma-separated list of distinct endpoints, at most llama.cpp's limit."""
    endpoints = [parse_endpoint(part, flag) for part in text.split(",") if part.strip()]
    if not endpoints:
        raise TliteError(None, f"{flag}: no HOST:PORT given")
    if len(set(endpoints)) != len(endpoints):
        raise TliteError(None, f"{flag}: a worker is named twice")
    if len(endpoints) > MAX_WORKERS:
        raise TliteError(None, f"{flag}: at most {MAX_WORKERS} workers (llama.cpp's limit)")
    return endpoints


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the worker closed the connection")
        data += chunk
    return data


def _call(sock: socket.socket, cmd: int, payload: bytes, answer: int) -> bytes:
    """One request (cmd byte, u64 size, payload) and its answer (u64 size, bytes), little-endian."""
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv(sock, 8))
    if size != answer:
        raise ConnectionError(f"unexpected answer size {size} (expected {answer})")
    return _recv(sock, size)


def probe(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT) -> WorkerInfo:
    """Ask a worker for its version and memory; one line naming it when it is down, busy or foreign."""
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except TimeoutError:
        raise TliteError(None, f"RPC worker {endpoint} does not answer (down, or {BUSY})") from None
    except OSError as exc:
        raise TliteError(None, f"RPC worker {endpoint} is down ({exc.strerror or exc})") from None
    try:
        with sock:
            hello = _call(sock, CMD_HELLO, bytes(CONN_CAPS), 4 + CONN_CAPS)
            major, minor, patch = hello[:3]
            version = f"{major}.{minor}.{patch}"
            if major != PROTO_MAJOR:
                raise TliteError(
                    None,
                    f"RPC worker {endpoint} speaks protocol {version}, this llama.cpp {PROTO_MAJOR}.x: "
                    "install the same llama-cpp-python version on both",
                )
            (count,) = struct.unpack("<I", _call(sock, CMD_DEVICE_COUNT, b"", 4))
            devices = tuple(
                struct.unpack("<QQ", _call(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", i), 16))
                for i in range(count)
            )
    except TimeoutError:
        raise TliteError(
            None, f"RPC worker {endpoint} accepted the connection but did not answer ({BUSY})"
        ) from None
    except OSError as exc:
        raise TliteError(None, f"RPC worker {endpoint} failed the handshake ({exc})") from None
    return WorkerInfo(endpoint, version, devices)


def reachable(endpoint: Endpoint, timeout: float = 1.0) -> bool:
    """Whether the worker's port accepts connections. Only for a worker nobody uses: llama.cpp's
    server listens with a backlog of one and accepts nothing while it serves a client."""
    try:
        socket.create_connection((endpoint.host, endpoint.port), timeout=timeout).close()
        return True
    except OSError:
        return False


def down_workers(endpoints: Sequence[Endpoint], wait: float = 2.0, timeout: float = 0.5) -> list[Endpoint]:
    """The workers whose port refuses connections, after llama.cpp lost one: a dying worker's listening
    socket can outlive the connection it broke by a moment, so look again for up to ``wait`` seconds
    until one is down (empty: none went down)."""
    deadline = time.monotonic() + wait
    while True:
        down = [e for e in endpoints if not reachable(e, timeout)]
        if down or time.monotonic() >= deadline:
            return down
        time.sleep(0.1)


def layer_split(
    n_layers: int, worker_weights: Sequence[float], local_weight: float
) -> tuple[int, list[float]]:
    """(layers llama.cpp offloads to the workers, per-worker shares) for ``n_layers`` blocks + output.

    llama.cpp keeps the first ``n_layers + 1 - offloaded`` layers on the local CPU and spreads the rest
    over the workers in proportion to the shares (``tensor_split``).
    """
    total = sum(worker_weights) + local_weight
    if total <= 0 or any(w < 0 for w in worker_weights) or local_weight < 0:
        raise TliteError(None, "--tensor-split: shares must be >= 0 and not all 0")
    offloaded = round((n_layers + 1) * sum(worker_weights) / total)
    return offloaded, [float(w) for w in worker_weights]


def parse_tensor_split(text: str, n_workers: int) -> tuple[list[float], float]:
    """``--tensor-split A,B[,LOCAL]``: one share per worker, then optionally the local machine's (0)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise TliteError(None, f"--tensor-split: {text!r} is not a list of numbers") from None
    if len(values) not in (n_workers, n_workers + 1):
        raise TliteError(
            None,
            f"--tensor-split: {len(values)} shares for {n_workers} workers "
            f"(give one per worker, then optionally one for this machine)",
        )
    if not all(v >= 0 and v == v and v != float("inf") for v in values) or not any(values):
        raise TliteError(None, "--tensor-split: shares must be finite, >= 0 and not all 0")
    return values[:n_workers], values[n_workers] if len(values) > n_workers else 0.0
