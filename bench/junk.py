"""Junk from thousands of connections against one server: what a normal client sees.

    python -m bench.junk [--quick] [--conns 3000] [--size 65536] [--shapes partial,lines]

One `zherd serve` (storage on). --conns connections, opened in waves from client
processes of this script, each send --size bytes of junk:

- partial  a line with no newline, then the connection closes;
- lines    complete junk lines (--size bytes in all), and the connection stays open.

Meanwhile a probe client sends one IAMAT every 10 ms and times each reply. Figures
per shape: the longest reply time of the probe (the outage), its p99, the server's
peak RSS (sampled every 20 ms) and its RSS before, how much the log grew, and the
largest log record of one loop turn (the lines of a turn share their time stamp).
--quick: 300 connections. Writes bench/results/junk-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any

from bench import script
from bench.herds import scratch_herd
from bench.report import print_table, target
from bench.script import Result, Run
from bench.stats import percentile
from bench.usage import memory
from zherd.harness import Herd

PROBE_EVERY = 0.01  # seconds between the probe's IAMATs
WAVE = 100  # connections opened at once


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conns", type=int, default=3000)
    p.add_argument("--size", type=int, default=65536)
    p.add_argument("--shapes", type=script.choices(("partial", "lines")), default="partial,lines")


QUICK = {"conns": 300, "repeats": 1}


def flood(port: int, conns: int, size: int, shape: str, sockets: list[socket.socket]) -> None:
    """Open `conns` connections in waves and send each its junk (bounded: `conns` x `size`)."""
    junk = (b"\x01junk" * (size // 5 + 1))[:size]
    if shape == "lines":
        junk = b"\n".join(junk[i : i + 1000] for i in range(0, size, 1001))[: size - 1] + b"\n"
    for start in range(0, conns, WAVE):
        wave = []
        for _ in range(min(WAVE, conns - start)):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.setblocking(False)
            wave.append(s)
        for s in wave:
            with contextlib.suppress(BlockingIOError):  # what the kernel takes now
                s.send(junk)
            if shape == "partial":
                s.close()
            else:
                sockets.append(s)


def probe(port: int, stop: threading.Event, times: list[float]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        i = 0
        while not stop.is_set():
            i += 1
            began = time.perf_counter()
            s.sendall(f"IAMAT probe +1+1 {1_700_000_000 + i}\n".encode())
            buf = b""
            while not buf.endswith(b"\n"):
                buf += s.recv(4096)
            times.append(time.perf_counter() - began)
            time.sleep(PROBE_EVERY)


def largest_turn(log: str) -> int:
    """Bytes of the largest group of lines written with one time stamp (one turn)."""
    sizes: Counter[str] = Counter()
    for line in log.splitlines(keepends=True):
        sizes[line[:27]] += len(line)
    return max(sizes.values(), default=0)


def once(run: Run, shape: str) -> dict[str, Any]:
    with scratch_herd(("Solo",), (), prefix="zherd-junk-") as herd:
        return measure_shape(herd, run.args, shape)


def measure_shape(herd: Herd, args: argparse.Namespace, shape: str) -> dict[str, Any]:
    pid, port = herd.pid("Solo"), herd.port("Solo")
    rss_before = memory(pid)["rss"] or 0
    log_before = len(herd.log("Solo").encode())
    stop, times, peak = threading.Event(), [], [rss_before]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], memory(pid)["rss"] or 0)
            time.sleep(0.02)

    threads = [threading.Thread(target=f, daemon=True) for f in (sample,)]
    threads.append(threading.Thread(target=probe, args=(port, stop, times), daemon=True))
    for t in threads:
        t.start()
    time.sleep(0.5)  # the probe's quiet baseline
    kept: list[socket.socket] = []
    began = time.monotonic()
    flood(port, args.conns, args.size, shape, kept)
    flood_s = time.monotonic() - began
    time.sleep(3.0)  # the server digests what it was sent
    stop.set()
    for t in threads:
        t.join(60)
    for s in kept:
        s.close()
    log = herd.log("Solo")
    return {
        "shape": shape,
        "conns": args.conns,
        "size": args.size,
        "flood_s": flood_s,
        "probe_replies": len(times),
        "outage_ms": max(times) * 1000,
        "probe_p99_ms": percentile(times, 99) * 1000,
        "rss_before_mb": rss_before / 1e6,
        "rss_peak_mb": peak[0] / 1e6,
        "log_growth_mb": (len(log.encode()) - log_before) / 1e6,
        "largest_turn_mb": largest_turn(log) / 1e6,
    }


def measure(run: Run) -> Result:
    runs = run.repeat(run.args.shapes, lambda shape, rep: once(run, shape))
    rows = [r for rs in runs.values() for r in rs]
    worst = max(r["outage_ms"] for r in rows)
    peak = max(r["rss_peak_mb"] for r in rows)

    def show() -> None:
        print_table(
            f"{run.args.conns:,} connections x {run.args.size:,} bytes of junk, one server",
            ["shape", "outage ms", "probe p99 ms", "RSS before/peak MB", "log MB", "turn MB"],
            [
                (
                    r["shape"],
                    f"{r['outage_ms']:.0f}",
                    f"{r['probe_p99_ms']:.1f}",
                    f"{r['rss_before_mb']:.0f} / {r['rss_peak_mb']:.0f}",
                    f"{r['log_growth_mb']:.1f}",
                    f"{r['largest_turn_mb']:.2f}",
                )
                for r in rows
            ],
        )

    return Result(
        figures={"runs": rows},
        targets=[
            target("longest probe reply during the flood, ms", worst, "< 100", worst < 100),
            target("peak RSS, MB", peak, "< 400", peak < 400),
        ],
        notes=["outage: the probe's longest IAMAT round trip while the junk arrived"],
        show=show,
    )


if __name__ == "__main__":
    sys.exit(script.main("junk", __doc__, options, measure, quick=QUICK, repeats=1))
