"""Two ``serve`` replicas behind nginx against one, under the same load: 8 clients × 25 completion
requests each on the rigged tiny stand-in, through nginx with the shipped config
(deploy/nginx/tlite-edge.conf) listing one replica or both. Rounds alternate 1, 2, 2, 1 (ABBA).

    python benchmarks/bench_replicas.py --work bench-data/replicas --update-md BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mdreport import replace_section, stamp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench_serve import Dirs, pct  # noqa: E402
from conftest import make_rigged  # noqa: E402
from servers import Server  # noqa: E402
from test_scale_out import NGINX, free_port, nginx_conf  # noqa: E402

SECTION = "## Replicas: 2 behind nginx against 1, same 8-client load"
REPLY = "Ёлка, Ъ! Привет мир."


def ask(port: int, model: str, i: int) -> tuple[float, bool]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = {"model": model, "messages": [{"role": "user", "content": f"запрос {i}"}], "temperature": 0}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    ok = resp.status == 200 and data["choices"][0]["message"]["content"] == REPLY
    return time.perf_counter() - t0, ok


def round_(port: int, model: str, clients: int, per: int) -> dict:
    lat: list[float] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(per):
            s, ok = ask(port, model, c * per + r)
            with lock:
                lat.append(s if ok else float("nan"))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    good = [x * 1000 for x in lat if x == x]
    return {
        "wall": wall,
        "ok": len(good),
        "rps": len(good) / wall,
        "p50": statistics.median(good),
        "p95": pct(good, 95),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads per replica")
    ap.add_argument("--reps", type=int, default=2, help="ABBA pairs")
    ap.add_argument("--update-md", type=Path)
    args = ap.parse_args()
    if NGINX is None:
        raise SystemExit("nginx is not installed")
    args.work.mkdir(parents=True, exist_ok=True)
    model_path, _ = make_rigged(Dirs(args.work), REPLY, seed=5)
    model = model_path.name.removesuffix(".gguf")
    flags = (
        "--allow-host",
        "tlite-edge",
        "--threads",
        str(args.threads),
        "--max-queue",
        "64",
        "--ctx",
        "512",
    )
    replicas = [Server(model_path, *flags) for _ in range(2)]
    balancers, ports, tmps = [], {}, []
    load = os.getloadavg()[0]
    try:
        for n in (1, 2):
            tmp = Path(tempfile.mkdtemp(prefix=f"nginx{n}-", dir=args.work))
            tmps.append(tmp)
            ports[n] = free_port()
            conf = nginx_conf(tmp, ports[n], replicas[:n])
            balancers.append(subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp)]))
        time.sleep(1)
        results: dict[int, list[dict]] = {1: [], 2: []}
        for rep in range(args.reps):
            for n in (1, 2) if rep % 2 == 0 else (2, 1):
                r = round_(ports[n], model, args.clients, args.requests)
                results[n].append(r)
                print(
                    f"{n} replica(s): {r['rps']:.1f} req/s, p50 {r['p50']:.0f} ms, "
                    f"p95 {r['p95']:.0f} ms, ok {r['ok']}"
                )
    finally:
        for b in balancers:
            b.terminate()
            b.wait(10)
        for s in replicas:
            s.stop()
        for t in tmps:
            shutil.rmtree(t, ignore_errors=True)
    total = args.clients * args.requests
    lost = sum(total - r["ok"] for rs in results.values() for r in rs)
    rows = []
    for n in (1, 2):
        rs = results[n]
        rows.append(
            f"| {n} | {statistics.median(r['rps'] for r in rs):.1f} | "
            f"{statistics.median(r['p50'] for r in rs):.0f} | "
            f"{statistics.median(r['p95'] for r in rs):.0f} |"
        )
    ratio = statistics.median(r["rps"] for r in results[2]) / statistics.median(r["rps"] for r in results[1])
    print("\n".join(rows), f"\n2/1 throughput {ratio:.2f}, lost {lost}")
    if args.update_md:
        body = [
            f"{stamp()} Load average at the start: {load:.1f}. Replicas: `tlite-edge serve` on the rigged "
            f"tiny stand-in, `--parallel 1 --threads {args.threads}` each, on this one machine; nginx "
            "with deploy/nginx/tlite-edge.conf listing one or both. Load: "
            f"{args.clients} clients × {args.requests} chat requests, greedy. Medians of {args.reps} rounds "
            "each, alternating (ABBA).",
            "",
            "| replicas | requests/s | p50 ms | p95 ms |",
            "|---|---|---|---|",
            *rows,
            "",
            f"2 replicas / 1: {ratio:.2f}× the throughput; {lost} of {total * 2 * args.reps} requests lost. "
            "On one machine the replicas share its cores, so the gain is bounded by the cores one "
            "replica leaves idle; on separate machines the capacity adds up.",
        ]
        replace_section(args.update_md, SECTION, body)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
