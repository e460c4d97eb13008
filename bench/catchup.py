"""Catch-up time against how much was missed, and what durable storage costs an IAMAT.

    python -m bench.catchup [--quick] [--missed 1000,10000,100000] [--base 20000]
        [--repeats 3] [--duration 3] [--procs 1] [--conns 4] [--window 256] [--out DIR]

Catch-up: a two-server herd, Alford - Bolden, storage on. Both first learn --base
clients, so the store is much bigger than the small misses. Then, for each K in
--missed and each repeat: Bolden stops (SIGTERM), K IAMATs for K new clients go to
Alford (pipelined, from client processes), then one marker IAMAT; Bolden starts
again and resumes Alford's stream from the position saved in its storage.
Alford streams in store order, so the marker is the last record to arrive:

- ready     seconds from spawning Bolden until it listens;
- catch-up  seconds from "listening" until WHATSAT at Bolden knows the marker
            (polled every --poll seconds); a random sample of 200 of the K is then
            checked to hold the exact fix (waited for, if need be: "all");
- records   record lines Bolden's log shows arriving from Alford in that catch-up,
            which should be about K, whatever the size of the store;
- rate      K / catch-up.

Storage cost: one server alone, the same pipelined IAMAT load (--procs client
processes x --conns connections, --window lines in flight each, every line a new
client, bounded by --duration and by a line budget) with storage on and with
--no-storage, alternating, --repeats times: acked IAMAT/s and server cpu per IAMAT.

Figures are median [min-max] over --repeats. Writes bench/results/catchup-<date>.json
and .png (catchup-quick-<date>.* with --quick: K = 1000,10000; base 2000; 1 s runs).
"""

from __future__ import annotations

import argparse
import math
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench import script
from bench.herds import misses, scratch_herd
from bench.load import ClientPool, Iamats, Pipelined, split, total
from bench.report import console, errorbar_args, print_table, pyplot, save_figure, spread
from bench.script import Result, Run
from bench.stats import summaries
from bench.usage import cpu_seconds
from zherd.harness import Client, records_received, wait_until

PAIR = ("Alford", "Bolden")
SAMPLE = 200
PREFIX = "zherd-catchup-"  # our own temp folders
FEED_TIMEOUT = 300.0  # seconds for any one feed of K IAMATs
CATCH_UP_TIMEOUT = 300.0


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--missed", default="1000,10000,100000", help="K values (IAMATs missed)")
    p.add_argument("--base", type=int, default=20_000, help="clients both servers know first")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per throughput run")
    p.add_argument("--procs", type=int, default=1, help="client processes")
    p.add_argument("--conns", type=int, default=4, help="connections per client process")
    p.add_argument("--window", type=int, default=256, help="lines in flight per connection")
    p.add_argument("--poll", type=float, default=0.002, help="seconds between marker polls")
    p.add_argument("--seed", type=int, default=1)


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    args.ks = script.numbers(args.missed)
    if not args.ks or min(args.ks) < 1 or max(args.ks) > 1_000_000:
        p.error("--missed: K values in 1..1000000")


QUICK = {"missed": "1000,10000", "base": 2000, "duration": 1.0}


# -- feeding ---------------------------------------------------------------------------------


def feed(pool: ClientPool, port: int, k: int, tag: str, args: argparse.Namespace) -> dict:
    """K IAMATs for K distinct new clients, pipelined; client id -> the time field sent."""
    loads = [
        Pipelined(
            ports=(port,),
            conns=args.conns,
            send=Iamats(f"{tag}p{i}", budget, report_newest=True),  # K lines are K clients
            start_at=time.monotonic() + 0.2,
            duration=FEED_TIMEOUT,  # the budget ends it long before
            window=args.window,
            max_lines=budget,
            drain_timeout=60.0,
        )
        for i, budget in enumerate(split(k, args.procs))
    ]
    results, _ = pool.run(loads, timeout=FEED_TIMEOUT + 60)
    sent = total(results, "sent")
    acked = total(results, "received") - total(results, "errors")
    if sent != k or acked != k:
        raise RuntimeError(f"feed of {k}: sent {sent}, acked {acked}")
    newest: dict[str, str] = {}
    for r in results:
        newest.update(r["newest"])
    assert len(newest) == k, (len(newest), k)
    return newest


def iamat_marker(port: int, client_id: str) -> str:
    t = f"{time.time():.9f}"
    with Client(port, timeout=30) as c:
        reply = c.ask(f"IAMAT {client_id} +34.068930-118.445127 {t}")
    assert reply.startswith("AT "), reply
    return t


def read_log(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


# -- catch-up --------------------------------------------------------------------------------


def catch_up_rounds(pool: ClientPool, args: argparse.Namespace, rng: random.Random) -> list[dict]:
    a, b = PAIR
    rounds: list[dict] = []
    big_logs = {"logging": {"dir": "logs", "rotation": "4 GB"}}  # counted by offset: no rotation
    with scratch_herd(PAIR, [PAIR], sections=big_logs, prefix=PREFIX) as herd:

        def lacks(expected: dict[str, str]) -> list[str]:
            return misses(herd, expected, [b], timeout=60)[b]

        console.print(f"catch-up: {a} - {b}, {args.base:,} base clients")
        base = feed(pool, herd.port(a), args.base, "base", args)
        sample = dict(rng.sample(sorted(base.items()), min(SAMPLE, len(base))))
        wait_until(lambda: not lacks(sample), CATCH_UP_TIMEOUT, 0.2, "base at B")
        stored = args.base
        for rep in range(args.repeats):
            for k in args.ks:
                assert herd.kill(b, signal.SIGTERM) == 0
                newest = feed(pool, herd.port(a), k, f"k{k}r{rep}", args)
                marker = f"marker-k{k}-r{rep}"
                marker_t = iamat_marker(herd.port(a), marker)
                stored += k + 1
                mark = herd.log_path(b).stat().st_size
                t_spawn = time.monotonic()
                herd.start(b)
                t_ready = time.monotonic()
                at_line = wait_until(
                    lambda m=marker: herd.holdings([m], [b])[b][m],
                    CATCH_UP_TIMEOUT,
                    args.poll,
                    f"{b} to get the marker after missing {k}",
                )
                t_marker = time.monotonic()
                assert at_line.split()[5] == marker_t
                check = dict(rng.sample(sorted(newest.items()), min(SAMPLE, k)))
                missing_at_marker = len(lacks(check))
                t_all = t_marker
                if missing_at_marker:  # not expected: the stream is in order; wait and time it
                    wait_until(lambda c=check: not lacks(c), CATCH_UP_TIMEOUT, 0.05)
                    t_all = time.monotonic()
                log = read_log(herd.log_path(b), mark)
                records = records_received(log, a)
                restored = re.findall(r"(\d+) locations restored", log)
                row = {
                    "k": k,
                    "repeat": rep,
                    "store_at_alford": stored,
                    "restored_at_bolden": int(restored[-1]) if restored else None,
                    "ready_s": t_ready - t_spawn,
                    "catch_up_s": t_marker - t_ready,
                    "all_s": t_all - t_ready,
                    "sample_missing_at_marker": missing_at_marker,
                    "records_received": records,
                    "rate_per_s": k / (t_marker - t_ready) if t_marker > t_ready else None,
                }
                rounds.append(row)
                console.print(
                    f"  K={k:>7,} repeat {rep + 1}: ready {row['ready_s']:.2f} s, catch-up "
                    f"{row['catch_up_s']:.3f} s, {records:,} records (store {stored:,})"
                )
    return rounds


# -- storage cost ----------------------------------------------------------------------------


def throughput_run(pool: ClientPool, storage: bool, tag: str, args: argparse.Namespace) -> dict:
    with scratch_herd(PAIR[:1], [], storage=storage, prefix=PREFIX) as herd:
        port, pid = herd.port(PAIR[0]), herd.pid(PAIR[0])
        start_at = time.monotonic() + 0.5
        budget = int(max(1, args.duration + 0.5) * 200_000)  # per process, far above the rate
        loads = [
            Pipelined(
                ports=(port,),
                conns=args.conns,
                send=Iamats(f"{tag}p{i}", math.ceil(budget / args.conns)),  # each line a new client
                start_at=start_at,
                duration=args.duration,
                warmup=0.5,
                window=args.window,
                max_lines=budget,
                drain_timeout=30.0,
            )
            for i in range(args.procs)
        ]
        cpu0 = cpu_seconds(pid)
        results, usage = pool.run(
            loads,
            timeout=args.duration + 120,
            meter=[pid],
            window=(start_at, start_at + args.duration),
        )
        cpu1 = cpu_seconds(pid)
        sent = total(results, "sent")
        acked = total(results, "received")
        errors = total(results, "errors")
        if errors or acked != sent:
            raise RuntimeError(f"throughput run: sent {sent}, acked {acked}, errors {errors}")
        rows = None
        if storage:  # what the log holds: every acknowledged update was written before its AT
            rows = herd.status(PAIR[0])["storage"]["entries"]
        return {
            "storage": storage,
            "acked_per_s": total(results, "in_window") / args.duration,
            "sent": sent,
            "server_cpu_fraction": usage.get(pid),
            "cpu_us_per_iamat": None
            if cpu0 is None or cpu1 is None or not sent
            else (cpu1 - cpu0) / sent * 1e6,
            "rows_on_disk": rows,
        }


def storage_rounds(pool: ClientPool, args: argparse.Namespace) -> list[dict]:
    console.print(
        f"storage cost: {args.procs} x {args.conns} connections, window {args.window}, "
        f"{args.duration:g} s each"
    )
    out = []
    for rep in range(args.repeats):
        for storage in (True, False) if rep % 2 == 0 else (False, True):
            row = throughput_run(pool, storage, f"t{rep}{'s' if storage else 'm'}", args)
            row["repeat"] = rep
            out.append(row)
            if storage and row["rows_on_disk"] != row["sent"]:
                raise RuntimeError(f"storage lost rows: {row['rows_on_disk']} of {row['sent']}")
            console.print(
                f"  {'storage   ' if storage else 'no-storage'} repeat {rep + 1}: "
                f"{row['acked_per_s']:,.0f} IAMAT/s, {row['cpu_us_per_iamat']:.1f} us cpu each"
            )
    return out


# -- report ----------------------------------------------------------------------------------


def summarise(rounds: list[dict], throughput: list[dict], ks: list[int]) -> dict[str, Any]:
    catch_up = []
    for k in ks:
        rs = [r for r in rounds if r["k"] == k]
        catch_up.append(
            {
                "k": k,
                **summaries(rs, "catch_up_s", "all_s", "ready_s", "records_received", "rate_per_s"),
                "store_at_alford": [r["store_at_alford"] for r in rs],
            }
        )
    storage = {}
    for on in (True, False):
        rs = [r for r in throughput if r["storage"] is on]
        storage["storage" if on else "no-storage"] = summaries(
            rs, "acked_per_s", "cpu_us_per_iamat", "server_cpu_fraction"
        )
    on, off = storage["storage"], storage["no-storage"]
    ratio = (
        on["acked_per_s"]["median"] / off["acked_per_s"]["median"]
        if on["acked_per_s"]["median"] and off["acked_per_s"]["median"]
        else None
    )
    return {"catch_up": catch_up, "storage": storage, "storage_throughput_ratio": ratio}


def report(summ: dict[str, Any]) -> None:
    print_table(
        "catch-up after missing K updates (median [min-max])",
        ["K missed", "ready s", "catch-up s", "records got", "records/s", "store"],
        [
            (
                c["k"],
                spread(c["ready_s"]),
                spread(c["catch_up_s"]),
                spread(c["records_received"]),
                spread(c["rate_per_s"]),
                max(c["store_at_alford"]),
            )
            for c in summ["catch_up"]
        ],
    )
    print_table(
        "IAMAT throughput, one server (median [min-max])",
        ["mode", "acked IAMAT/s", "server cpu us/IAMAT", "server cpu"],
        [
            (
                mode,
                spread(s["acked_per_s"]),
                spread(s["cpu_us_per_iamat"]),
                spread(s["server_cpu_fraction"]),
            )
            for mode, s in summ["storage"].items()
        ],
    )
    if summ["storage_throughput_ratio"]:
        console.print(f"storage on / off throughput: {summ['storage_throughput_ratio']:.2f}")


def plot(summ: dict[str, Any], png: Path) -> Path:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ks = [c["k"] for c in summ["catch_up"]]
    med, err = errorbar_args([c["catch_up_s"] for c in summ["catch_up"]])
    ax1.errorbar(ks, med, yerr=err, marker="o", capsize=4, label="catch-up (marker seen)")
    med, err = errorbar_args([c["ready_s"] for c in summ["catch_up"]])
    ax1.errorbar(ks, med, yerr=err, marker="s", capsize=4, label="restart until listening")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("updates missed (K)")
    ax1.set_ylabel("seconds")
    ax1.set_title("Bolden back after missing K updates")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend()
    modes = list(summ["storage"])
    med, err = errorbar_args([summ["storage"][m]["acked_per_s"] for m in modes])
    ax2.bar(modes, med, yerr=err, capsize=6, color=["tab:orange", "tab:blue"])
    ax2.set_ylabel("acked IAMAT/s")
    ax2.set_title("one server, pipelined IAMATs")
    ax2.grid(True, axis="y", alpha=0.3)
    return save_figure(fig, png)


def measure(run: Run) -> Result:
    args = run.args
    with ClientPool(args.procs) as pool:
        rounds = catch_up_rounds(pool, args, random.Random(args.seed))
        throughput = storage_rounds(pool, args)
    summ = summarise(rounds, throughput, args.ks)
    return Result(
        {"summary": summ, "catch_up_rounds": rounds, "throughput_runs": throughput},
        notes=[
            "catch-up: Bolden restarts from its own storage, so it asks Alford to resume its "
            "stream where its storage says it stopped, and Alford resumes Bolden's stream "
            "likewise: each side gets what it missed, not the other's store.",
            "catch_up_s runs from 'listening' to the marker (the last record Alford streams) "
            "being answered by WHATSAT; records_received counts the records in Bolden's log "
            "(catch-up messages say their count).",
            "throughput: every IAMAT is a new client (one new entry in the log); "
            "cpu_us_per_iamat is the server's cpu over the whole run (incl. warm-up and drain) "
            "/ IAMATs sent.",
            "numbers are noisy when other work shares the machine (see load averages).",
        ],
        parameters={"herd": list(PAIR), "sample": SAMPLE},
        plot=lambda png: plot(summ, png),
        show=lambda: report(summ),
    )


if __name__ == "__main__":
    sys.exit(script.main("catchup", __doc__, options, measure, quick=QUICK, check=check))
