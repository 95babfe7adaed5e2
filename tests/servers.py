"""A ``tlite-edge serve`` subprocess on a free loopback port, with its JSON-lines log collected."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class Server:
    """``python -m tlite_edge serve MODEL --port 0 ARGS``; ``url`` ends in /v1, ``log`` holds its lines."""

    def __init__(self, model: Path, *args: str, startup: float = 180.0) -> None:
        cmd = [sys.executable, "-m", "tlite_edge", "serve", str(model), "--port", "0", *args]
        env = {**os.environ, "PYTHONUTF8": "1"}
        env.pop("TLITE_EDGE_API_KEY", None)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.log: list[dict[str, Any]] = []
        self.other: list[str] = []  # stderr lines that are not JSON (there should be none)
        self.url = ""
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(startup) or not self.url:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {self.other[-5:]} {self.log[-3:]}")
        parsed = urlparse(self.url)
        self.host, self.port = parsed.hostname or "", parsed.port or 0

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                self.other.append(line.rstrip())
                continue
            self.log.append(entry)
            if entry.get("event") == "listening":
                self.url = entry["url"]
                self._ready.set()
        self._ready.set()

    def connection(self, timeout: float = 60) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(
        self, method: str, path: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, parsed JSON body) of one plain HTTP request."""
        conn = self.connection()
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        assert resp.getheader("Content-Type", "").startswith("application/json"), raw[:200]
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(raw)

    def entry(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The access-log line of one request (by its X-Request-Id)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = [e for e in self.log if e.get("id") == request_id]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no access-log line for {request_id}")

    def wait_idle(self, timeout: float) -> float:
        """Seconds until /health reports no busy slot (fails after ``timeout``)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            status, _, health = self.request("GET", "/health")
            if status == 200 and health["slots"]["busy"] == 0:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise AssertionError(f"a slot is still busy after {timeout} s")

    def stop(self) -> int:
        """SIGTERM; the exit code (0: clean shutdown)."""
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9
