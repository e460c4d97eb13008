"""The floor under the propagation figure: three ZeroMQ hops that do nothing else.

    python -m bench.floor [--quick] [--rates 1000,10000] [--duration 5] [--repeats 3] [--out DIR]

Four processes in a chain, source -> relay -> relay -> sink, each hop a DEALER to a
ROUTER over loopback TCP with CURVE, as the herd's bus is: asyncio on uvloop, the
ROUTER's descriptor watched and drained, each message sent on at once. No store,
no disk, no log, no flooding: what is left of a hop is ZeroMQ (its I/O threads, the
encryption, the wake-ups) and the machine. The source sends --rates messages a
second for --duration seconds, each stamped with the wall clock; the sink takes the
time each one took. p50/p99 over the messages of a run, then median [min-max] over
--repeats. bench.propagation's Powell -> Hamilton is the same three hops with all
of a herd server's work on each.

Writes bench/results/floor-<date>.json (floor-quick-<date>.json with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import time
from typing import Any

from bench import script
from bench.report import print_table, spread
from bench.script import Result, Run
from bench.stats import percentile, summary
from zherd.harness import free_ports

QUICK = {"rates": "1000", "duration": 1.0, "repeats": 1}
HOPS = 3


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rates", type=script.numbers, default="1000,10000")
    p.add_argument("--duration", type=float, default=5.0)


def _hop(
    index: int,
    ports: list[int],
    keys: list[tuple[bytes, bytes]],
    rate: int,
    duration: float,
    results: Any,
) -> None:
    """One process of the chain: 0 sends, the last takes the times, the others pass on."""
    import uvloop
    import zmq

    async def run() -> None:
        ctx = zmq.Context()
        loop = asyncio.get_running_loop()
        router = dealer = None
        if index > 0:  # it receives
            router = ctx.socket(zmq.ROUTER)
            router.curve_server = True
            router.curve_publickey, router.curve_secretkey = keys[index]
            router.bind(f"tcp://127.0.0.1:{ports[index]}")
        if index < HOPS:  # it sends on
            dealer = ctx.socket(zmq.DEALER)
            dealer.curve_publickey, dealer.curve_secretkey = keys[index]
            dealer.curve_serverkey = keys[index + 1][0]
            dealer.connect(f"tcp://127.0.0.1:{ports[index + 1]}")
        took: list[int] = []
        done = asyncio.Event()

        def readable() -> None:
            assert router is not None
            while router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                _, payload = router.recv_multipart(zmq.NOBLOCK)
                if payload == b"end":
                    if dealer is not None:
                        dealer.send(b"end")
                    done.set()
                    return
                if dealer is not None:
                    dealer.send(payload, zmq.NOBLOCK)
                else:
                    took.append(time.time_ns() - int(payload))

        if router is not None:
            loop.add_reader(router.getsockopt(zmq.FD), readable)
            readable()
        if index == 0:
            assert dealer is not None
            await asyncio.sleep(1.0)  # the chain connects and shakes hands
            start = time.monotonic()
            for n in range(int(rate * duration)):
                wait = start + n / rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                dealer.send(str(time.time_ns()).encode(), zmq.NOBLOCK)
            await asyncio.sleep(0.2)
            dealer.send(b"end")
        else:
            await done.wait()
        await asyncio.sleep(0.1)
        if index == HOPS:
            results.put(took)
        ctx.destroy(linger=0)

    uvloop.run(run())


def chain(rate: int, duration: float) -> list[int]:
    """One run: the time each message took over the three hops, in ns."""
    import zmq

    ports = free_ports(HOPS + 1)
    keys = [zmq.curve_keypair() for _ in range(HOPS + 1)]
    spawn = mp.get_context("spawn")
    results = spawn.Queue()
    procs = [
        spawn.Process(target=_hop, args=(i, ports, keys, rate, duration, results))
        for i in range(HOPS + 1)
    ]
    for p in reversed(procs):  # the receivers bind first
        p.start()
    try:
        return results.get(timeout=duration + 30)
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()


def measure(run: Run) -> Result:
    args = run.args

    def once(rate: int, rep: int) -> dict[str, Any]:
        took = [t / 1e6 for t in chain(rate, args.duration)]
        return {
            "messages": len(took),
            "p50_ms": percentile(took, 50) if took else None,
            "p99_ms": percentile(took, 99) if took else None,
            "max_ms": max(took) if took else None,
        }

    raw = run.repeat(list(args.rates), once, label=lambda r: f"{r:,}/s")
    figures = [
        {
            "rate": rate,
            **{k: summary([r[k] for r in runs]) for k in ("p50_ms", "p99_ms", "max_ms")},
            "runs": runs,
        }
        for rate, runs in raw.items()
    ]

    def show() -> None:
        print_table(
            "three bare ZeroMQ hops (CURVE, uvloop), ms, median [min-max]",
            ["messages/s", "p50", "p99", "max"],
            [
                [f"{f['rate']:,}", *(spread(f[k]) for k in ("p50_ms", "p99_ms", "max_ms"))]
                for f in figures
            ],
        )

    return Result(figures, show=show)


if __name__ == "__main__":
    sys.exit(script.main("floor", __doc__, options, measure, quick=QUICK))
