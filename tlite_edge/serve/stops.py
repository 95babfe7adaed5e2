"""Stop sequences over streamed text: what may be sent now, and whether a stop sequence was found."""

from __future__ import annotations


def _failure(stop: str) -> list[int]:
    """KMP failure table: for each prefix length k, the longest proper border of ``stop[:k]``."""
    table, k = [0] * (len(stop) + 1), 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = table[k]
        if stop[i] == stop[k]:
            k += 1
        table[i + 1] = k
    return table


class StopMatcher:
    """Streams text through, holding back what could be the start of a stop sequence.

    One automaton per stop sequence (Knuth-Morris-Pratt): each generated character is looked at a
    constant number of times (amortized), so a long stop string costs time linear in the text.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.held = stops, ""
        self.tables = [_failure(s) for s in stops]
        self.states = [0] * len(stops)  # per stop: how many of its first characters end the text so far

    def _step(self, i: int, ch: str) -> int:
        stop, table, k = self.stops[i], self.tables[i], self.states[i]
        if k == len(stop):
            k = table[k]
        while k and stop[k] != ch:
            k = table[k]
        if stop[k] == ch:
            k += 1
        self.states[i] = k
        return k

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to send, whether a stop sequence was found: nothing after it is sent)."""
        text = self.held + piece
        if not self.stops:
            return text, False
        base = len(self.held)
        for j, ch in enumerate(piece):
            ends = [len(s) for i, s in enumerate(self.stops) if self._step(i, ch) == len(s)]
            if ends:
                self.held = ""
                return text[: base + j + 1 - max(ends)], True
        keep = max(self.states)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text
