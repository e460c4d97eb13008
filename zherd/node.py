"""One herd server: the one place that wires store, storage, bus, gateway and places.

Everything runs on one event loop. An IAMAT or a neighbor's update that is newer
goes into the store; a flush is then scheduled for the end of this loop turn, so
updates that arrive together leave together (one message per neighbor) while a
lone update still leaves at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from loguru import logger

from gateway.backend import Fix
from gateway.protocol import IAmAt, at_text, format_at, locate
from gateway.server import Gateway
from zherd import logs, wire
from zherd.bus import Bus
from zherd.config import Topology
from zherd.places import PlacesProvider, make_provider
from zherd.replication import Replicator
from zherd.storage import Cursors, Storage
from zherd.store import Entry, Store

# The storage thread must not hold the GIL for the default 5 ms each time the event loop
# waits on IO (the convoy effect): with storage on, that cut herd throughput 2.5x.
SWITCH_INTERVAL = 0.0005
RETRY_FIRST, RETRY_MAX = 0.01, 0.1  # seconds before resending to a neighbor that is down or full


class Node:
    def __init__(self, topology: Topology, name: str, *, storage: bool = True) -> None:
        self.topology = topology
        self.config = topology.servers[name]
        self.name = name
        self.neighbors = topology.neighbors(name)
        self.epoch = secrets.randbits(62) | 1  # new every boot: tells a restart from a cut
        self.store = Store()
        self.storage = (
            Storage(topology.storage.dir / f"{name}.sqlite3")
            if storage and topology.storage.dir is not None
            else None
        )
        self.replicator = Replicator(name, self.epoch, self.neighbors, self.store)
        self.places: PlacesProvider = make_provider(topology.places)
        self.gateway = Gateway(self, topology.limits)
        self.bus: Bus | None = None
        self.malformed = 0  # bus frames that were not messages, or not from a neighbor
        self._flush_pending = False
        self._retry = RETRY_FIRST  # doubles while sends keep failing (a neighbor down)
        self._retry_timer: asyncio.TimerHandle | None = None
        self._sent: list[tuple[str, wire.Message]] = []
        self._turn_log: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    # gateway.backend.Backend

    def iamat(self, event: IAmAt, received_ns: int) -> bytes:
        loc = locate(event, self.name, received_ns)
        entry = self.store.put(loc)
        if entry is not None:
            self._stored(entry)
        return format_at(loc)

    def lookup(self, client_id: str) -> Fix | None:
        loc = self.store.get(client_id)
        return None if loc is None else Fix(format_at(loc), loc.lat, loc.lon)

    async def find_places(self, lat: float, lon: float, radius_km: float, count: int) -> bytes:
        places = await self.places.nearby(lat, lon, radius_km, count)
        return orjson.dumps(places, option=orjson.OPT_INDENT_2)  # 30x json.dumps(indent=...)

    def trace(self, peer: str, received: Sequence[bytes], sent: bytes) -> None:
        if received or sent:
            self._journal(f"client {peer}" + logs.lines("<-", received) + logs.lines("->", sent))

    def note(self, message: str) -> None:
        self._journal(message)

    def _journal(self, text: str) -> None:
        """One loop turn's traffic, clients and bus, goes out as one log record (a call
        costs ~9 us), written after the turn's updates have left for the neighbors."""
        if not self._turn_log:
            asyncio.get_running_loop().call_soon(self._write_journal)
        self._turn_log.append(text)

    def _write_journal(self) -> None:
        try:
            if self._flush_pending:
                self._flush()  # forward first: the log must not add latency to the flood
        finally:
            turn, self._turn_log = self._turn_log, []
            logger.info("\n".join(turn))

    # lifecycle

    async def run(self, ready: Callable[[], None] = lambda: None) -> None:
        """Serve until SIGTERM/SIGINT (or `stop()`), then shut down cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self.bus = Bus(  # bound now, so a port in use is an error before "ready"
            self.name,
            f"tcp://{self.config.host}:{self.config.bus_port}",
            {n: self.topology.servers[n].bus_endpoint for n in self.neighbors},
            self._delivered,
        )
        self.gateway.hold()  # clients connect at once and wait for the store
        await self.gateway.start(self.config.host, self.config.port)
        await self.places.start()
        ready()
        await self._restore()
        self.bus.start()
        self.replicator.start(loop.time(), self._send)
        self._schedule_flush()
        self._tasks.append(asyncio.create_task(self._ticks()))
        if self.storage is not None:
            interval = self.topology.storage.flush_interval
            self._tasks.append(asyncio.create_task(self.storage.run(interval, self._cursors)))
        self.gateway.release()
        logger.info(
            f"{self.name} up: clients on {self.config.host}:{self.config.port}, "
            f"neighbors {', '.join(self.neighbors) or '(none)'} via bus port "
            f"{self.config.bus_port}, epoch {self.epoch:x}, {len(self.store)} locations"
        )
        await self._stopping.wait()
        await self._shutdown()

    def stop(self) -> None:
        self._stopping.set()

    async def _restore(self) -> None:
        """Load the store from disk off the loop, which meanwhile accepts clients."""
        if self.storage is None:
            return
        saved = await asyncio.to_thread(self.storage.open)
        self.store.restore(saved.entries)
        for peer, (epoch, seq) in saved.cursors.items():
            if peer in self.replicator.inbound:
                self.replicator.inbound[peer].epoch = epoch
                self.replicator.inbound[peer].seq = seq
        logger.info(
            f"storage {self.storage.path}: {len(saved.entries)} locations restored"
            + (f", {saved.skipped} invalid rows skipped" if saved.skipped else "")
        )

    async def _shutdown(self) -> None:
        logger.info(f"{self.name} shutting down")
        for task in self._tasks:
            task.cancel()
        await self.gateway.close()
        self._flush()
        if self.storage is not None:
            await self.storage.close(self._cursors())
        await self.places.close()
        if self.bus is not None:
            self.bus.close()
            self.bus = None  # a flush retry still scheduled must not touch closed sockets
        if self._turn_log:
            self._write_journal()
        c = self.replicator.counters
        logger.info(
            f"{self.name} stopped: {len(self.store)} locations; from neighbors {c.applied} "
            f"updates applied, {c.stale} stale, {c.invalid} invalid records and "
            f"{self.malformed} malformed or foreign frames dropped"
        )
        logger.complete()

    # the herd side

    def _stored(self, entry: Entry) -> None:
        if self.storage is not None:
            self.storage.mark(entry)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send what is due; if a neighbor is down or full, try again later (backing off)
        without holding up the next loop turn's flush to the others."""
        self._flush_pending = False
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if self.bus is None:
            return
        if self.replicator.flush(self._send):
            self._retry = RETRY_FIRST
        else:
            loop = asyncio.get_running_loop()
            self._retry_timer = loop.call_later(self._retry, self._flush)
            self._retry = min(2 * self._retry, RETRY_MAX)
        self._log_sent()

    def _send(self, peer: str, message: wire.Message) -> bool:
        assert self.bus is not None
        sent = self.bus.send(peer, wire.encode(message))
        if sent and not isinstance(message, wire.Heartbeat):
            self._sent.append((peer, message))
        return sent

    def _delivered(self, batch: Sequence[tuple[str, bytes]], dropped: Sequence[str]) -> None:
        """A drained batch of neighbor messages: apply, then journal it (warn at once if
        anything was dropped)."""
        now = asyncio.get_running_loop().time()
        lines: list[str] = []
        warn = bool(dropped)
        for peer, payload in batch:
            message = wire.decode(payload)
            if message is None:
                self.malformed += 1
                lines.append(f"!! {peer}: malformed message dropped ({len(payload)} bytes)")
                warn = True
                continue
            invalid = self.replicator.counters.invalid
            for entry in self.replicator.receive(peer, message, now):
                self._stored(entry)
            if not isinstance(message, wire.Heartbeat):
                lines.extend(_describe(f"<- {peer}", message))
            if self.replicator.counters.invalid > invalid:
                bad = self.replicator.counters.invalid - invalid
                lines.append(f"!! {peer}: {bad} invalid records dropped")
                warn = True
        for why in dropped:
            self.malformed += 1
            lines.append(f"!! {why} dropped")
        self._schedule_flush()  # replies (a Sync, a restarted stream) leave with the flush
        self._log_events()
        if warn:
            logger.warning(logs.block("bus", lines))  # hostile or broken: said at once
        elif lines:
            self._journal(logs.block("bus", lines))

    def _cursors(self) -> Cursors:
        return {p: (s.epoch, s.seq) for p, s in self.replicator.inbound.items() if s.epoch}

    async def _ticks(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.replicator.heartbeat)
            self.replicator.tick(loop.time(), self._send)
            self._log_events()
            self._flush()

    def _log_events(self) -> None:
        for event in self.replicator.events:
            self._journal(event)
        self.replicator.events.clear()

    def _log_sent(self) -> None:
        if self._sent:
            lines = [ln for peer, m in self._sent for ln in _describe(f"-> {peer}", m)]
            self._sent.clear()
            self._journal(logs.block("bus", lines))


def _describe(prefix: str, message: wire.Message) -> list[str]:
    if isinstance(message, wire.Updates):
        head = f"{prefix}: updates ({message.first}, {message.last}] epoch {message.epoch:x}"
        return [head] + [f"   {_record(r)}" for r in message.records]
    if isinstance(message, wire.Sync):
        known = f"{message.known_seq} of epoch {message.known_epoch:x}"
        return [f"{prefix}: sync from epoch {message.epoch:x}, holding {known}"]
    return [f"{prefix}: {message}"]


def _record(record: Any) -> str:
    """A flooded record as the AT line it stands for (or its repr, if it is not one)."""
    try:
        return at_text(*record)
    except TypeError:  # not five fields
        return repr(record)[:200]


def _allow_descriptors(wanted: int) -> None:
    """Raise the soft open-files limit (often 1024) so `max_clients` is what caps clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(
    topology: Topology, name: str, *, storage: bool = True, ready: Callable[[], None] = lambda: None
) -> None:
    """Run one server in this process until it is told to stop; `ready` once it listens."""
    logs.setup(name, topology.logging)
    _allow_descriptors(topology.limits.max_clients + 256)
    sys.setswitchinterval(SWITCH_INTERVAL)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    started = time.monotonic()

    async def main() -> None:
        node = Node(topology, name, storage=storage)

        def announce() -> None:
            logger.info(f"accepting clients {time.monotonic() - started:.3f} s after start")
            ready()

        await node.run(announce)

    asyncio.run(main())
