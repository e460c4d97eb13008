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
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    ClientPool,
    HerdRun,
    LoadSpec,
    Profiler,
    check_herd,
    console,
    converge,
    cpu_seconds,
    errorbar_args,
    finish,
    log_sections,
    machine_info,
    parameters_of,
    print_table,
    print_targets,
    progress,
    pyplot,
    result_paths,
    save_figure,
    seeded,
    spread,
    summary,
    target,
    today,
    write_results,
)

TARGET_RATE = 100_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--rates",
        default="20000,50000,100000,max",
        help="offered IAMAT/s across the herd; 'max' = as fast as it answers",
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds of offered load")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--procs", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--conns-per-proc", type=int, default=5)
    p.add_argument("--clients", type=int, default=10_000, help="distinct client ids")
    p.add_argument("--window", type=int, default=1000, help="paced: lines in flight per conn")
    p.add_argument("--sample", type=int, default=200, help="clients polled for convergence")
    p.add_argument("--converge-timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=10.0, help="seconds to re-check misses")
    p.add_argument("--max-lines", type=int, default=5_000_000, help="per client process")
    p.add_argument("--no-storage", action="store_true")
    p.add_argument("--no-curve", action="store_true", help="[security] curve = false (its cost)")
    p.add_argument(
        "--log-level",
        default=None,
        help="diagnostic: [logging] level for the servers (default: the product's, INFO)",
    )
    p.add_argument("--profile", metavar="SERVER", default=None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.rates, args.duration, args.repeats, args.clients = "5000,max", 1.0, 1, 2000
        args.converge_timeout, args.settle = 30.0, 5.0
    args.rates = [0 if r == "max" else int(float(r)) for r in args.rates.split(",") if r]
    return args


def _tkey(t: str) -> tuple[int, int]:
    whole, _, frac = t.partition(".")
    return int(whole), int(frac or 0)


def pick_sample(expected: dict[str, str], n: int, rng: Any) -> dict[str, str]:
    """The last few clients moved on each connection, then random others, `n` in all."""
    by_conn: dict[str, list[str]] = {}
    for cid in expected:
        by_conn.setdefault(cid.rsplit(".", 1)[0], []).append(cid)
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
    args: argparse.Namespace,
    herd: HerdRun,
    pool: ClientPool,
    rate: int,
    run_id: int,
    bar: Any,
    task: Any,
    profile_out: Path | None,
) -> dict[str, Any]:
    names = herd.names
    ports = [herd.port(n) for n in names]
    total_conns = args.procs * args.conns_per_proc
    ids_per_conn = max(1, args.clients // total_conns)
    start_at = time.monotonic() + 0.5
    specs = []
    for i in range(args.procs):
        rot = ports[i % len(ports) :] + ports[: i % len(ports)]
        specs.append(
            LoadSpec(
                ports=tuple(rot),
                conns=args.conns_per_proc,
                mode="paced" if rate else "pipeline",
                payload="iamat",
                tag=f"h{run_id}p{i}",
                start_at=start_at,
                duration=args.duration,
                window=args.window if rate else 128,
                rate=rate / args.procs,
                max_lines=args.max_lines,
                ids_per_conn=ids_per_conn,
                drain_timeout=60.0,
                want_newest=True,
            )
        )
    pids = {n: herd.pid(n) for n in names}
    prof = Profiler(pids[args.profile], args.duration, profile_out) if profile_out else None
    label = f"{rate:,}/s" if rate else "max"

    def tick(received: int) -> None:
        bar.update(task, description=f"{label}: {received:,} acked")

    cpu_before = {n: cpu_seconds(pid) for n, pid in pids.items()}
    results, usage = pool.run(
        specs,
        timeout=args.duration + 120,
        on_tick=tick,
        meter=list(pids.values()),
        window=(start_at, start_at + args.duration),
    )
    profile = prof.finish() if prof else None
    sent = sum(r["sent"] for r in results)
    acked = sum(r["in_window"] for r in results)
    received = sum(r["received"] for r in results)
    errors = sum(r["errors"] for r in results)
    last_reply = max(r["last_reply"] for r in results)
    expected: dict[str, str] = {}
    for r in results:
        expected.update(r["newest"])
    rng = seeded(args.seed + run_id)
    sample = pick_sample(expected, args.sample, rng)
    port_of = dict(zip(names, ports, strict=True))
    bar.update(task, description=f"{label}: converging")
    t_poll = time.monotonic()
    t_conv, misses = converge(port_of, sample, timeout=args.converge_timeout)
    poll_rounds_end = time.monotonic()
    cpu_after = {n: cpu_seconds(pid) for n, pid in pids.items()}
    cpu_used = {
        n: (cpu_after[n] - cpu_before[n])
        if cpu_after[n] is not None and cpu_before[n] is not None
        else None
        for n in names
    }
    known_cpu = [v for v in cpu_used.values() if v is not None]
    bar.update(task, description=f"{label}: checking {len(expected):,} clients x 5")
    t_check = time.monotonic()
    import asyncio

    full = asyncio.run(check_herd(port_of, expected, timeout=120))
    check_seconds = time.monotonic() - t_check
    bad = {c: expected[c] for ids in full.values() for c in ids}
    lost_by_server = {n: len(v) for n, v in full.items()}
    if bad:
        _, still = converge(port_of, bad, timeout=args.settle)
        lost_by_server = {n: len(v) for n, v in still.items()} if still else dict.fromkeys(names, 0)
    lost = sum(lost_by_server.values())
    rss = {}
    for n, pid in pids.items():
        try:
            rss[n] = psutil.Process(pid).memory_info().rss
        except psutil.Error:
            rss[n] = None
    elapsed = (t_conv - start_at) if t_conv else None
    return {
        "offered": rate or None,
        "sent": sent,
        "received": received,
        "errors": errors,
        "acked_rate": acked / args.duration,
        "converged_rate": sent / elapsed if elapsed else None,
        "converge_seconds": (t_conv - last_reply) if t_conv else None,
        "send_to_last_reply": last_reply - start_at,
        "poll_seconds": poll_rounds_end - t_poll,
        "converged": t_conv is not None,
        "clients": len(expected),
        "lost": lost,
        "lost_by_server": lost_by_server,
        "misses_at_converge_timeout": {n: len(v) for n, v in misses.items()} if misses else {},
        "check_seconds": check_seconds,
        "server_cpu": {n: usage.get(pid) for n, pid in pids.items()},
        "server_cpu_seconds_to_converge": cpu_used,
        "server_cpu_us_per_update": sum(known_cpu) / sent * 1e6 if sent and known_cpu else None,
        "client_cpu": [r["cpu_fraction"] for r in results],
        "rss_bytes": rss,
        "profile": profile,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    machine = machine_info()
    json_path, png_path = result_paths("herd", args.out, args.quick)
    runs: dict[int, list[dict[str, Any]]] = {r: [] for r in args.rates}
    notes = [
        f"storage {'off' if args.no_storage else 'on'}; nothing pinned; "
        f"{args.procs} client processes x {args.conns_per_proc} connections"
    ]
    run_id = 0
    with (
        HerdRun(storage=not args.no_storage, sections=log_sections(args)) as herd,
        ClientPool(args.procs) as pool,
        progress() as bar,
    ):
        if args.profile and args.profile not in herd.names:
            raise SystemExit(f"--profile: no server named {args.profile}")
        task = bar.add_task("herd", total=args.repeats * len(args.rates))
        for rep in range(args.repeats):
            for rate in args.rates:
                run_id += 1
                prof_out = None
                if args.profile and rep == 0:
                    prof_out = json_path.parent / (
                        f"herd-profile-{args.profile}-{rate or 'max'}-{today()}.txt"
                    )
                runs[rate].append(run_once(args, herd, pool, rate, run_id, bar, task, prof_out))
                bar.advance(task)

    figures = []
    for rate, rs in runs.items():
        figures.append(
            {
                "offered": rate or "max",
                "acked_rate": summary([r["acked_rate"] for r in rs]),
                "converged_rate": summary([r["converged_rate"] for r in rs]),
                "converge_seconds": summary([r["converge_seconds"] for r in rs]),
                "lost": summary([r["lost"] for r in rs]),
                "lost_total": sum(r["lost"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "all_converged": all(r["converged"] for r in rs),
                "server_cpu_us_per_update": summary([r["server_cpu_us_per_update"] for r in rs]),
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
    parameters = parameters_of(args)
    write_results(
        "herd",
        parameters,
        figures,
        targets=goals,
        notes=notes,
        machine=machine,
        started=started,
        path=json_path,
    )
    plot(figures, args, png_path)
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
    print_targets(goals)
    for f in figures:
        for r in f["runs"]:
            if r.get("profile"):
                top = ", ".join(f"{fr} {p}%" for fr, p in r["profile"]["self"][:8])
                console.print(f"profile {args.profile} @ {f['offered']}: {top}")
                break
    for n in notes:
        console.print(f"note: {n}")
    finish(json_path, png_path)
    return 0


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
    sys.exit(main())
