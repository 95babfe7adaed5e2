"""An interrupted Hub download resumes: a local server plays the Hub (HF_ENDPOINT) for a stand-in repo
and drops the connection half-way through a shard. Dropped twice, the download goes on from where it
broke (HTTP Range, only the missing bytes) and the conversion succeeds; dropped every time, the run
ends with one clear line, writes nothing, and a later run succeeds. (huggingface_hub >= 2 keeps each
attempt's partial file private to its process, so resuming happens within a run, not across runs.)"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hostile_kit import SHARD2, leftovers, run_bounded

REPO = "tester/T-lite-standin-instruct-0.1"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: Path) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.folder = folder
        self.files = sorted(p.name for p in folder.iterdir() if p.is_file())
        self.etags = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in self.files}
        self.drop: str | None = None  # file whose downloads break half-way
        self.drop_left = 0  # how many more times
        self.ranges: list[tuple[str, int]] = []  # (file, first byte) of every data request
        self.drops = 0


class HubHandler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _file(self) -> str | None:
        m = re.fullmatch(rf"/{REPO}/resolve/[^/]+/(.+)", self.path.split("?")[0])
        return m[1] if m and m[1] in self.server.files else None

    def _headers(self, name: str, size: int, status: int = 200, extra: dict | None = None) -> None:
        self.send_response(status)
        etag = self.server.etags[name]
        for key, value in {
            "X-Repo-Commit": COMMIT,
            "ETag": f'"{etag}"',
            "X-Linked-Etag": f'"{etag}"',
            "X-Linked-Size": str((self.server.folder / name).stat().st_size),
            "Content-Length": str(size),
            "Accept-Ranges": "bytes",
            **(extra or {}),
        }.items():
            self.send_header(key, value)
        self.end_headers()

    def _entry(self, name: str) -> dict:
        size = (self.server.folder / name).stat().st_size
        oid = self.server.etags[name]
        return {
            "type": "file",
            "oid": oid[:40],
            "size": size,
            "path": name,
            "lfs": {"oid": oid, "size": size, "pointerSize": 134},
        }

    def _json(self, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        name = self._file()
        if name is None:
            self.send_error(404)
            return
        self._headers(name, (self.server.folder / name).stat().st_size)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path.startswith(f"/api/models/{REPO}/tree/"):
            self._json([self._entry(n) for n in self.server.files])
            return
        if path.startswith(f"/api/models/{REPO}"):
            self._json(
                {
                    "id": REPO,
                    "modelId": REPO,
                    "sha": COMMIT,
                    "private": False,
                    "siblings": [{"rfilename": n} for n in self.server.files],
                }
            )
            return
        name = self._file()
        if name is None:
            self.send_error(404)
            return
        data = (self.server.folder / name).read_bytes()
        start = 0
        if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
            start = int(m[1])
        self.server.ranges.append((name, start))
        status = 206 if start else 200
        extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {}
        self._headers(name, len(data) - start, status, extra)
        if name == self.server.drop and self.server.drop_left > 0:
            self.server.drop_left -= 1
            self.server.drops += 1
            self.wfile.write(data[start : start + (len(data) - start) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the network goes away mid-file
            self.close_connection = True
            return
        self.wfile.write(data[start:])


@pytest.fixture
def hub(standin_dir: Path):  # noqa: ANN201
    server = FakeHub(standin_dir)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()


def test_download_resumes(hub: FakeHub, tmp_path: Path) -> None:
    env = {
        "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "10",
        "HF_HUB_DOWNLOAD_TIMEOUT": "10",
        "HF_HUB_OFFLINE": "0",
    }
    out = tmp_path / "out"
    out.mkdir()
    size = (hub.folder / SHARD2).stat().st_size
    hub.drop, hub.drop_left = SHARD2, 2
    resumed = run_bounded("convert", REPO, "--out-dir", out, env=env)
    assert resumed.returncode == 0, resumed.stderr
    starts = [start for name, start in hub.ranges if name == SHARD2]
    assert hub.drops == 2 and len(starts) == 3 and starts[0] == 0 < starts[1] < starts[2] < size, starts
    # each attempt asks only for what is not on disk yet (the client keeps whole 10 MiB chunks)
    assert starts[1] <= size // 2 and starts[2] <= starts[1] + (size - starts[1]) // 2
    assert (out / "T-lite-standin-instruct-0.1-BF16.gguf").is_file() and leftovers(out) == []

    out2 = tmp_path / "out2"
    out2.mkdir()
    env["HF_HOME"] = str(tmp_path / "hf-home-2")
    hub.drop_left = 10**6  # the network keeps failing
    failed = run_bounded("convert", REPO, "--out-dir", out2, env=env)
    assert failed.returncode == 2, failed.stderr
    assert "Traceback" not in failed.stderr, failed.stderr  # above it: the Hub client's progress and retries
    assert REPO in failed.lines[-1] and "download interrupted (run again to retry)" in failed.lines[-1]
    assert list(out2.iterdir()) == []
    hub.drop_left = 0
    again = run_bounded("convert", REPO, "--out-dir", out2, env=env)
    assert again.returncode == 0, again.stderr
    assert (out2 / "T-lite-standin-instruct-0.1-BF16.gguf").is_file() and leftovers(out2) == []
