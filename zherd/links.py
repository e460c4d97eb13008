"""The bus driver: between the ZeroMQ sockets (`bus`) and the replication state
machine (`replication`).

It decodes what the bus drained, hands it to the replicator, logs each message
(live records one line each, catch-up as ranges and counts), sends what the
replicator flushes, and retries with backoff when a neighbor is down or full,
without holding up the flush to the others. When it flushes is the turn's
business (`turn.Turn`): the log never decides when updates leave.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from zherd import logs, wire
from zherd.bus import Bus
from zherd.counters import Counters
from zherd.journal import Journal
from zherd.replication import (
    CatchUp,
    Deferred,
    Dropped,
    Event,
    NeighborDown,
    NeighborUp,
    Replicator,
)

RETRY_FIRST, RETRY_MAX = 0.01, 0.1  # seconds before resending to a neighbor that is down or full


class Links:
    def __init__(
        self,
        replicator: Replicator,
        counters: Counters,
        journal: Journal,
        stored: Callable[[list[bytes]], None],
        turn_soon: Callable[[], None],
        max_future_ns: int,
    ) -> None:
        self.replicator = replicator
        self.counters = counters
        self.journal = journal
        self.stored = stored  # the entries a neighbor's message stored
        self.turn_soon = turn_soon
        self.max_future_ns = max_future_ns
        self.bus: Bus | None = None
        self._retry = RETRY_FIRST  # doubles while sends keep failing (a neighbor down)
        self._retry_timer: asyncio.TimerHandle | None = None

    # inbound

    def delivered(self, batch: Sequence[tuple[str, bytes]], dropped: Sequence[str]) -> None:
        """A drained batch of neighbor messages: apply them, log them (warn at once if
        anything was dropped); replies and forwards leave at the end of the turn."""
        now = asyncio.get_running_loop().time()
        latest_ns = time.time_ns() + self.max_future_ns
        warnings: list[str] = []
        journal, replicator, stored = self.journal, self.replicator, self.stored
        for peer, payload in batch:
            message = wire.decode(payload)
            if message is None:
                self.counters.links[peer].malformed += 1
                warnings.append(f"bus <- {peer}: malformed message dropped ({len(payload)} bytes)")
                continue
            if entries := replicator.receive(peer, message, now, latest_ns):
                stored(entries)
            if not isinstance(message, wire.Heartbeat):
                log(journal, f"bus <- {peer}", message)
        for why in dropped:
            self.counters.foreign_frames += 1
            warnings.append(f"bus: {logs.escape(why)}: dropped")
        warnings += self._events()
        if warnings:
            journal.warn(warnings)
        self.turn_soon()

    def _events(self) -> list[str]:
        """Log lines for the replicator's events; the warnings among them are returned."""
        warnings = []
        for event in self.replicator.take_events():
            line = describe_event(event)
            if isinstance(event, Dropped | Deferred):
                warnings.append(line)
            else:
                self.journal.add(line)
        return warnings

    # outbound

    def flush(self) -> None:
        """Send what is due; if a neighbor is down or full, try again later (backing off)."""
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if self.bus is None:
            return
        if self.replicator.flush(self.send):
            self._retry = RETRY_FIRST
        else:
            loop = asyncio.get_running_loop()
            self._retry_timer = loop.call_later(self._retry, self.turn_soon)
            self._retry = min(2 * self._retry, RETRY_MAX)

    def send(self, peer: str, message: wire.Message) -> bool:
        if self.bus is None or not self.bus.send(peer, wire.encode(message)):
            return False
        self.counters.links[peer].messages_out += 1
        if not isinstance(message, wire.Heartbeat):
            log(self.journal, f"bus -> {peer}", message)
        return True

    async def heartbeats(self) -> None:
        """Heartbeats, dead neighbors, deferred resends: once per heartbeat interval."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.replicator.heartbeat)
            self.replicator.tick(loop.time(), self.send)
            warnings = self._events()
            if warnings:
                self.journal.warn(warnings)
            self.turn_soon()


def log(journal: Journal, prefix: str, message: wire.Message) -> None:
    """A bus message in the log: live records one line each, as the AT lines they stand
    for (what an operator greps for); a catch-up as its range and count."""
    if isinstance(message, wire.Updates):
        head = f"{prefix}: updates ({message.first}, {message.last}] epoch {message.epoch:x}"
        if message.bulk:
            journal.add(f"{head}: catch-up, {len(message.records)} records")
            return
        journal.add(head)
        journal.lines(f"{prefix}:   AT ", message.records)
    elif isinstance(message, wire.Sync):
        known = f"{message.known_seq} of epoch {message.known_epoch:x}"
        journal.add(f"{prefix}: sync from epoch {message.epoch:x}, holding {known}")
    else:
        journal.add(f"{prefix}: {message}")


def describe_event(event: Event) -> str:
    if isinstance(event, NeighborUp):
        return f"neighbor {event.peer} up (epoch {event.epoch:x})"
    if isinstance(event, NeighborDown):
        return f"neighbor {event.peer} down (silent {event.silent:g} s)"
    if isinstance(event, Dropped):
        return f"bus <- {event.peer}: {event.count} invalid records dropped ({event.reason})"
    if isinstance(event, CatchUp):
        what = "everything" if event.start == 0 else f"from {event.start}"
        return f"bus -> {event.peer}: catch-up of our stream {what} to {event.head}"
    return f"bus <- {event.peer}: full resend asked too soon: in {event.wait:.1f} s"
