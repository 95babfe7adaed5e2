"""Load test of ``tlite-edge serve``: C concurrent OpenAI clients × R chat requests each, half of
them streamed, on the tiny rigged stand-in (a fixed 9-token Cyrillic reply). Checks that every request
is answered in full and that the server is alive afterwards; reports latency percentiles, time to
first token and throughput.

    python benchmarks/bench_serve.py --work bench-data/serve --clients 8 --requests 25 --parallel 2 \
        --threads 1 --update-md BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mdreport import replace_section, stamp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import make_rigged  # noqa: E402
from servers import Server  # noqa: E402

REPLY = "Ёлка, Ъ! Привет мир."
MODEL = "T-lite-standin-instruct-0.1-BF16"
SECTION = "## Serve: concurrent OpenAI clients on the tiny stand-in"


class Dirs:
    """Just enough of pytest's TempPathFactory for ``make_rigged``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=name, dir=self.root))


@dataclass
class Result:
    stream: bool
    seconds: float
    first_token: float  # streamed requests: seconds to the first text chunk
    text: str
    tokens: int
    error: str = ""


def one_request(client, i: int, j: int, stream: bool) -> Result:
    messages = [{"role": "user", "content": f"Клиент {i}, запрос {j}: поздоровайся."}]
    t0 = time.perf_counter()
    try:
        if not stream:
            out = client.chat.completions.create(model=MODEL, messages=messages, temperature=0)
            return Result(False, time.perf_counter() - t0, 0.0, out.choices[0].message.content or "",
                          out.usage.completion_tokens)  # fmt: skip
        first, text, tokens = 0.0, "", 0
        chunks = client.chat.completions.create(
            model=MODEL, messages=messages, temperature=0, stream=True, stream_options={"include_usage": True}
        )
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter() - t0
                text += chunk.choices[0].delta.content
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return Result(True, time.perf_counter() - t0, first, text, tokens)
    except Exception as exc:  # counted as lost, reported
        return Result(stream, time.perf_counter() - t0, 0.0, "", 0, f"{type(exc).__name__}: {exc}")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the generated stand-in")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25, help="requests per client")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads per slot")
    ap.add_argument("--baseline", type=int, default=10, help="sequential requests first (no queue)")
    ap.add_argument("--update-md", type=Path)
    args = ap.parse_args()
    import openai

    args.work.mkdir(parents=True, exist_ok=True)
    model, _ = make_rigged(Dirs(args.work), REPLY, seed=5)
    server = Server(model, "--parallel", str(args.parallel), "--threads", str(args.threads),
                    "--max-queue", str(args.clients), "--ctx", "512")  # fmt: skip
    results: list[Result] = []
    lock = threading.Lock()

    def client_loop(i: int) -> None:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=300)
        for j in range(args.requests):
            r = one_request(client, i, j, stream=bool((i + j) % 2))
            with lock:
                results.append(r)

    load = os.getloadavg()[0]
    solo = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=300)
    baseline = [one_request(solo, -1, j, stream=bool(j % 2)) for j in range(args.baseline)]
    mark = len(server.log)
    t0 = time.perf_counter()
    workers = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    alive = server.proc.poll() is None and server.request("GET", "/health")[0] == 200
    answered = [e for e in server.log[mark:] if e.get("path") == "/v1/chat/completions"]
    logged = sum(1 for e in answered if e.get("status") == 200)
    code = server.stop()

    expected = args.clients * args.requests
    ok = [r for r in results if not r.error and r.text == REPLY]
    lost = expected - len(ok)
    tokens = sum(r.tokens for r in ok)
    rows = []
    groups = [
        (f"{args.clients} clients, all", ok),
        (f"{args.clients} clients, non-streamed", [r for r in ok if not r.stream]),
        (f"{args.clients} clients, streamed", [r for r in ok if r.stream]),
        ("1 client, sequential (before)", [r for r in baseline if not r.error and r.text == REPLY]),
    ]
    for name, subset in groups:
        if not subset:
            continue
        lat = [r.seconds * 1000 for r in subset]
        ttft = [r.first_token * 1000 for r in subset if r.stream]
        first = f"{statistics.median(ttft):.0f} | {pct(ttft, 95):.0f} |" if ttft else "– | – |"
        rows.append(
            f"| {name} | {len(subset)} | {statistics.median(lat):.0f} | {pct(lat, 95):.0f} | "
            f"{max(lat):.0f} | {first}"
        )
    print("\n".join(rows))
    print(f"wall {wall:.1f} s, {len(ok) / wall:.1f} req/s, {tokens / wall:.0f} tok/s, lost {lost}")
    for r in results:
        if r.error:
            print("error:", r.error)
    if args.update_md:
        body = [
            f"{stamp()} Server: `--parallel {args.parallel} --threads {args.threads} "
            f"--max-queue {args.clients} --ctx 512` on the rigged tiny stand-in (its greedy reply: "
            f"{len(REPLY)} characters, {ok[0].tokens if ok else 0} tokens, then `<|eot_id|>`); "
            f"{args.clients} OpenAI clients (threads) × {args.requests} chat requests each, every other "
            "one streamed, temperature 0. Latency is client-side, from the call to the last byte; it "
            f"includes the wait in the server's queue ({args.clients} clients, {args.parallel} slots). "
            f"Before that, {args.baseline} sequential requests from one client give the service time "
            f"without a queue. Load average when the run started: {load:.1f}"
            + (
                f" on {os.cpu_count()} CPUs: the machine was busy with other work, so the times are "
                "upper bounds."
                if load > (os.cpu_count() or 1)
                else "."
            ),
            "",
            "| requests | n | p50 ms | p95 ms | max ms | first token p50 ms | first token p95 ms |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"{len(ok)}/{expected} answered in full (reply text exact), {lost} lost, "
            f"{logged} logged as 200 by the server; server alive afterwards: {'yes' if alive else 'NO'}, "
            f"clean shutdown on SIGTERM: {'yes' if code == 0 else f'NO ({code})'}. "
            f"Throughput {len(ok) / wall:.1f} requests/s, {tokens / wall:.0f} generated tokens/s "
            f"(wall {wall:.1f} s).",
        ]
        replace_section(args.update_md, SECTION, body)
    return 0 if lost == 0 and alive and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
