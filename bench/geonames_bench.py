"""GeoNames index: build time, open time, query latency in dense regions, file size, RSS.

    python bench/geonames_bench.py [--queries 2000] [--json out.json]

Builds into a temporary directory (the user cache is left alone). Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loguru import logger

from zherd.places.geoindex import GeoIndex, build_index, default_source, index_path
from zherd.places.geonames import GeoNamesProvider

# Dense clusters of cities500 places (centre, jitter in degrees).
REGIONS = {
    "central_europe": [(50.11, 8.68), (50.85, 4.35), (45.46, 9.19), (51.45, 7.0), (48.85, 2.35)],
    "java": [(-7.3, 108.3), (-7.0, 110.4), (-6.9, 107.6), (-7.6, 111.9)],
    "india": [(26.85, 80.95), (25.6, 85.1), (22.57, 88.36), (28.6, 77.2)],
    "mexico": [(19.43, -99.13), (19.05, -98.2)],
}

RSS_CHILD = """
import asyncio, json, sys
from pathlib import Path
from loguru import logger
from zherd.places.geonames import GeoNamesProvider
logger.remove()
async def main():
    p = GeoNamesProvider(Path(sys.argv[1]))
    await p.start()
    for i in range(2000):
        await p.nearby(-7.0 + (i % 100) / 100, 110.0 + (i // 100) / 20, 50.0, 20)
    status = dict(l.split(":", 1) for l in open("/proc/self/status"))
    rollup = dict(l.split(":", 1) for l in open("/proc/self/smaps_rollup").readlines()[1:])
    print(json.dumps({k: int(v.split()[0]) // 1024 for k, v in [*status.items(), *rollup.items()]
           if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Pss")}))
asyncio.run(main())
"""


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def query_latencies(
    provider: GeoNamesProvider, points: list[tuple[float, float]]
) -> list[float]:
    out = []
    for lat, lon in points:
        t = time.perf_counter()
        await provider.nearby(lat, lon, 50.0, 20)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=2000, help="per region")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logger.remove()
    rng = random.Random(1)
    source = default_source()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        path = index_path(source, data_dir)
        t = time.perf_counter()
        build_index(source, path)
        results["build_s"] = round(time.perf_counter() - t, 3)
        results["index_mb"] = round(path.stat().st_size / 1e6, 2)
        opens = []
        for _ in range(20):
            t = time.perf_counter()
            GeoIndex(path, source.key()).close()
            opens.append((time.perf_counter() - t) * 1e3)
        results["open_ms_median"] = round(statistics.median(opens), 2)

        async def run() -> dict[str, dict[str, float]]:
            provider = GeoNamesProvider(data_dir)
            await provider.start()
            await provider.nearby(0.0, 0.0, 1.0, 1)  # wait for the index
            index = GeoIndex(path, source.key())  # a second mapping, for counting only
            table = {}
            for region, centres in REGIONS.items():
                pts = [
                    (lat + rng.uniform(-0.3, 0.3), lon + rng.uniform(-0.3, 0.3))
                    for lat, lon in (rng.choice(centres) for _ in range(args.queries))
                ]
                ms = await query_latencies(provider, pts)
                within = [len(index.within(lat, lon, 50.0)) for lat, lon in pts[:200]]
                table[region] = {
                    "p50_ms": round(percentile(ms, 50), 3),
                    "p99_ms": round(percentile(ms, 99), 3),
                    "max_ms": round(max(ms), 3),
                    "places_within_50km_median": statistics.median(within),
                    "places_within_50km_max": max(within),
                }
            await provider.close()
            index.close()
            return table

        results["nearby_50km_20"] = asyncio.run(run())
        child = subprocess.run(
            [sys.executable, "-c", RSS_CHILD, str(data_dir)],
            capture_output=True,
            text=True,
            check=True,
        )
        results["child_process_mb"] = json.loads(child.stdout)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
