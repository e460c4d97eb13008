"""Sustained IAMAT rate across the five servers of the paper herd, measured at convergence.

    python -m bench.herd [--quick] [--rates 20000,50000,100000,max] [--duration 5]
        [--repeats 3] [--procs N] [--conns-per-proc 5] [--clients 10000]
        [--window 1000] [--sample 200] [--converge-timeout 60] [--no-storage]
        [--profile SERVER] [--log-level LEVEL] [--out DIR]

A herd of five `zherd serve` processes (Alford, Bolden, Hamilton, Parker, Powell;
the paper's five links) on free loopback ports, storage on unless --no-storage.
--procs client processes (default: usable cpus) each open --conns-per-proc
connections, spread over the five gateways, and offer rate/procs IAMAT/s
(`paced`: at most --window lines in flight per connection) for --duration seconds.
`max` offers as fast as the herd answers (pipelined, 128 lines in flight per
connection). Every IAMAT is a new fix of one of --clients client ids (each id is
always sent over the same connection, with a growing time field).

After the last reply, a sample of clients (the last ones each connection moved,
plus random others; --sample in all) is polled with WHATSAT on every server until
every server answers with the newest fix of each: that moment is "converged".
Then every client is checked on every server; a client whose newest fix a server
still lacks after a further --settle seconds is a lost update (the target is 0).

Figures per offered rate (median [min-max] over --repeats):
- acked/s      IAMAT replies per second during the window (what the gateways took);
- converged/s  updates sent / (convergence time - first send): the herd-wide rate;
- converge     seconds from the last reply to convergence (poll-round resolution);
- lost         clients whose newest fix is missing somewhere after settling.
- server cpu per update: cpu seconds used by all five servers from the first send
  to convergence (incl. the convergence polls) / updates sent: the herd-wide cost
  of one IAMAT, which says how many cores a rate needs, whatever else the machine runs.
Server cpu (each of the five, during the window) and RSS at the end are recorded.

Cores: nothing is pinned (five servers and the clients share the machine).
--profile SERVER records that server with py-spy (when installed) during the first
run of each rate; collapsed stacks go next to the JSON and the busiest frames into it.
--log-level WARNING (diagnostic, not a product recommendation: the design logs every
input and output) shows what the per-line and per-record logging costs.
--quick: rates 5000,max, 1 s, 1 repeat, 2000 clients.

Writes bench/results/herd-<date>.json and .png (herd-quick-<date>.* with --quick).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from bench import script
from bench.herds import converge, herd_options, log_sections, misses, scratch_herd
from bench.lines import tag_of
from bench.load import ClientPool, Iamats, Paced, Pipelined, total
from bench.report import console, errorbar_args, print_table, pyplot, save_figure, spread, target
from bench.script import Result, Run
from bench.stats import summaries, summary
from bench.usage import Profiler, cpu_seconds, memory
from zherd.harness import Herd

TARGET_RATE = 100_000


def rates(text: str) -> list[int]:
    """Offered rates; `max` (0) is as fast as the herd answers."""
    return script.numbers(text.replace("max", "0"))


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rates",
        type=rates,
        default="20000,50000,100000,max",
        help="offered IAMAT/s across the herd; 'max' = as fast as it answers",
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds of offered load")
    p.add_argument("--procs", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--conns-per-proc", type=int, default=5)
    p.add_argument("--clients", type=int, default=10_000, help="distinct client ids")
    p.add_argument("--window", type=int, default=1000, help="paced: lines in flight per conn")
    p.add_argument("--sample", type=int, default=200, help="clients polled for convergence")
    p.add_argument("--converge-timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=10.0, help="seconds to re-check misses")
    p.add_argument("--max-lines", type=int, default=5_000_000, help="per client process")
    herd_options(p)
    p.add_argument("--profile", metavar="SERVER", default=None)
    p.add_argument("--seed", type=int, default=1)


QUICK = {
    "rates": "5000,max",
    "duration": 1.0,
    "repeats": 1,
    "clients": 2000,
    "converge_timeout": 30.0,
    "settle": 5.0,
}


def _tkey(t: str) -> tuple[int, int]:
    whole, _, frac = t.partition(".")
    return int(whole), int(frac or 0)


def pick_sample(expected: dict[str, str], n: int, rng: Any) -> dict[str, str]:
    """The last few clients moved on each connection, then random others, `n` in all."""
    by_conn: dict[str, list[str]] = {}
    for cid in expected:
        by_conn.setdefault(tag_of(cid), []).append(cid)
    chosen: list[str] = []
    per = max(1, n // (2 * max(1, len(by_conn))))
    for ids in by_conn.values():
        ids.sort(key=lambda c: _tkey(expected[c]), reverse=True)
        chosen += ids[:per]
    taken = set(chosen)
    rest = [c for c in expected if c not in taken]
    chosen += rng.sample(rest, max(0, min(len(rest), n - len(chosen))))
    return {c: expected[c] for c in chosen}


def run_once(
    run: Run, herd: Herd, pool: ClientPool, rate: int, run_id: int, profile_out: Path | None
) -> dict[str, Any]:
    args = run.args
    names = list(herd.ports)
    ports = [herd.port(n) for n in names]
    total_conns = args.procs * args.conns_per_proc
    ids_per_conn = max(1, args.clients // total_conns)
    start_at = time.monotonic() + 0.5
    loads = []
    for i in range(args.procs):
        common = {
            "ports": tuple(ports[i % len(ports) :] + ports[: i % len(ports)]),
            "conns": args.conns_per_proc,
            "send": Iamats(f"h{run_id}p{i}", ids_per_conn, report_newest=True),
            "start_at": start_at,
            "duration": args.duration,
            "max_lines": args.max_lines,
            "drain_timeout": 60.0,
        }
        loads.append(
            Paced(rate=rate / args.procs, window=args.window, **common)
            if rate
            else Pipelined(window=128, **common)
        )
    pids = {n: herd.pid(n) for n in names}
    prof = Profiler(pids[args.profile], args.duration, profile_out) if profile_out else None
    label = f"{rate:,}/s" if rate else "max"
    cpu_before = {n: cpu_seconds(pid) for n, pid in pids.items()}
    results, usage = pool.run(
        loads,
        timeout=args.duration + 120,
        on_tick=lambda received: run.status(f"{label}: {received:,} acked"),
        meter=list(pids.values()),
        window=(start_at, start_at + args.duration),
    )
    profile = prof.finish() if prof else None
    sent = total(results, "sent")
    last_reply = max(r["last_reply"] for r in results)
    expected: dict[str, str] = {}
    for r in results:
        expected.update(r["newest"])
    sample = pick_sample(expected, args.sample, random.Random(args.seed + run_id))
    run.status(f"{label}: converging")
    t_poll = time.monotonic()
    t_conv, missed = converge(herd, sample, timeout=args.converge_timeout)
    poll_rounds_end = time.monotonic()
    cpu_after = {n: cpu_seconds(pid) for n, pid in pids.items()}
    cpu_used = {
        n: (cpu_after[n] - cpu_before[n])
        if cpu_after[n] is not None and cpu_before[n] is not None
        else None
        for n in names
    }
    known_cpu = [v for v in cpu_used.values() if v is not None]
    run.status(f"{label}: checking {len(expected):,} clients x {len(names)}")
    t_check = time.monotonic()
    full = misses(herd, expected, timeout=120)
    check_seconds = time.monotonic() - t_check
    bad = {c: expected[c] for ids in full.values() for c in ids}
    lost_by_server = {n: len(v) for n, v in full.items()}
    if bad:
        _, still = converge(herd, bad, timeout=args.settle)
        lost_by_server = {n: len(v) for n, v in still.items()} if still else dict.fromkeys(names, 0)
    elapsed = (t_conv - start_at) if t_conv else None
    return {
        "offered": rate or None,
        "sent": sent,
        "received": total(results, "received"),
        "errors": total(results, "errors"),
        "acked_rate": total(results, "in_window") / args.duration,
        "converged_rate": sent / elapsed if elapsed else None,
        "converge_seconds": (t_conv - last_reply) if t_conv else None,
        "send_to_last_reply": last_reply - start_at,
        "poll_seconds": poll_rounds_end - t_poll,
        "converged": t_conv is not None,
        "clients": len(expected),
        "lost": sum(lost_by_server.values()),
        "lost_by_server": lost_by_server,
        "misses_at_converge_timeout": {n: len(v) for n, v in missed.items()} if missed else {},
        "check_seconds": check_seconds,
        "server_cpu": {n: usage.get(pid) for n, pid in pids.items()},
        "server_cpu_seconds_to_converge": cpu_used,
        "server_cpu_us_per_update": sum(known_cpu) / sent * 1e6 if sent and known_cpu else None,
        "client_cpu": [r["cpu_fraction"] for r in results],
        "rss_bytes": {n: memory(pid)["rss"] for n, pid in pids.items()},
        "profile": profile,
    }


def measure(run: Run) -> Result:
    args = run.args
    run_ids = itertools.count(1)
    notes = [
        f"storage {'off' if args.no_storage else 'on'}; nothing pinned; "
        f"{args.procs} client processes x {args.conns_per_proc} connections"
    ]
    with (
        scratch_herd(
            storage=not args.no_storage, sections=log_sections(args.log_level, not args.no_curve)
        ) as herd,
        ClientPool(args.procs) as pool,
    ):
        if args.profile and args.profile not in herd.ports:
            raise SystemExit(f"--profile: no server named {args.profile}")

        def once(rate: int, rep: int) -> dict[str, Any]:
            profile_out = None
            if args.profile and rep == 0:
                profile_out = run.path(f"profile-{args.profile}-{rate or 'max'}")
            return run_once(run, herd, pool, rate, next(run_ids), profile_out)

        runs = run.repeat(args.rates, once, label=lambda r: f"{r:,}/s" if r else "max")
    figures = []
    for rate, rs in runs.items():
        figures.append(
            {
                "offered": rate or "max",
                **summaries(rs, "acked_rate", "converged_rate", "converge_seconds", "lost"),
                "lost_total": sum(r["lost"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "all_converged": all(r["converged"] for r in rs),
                **summaries(rs, "server_cpu_us_per_update"),
                "server_cpu_mean": summary(
                    [sum(v for v in r["server_cpu"].values() if v) / 5 for r in rs]
                ),
                "runs": rs,
            }
        )
    best = max((f["converged_rate"]["median"] or 0 for f in figures), default=0)
    lost_total = sum(f["lost_total"] for f in figures)
    goals = [
        target(
            "converged IAMAT/s across five servers (best median)",
            best,
            f">= {TARGET_RATE:,}/s",
            best >= TARGET_RATE,
        ),
        target("lost updates (all runs)", lost_total, "0", lost_total == 0),
    ]

    def show() -> None:
        rows = [
            (
                f"{f['offered']:,}" if isinstance(f["offered"], int) else f["offered"],
                spread(f["acked_rate"]),
                spread(f["converged_rate"]),
                spread(f["converge_seconds"], 1, " s"),
                f["lost_total"],
                f["errors"],
                spread(f["server_cpu_mean"], 100, "%"),
                spread(f["server_cpu_us_per_update"], 1, " us"),
                "yes" if f["all_converged"] else "NO",
            )
            for f in figures
        ]
        print_table(
            "herd: five servers, IAMAT offered vs achieved (median [min-max])",
            [
                "offered/s",
                "acked/s",
                "converged/s",
                "converge",
                "lost",
                "errors",
                "server cpu (mean of 5)",
                "server cpu per update",
                "converged",
            ],
            rows,
        )
        for f in figures:
            for r in f["runs"]:
                if r.get("profile"):
                    top = ", ".join(f"{fr} {p}%" for fr, p in r["profile"]["self"][:8])
                    console.print(f"profile {args.profile} @ {f['offered']}: {top}")
                    break

    return Result(figures, goals, notes, plot=lambda png: plot(figures, args, png), show=show)


def plot(figures: list[dict], args: argparse.Namespace, png: Path) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{f['offered']:,}" if isinstance(f["offered"], int) else "max" for f in figures]
    xs = list(range(len(figures)))
    for key, name in (
        ("acked_rate", "acked by gateways"),
        ("converged_rate", "converged herd-wide"),
    ):
        med, err = errorbar_args([f[key] for f in figures])
        ax1.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=name)
    offered = [f["offered"] if isinstance(f["offered"], int) else float("nan") for f in figures]
    ax1.plot(xs, offered, "kx", ms=10, label="offered")
    ax1.axhline(TARGET_RATE, color="r", alpha=0.3, label=f"target {TARGET_RATE:,}/s")
    ax1.set_xticks(xs, labels)
    ax1.set_xlabel("offered IAMAT/s")
    ax1.set_ylabel("IAMAT/s")
    ax1.set_title("five servers: offered vs achieved")
    ax1.legend()
    ax1.grid(alpha=0.3)
    med, err = errorbar_args([f["converge_seconds"] for f in figures])
    ax2.errorbar(xs, med, yerr=err, marker="o", capsize=3)
    ax2.set_xticks(xs, labels)
    ax2.set_xlabel("offered IAMAT/s")
    ax2.set_ylabel("seconds from last reply to convergence")
    ax2.set_title(f"time to converge (median, min-max of {args.repeats})")
    ax2.grid(alpha=0.3)
    save_figure(fig, png)


if __name__ == "__main__":
    sys.exit(script.main("herd", __doc__, options, measure, quick=QUICK))
