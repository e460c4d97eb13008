"""Figures from repeated measurements: median and spread, percentiles, a latency histogram."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def summary(values: Sequence[float | None]) -> dict[str, Any]:
    """Median and spread (min/max, quartiles) of repeated measurements, None and NaN left out."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    if not xs:
        empty = dict.fromkeys(("median", "min", "max", "q1", "q3"))
        return {"n": 0, **empty, "values": list(values)}
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) >= 2 else xs * 3
    return {
        "n": len(xs),
        "median": statistics.median(xs),
        "min": xs[0],
        "max": xs[-1],
        "q1": q1,
        "q3": q3,
        "values": list(values),
    }


def percentile(xs: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of unsorted data; None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def histogram(xs_ms: Sequence[float]) -> dict[str, list[float]]:
    """Log-spaced latency histogram (edges in ms, counts), for plots without the raw data."""
    if not xs_ms:
        return {"edges": [], "counts": []}
    edges = [0.01 * 1.25**i for i in range(60)]
    counts = [0] * (len(edges) - 1)
    for x in xs_ms:
        for i in range(len(edges) - 1):
            if x < edges[i + 1]:
                counts[i] += 1
                break
    return {"edges": edges, "counts": counts}


def summaries(runs: Sequence[Mapping[str, Any]], *keys: str) -> dict[str, dict[str, Any]]:
    """The `summary` of each key over the runs of a point, by key."""
    return {key: summary([run[key] for run in runs]) for key in keys}
