"""Propagation latency over three hops: an IAMAT answered at Powell, known at Hamilton.

    python -m bench.propagation [--quick] [--rates 100,1000,10000] [--probes 300]
        [--interval 0.02] [--method both|log|poll] [--repeats 3] [--procs N]
        [--conns-per-proc 5] [--poll-gap 0.0002] [--no-storage] [--log-level LEVEL]
        [--out DIR]

For each background rate a fresh paper herd (five `zherd serve` processes, storage
on unless --no-storage) is started; --procs client processes offer that many
IAMAT/s spread over all five gateways (paced), and one more process sends a probe
stream: every --interval seconds an IAMAT for a new client id to Powell, read its
reply, note the wall-clock time of the reply (t_reply). Powell -> Hamilton is three
hops in the paper topology (Powell-Alford-Parker-Hamilton or Powell-Bolden-Parker-Hamilton).

"Hamilton knows it" is measured two ways (--method both, the default):

- log: Hamilton logs every drained bus batch as one loguru record, stamped with
  the wall clock right after the batch was applied to its store. The first record
  that shows the probe arriving from Parker gives t_known. Error: the stamp is late
  by at most the time to apply the rest of that batch (a few us per record; the
  batch sizes are recorded), plus clock read jitter; it adds no load. Client and
  server share the host clock (CLOCK_REALTIME).
- poll: right after t_reply the probe process asks Hamilton `WHATSAT <id> 0.1 1`
  over a connection of its own, again every --poll-gap seconds, until it gets an
  AT line (t_found, at most 2 s). Hamilton learned it between the send of the last
  unanswered poll and t_found, so t_found - t_reply overestimates by up to one poll
  round trip + the gap (both recorded); the polling adds a little load at Hamilton.

Each server's cpu use over the run is recorded (the busiest one in the table): near
100% means that server, not the network, sets the latency.

--log-level (diagnostic) sets the servers' log level; above INFO the log method
has nothing to read, so use --method poll with it.

Latency = t_known - t_reply. p50/p99/max over the probes of a run, then median
[min-max] over --repeats. Target: p99 < 5 ms at 10k updates/s.
--quick: rates 100,1000, 40 probes every 10 ms, 1 repeat.

Writes bench/results/propagation-<date>.json and .png (propagation-quick-<date>.* with --quick).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench import script
from bench.herds import herd_options, log_sections, scratch_herd
from bench.load import ClientPool, Iamats, Paced, Probes, total
from bench.report import console, errorbar_args, print_table, pyplot, save_figure, spread, target
from bench.script import Result, Run
from bench.stats import percentile, summaries, summary
from bench.usage import cpu_seconds

ORIGIN, DEST = "Powell", "Hamilton"
TARGET_P99_MS = 5.0
TARGET_RATE = 10_000

# A bus line received from a neighbor: a message's head, or one of its records (an AT line).
_LINE = re.compile(
    r"(?P<time>\S+)Z \| \S+ \| \S+ *\| bus <- \S+:"
    r"(?: (?P<head>updates)|   AT \S+ \S+ (?P<cid>\S+) )"
)


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rates",
        type=script.numbers,
        default="100,1000,10000",
        help="background IAMAT/s across the herd",
    )
    p.add_argument("--probes", type=int, default=300, help="probes per run")
    p.add_argument("--interval", type=float, default=0.02, help="seconds between probes")
    p.add_argument("--method", choices=("both", "log", "poll"), default="both")
    p.add_argument("--poll-gap", type=float, default=0.0002)
    p.add_argument(
        "--procs",
        type=int,
        default=max(1, len(os.sched_getaffinity(0)) - 1),
        help="background client processes (the probe has its own)",
    )
    p.add_argument("--conns-per-proc", type=int, default=5)
    p.add_argument("--clients", type=int, default=5000, help="background client ids")
    herd_options(p)
    p.add_argument("--keep-logs", action="store_true", help="keep each herd's temp folder")


QUICK = {"rates": "100,1000", "probes": 40, "interval": 0.01, "repeats": 1}


def known_times(log: Path, ids: set[str]) -> dict[str, tuple[float, int]]:
    """Probe id -> (wall time of the log line showing it arrive at DEST, records in that
    message). Every log line carries its own time: `<time>Z | server | LEVEL | message`."""
    found: dict[str, tuple[float, int]] = {}
    if not log.exists():
        return found
    message: list[tuple[float, str]] = []  # (time, client id) of the records of one message

    def close_message() -> None:
        for stamp, cid in message:
            if cid in ids and cid not in found:
                found[cid] = (stamp, len(message))
        message.clear()

    with log.open(errors="replace") as f:
        for line in f:
            m = _LINE.match(line)
            if m is None:
                continue
            if m["head"]:
                close_message()
            elif m["cid"]:
                when = dt.datetime.strptime(m["time"], "%Y-%m-%dT%H:%M:%S.%f")
                message.append((when.replace(tzinfo=dt.UTC).timestamp(), m["cid"]))
        close_message()
    return found


def run_once(run: Run, pool: ClientPool, rate: int, run_id: int) -> dict[str, Any]:
    args = run.args
    sections = log_sections(args.log_level, not args.no_curve)
    with scratch_herd(storage=not args.no_storage, sections=sections, keep=True) as herd:
        names = list(herd.ports)
        ports = [herd.port(n) for n in names]
        warm = 0.5
        t0 = time.monotonic() + 0.5
        probe_span = args.probes * args.interval + 3.0
        per_conn = max(1, args.clients // (args.procs * args.conns_per_proc))
        jobs: list[Paced | Probes] = [
            Paced(
                ports=tuple(ports[i % 5 :] + ports[: i % 5]),
                conns=args.conns_per_proc,
                send=Iamats(f"bg{run_id}p{i}", per_conn),
                start_at=t0,
                duration=warm + probe_span,
                rate=rate / args.procs,
                window=1000,
                drain_timeout=20,
            )
            for i in range(args.procs)
        ]
        jobs.append(
            Probes(
                origin=herd.port(ORIGIN),
                poll=herd.port(DEST) if args.method in ("both", "poll") else None,
                tag=f"probe{run_id}",
                start_at=t0 + warm,
                duration=probe_span,
                count=args.probes,
                interval=args.interval,
                poll_gap=args.poll_gap,
            )
        )
        pids = {n: herd.pid(n) for n in names}
        cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()}
        w0 = time.monotonic()
        results, _ = pool.run(jobs, timeout=warm + probe_span + 90)
        wall = time.monotonic() - w0
        cpu1 = {n: cpu_seconds(pid) for n, pid in pids.items()}
        background = results[:-1]
        probes = results[-1]["probes"]
    server_cpu = {
        n: (cpu1[n] - cpu0[n]) / wall if cpu0[n] is not None and cpu1[n] is not None else None
        for n in names
    }
    log_known = {}
    if args.method in ("both", "log"):
        log_known = known_times(herd.log_path(DEST), {p["id"] for p in probes})
    if not args.keep_logs:
        shutil.rmtree(herd.root, ignore_errors=True)
    bg_acked = total(background, "in_window") / (warm + probe_span)
    lat_log, lat_poll, lat_poll_lo, rtts, batch = [], [], [], [], []
    for p in probes:
        if p["id"] in log_known:
            t, n = log_known[p["id"]]
            lat_log.append(t - p["t_reply"])
            batch.append(n)
        if p.get("t_found") is not None:
            lat_poll.append(p["t_found"] - p["t_reply"])
            rtts.append(p["poll_rtt"])
            lo = p.get("last_miss_send")
            lat_poll_lo.append(max(0.0, lo - p["t_reply"]) if lo else 0.0)

    def stats(xs: list[float]) -> dict[str, Any]:
        return {
            "n": len(xs),
            "p50": percentile(xs, 50),
            "p99": percentile(xs, 99),
            "max": max(xs) if xs else None,
        }

    return {
        "rate": rate,
        "background_acked_rate": bg_acked,
        "background_errors": total(background, "errors"),
        "server_cpu": server_cpu,
        "probes_sent": len(probes),
        "probe_replies_ok": sum(p["ok"] for p in probes),
        "log": stats(lat_log),
        "poll": stats(lat_poll),
        "poll_lower_bound": stats(lat_poll_lo),
        "poll_rtt": stats(rtts),
        "log_batch_records": {"p50": percentile(batch, 50), "max": max(batch) if batch else None},
        "log_missing": len(probes) - len(lat_log) if args.method != "poll" else None,
        "poll_missing": len(probes) - len(lat_poll) if args.method != "log" else None,
    }


def measure(run: Run) -> Result:
    args = run.args
    run_ids = itertools.count(1)
    with ClientPool(args.procs + 1) as pool:
        runs = run.repeat(
            args.rates,
            lambda rate, rep: run_once(run, pool, rate, next(run_ids)),
            label=lambda rate: f"{rate:,}/s background",
        )
    methods = [m for m in ("log", "poll") if args.method in (m, "both")]
    figures = []
    for rate, rs in runs.items():
        fig: dict[str, Any] = {
            "rate": rate,
            **summaries(rs, "background_acked_rate"),
            "busiest_server_cpu": summary(
                [
                    max((v for v in r["server_cpu"].values() if v is not None), default=None)
                    for r in rs
                ]
            ),
            "runs": rs,
        }
        for m in methods:
            for q in ("p50", "p99", "max"):
                fig[f"{m}_{q}_ms"] = summary(
                    [r[m][q] * 1e3 if r[m][q] is not None else None for r in rs]
                )
        fig["poll_rtt_p50_ms"] = summary(
            [r["poll_rtt"]["p50"] * 1e3 if r["poll_rtt"]["p50"] is not None else None for r in rs]
        )
        figures.append(fig)
    goals = []
    for m in methods:
        at = next((f for f in figures if f["rate"] == TARGET_RATE), None)
        v = at[f"{m}_p99_ms"]["median"] if at else None
        goals.append(
            target(
                f"p99 Powell->Hamilton at {TARGET_RATE:,}/s ({m} method), ms",
                v,
                f"< {TARGET_P99_MS} ms",
                None if v is None else v < TARGET_P99_MS,
                "" if at else f"rate {TARGET_RATE} not run",
            )
        )
    notes = [
        "latency = t_known(Hamilton) - t_reply(client of Powell), wall clock of one host",
        "log: first Hamilton bus record showing the probe, stamped after its batch was applied",
        "poll: WHATSAT at Hamilton until known; overestimates by <= one poll RTT + gap",
    ]

    def show() -> None:
        rows = []
        for f in figures:
            for m in methods:
                rows.append(
                    (
                        f"{f['rate']:,}",
                        m,
                        spread(f["background_acked_rate"]),
                        spread(f[f"{m}_p50_ms"]),
                        spread(f[f"{m}_p99_ms"]),
                        spread(f[f"{m}_max_ms"]),
                        spread(f["poll_rtt_p50_ms"]) if m == "poll" else "-",
                        spread(f["busiest_server_cpu"], 100, "%"),
                    )
                )
        print_table(
            "Powell -> Hamilton (3 hops), ms, median [min-max] over repeats",
            [
                "background/s",
                "method",
                "achieved bg/s",
                "p50",
                "p99",
                "max",
                "poll rtt p50",
                "busiest server cpu",
            ],
            rows,
        )
        for f in figures:
            for r in f["runs"]:
                if r.get("log_missing") or r.get("poll_missing"):
                    console.print(
                        f"note: at {f['rate']}/s, probes not seen: log {r['log_missing']}, "
                        f"poll {r['poll_missing']}"
                    )

    return Result(
        figures, goals, notes, plot=lambda png: plot(figures, methods, args, png), show=show
    )


def plot(figures: list[dict], methods: list[str], args: argparse.Namespace, png: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [f["rate"] for f in figures]
    for m in methods:
        for q, style in (("p50", "o-"), ("p99", "s-"), ("max", "^:")):
            med, err = errorbar_args([f[f"{m}_{q}_ms"] for f in figures])
            ax.errorbar(xs, med, yerr=err, fmt=style, capsize=3, label=f"{m} {q}")
    ax.axhline(TARGET_P99_MS, color="r", alpha=0.3, label=f"target p99 {TARGET_P99_MS} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("background IAMAT/s across the herd")
    ax.set_ylabel("ms from reply at Powell to known at Hamilton")
    ax.set_title(f"3 hops, {args.probes} probes per run, median and min-max of {args.repeats}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, png)


if __name__ == "__main__":
    sys.exit(script.main("propagation", __doc__, options, measure, quick=QUICK))
