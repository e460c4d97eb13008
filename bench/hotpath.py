"""The herd's two hot paths in one process, without sockets: cpu per line and per record.

    python -m bench.hotpath [--quick] [--lines 200000] [--batch 128] [--records 100]
        [--repeats 5] [--out DIR]

What a server does for work that arrives, timed with `time.thread_time_ns`, with the
kernel's part (socket reads and writes) left out, so a change to the Python side shows
up here without the noise of a loaded machine:

- gateway: a client `Session` fed batches of --batch pipelined IAMAT lines (a new fix
  of one of 100,000 scrambled client ids each), then the end of the turn as the node
  runs it: the durable write (storage on, in a scratch folder), the replies, the log
  record. Per line.
- gateway-rr: the same, as request/response from 50 connections looks: each turn, every
  connection (the real `ClientConnection`, its transport a stand-in that takes the
  bytes) reads one IAMAT, then the turn ends. Per line.
- bus: Parker given `Updates` messages of --records records from Alford (each a new
  fix), as the bus driver gets them: decode, check, store, write, log, then the flush
  to its three other neighbors (encoded and logged; the sockets are left out). Per
  record received.

Median [min-max] over --repeats. --quick: 20,000 lines, 1 repeat.

Writes bench/results/hotpath-<date>.json (hotpath-quick-<date>.json with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import script
from bench.lines import client_id
from bench.report import print_table, spread
from bench.script import Result, Run
from bench.stats import summary
from zherd import config, logs, wire
from zherd.harness import PAPER_LINKS, PAPER_SERVERS, make_keys, topology_toml
from zherd.node import Node

QUICK = {"lines": 20_000, "repeats": 1}
CLIENTS = 100_000
BASE_TIME = 1_700_000_000


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lines", type=int, default=200_000, help="IAMATs (and records) per run")
    p.add_argument("--batch", type=int, default=128, help="lines per read")
    p.add_argument("--records", type=int, default=100, help="records per bus message")


class _Bus:
    """Takes what the flush sends (the sockets are not what is measured)."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, peer: str, payload: bytes) -> bool:
        self.sent += len(payload)
        return True


def _node(root: Path, name: str) -> Node:
    ports = {n: (20000 + 2 * i, 20001 + 2 * i) for i, n in enumerate(PAPER_SERVERS)}  # unused
    path = root / "topology.toml"
    sections = {"logging": {"dir": str(root / "logs")}, "storage": {"dir": str(root / "var")}}
    path.write_text(topology_toml(ports, PAPER_LINKS, sections))
    make_keys(path)
    topology = config.load(path)
    logs.setup(name, topology.logging, console_level="ERROR")
    node = Node(topology, name)
    assert node.disk is not None
    node.disk.open()
    node.links.bus = _Bus()  # type: ignore[assignment]
    node.loaded = True
    return node


def _iamats(n: int, batch: int, tag: str) -> list[bytes]:
    lines = [
        b"IAMAT %s +34.068930-118.445127 %d.%09d"
        % (client_id(tag, i % CLIENTS).encode(), BASE_TIME + i // CLIENTS, i)
        for i in range(n)
    ]
    return [b"\n".join(lines[i : i + batch]) + b"\n" for i in range(0, n, batch)]


def gateway(root: Path, n: int, batch: int) -> float:
    """cpu ns per IAMAT line: session, node, and the end of each turn."""
    from gateway.session import Session

    node = _node(root, "Alford")
    session = Session(node, node.topology.limits)
    reads = _iamats(n, batch, "g")
    turn = node.turn.end
    began = time.thread_time_ns()
    for data in reads:
        session.receive(data, time.time_ns())
        turn()
    took = time.thread_time_ns() - began
    assert node.counters.iamat == n, node.counters.iamat
    return took / n


class _Transport:
    """Takes what a connection writes (the socket is not what is measured)."""

    def __init__(self) -> None:
        self.sent = 0

    def write(self, data: bytes) -> None:
        self.sent += len(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000 + id(self) % 20000) if name == "peername" else None

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def pause_reading(self) -> None:
        raise AssertionError("the turn budget held a connection up: the bench is off")


def gateway_rr(root: Path, n: int, conns: int = 50) -> float:
    """cpu ns per IAMAT line, request/response from `conns` connections."""
    from gateway.server import ClientConnection

    node = _node(root, "Alford")
    connections = []
    for _ in range(conns):
        conn = ClientConnection(node.gateway)
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        connections.append(conn)
    node.turn.end()
    lines = [data + b"\n" for read in _iamats(n, 1, "r") for data in read.split(b"\n") if data]
    turn, gateway = node.turn.end, node.gateway
    began = time.thread_time_ns()
    for i in range(0, n, conns):
        for conn, line in zip(connections, lines[i : i + conns], strict=False):
            conn.data_received(line)
        turn()
        if gateway._turn_scheduled:  # the loop's next iteration would start a new one
            gateway._next_turn()
    took = time.thread_time_ns() - began
    assert node.counters.iamat == n, node.counters.iamat
    return took / n


def bus(root: Path, n: int, records: int) -> float:
    """cpu ns per record Parker receives from Alford, forwards and logs."""
    node = _node(root, "Parker")
    lines = [
        b"Alford +0.000012000 %s +34.068930-118.445127 %d.%09d"
        % (client_id("b", i % CLIENTS).encode(), BASE_TIME + i // CLIENTS, i)
        for i in range(n)
    ]
    epoch = 0x1F3A
    payloads = [
        wire.encode(
            wire.Updates(epoch, i, i + len(lines[i : i + records]), tuple(lines[i : i + records]))
        )
        for i in range(0, n, records)
    ]
    for peer in node.neighbors:  # every link open: its stream flows at each flush
        node.replicator.outbound[peer].cursor = 0
    delivered, turn = node.links.delivered, node.turn.end
    began = time.thread_time_ns()
    for payload in payloads:
        delivered([("Alford", payload)], ())
        turn()
    took = time.thread_time_ns() - began
    assert node.counters.links["Alford"].applied == n, node.counters.links["Alford"]
    return took / n


def measure(run: Run) -> Result:
    args = run.args

    def once(point: str, rep: int) -> dict[str, Any]:
        root = Path(tempfile.mkdtemp(prefix="zherd-hotpath-"))
        gc.collect()
        gc.freeze()  # as a server does once its store is loaded: earlier points do not count
        try:
            if point == "gateway":
                ns = asyncio.run(_in_loop(gateway, root, args.lines, args.batch))
            elif point == "gateway-rr":
                ns = asyncio.run(_in_loop(gateway_rr, root, args.lines))
            else:
                ns = asyncio.run(_in_loop(bus, root, args.lines, args.records))
        finally:
            gc.unfreeze()
            shutil.rmtree(root, ignore_errors=True)
        return {"us": ns / 1000}

    raw = run.repeat(["gateway", "gateway-rr", "bus"], once, label=lambda p: p)
    figures = {p: summary([r["us"] for r in raw[p]]) for p in raw}

    def show() -> None:
        rows = [[p, spread(f, unit=" us")] for p, f in figures.items()]
        print_table("cpu per line (gateway) and per record received (bus)", ["path", "cpu"], rows)

    return Result(figures, show=show)


async def _in_loop(fn: Any, *args: Any) -> float:
    return fn(*args)


if __name__ == "__main__":
    sys.exit(script.main("hotpath", __doc__, options, measure, quick=QUICK, repeats=5))
