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
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from bench import script
from bench.herds import converge, scratch_herd
from bench.lines import client_id
from bench.load import ClientPool, Pipelined, RequestResponse, Whatsats, split, total
from bench.report import console, print_table, pyplot, save_figure, spread, target
from bench.script import Result, Run
from bench.stats import histogram, percentile, summaries
from bench.usage import Profiler, memory
from zherd.harness import Client, Herd

TARGET_P99_MS = 2.0
TARGET_RSS_MB = 150.0


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=5000, help="known clients seeded")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=2.0)
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


QUICK = {"clients": 500, "duration": 1.0, "warmup": 0.5, "repeats": 1}


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


def seed(herd: Herd, clients: dict[str, str]) -> tuple[int, str]:
    """IAMAT every client (ids spread over the servers), pipelined; the AT replies counted."""
    ids, names = list(clients), list(herd.ports)
    stamp = f"{time.time():.9f}"
    ok = 0
    for i, name in enumerate(names):
        mine = ids[i :: len(names)]
        with Client(herd.port(name), timeout=30) as c:
            for k in range(0, len(mine), 500):
                chunk = mine[k : k + 500]
                c.send("".join(f"IAMAT {cid} {clients[cid]} {stamp}\n" for cid in chunk))
                ok += sum(c.line().startswith("AT ") for _ in chunk)
    return ok, stamp


def measure(run: Run) -> Result:
    args = run.args
    rng = random.Random(args.seed)
    places, n_places = random_places(args.clients, rng)
    clients = {client_id("w", k): f"{lat:+.6f}{lon:+.6f}" for k, (lat, lon) in enumerate(places)}
    ids = list(clients)
    requests = Whatsats(
        tuple(
            f"WHATSAT {rng.choice(ids)} {rng.randint(1, 500) / 10:.1f} {rng.randint(1, 20)}"
            for _ in range(20_000)
        )
    )
    procs = max(1, args.procs)
    runs: list[dict[str, Any]] = []
    profile = None
    with (
        scratch_herd(storage=not args.no_storage) as herd,
        ClientPool(procs) as pool,
        run.progress(2 + 2 * args.repeats),
    ):
        ports = [herd.port(n) for n in herd.ports]
        pids = {n: herd.pid(n) for n in herd.ports}
        run.status("seeding")
        acked, stamp = seed(herd, clients)
        t_conv, missed = converge(herd, dict.fromkeys(clients, stamp), timeout=60)
        if t_conv is None:
            raise SystemExit(f"the herd did not learn every seeded client: {missed}")
        run.advance()

        def load(
            shape: type[RequestResponse | Pipelined], conns: int, duration: float, warmup: float
        ) -> Any:
            start_at = time.monotonic() + 0.3 + warmup
            jobs, offset = [], 0
            for n in split(conns, procs):
                common = {
                    "ports": tuple(ports[offset % 5 :] + ports[: offset % 5]),
                    "conns": n,
                    "send": requests,
                    "start_at": start_at,
                    "duration": duration,
                    "warmup": warmup,
                    "drain_timeout": 20,
                }
                offset += n
                jobs.append(
                    RequestResponse(timed=True, **common)
                    if shape is RequestResponse
                    else Pipelined(window=args.window, **common)
                )
            return pool.run(
                jobs,
                timeout=warmup + duration + 60,
                meter=list(pids.values()),
                window=(start_at, start_at + duration),
            )

        run.status("warm-up")
        load(Pipelined, args.conns, args.warmup, 0.0)
        mem_warm = {n: memory(pid) for n, pid in pids.items()}
        run.advance()
        for rep in range(args.repeats):
            run.status(f"latency #{rep + 1}")
            res, rr_usage = load(RequestResponse, args.latency_conns, args.duration, 0.3)
            lat = [x for r in res for x in r["latencies"]]
            run.advance()
            run.status(f"throughput #{rep + 1}")
            prof = None
            if args.profile and rep == 0:
                prof = Profiler(
                    pids[args.profile], args.duration + 0.3, run.path(f"profile-{args.profile}")
                )
            res2, usage = load(Pipelined, args.conns, args.duration, 0.3)
            if prof is not None:
                profile = prof.finish()
            run.advance()
            runs.append(
                {
                    "p50_ms": percentile(lat, 50) * 1e3 if lat else None,
                    "p99_ms": percentile(lat, 99) * 1e3 if lat else None,
                    "max_ms": max(lat) * 1e3 if lat else None,
                    "requests_timed": len(lat),
                    "rr_rate": total(res, "in_window") / args.duration,
                    "pipelined_rate": total(res2, "in_window") / args.duration,
                    "errors": total(res, "errors") + total(res2, "errors"),
                    "server_cpu": {n: usage.get(pid) for n, pid in pids.items()},
                    "server_cpu_rr": {n: rr_usage.get(pid) for n, pid in pids.items()},
                    "client_cpu_rr": max((r["cpu_fraction"] or 0) for r in res),
                    "latency_histogram_ms": histogram([x * 1e3 for x in lat]),
                }
            )
        mem_end = {n: memory(pid) for n, pid in pids.items()}
        gc_end = {n: herd.status(n)["gc"] for n in pids}

    rss_mb = [m["rss"] / 2**20 for m in mem_warm.values() if m["rss"]]
    figures = {
        **summaries(runs, "p50_ms", "p99_ms", "max_ms", "rr_rate", "pipelined_rate"),
        "errors": sum(r["errors"] for r in runs),
        "memory_after_warmup": mem_warm,
        "memory_at_end": mem_end,
        "gc_at_end": gc_end,  # each server's collections and longest pause (/status)
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

    def show() -> None:
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
        if profile:
            top = ", ".join(f"{fr} {p}%" for fr, p in profile["self"][:10])
            console.print(f"profile {args.profile}: {top}")

    return Result(
        figures,
        goals,
        ["latency: rr, write to end of reply, in the client process"],
        parameters={"procs": procs},
        plot=lambda png: plot(runs, mem_warm, png),
        show=show,
    )


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
    sys.exit(script.main("whatsat", __doc__, options, measure, quick=QUICK))
