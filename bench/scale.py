"""A million clients on two linked servers: memory, ingest, restarts, catch-up, GC pauses.

    python -m bench.scale [--quick] [--sizes 1000,10000,100000,1000000] [--probe 100000]
        [--missed 1000] [--conns 8] [--window 256] [--out DIR]

Two `zherd serve` processes, A - B, storage on (the shipped fsync policy). Every
client id is scrambled (`bench.lines`), so nothing is stored in key order.

1. Growth: A is filled over --conns pipelined connections up to each of --sizes
   distinct clients (B gets every update by flooding); at each size --probe IAMATs
   move existing clients. Figures per size: fill rate (updates B has applied per
   second of wall time), cpu microseconds per update (A + B) during the probe: the
   cost of an update against the size of the store. (The kernel counts cpu time in
   10 ms ticks: a probe takes some 100 of them, so a tick is ~1% of the figure.)
2. Memory: RSS (and USS) of each server at the largest size.
3. Restart from storage: SIGKILL B, --missed new clients at A, restart B: seconds
   from exec to accepting clients, to a loaded store (healthy), to holding what it
   missed; records A sent it; A's cpu seconds spent on it.
4. Lost storage: SIGKILL B, its files deleted, restart: the same figures (a full resend).
5. GC: the longest collector pause each server saw (its /status).

--quick: sizes 1000,20000, probe 2000, missed 200. Writes bench/results/scale-<date>.json
and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import urllib.request
from typing import Any

from bench import script
from bench.herds import scratch_herd
from bench.lines import IamatLines
from bench.report import fmt, print_table, pyplot, save_figure, target
from bench.script import Result, Run
from bench.usage import cpu_seconds, memory
from zherd.harness import Herd, wait_until

T0 = 1_700_000_000  # client time of the first fill; each later phase starts a second later
SETTLE = 600.0  # seconds a phase may take to reach B, at most


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=script.numbers, default="1000,10000,100000,1000000")
    p.add_argument("--probe", type=int, default=100_000, help="moves measured at each size")
    p.add_argument("--missed", type=int, default=1000, help="new clients while B is down")
    p.add_argument("--conns", type=int, default=8)
    p.add_argument("--window", type=int, default=256, help="lines in flight per connection")


QUICK = {"sizes": "1000,20000", "probe": 2000, "missed": 200, "repeats": 1}


async def _send(port: int, feeds: list[IamatLines], per_conn: int, window: int) -> None:
    """`per_conn` IAMATs on each of len(feeds) connections, `window` in flight; all acked."""

    async def one(feed: IamatLines) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        left = per_conn
        try:
            while left:
                n = min(window, left)
                writer.write(feed.make(n))
                got = 0
                while got < n:
                    chunk = await reader.read(1 << 16)
                    if not chunk:
                        raise ConnectionError("server closed the connection")
                    got += chunk.count(b"\n")
                left -= n
        finally:
            writer.close()

    await asyncio.gather(*(one(f) for f in feeds))


def send(herd: Herd, feeds: list[IamatLines], per_conn: int, window: int) -> None:
    asyncio.run(_send(herd.port("A"), feeds, per_conn, window))


def b_has_all_of_a(herd: Herd) -> bool:
    """B has applied A's stream up to A's newest entry (updates superseded at A before they
    left were never sent: counting what B applied could not tell)."""
    return herd.link("B", "A")["position"] >= herd.status("A")["head"]


def healthy(herd: Herd, name: str) -> bool:
    url = f"http://127.0.0.1:{herd.ports[name][2]}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def cpu(herd: Herd, *names: str) -> float:
    return sum(cpu_seconds(herd.pid(n)) or 0.0 for n in names)


def growth(run: Run, herd: Herd) -> list[dict[str, Any]]:
    args, conns = run.args, run.args.conns
    rows, have = [], 0
    for phase, size in enumerate(args.sizes, start=1):
        per_conn = -(-size // conns) - have // conns
        fill = [IamatLines(f"c{j}", per_conn + have // conns, T0 + phase) for j in range(conns)]
        for f in fill:  # skip the ids filled before: each phase adds new clients
            f.seq = have // conns
        began = time.monotonic()
        send(herd, fill, per_conn, args.window)
        wait_until(lambda: b_has_all_of_a(herd), SETTLE, 0.2, f"B to hold {size}")
        fill_rate = per_conn * conns / (time.monotonic() - began)
        have = per_conn * conns + have
        probe_per_conn = max(1, args.probe // conns)
        moves = [IamatLines(f"c{j}", have // conns, T0 + 1000 + phase) for j in range(conns)]
        cpu0, began = cpu(herd, "A", "B"), time.monotonic()
        send(herd, moves, probe_per_conn, args.window)
        wait_until(lambda: b_has_all_of_a(herd), SETTLE, 0.05, f"probe at {size}")
        took = time.monotonic() - began
        us = (cpu(herd, "A", "B") - cpu0) / (probe_per_conn * conns) * 1e6
        rows.append(
            {
                "clients": have,
                "fill_per_s": fill_rate,
                "probe_per_s": probe_per_conn * conns / took,
                "cpu_us_per_update": us,
            }
        )
        run.status(f"{have:,} clients: {us:.1f} us/update")
    return rows


def restart(herd: Herd, missed: int, phase: int, lose_storage: bool) -> dict[str, Any]:
    """Kill B, write `missed` new clients at A, restart B; what its return cost."""
    before = herd.status("A")["clients_known"]
    assert herd.kill("B", signal.SIGKILL) == -signal.SIGKILL
    if lose_storage:
        for path in (herd.root / "var").glob("B.*"):
            path.unlink()
    feed = IamatLines(f"missed{phase}", missed, T0 + 5000 + phase)
    send(herd, [feed], missed, 256)
    total = before + missed
    cpu_a, began = cpu(herd, "A"), time.monotonic()
    herd.start("B")
    accepting = time.monotonic() - began
    wait_until(lambda: healthy(herd, "B"), SETTLE, 0.02, "B to load its store")
    loaded = time.monotonic() - began
    wait_until(lambda: herd.status("B")["clients_known"] >= total, SETTLE, 0.05, "B caught up")
    caught_up = time.monotonic() - began
    b = herd.status("B")
    return {
        "clients": total,
        "missed": missed,
        "accepting_s": accepting,
        "loaded_s": loaded,
        "caught_up_s": caught_up,
        "restore_s": b["restore_s"],
        "restored": b["restored"],
        "records_from_a": b["neighbors"]["A"]["records_in"],
        "a_cpu_s": cpu(herd, "A") - cpu_a,
    }


def once(run: Run) -> dict[str, Any]:
    with scratch_herd(("A", "B"), (("A", "B"),), prefix="zherd-scale-") as herd:
        rows = growth(run, herd)
        mem = {n: memory(herd.pid(n)) for n in ("A", "B")}
        from_storage = restart(herd, run.args.missed, 1, lose_storage=False)
        lost_storage = restart(herd, run.args.missed, 2, lose_storage=True)
        gc = {n: herd.status(n)["gc"] for n in ("A", "B")}
    return {
        "growth": rows,
        "memory": mem,
        "restart_from_storage": from_storage,
        "restart_lost_storage": lost_storage,
        "gc": gc,
    }


def measure(run: Run) -> Result:
    runs = [once(run) for _ in range(run.args.repeats)]
    last = runs[-1]
    rows = last["growth"]
    biggest = rows[-1]
    rss_mb = max(m["rss"] or 0 for m in last["memory"].values()) / 1e6
    costs = [r["cpu_us_per_update"] for r in rows]
    flat = max(costs) / min(costs)
    resume, lost = last["restart_from_storage"], last["restart_lost_storage"]
    gc_ms = max(g["longest_pause_ms"] for g in last["gc"].values())
    at = f"at {biggest['clients']:,} clients"
    targets = [
        target(f"RSS per server {at}, MB", rss_mb, "< 400", rss_mb < 400),
        target(f"restore {at}, s", resume["restore_s"], "< 2", resume["restore_s"] < 2),
        target(f"longest GC pause {at}, ms", gc_ms, "< 20", gc_ms < 20),
        target("cpu per update, largest / smallest store", flat, "<= 1.5", flat <= 1.5),
        target(
            "records sent for a restart from storage / missed",
            resume["records_from_a"] / resume["missed"],
            "about 1",
            resume["records_from_a"] <= 2 * resume["missed"] + 10,
        ),
    ]

    def show() -> None:
        print_table(
            "growth (A - B, storage on)",
            ["clients", "fill/s", "probe/s", "cpu us/update (A+B)"],
            [
                (
                    f"{r['clients']:,}",
                    fmt(r["fill_per_s"]),
                    fmt(r["probe_per_s"]),
                    f"{r['cpu_us_per_update']:.1f}",
                )
                for r in rows
            ],
        )
        print_table(
            "B restarted",
            ["storage", "accepting s", "loaded s", "caught up s", "records from A", "A cpu s"],
            [
                [
                    label,
                    f"{r['accepting_s']:.2f}",
                    f"{r['loaded_s']:.2f}",
                    f"{r['caught_up_s']:.2f}",
                    f"{r['records_from_a']:,}",
                    f"{r['a_cpu_s']:.2f}",
                ]
                for label, r in (("intact", resume), ("lost", lost))
            ],
        )

    def plot(path: Any) -> None:
        plt = pyplot()
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        xs = [r["clients"] for r in rows]
        ax[0].plot(xs, costs, marker="o")
        ax[0].set_xscale("log")
        ax[0].set_ylim(bottom=0)
        ax[0].set_xlabel("clients in the store")
        ax[0].set_ylabel("cpu us per update (A + B)")
        ax[0].set_title("cost per update against store size")
        labels = ["accepting", "loaded", "caught up"]
        for r, name in ((resume, "storage intact"), (lost, "storage lost")):
            times = [r["accepting_s"], r["loaded_s"], r["caught_up_s"]]
            ax[1].plot(labels, times, "o-", label=name)
        ax[1].set_ylabel("seconds after exec")
        ax[1].set_title(f"B restarted {at}")
        ax[1].legend()
        save_figure(fig, path)

    return Result(
        figures={"runs": runs},
        targets=targets,
        notes=[
            "cpu per update: A and B together, measured while existing clients move",
            "a full resend is granted once per 10 s per neighbor (storage lost may wait for it)",
        ],
        plot=plot,
        show=show,
    )


if __name__ == "__main__":
    sys.exit(script.main("scale", __doc__, options, measure, quick=QUICK, repeats=1))
