"""Inside a client process of a `ClientPool`: the connections that carry a load.

Each process runs uvloop with `asyncio.Protocol` connections, the same shape as the
servers under test, so a client is as cheap per line as Python gets. The load's type
says when a connection sends (`opening`, `refill`, or the pacing ticker of `Paced`);
its payload says what it sends and how its replies are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import traceback
from collections import deque
from typing import Any

from bench.lines import COORDS, client_id
from bench.load import Iamats, Job, Load, Paced, Probes, RequestResponse

HOST = "127.0.0.1"


def serve(pipe: Any, slot: int, counters: Any) -> None:
    """The process's loop: a job in, its result out, until the pool says stop (None)."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    while True:
        try:
            job: Job | None = pipe.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            if job.cpus:
                os.sched_setaffinity(0, set(job.cpus))
            if isinstance(job, Probes):
                result = probe(job, counters, slot)
            else:
                result = asyncio.run(Worker(job, counters, slot).run())
        except Exception:
            result = {"error": traceback.format_exc()}
        pipe.send(result)


class LoadConnection(asyncio.Protocol):
    def __init__(self, w: Worker, conn: int) -> None:
        self.w = w
        self.lines = w.load.send.lines(conn)
        self.replies = w.load.send.replies()
        self.transport: asyncio.Transport | None = None
        self.outstanding = self.sent = self.received = self.errors = 0
        self.sent_at: deque[float] = deque()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        with contextlib.suppress(OSError, AttributeError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.w.check_done()

    def data_received(self, data: bytes) -> None:
        n, err = self.replies.feed(data)
        if not n:
            return
        now = time.monotonic()
        w = self.w
        self.outstanding -= n
        self.received += n
        self.errors += err
        w.received += n
        w.last_reply = now
        if w.t_open <= now < w.t_close:
            w.in_window += n
        if w.timed:
            sent_at = self.sent_at
            for _ in range(min(n, len(sent_at))):
                w.latencies.append(now - sent_at.popleft())
        if w.sending:
            if more := w.load.refill(self.outstanding, n):
                self.send(more)
        elif self.outstanding <= 0:
            w.check_done()

    def send(self, n: int) -> None:
        w = self.w
        n = min(n, w.budget - w.sent)
        if n <= 0 or self.transport is None or self.lost:
            return
        self.transport.write(self.lines.make(n))
        self.outstanding += n
        self.sent += n
        w.sent += n
        if w.timed:
            self.sent_at.extend([time.monotonic()] * n)


class Worker:
    """One load on its connections: open, send through the window, drain, count."""

    def __init__(self, load: Load, counters: Any, slot: int) -> None:
        self.load, self.counters, self.slot = load, counters, slot
        self.budget = load.max_lines
        self.t_open = load.start_at
        self.t_close = load.start_at + load.duration
        self.sending = False
        self.sent = self.received = self.in_window = 0
        self.last_reply = 0.0
        self.timed = isinstance(load, RequestResponse) and load.timed
        self.latencies: list[float] = []
        self.conns: list[LoadConnection] = []
        self.done: asyncio.Future[None] | None = None

    def check_done(self) -> None:
        if self.sending or self.done is None or self.done.done():
            return
        if all(c.outstanding <= 0 or c.lost for c in self.conns):
            self.done.set_result(None)

    async def run(self) -> dict[str, Any]:
        load = self.load
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        for i in range(load.conns):
            port = load.ports[i % len(load.ports)]
            _, conn = await loop.create_connection(lambda i=i: LoadConnection(self, i), HOST, port)
            self.conns.append(conn)  # type: ignore[arg-type]
        await asyncio.sleep(max(0.0, load.start_at - load.warmup - time.monotonic()))
        self.sending = True
        for c in self.conns:
            c.send(load.opening())
        ticker = None
        if isinstance(load, Paced):
            ticker = asyncio.ensure_future(self._pace(load, time.monotonic()))
        cpu_open = wall_open = None
        while True:
            now = time.monotonic()
            if cpu_open is None and now >= self.t_open:
                cpu_open, wall_open = time.process_time(), now
            if now >= self.t_close or self.sent >= self.budget:
                break
            self.counters[self.slot] = self.received
            await asyncio.sleep(min(0.05, max(0.001, self.t_close - now)))
        cpu_close, wall_close = time.process_time(), time.monotonic()
        if cpu_open is None or wall_open is None:
            cpu_open, wall_open = cpu_close, wall_close
        self.sending = False
        t_stop = time.monotonic()
        if ticker is not None:
            ticker.cancel()
        self.check_done()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.done), load.drain_timeout)
        self.counters[self.slot] = self.received
        drained = all(c.outstanding <= 0 for c in self.conns)
        for c in self.conns:
            if c.transport is not None:
                c.transport.close()
        result: dict[str, Any] = {
            "sent": self.sent,
            "received": self.received,
            "in_window": self.in_window,
            "errors": sum(c.errors for c in self.conns),
            "unanswered": sum(max(0, c.outstanding) for c in self.conns),
            "drained": drained,
            "lost_connections": sum(c.lost for c in self.conns),
            "t_stop": t_stop,
            "last_reply": self.last_reply,
            "cpu_fraction": (cpu_close - cpu_open) / (wall_close - wall_open)
            if wall_close > wall_open
            else None,
        }
        if self.timed:
            result["latencies"] = self.latencies
        if isinstance(load.send, Iamats) and load.send.report_newest:
            newest: dict[str, str] = {}
            for c in self.conns:
                newest.update(c.lines.newest())  # type: ignore[union-attr]
            result["newest"] = newest
        return result

    async def _pace(self, load: Paced, t_begin: float) -> None:
        conns, window = self.conns, load.window
        k = len(conns)
        rr = 0
        while self.sending:
            due = int((time.monotonic() - t_begin) * load.rate) - self.sent
            if due > 0:
                per, extra = divmod(due, k)
                for j in range(k):
                    c = conns[(rr + j) % k]
                    n = min(per + (1 if j < extra else 0), window - c.outstanding)
                    if n > 0:
                        c.send(n)
                rr = (rr + extra) % k
            await asyncio.sleep(0.001)


def probe(job: Probes, counters: Any, slot: int) -> dict[str, Any]:
    """Propagation probes: IAMAT at `origin`; with `poll`, WHATSAT there until known.

    Blocking sockets on purpose: this process does nothing else, and a blocking recv
    wakes with the least delay.
    """
    a = socket.create_connection((HOST, job.origin))
    a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    h = None
    if job.poll is not None:
        h = socket.create_connection((HOST, job.poll))
        h.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = {a: b"", h: b""}

    def read_until(s: socket.socket, marker: bytes) -> bytes:
        data = buf[s]
        while marker not in data:
            chunk = s.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed")
            data += chunk
        out, _, buf[s] = data.partition(marker)
        return out

    time.sleep(max(0.0, job.start_at - time.monotonic()))
    deadline = job.start_at + job.duration
    records = []
    next_at = time.monotonic()
    for n in range(job.count):
        if time.monotonic() > deadline:
            break
        cid = client_id(job.tag, n)
        tfield = f"{time.time():.9f}"
        line = f"IAMAT {cid} {COORDS[n % 16]} {tfield}\n".encode()
        t_send = time.time()
        a.sendall(line)
        reply = read_until(a, b"\n")
        t_reply = time.time()
        rec: dict[str, Any] = {
            "id": cid,
            "time": tfield,
            "t_send": t_send,
            "t_reply": t_reply,
            "ok": reply.startswith(b"AT "),
        }
        if h is not None:
            polls, last_miss_send, found, rtt = 0, None, None, None
            ask = f"WHATSAT {cid} 0.1 1\n".encode()
            while time.time() - t_reply < job.poll_timeout:
                p0 = time.time()
                h.sendall(ask)
                first = read_until(h, b"\n")
                polls += 1
                if first.startswith(b"AT "):
                    read_until(h, b"\n\n")
                    found = time.time()
                    rtt = found - p0
                    break
                last_miss_send = p0
                if job.poll_gap:
                    time.sleep(job.poll_gap)
            rec.update(polls=polls, t_found=found, poll_rtt=rtt, last_miss_send=last_miss_send)
        records.append(rec)
        counters[slot] = n + 1
        next_at += job.interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    a.close()
    if h is not None:
        h.close()
    return {"probes": records}
