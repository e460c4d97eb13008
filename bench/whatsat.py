"""Offline (GeoNames) WHATSAT latency and throughput on a five-server herd, and RSS per server.

    python -m bench.whatsat [--quick] [--clients 5000] [--duration 5] [--warmup 2]
        [--repeats 3] [--procs N] [--latency-conns 5] [--conns 10] [--window 8]
        [--no-storage] [--seed 1] [--profile SERVER] [--out DIR]

A paper herd (five `zherd serve` processes, places provider "geonames", storage on
unless --no-storage) is seeded with --clients clients, each placed at a random
populated place of the whole GeoNames cities500 set (uniform over its places,
jittered by up to ~500 m), IAMATs spread over the five servers; the bench waits
until every server knows every client. Requests are `WHATSAT <random known client>
<radius uniform in (0, 50] km, 0.1 km steps> <count uniform in 1..20>`, sent to
all five servers.

- warm-up: --warmup seconds of pipelined WHATSATs (pages of the mmapped index in);
- memory: RSS (and USS, PSS: the index is a shared mmap) of each server after warm-up;
- latency: request/response, --latency-conns connections in all (spread over the
  servers and the client processes), every request timed from write to the end
  of its reply (the blank line); p50/p99/max over all requests of a run;
- throughput: pipelined, --conns connections, --window requests in flight each.
Median [min-max] over --repeats. Targets: p99 < 2 ms, RSS < 150 MB per server.
--profile SERVER records that server with py-spy (when installed) during the first
throughput run; collapsed stacks go next to the JSON, the busiest frames into it.
--quick: 500 clients, 1 s runs, 1 repeat.

Writes bench/results/whatsat-<date>.json and .png (whatsat-quick-<date>.* with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    HOST,
    ClientPool,
    HerdRun,
    LoadSpec,
    Profiler,
    console,
    converge,
    finish,
    machine_info,
    parameters_of,
    percentile,
    print_table,
    print_targets,
    progress,
    pyplot,
    result_paths,
    save_figure,
    seeded,
    split,
    spread,
    summary,
    target,
    today,
    write_results,
)

TARGET_P99_MS = 2.0
TARGET_RSS_MB = 150.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--clients", type=int, default=5000, help="known clients seeded")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--procs", type=int, default=max(1, len(os.sched_getaffinity(0)) - 1))
    p.add_argument("--latency-conns", type=int, default=5)
    p.add_argument("--conns", type=int, default=10, help="pipelined throughput connections")
    p.add_argument("--window", type=int, default=8, help="pipelined requests in flight per conn")
    p.add_argument("--no-storage", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--profile",
        metavar="SERVER",
        default=None,
        help="py-spy this server during the first throughput run",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.duration, args.warmup, args.repeats = 500, 1.0, 0.5, 1
    return args


def random_places(n: int, rng: Any) -> tuple[list[tuple[float, float]], int]:
    """`n` random populated places of the whole data set, as (lat, lon)."""
    from loguru import logger

    from zherd.places.geoindex import default_data_dir, default_source, open_index

    logger.disable("zherd")
    index, _ = open_index(default_source(), default_data_dir())
    try:
        rows = [rng.randrange(len(index)) for _ in range(n)]
        out = []
        for row in rows:
            place = index.place(row)
            lat = max(-90.0, min(90.0, place.lat + rng.uniform(-0.005, 0.005)))
            lon = max(-180.0, min(180.0, place.lon + rng.uniform(-0.005, 0.005)))
            out.append((lat, lon))
        return out, len(index)
    finally:
        index.close()


async def seed(ports: list[int], clients: dict[str, str]) -> tuple[int, str]:
    """IAMAT every client (ids spread over the servers), pipelined; the AT replies counted."""
    ids = list(clients)
    stamp = f"{time.time():.9f}"

    async def one(i: int, port: int) -> int:
        mine = ids[i :: len(ports)]
        reader, writer = await asyncio.open_connection(HOST, port)
        ok = 0
        for k in range(0, len(mine), 500):
            chunk = mine[k : k + 500]
            writer.write("".join(f"IAMAT {c} {clients[c]} {stamp}\n" for c in chunk).encode())
            for _ in chunk:
                ok += (await reader.readline()).startswith(b"AT ")
        writer.close()
        return ok

    done = await asyncio.gather(*(one(i, p) for i, p in enumerate(ports)))
    return sum(done), stamp


def memory(pids: dict[str, int]) -> dict[str, dict[str, int | None]]:
    out = {}
    for name, pid in pids.items():
        try:
            m = psutil.Process(pid).memory_full_info()
            out[name] = {"rss": m.rss, "uss": m.uss, "pss": getattr(m, "pss", None)}
        except psutil.Error:
            out[name] = {"rss": None, "uss": None, "pss": None}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    machine = machine_info()
    rng = seeded(args.seed)
    json_path, png_path = result_paths("whatsat", args.out, args.quick)
    places, n_places = random_places(args.clients, rng)
    clients = {f"w{k}": f"{lat:+.6f}{lon:+.6f}" for k, (lat, lon) in enumerate(places)}
    ids = list(clients)
    lines = tuple(
        f"WHATSAT {rng.choice(ids)} {rng.randint(1, 500) / 10:.1f} {rng.randint(1, 20)}"
        for _ in range(20_000)
    )
    procs = max(1, args.procs)
    runs: list[dict[str, Any]] = []
    mem_warm: dict[str, Any] = {}
    mem_end: dict[str, Any] = {}
    profile = None
    with HerdRun(storage=not args.no_storage) as herd, ClientPool(procs) as pool, progress() as bar:
        names = herd.names
        ports = [herd.port(n) for n in names]
        pids = {n: herd.pid(n) for n in names}
        task = bar.add_task("seeding", total=2 + 2 * args.repeats)
        acked, stamp = asyncio.run(seed(ports, clients))
        t_conv, misses = converge(
            dict(zip(names, ports, strict=True)), dict.fromkeys(clients, stamp), timeout=60
        )
        if t_conv is None:
            raise SystemExit(f"the herd did not learn every seeded client: {misses}")
        bar.advance(task)

        def load(mode: str, conns: int, duration: float, warmup: float, tag: str) -> Any:
            start_at = time.monotonic() + 0.3 + warmup
            specs, offset = [], 0
            for i, n in enumerate(split(conns, procs)):
                rot = ports[offset % 5 :] + ports[: offset % 5]
                offset += n
                specs.append(
                    LoadSpec(
                        ports=tuple(rot),
                        conns=n,
                        mode=mode,
                        payload="whatsat",
                        tag=f"{tag}{i}",
                        start_at=start_at,
                        duration=duration,
                        warmup=warmup,
                        window=args.window,
                        whatsat_lines=lines,
                        latency=mode == "rr",
                        drain_timeout=20,
                    )
                )
            return pool.run(
                specs,
                timeout=warmup + duration + 60,
                meter=list(pids.values()),
                window=(start_at, start_at + duration),
            )

        bar.update(task, description="warm-up")
        load("pipeline", args.conns, args.warmup, 0.0, "warm")
        mem_warm = memory(pids)
        bar.advance(task)
        for rep in range(args.repeats):
            bar.update(task, description=f"latency #{rep + 1}")
            res, _ = load("rr", args.latency_conns, args.duration, 0.3, f"l{rep}")
            lat = [x for r in res for x in r["latencies"]]
            rr_rate = sum(r["in_window"] for r in res) / args.duration
            errors = sum(r["errors"] for r in res)
            bar.advance(task)
            bar.update(task, description=f"throughput #{rep + 1}")
            prof = None
            if args.profile and rep == 0:
                prof = Profiler(
                    pids[args.profile],
                    args.duration + 0.3,
                    json_path.parent / f"whatsat-profile-{args.profile}-{today()}.txt",
                )
            res2, usage = load("pipeline", args.conns, args.duration, 0.3, f"t{rep}")
            if prof is not None:
                profile = prof.finish()
            bar.advance(task)
            runs.append(
                {
                    "p50_ms": percentile(lat, 50) * 1e3 if lat else None,
                    "p99_ms": percentile(lat, 99) * 1e3 if lat else None,
                    "max_ms": max(lat) * 1e3 if lat else None,
                    "requests_timed": len(lat),
                    "rr_rate": rr_rate,
                    "pipelined_rate": sum(r["in_window"] for r in res2) / args.duration,
                    "errors": errors + sum(r["errors"] for r in res2),
                    "server_cpu": {n: usage.get(pid) for n, pid in pids.items()},
                    "latency_histogram_ms": _histogram([x * 1e3 for x in lat]),
                }
            )
        mem_end = memory(pids)

    rss_mb = [m["rss"] / 2**20 for m in mem_warm.values() if m["rss"]]
    figures = {
        "p50_ms": summary([r["p50_ms"] for r in runs]),
        "p99_ms": summary([r["p99_ms"] for r in runs]),
        "max_ms": summary([r["max_ms"] for r in runs]),
        "rr_rate": summary([r["rr_rate"] for r in runs]),
        "pipelined_rate": summary([r["pipelined_rate"] for r in runs]),
        "errors": sum(r["errors"] for r in runs),
        "memory_after_warmup": mem_warm,
        "memory_at_end": mem_end,
        "rss_mb_max": max(rss_mb) if rss_mb else None,
        "places_in_index": n_places,
        "seeded_clients": len(clients),
        "seed_acked": acked,
        "runs": runs,
        "profile": profile,
    }
    p99 = figures["p99_ms"]["median"]
    goals = [
        target(
            "WHATSAT p99 (ms)",
            p99,
            f"< {TARGET_P99_MS} ms",
            None if p99 is None else p99 < TARGET_P99_MS,
        ),
        target(
            "RSS per server after warm-up (max of 5, MB)",
            figures["rss_mb_max"],
            f"< {TARGET_RSS_MB:.0f} MB",
            None if not rss_mb else max(rss_mb) < TARGET_RSS_MB,
            "RSS counts the shared mmapped index; USS/PSS in the JSON",
        ),
    ]
    parameters = parameters_of(args, procs=procs)
    write_results(
        "whatsat",
        parameters,
        figures,
        targets=goals,
        machine=machine,
        started=started,
        path=json_path,
        notes=["latency: rr, write to end of reply, in the client process"],
    )
    plot(runs, mem_warm, png_path)
    print_table(
        "WHATSAT (GeoNames), five servers, median [min-max]",
        ["figure", "value"],
        [
            ("p50 latency", spread(figures["p50_ms"], unit=" ms")),
            ("p99 latency", spread(figures["p99_ms"], unit=" ms")),
            ("max latency", spread(figures["max_ms"], unit=" ms")),
            (
                f"request/response rate ({args.latency_conns} conns)",
                spread(figures["rr_rate"], unit="/s"),
            ),
            (
                f"pipelined rate ({args.conns} conns x {args.window})",
                spread(figures["pipelined_rate"], unit="/s"),
            ),
            ("errors", figures["errors"]),
        ],
    )
    print_table(
        "memory per server after warm-up (MB)",
        ["server", "RSS", "USS", "PSS"],
        [
            (n, *(m[k] / 2**20 if m[k] else None for k in ("rss", "uss", "pss")))
            for n, m in mem_warm.items()
        ],
    )
    print_targets(goals)
    if profile:
        top = ", ".join(f"{fr} {p}%" for fr, p in profile["self"][:10])
        console.print(f"profile {args.profile}: {top}")
    finish(json_path, png_path)
    return 0


def _histogram(xs_ms: list[float]) -> dict[str, list[float]]:
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


def plot(runs: list[dict], mem: dict[str, Any], png: Path) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, r in enumerate(runs):
        h = r["latency_histogram_ms"]
        if h["counts"]:
            total = sum(h["counts"])
            cum, ys = 0, []
            for c in h["counts"]:
                cum += c
                ys.append(cum / total)
            ax1.step(h["edges"][1:], ys, where="post", label=f"run {i + 1}")
    ax1.axvline(TARGET_P99_MS, color="r", alpha=0.3, label=f"target p99 {TARGET_P99_MS} ms")
    ax1.axhline(0.99, color="k", alpha=0.2)
    ax1.set_xscale("log")
    ax1.set_xlabel("WHATSAT latency (ms)")
    ax1.set_ylabel("fraction of requests")
    ax1.set_title("latency CDF (request/response)")
    ax1.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=8)
    names = list(mem)
    xs = range(len(names))
    for k, off in (("rss", -0.25), ("pss", 0.0), ("uss", 0.25)):
        ax2.bar([x + off for x in xs], [(mem[n][k] or 0) / 2**20 for n in names], 0.25, label=k)
    ax2.axhline(TARGET_RSS_MB, color="r", alpha=0.3, label=f"target RSS {TARGET_RSS_MB:.0f} MB")
    ax2.set_xticks(list(xs), names)
    ax2.set_ylabel("MB")
    ax2.set_title("memory per server after warm-up")
    ax2.legend(fontsize=8)
    save_figure(fig, png)


if __name__ == "__main__":
    sys.exit(main())
