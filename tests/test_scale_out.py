"""Replicas behind a stock balancer: the shipped nginx config in front of two `serve` replicas on
loopback (every request answered, also while one replica is killed), and the Kubernetes manifests
validated offline against the API schemas."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from servers import Server

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx" / "tlite-edge.conf"
MANIFESTS = ROOT / "deploy" / "kubernetes"
CLIENTS, PER_CLIENT = 8, 25
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)


def test_kubernetes_manifests_validate_offline() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    from kubernetes_validate.utils import latest_version

    kinds = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kv.validate(doc, latest_version(), strict=True)
            kinds[doc["kind"]] = doc
    assert set(kinds) == {"Deployment", "Service", "Secret", "PersistentVolumeClaim"}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    key = next(e for e in container["env"] if e["name"] == "TLITE_EDGE_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["name"] == kinds["Secret"]["metadata"]["name"]
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == kinds["PersistentVolumeClaim"]["metadata"]["name"]
    model = next(a for a in container["args"] if a.endswith(".gguf"))
    assert model.startswith(container["volumeMounts"][0]["mountPath"] + "/")
    selector = kinds["Service"]["spec"]["selector"]
    assert selector.items() <= kinds["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    # a broken manifest is refused: the validation can fail
    broken = dict(kinds["Service"], spec={"ports": [{"port": "eighty"}]})
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, latest_version(), strict=True)


def nginx_conf(tmp: Path, listen: int, replicas: list[Server]) -> Path:
    """The shipped config with this test's ports, inside a minimal nginx.conf that runs unprivileged."""
    site = NGINX_CONF.read_text()
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    lines = [ln for ln in site.splitlines() if ln.strip().startswith("server 127.0.0.1:")]
    assert len(lines) == 2
    for line, server in zip(lines, replicas, strict=False):
        site = site.replace(line, line.replace(line.split()[1], f"127.0.0.1:{server.port}"))
    for line in lines[len(replicas) :]:
        site = site.replace(line + "\n", "")
    assert site.count("server 127.0.0.1:") == len(replicas)
    temp = {k: tmp / k for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for d in temp.values():
        d.mkdir()
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"worker_processes 1;\npid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'} warn;\n"
        "daemon off;\nevents { worker_connections 256; }\n"
        f"http {{\naccess_log off;\n"
        + "".join(f"{k}_temp_path {v};\n" for k, v in temp.items())
        + site
        + "\n}\n"
    )
    return conf


def _ask(port: int, model: str, i: int) -> int:
    """One completion through the balancer: its status (200 only with a text in the answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        body = {"model": model, "prompt": f"запрос {i}", "max_tokens": 2, "temperature": 0}
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        return resp.status if resp.status != 200 or isinstance(data["choices"][0]["text"], str) else 0
    finally:
        conn.close()


def _load(port: int, model: str, after_a_third: threading.Event | None = None) -> list[int]:
    """8 clients × 25 requests through the balancer; ``after_a_third`` is set a third of the way."""
    done = [0]
    lock = threading.Lock()

    def client(c: int) -> list[int]:
        out = []
        for r in range(PER_CLIENT):
            out.append(_ask(port, model, c * PER_CLIENT + r))
            with lock:
                done[0] += 1
                if after_a_third is not None and done[0] >= CLIENTS * PER_CLIENT // 3:
                    after_a_third.set()
        return out

    with ThreadPoolExecutor(CLIENTS) as pool:
        return [s for statuses in pool.map(client, range(CLIENTS)) for s in statuses]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx)")
def test_nginx_two_replicas_answer_every_request(bf16_gguf: Path, tmp_path: Path) -> None:
    model = bf16_gguf.name.removesuffix(".gguf")
    args = (
        "--allow-host",
        "tlite-edge",
        "--trust-proxy",
        "--max-queue",
        "64",
        "--ctx",
        "256",
        "--threads",
        "1",
    )
    replicas = [Server(bf16_gguf, *args) for _ in range(2)]
    port = free_port()
    conf = nginx_conf(tmp_path, port, replicas)
    assert NGINX is not None
    check = subprocess.run(
        [NGINX, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/health")  # the balancer passes a replica's /health through
        health = json.loads(conn.getresponse().read())
        assert health["status"] == "ok" and health["model"] == model

        # both replicas up: every request answered, and both replicas took a share
        assert _load(port, model) == [200] * CLIENTS * PER_CLIENT
        time.sleep(0.3)  # the replicas' last log lines
        served = [
            sum(e.get("path") == "/v1/completions" and e.get("status") == 200 for e in r.log)
            for r in replicas
        ]
        assert min(served) > 0 and sum(served) == CLIENTS * PER_CLIENT, served

        # one replica killed a third of the way through: nginx retries on the other, none is lost
        third = threading.Event()
        killer = threading.Thread(target=lambda: third.wait(300) and replicas[1].proc.kill())
        killer.start()
        statuses = _load(port, model, third)
        killer.join()
        assert replicas[1].proc.wait(10) != 0
        assert statuses == [200] * CLIENTS * PER_CLIENT
        after = sum(e.get("path") == "/v1/completions" and e.get("status") == 200 for e in replicas[0].log)
        assert after - served[0] >= CLIENTS * PER_CLIENT // 2  # the survivor took the rest
    finally:
        nginx.terminate()
        nginx.wait(10)
        for r in replicas:
            r.proc.kill()
            r.proc.wait(10)
