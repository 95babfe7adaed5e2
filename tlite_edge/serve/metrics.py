"""``/metrics`` in Prometheus text exposition format 0.0.4: counters, gauges, histograms, no dependency.

Every update and every scrape happens on the server's event loop, so nothing here takes a lock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "tlite_edge_"
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions")
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")


def route_of(path: str) -> str:
    """The route label of a request path (unknown paths share one label: no unbounded label values)."""
    if path in ROUTES:
        return path
    return "/v1/models/{name}" if path.startswith("/v1/models/") else "other"


def _value(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    text = ",".join(f'{k}="{esc(str(v))}"' for k, v in pairs)
    return f"{{{text}}}" if text else ""


class Metric:
    """A metric family: name, help, type, label names."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labels = PREFIX + name, help_text, labels

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def _key(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        if len(labels) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {labels}")
        return tuple(str(v) for v in labels)


class Counter(Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def lines(self) -> list[str]:
        return self.header() + [
            f"{self.name}{_labels(zip(self.labels, k, strict=True))} {_value(v)}"
            for k, v in sorted(self.values.items())
        ]


class Histogram(Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()
    ) -> None:
        super().__init__(name, help_text, labels)
        self.bounds = (*sorted(buckets), math.inf)
        self.series: dict[tuple[str, ...], list[float]] = {}  # per label set: bucket counts, then sum

    def observe(self, value: float, *labels: str) -> None:
        counts = self.series.setdefault(self._key(labels), [0.0] * (len(self.bounds) + 1))
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                counts[i] += 1  # buckets are cumulative
        counts[-1] += value

    def lines(self) -> list[str]:
        out = self.header()
        for key, counts in sorted(self.series.items()):
            named = list(zip(self.labels, key, strict=True))
            for bound, count in zip(self.bounds, counts, strict=False):
                out.append(f"{self.name}_bucket{_labels([*named, ('le', _value(bound))])} {_value(count)}")
            out.append(f"{self.name}_sum{_labels(named)} {_value(counts[-1])}")
            out.append(f"{self.name}_count{_labels(named)} {_value(counts[-2])}")
        return out


class ServeMetrics:
    """What ``serve`` counts; gauges (queue, slots) are read from the pool at scrape time."""

    def __init__(self) -> None:
        self.requests = Counter("requests_total", "HTTP requests answered, by route and status.",
                                ("route", "status"))  # fmt: skip
        self.prompt_tokens = Counter("prompt_tokens_total", "Prompt tokens of the generations.")
        self.cached_tokens = Counter(
            "prompt_cached_tokens_total", "Prompt tokens taken from a slot's KV cache (not evaluated)."
        )
        self.generated_tokens = Counter(
            "generated_tokens_total", "Tokens generated (end of turn not counted)."
        )
        self.ttft = Histogram(
            "time_to_first_token_seconds",
            "Seconds from a generation request entering the queue to its first generated token.",
            SECONDS_BUCKETS,
        )
        self.latency = Histogram(
            "request_duration_seconds",
            "Seconds from a generation request's arrival to the end of its answer.",
            SECONDS_BUCKETS,
            ("route",),
        )

    def request(self, entry: dict[str, Any]) -> None:
        """Count one access-log entry (path, status, ms)."""
        route = route_of(str(entry.get("path", "")))
        self.requests.inc(1, route, str(entry.get("status", 0)))
        if route in GENERATION_ROUTES and "ms" in entry:
            self.latency.observe(entry["ms"] / 1000, route)

    def generation(self, prompt: int, cached: int, generated: int, ttft: float | None) -> None:
        """Count one finished (or stopped) generation."""
        self.prompt_tokens.inc(prompt)
        self.cached_tokens.inc(cached)
        self.generated_tokens.inc(generated)
        if ttft is not None:
            self.ttft.observe(ttft)

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The exposition text; ``gauges``: name -> (help, value)."""
        lines: list[str] = []
        for counter in (self.requests, self.prompt_tokens, self.cached_tokens, self.generated_tokens):
            lines += counter.lines()
        for name, (help_text, value) in gauges.items():
            lines += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} gauge"]
            lines.append(f"{PREFIX}{name} {_value(value)}")
        lines += self.ttft.lines() + self.latency.lines()
        return "\n".join(lines) + "\n"
