"""Latency histograms a server keeps, cheap enough for the hot paths.

A `Histogram` is a list of ints and one bisect into fixed bounds: no lock, no
label, no object per observation. It is observed once per batch of client lines
or per loop turn where it can be, and read only when someone asks (`/metrics`,
`/status`), so what an operator sees costs nothing between scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

NS = 1_000_000_000

# Upper bounds in seconds (Prometheus `le`), from a fast IAMAT batch (~10 us) to a slow
# Google answer (seconds); the last bucket, +Inf, is implicit.
BOUNDS_S: tuple[float, ...] = (
    10e-6,
    25e-6,
    50e-6,
    100e-6,
    250e-6,
    500e-6,
    1e-3,
    2.5e-3,
    5e-3,
    10e-3,
    25e-3,
    50e-3,
    100e-3,
    250e-3,
    500e-3,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram:
    """Counts of durations in fixed buckets, plus their sum (the Prometheus model)."""

    __slots__ = ("bounds_ns", "counts", "sum_ns")

    def __init__(self, bounds_s: tuple[float, ...] = BOUNDS_S) -> None:
        self.bounds_ns = [round(b * NS) for b in bounds_s]
        self.counts = [0] * (len(bounds_s) + 1)  # the last one is +Inf
        self.sum_ns = 0

    def observe(self, ns: int, n: int = 1) -> None:
        """`n` events that each took `ns` nanoseconds (a batch answered together)."""
        self.counts[bisect_left(self.bounds_ns, ns)] += n
        self.sum_ns += ns * n

    @property
    def count(self) -> int:
        return sum(self.counts)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: bounds in seconds, counts per bucket (not cumulative), sum."""
        return {
            "bounds_s": [b / NS for b in self.bounds_ns],
            "counts": list(self.counts),
            "sum_s": self.sum_ns / NS,
        }


def quantile(bounds_s: list[float], counts: list[int], q: float) -> float | None:
    """The upper bound of the bucket holding quantile `q` (None with no events; the last
    finite bound when it lies in +Inf): an honest ceiling, never an interpolation."""
    total = sum(counts)
    if total <= 0:
        return None
    rank, seen = q * total, 0
    for bound, count in zip(bounds_s, counts, strict=False):
        seen += count
        if seen >= rank:
            return bound
    return bounds_s[-1]


HELP = {
    "iamat": "IAMAT handling: lines read to replies written, per request (batches of lines "
    "are answered together)",
    "whatsat": "WHATSAT places lookup and JSON, per request (the Google round trip included)",
    "flush": "a loop turn's updates encoded and sent to the neighbors, per turn that sent any",
}


@dataclass(slots=True)
class Latencies:
    """Every latency a server keeps."""

    iamat: Histogram = field(default_factory=Histogram)  # client lines in -> replies written
    whatsat: Histogram = field(default_factory=Histogram)  # places query and JSON
    flush: Histogram = field(default_factory=Histogram)  # a turn's updates sent to neighbors

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {name: getattr(self, name).as_dict() for name in HELP}
