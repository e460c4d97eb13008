"""One herd server: the one place that wires its parts together.

    gateway (clients) --iamat--> Locations --entry--> Disk (end of turn)
                                     |                  then replies leave
    Bus <--Links--> Replicator <-----+                  then Links.flush

Every part runs on one event loop; `turn.Turn` orders what a loop turn's work
must do once it is over. One `asyncio.TaskGroup` owns every background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
import resource
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import orjson
from loguru import logger

from gateway.backend import Fix
from gateway.protocol import IAmAt
from gateway.server import Gateway
from zherd import keys, logs, record
from zherd.bus import Bus
from zherd.config import Topology
from zherd.counters import Counters, GcPauses
from zherd.disk import Disk, Loaded, Meta
from zherd.journal import Journal
from zherd.latency import Latencies
from zherd.links import Links
from zherd.locations import FROM_CLIENT, Locations
from zherd.places import PlacesProvider, make_provider
from zherd.replication import Replicator, Rules
from zherd.turn import Turn

if TYPE_CHECKING:
    from aiohttp import web

# A thread (a snapshot, the places index) must not hold the GIL for the default 5 ms each
# time the event loop waits on IO (the convoy effect): that once cut herd throughput 2.5x.
SWITCH_INTERVAL = 0.0005
ANCESTORS_KEPT = 8  # earlier epochs whose stream positions a neighbor may resume from
NS = 1_000_000_000


class Node:
    def __init__(self, topology: Topology, name: str, *, storage: bool = True) -> None:
        self.topology = topology
        self.config = topology.servers[name]
        self.name = name
        self.neighbors = topology.neighbors(name)
        self.epoch = secrets.randbits(62) | 1  # new every boot: tells a restart from a cut
        self.started = time.time()
        limits = topology.limits
        self.counters = Counters.for_neighbors(self.neighbors)
        self.latency = Latencies()
        self._batch_ns = 0  # when the IAMATs being answered were read
        self._iamat_timed = 0  # IAMATs already in the latency histogram
        self._flushed_head = 0
        self.locations = Locations()
        folder = topology.storage.dir
        self.disk = (
            Disk(folder, name, topology.storage.fsync) if storage and folder is not None else None
        )
        rules = Rules(
            origins=frozenset(s.encode() for s in topology.servers),
            max_future_ns=int(limits.max_future * NS),
            max_id=limits.max_id,
        )
        self.replicator = Replicator(
            name, self.epoch, self.neighbors, self.locations, rules, self.counters.links
        )
        self.journal = Journal(name)
        self.gateway = Gateway(self, limits)
        self.turn = Turn([])
        self.links = Links(
            self.replicator,
            self.counters,
            self.journal,
            self._stored,
            self.turn.soon,
            rules.max_future_ns,
        )
        self.turn.steps = [
            self._commit,
            self.gateway.send,
            self._time_replies,
            self._flush,
            self.journal.write,
        ]
        self.places: PlacesProvider = make_provider(topology.places)
        self.loaded = False
        self.stopping = False
        self.restored = 0  # locations read from disk at start
        self.restore_seconds = 0.0
        self.gc_pauses = GcPauses()
        self._origin = name.encode()
        self._stopping = asyncio.Event()

    # gateway.backend.Backend

    def iamat(self, event: IAmAt, received_ns: int) -> bytes:
        line = record.make_record(
            self._origin, received_ns - event.time_ns, event.client_id, event.coords, event.time
        )
        entry = self.locations.put(event.client_id, event.time_ns, self._origin, line, FROM_CLIENT)
        self.counters.iamat += 1
        self._batch_ns = received_ns
        if entry is None:
            self.counters.iamat_stale += 1
        else:
            if self.disk is not None:
                self.disk.add(entry)
            self.turn.soon()
        return record.at_line(line)

    def lookup(self, client_id: bytes) -> Fix | None:
        line = self.locations.get(client_id)
        if line is None:
            return None
        self.counters.whatsat += 1
        _, _, _, lat, lon = record.fields(line)
        return Fix(record.at_line(line), lat, lon)

    async def find_places(self, lat: float, lon: float, radius_km: float, count: int) -> bytes:
        began = time.perf_counter_ns()
        places = await self.places.nearby(lat, lon, radius_km, count)
        found = orjson.dumps(places, option=orjson.OPT_INDENT_2)  # 30x json.dumps(indent=...)
        self.latency.whatsat.observe(time.perf_counter_ns() - began)
        return found

    def trace(self, peer: str, received: Sequence[bytes], sent: bytes) -> None:
        if received or sent:
            self.journal.client(peer, received, sent)
            self.turn.soon()

    def note(self, message: str) -> None:
        self.journal.add(logs.escape(message))
        self.turn.soon()

    def replies_waiting(self) -> None:
        self.turn.soon()

    # the turn

    def _stored(self, entries: list[bytes]) -> None:
        if self.disk is not None:
            self.disk.add_all(entries)
        self.turn.soon()

    def _commit(self) -> None:
        """Step 1 of a turn: what it stored, and where our neighbors' streams stand."""
        disk = self.disk
        if disk is None:
            return
        if self.replicator.cursors_changed:
            disk.add_meta(self._meta())
        disk.commit()
        if disk.wants_compaction(len(self.locations)):
            disk.compact(list(self.locations), self._meta())

    def _time_replies(self) -> None:
        """The turn's IAMATs, from the last read to the replies written: one observation
        for all of them (they were answered together)."""
        answered = self.counters.iamat - self._iamat_timed
        if answered:
            self._iamat_timed += answered
            took = time.time_ns() - self._batch_ns
            self.latency.iamat.observe(took if took > 0 else 0, answered)

    def _flush(self) -> None:
        """The turn's updates to the neighbors, timed when there were any."""
        head = self.locations.head
        if head == self._flushed_head or not self.neighbors:
            self.links.flush()  # maybe a retry or a Sync: not what the histogram is about
            return
        began = time.perf_counter_ns()
        self.links.flush()
        self.latency.flush.observe(time.perf_counter_ns() - began)
        self._flushed_head = head

    def _meta(self) -> Meta:
        return Meta(self.epoch, self.replicator.cursors(), self.replicator.ancestors)

    # lifecycle

    async def run(self, ready: Callable[[], None] = lambda: None) -> None:
        """Serve until SIGTERM/SIGINT (or `stop()`), then shut down in order."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self.gc_pauses.install()
        if self.disk is not None:
            self.disk.open()  # a folder we cannot write stops us before "ready"
        bus = self.links.bus = Bus(  # bound now, so a port in use is an error before "ready"
            self.name,
            self.config.bus_bind,
            {n: self.topology.servers[n].bus_endpoint for n in self.neighbors},
            self.links.delivered,
            keys=keys.for_server(self.topology, self.name),
        )
        self.gateway.hold()  # clients connect at once and wait for the store
        await self.gateway.start(self.config.bind, self.config.port)
        ready()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.places.start())
            status = tasks.create_task(self._status_endpoint())  # 503 while the store loads
            await self._restore()
            bus.start()
            self.replicator.start(loop.time(), self.links.send)
            self.turn.soon()
            background = [
                tasks.create_task(self.links.heartbeats()),
                tasks.create_task(self.gateway.sweep()),
            ]
            if self.disk is not None and self.disk.fsync == "everysec":
                background.append(tasks.create_task(self._sync_every_second()))
            self.loaded = True
            self.gateway.release()
            logger.info(
                f"{self.name} up: clients on {self.config.host}:{self.config.port}, "
                f"neighbors {', '.join(self.neighbors) or '(none)'} via bus port "
                f"{self.config.bus_port}, epoch {self.epoch:x}, {len(self.locations)} locations"
            )
            await self._stopping.wait()
            for task in background:
                task.cancel()
            await self._shutdown()
            if (runner := await status) is not None:
                await runner.cleanup()

    async def _status_endpoint(self) -> web.AppRunner | None:
        """HTTP for operators, from while the store loads (/healthz says 503 then): aiohttp
        is imported in a thread, so its ~0.4 s of imports never stall the loop."""
        if self.config.status_port is None:
            return None
        endpoint = await asyncio.to_thread(importlib.import_module, "zherd.status")
        return await endpoint.start(self, self.config.bind, self.config.status_port)

    def stop(self) -> None:
        self.stopping = True
        self._stopping.set()

    def loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    async def _restore(self) -> None:
        """Load the store from disk off the loop, which meanwhile accepts clients."""
        if self.disk is None:
            return
        began = time.monotonic()
        loaded = await asyncio.to_thread(self._load)
        meta, head = loaded.meta, self.locations.head
        self.restored = len(self.locations)
        if loaded.damaged:
            logger.error(
                f"storage: {loaded.damaged} damaged frames dropped; asking every neighbor "
                "for its whole stream:\n" + "\n".join(loaded.problems[:20])
            )
            self.replicator.forget()
            # Rewrite what was read intact: appending after a damaged frame would hide
            # every later frame from the next start.
            self.disk.compact(list(self.locations), self._meta())
        else:
            ancestors = {e: min(s, head) for e, s in meta.ancestors.items()}
            if meta.epoch:
                ancestors[meta.epoch] = head
            self.replicator.restore(meta.cursors, dict(list(ancestors.items())[-ANCESTORS_KEPT:]))
        assert self.disk is not None
        self.disk.add_meta(self._meta())
        self.disk.commit()
        gc.freeze()  # what was loaded stays: no collection needs to look at it again
        self.restore_seconds = time.monotonic() - began
        logger.info(
            f"storage {self.disk.folder}: {len(self.locations)} locations restored in "
            f"{time.monotonic() - began:.2f} s ({loaded.frames} frames read)"
        )

    def _load(self) -> Loaded:
        """In a thread: read the files and build the store (nothing else touches it yet)."""
        assert self.disk is not None
        loaded = self.disk.load()
        self.locations.restore(loaded.entries)
        loaded.entries.clear()
        return loaded

    async def _sync_every_second(self) -> None:
        assert self.disk is not None
        while True:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(self.disk.sync)

    async def _shutdown(self) -> None:
        """Clients first, then a last turn (commit, flush), then disk, bus, places."""
        logger.info(f"{self.name} shutting down")
        self.turn.end()  # replies already made leave (after their commit) before clients go
        # No line is answered from now on: a connection accepted just now (its
        # connection_made still pending) escapes close() and would be served on after the
        # disk is closed, with ATs for updates neither written nor sent to any neighbor.
        self.gateway.hold()
        await self.gateway.close()
        self.turn.end()
        if self.disk is not None:
            await self.disk.close()
        if self.links.bus is not None:
            self.links.bus.close()
            self.links.bus = None  # a flush retry still scheduled must not touch closed sockets
        await self.places.close()
        self.journal.write()
        links = self.counters.links.values()
        logger.info(
            f"{self.name} stopped: {len(self.locations)} locations; from neighbors "
            f"{sum(c.applied for c in links)} updates applied, {sum(c.stale for c in links)} "
            f"stale, {sum(c.invalid for c in links)} invalid records, "
            f"{sum(c.malformed for c in links) + self.counters.foreign_frames} frames dropped"
        )
        logger.complete()


def _allow_descriptors(wanted: int) -> None:
    """Raise the soft open-files limit (often 1024) so `max_clients` is what caps clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: ~4x the default loop for request/response on 3.11."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve(
    topology: Topology, name: str, *, storage: bool = True, ready: Callable[[], None] = lambda: None
) -> None:
    """Run one server in this process until it is told to stop; `ready` once it listens."""
    logs.setup(name, topology.logging)
    _allow_descriptors(topology.limits.max_clients + 256)
    sys.setswitchinterval(SWITCH_INTERVAL)
    started = time.monotonic()

    async def main() -> None:
        node = Node(topology, name, storage=storage)

        def announce() -> None:
            took = time.monotonic() - started
            logger.info(f"accepting clients {took:.3f} s after start (pid {os.getpid()})")
            ready()

        await node.run(announce)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())
