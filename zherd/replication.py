"""Flooding with catch-up between neighbors (the zguide Clone pattern), sans IO.

Each server streams its store, in sequence order, to each neighbor. Live flooding
and catch-up are the same mechanism: per neighbor a cursor into the store, and
each flush sends whatever lies past it. A neighbor that was cut off or restarted
says where its copy of our stream ends (Sync) and the cursor goes back there, so
a short cut costs what was missed and a restart (new epoch) costs one snapshot.
Heartbeats carry the stream's tip, which lets a receiver notice a gap even when
nothing else is flowing, and let both ends notice a dead neighbor.

Nothing here touches a socket or a clock: `now` and `send` come from the caller.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.protocol import location_from_wire
from zherd.store import Entry, Store
from zherd.wire import Heartbeat, Message, Sync, Updates

Send = Callable[[str, Message], bool]  # (neighbor, message) -> False if it would block

CHUNK = 1024  # records per Updates message


@dataclass
class Outbound:
    """Our stream to one neighbor."""

    cursor: int | None = None  # store scanned up to here; None: the neighbor must Sync first
    tip: int = 0  # the `last` of the newest Updates it was sent: its position in our stream
    resend_until: int = 0  # catch-up range also carries what came from this neighbor
    peer_epoch: int = 0  # the neighbor's boot epoch at its last Sync
    pending: deque[Entry] = field(default_factory=deque)  # taken from the store, not yet sent
    pending_to: int = 0  # the seq the pending run ends at
    confirm: bool = False  # a Sync was served: open the stream even if there is nothing to send


@dataclass
class Inbound:
    """A neighbor's stream to us."""

    epoch: int = 0  # 0: we hold nothing of it
    seq: int = 0  # its stream is applied up to here
    last_heard: float = -math.inf
    asked_at: float = -math.inf  # when we last sent a Sync
    ask: bool = False  # a Sync is due: sent by the next flush
    alive: bool = False


@dataclass
class Counters:
    applied: int = 0  # updates that were newer and stored
    stale: int = 0  # updates we already had (or newer)
    invalid: int = 0  # records that failed validation
    syncs_sent: int = 0
    syncs_served: int = 0


class Replicator:
    def __init__(
        self,
        name: str,
        epoch: int,
        neighbors: tuple[str, ...],
        store: Store,
        *,
        heartbeat: float = 1.0,
        dead_after: float = 3.0,
        sync_retry: float = 1.0,
    ) -> None:
        self.name = name
        self.epoch = epoch
        self.store = store
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.sync_retry = sync_retry
        self.outbound = {n: Outbound() for n in neighbors}
        self.inbound = {n: Inbound() for n in neighbors}
        self.counters = Counters()
        self.events: list[str] = []  # connects and disconnects, for the node's log

    # a neighbor's message

    def receive(self, peer: str, message: Message, now: float) -> list[Entry]:
        """Apply a message from a permitted neighbor; the entries it stored."""
        inbound = self.inbound[peer]
        inbound.last_heard = now
        if not inbound.alive:
            inbound.alive = True
            self.events.append(f"neighbor {peer} connected (epoch {message.epoch:x})")
            if not isinstance(message, Updates):
                self._ask(inbound, now)  # first contact: do not wait for a heartbeat
        if isinstance(message, Updates):
            return self._updates(peer, inbound, message, now)
        if isinstance(message, Heartbeat):
            if message.tip < 0 or message.epoch != inbound.epoch or message.tip != inbound.seq:
                self._ask(inbound, now)
        else:
            self._serve(peer, message)
        return []

    def _updates(self, peer: str, inbound: Inbound, message: Updates, now: float) -> list[Entry]:
        stored = []
        put, holds, counters = self.store.put, self.store.holds, self.counters
        for record in message.records:
            if holds(record):  # a copy by another path (the stale count below includes it)
                continue
            location = location_from_wire(record)
            if location is None:
                counters.invalid += 1
            elif (entry := put(location, peer)) is not None:
                stored.append(entry)
        counters.applied += len(stored)
        counters.stale += len(message.records) - len(stored)
        # Newest-wins makes every update safe to apply; only a continuous stream moves us on.
        in_order = message.epoch == inbound.epoch and message.first == inbound.seq
        if in_order or message.first == 0:
            inbound.epoch, inbound.seq = message.epoch, message.last
            inbound.asked_at = -math.inf
        else:
            self._ask(inbound, now)
        return stored

    def _ask(self, inbound: Inbound, now: float) -> None:
        """Sync at the next flush, unless one is on its way (stale heartbeats cross it)."""
        if now - inbound.asked_at >= self.sync_retry:
            inbound.ask, inbound.asked_at = True, now

    def _serve(self, peer: str, sync: Sync) -> None:
        """Rewind our stream to where the neighbor's copy ends (the start, if not this epoch)."""
        out = self.outbound[peer]
        head = self.store.head
        resume = sync.known_epoch == self.epoch and sync.known_seq <= head
        out.cursor = out.tip = sync.known_seq if resume else 0
        if sync.epoch != out.peer_epoch:  # a new process: it may have lost what it told us
            out.peer_epoch, out.resend_until = sync.epoch, head  # so resend all of it
        out.pending.clear()
        out.confirm = True
        self.counters.syncs_served += 1

    # our stream

    def flush(self, send: Send) -> bool:
        """Send due Syncs, then each neighbor what lies past its cursor; False if blocked."""
        done = True
        for peer, inbound in self.inbound.items():
            if inbound.ask:
                if send(peer, Sync(self.epoch, inbound.epoch, inbound.seq)):
                    inbound.ask = False
                    self.counters.syncs_sent += 1
                else:
                    done = False
        for peer, out in self.outbound.items():
            if out.cursor is not None and not self._flush_one(peer, out, send):
                done = False
        return done

    def _flush_one(self, peer: str, out: Outbound, send: Send) -> bool:
        store = self.store
        if not out.pending and store.head > out.cursor:
            out.pending.extend(store.since(out.cursor))  # type: ignore[arg-type]
            out.pending_to = store.head
        pending = out.pending
        if out.confirm and not pending:
            if not send(peer, Updates(self.epoch, out.tip, out.tip, ())):
                return False
            out.confirm = False
        while pending:
            chunk = [pending.popleft() for _ in range(min(CHUNK, len(pending)))]
            last = out.pending_to if not pending else chunk[-1].seq
            records = [e.location[:5] for e in chunk if e.via != peer or e.seq <= out.resend_until]
            if records or out.confirm:
                if not send(peer, Updates(self.epoch, out.tip, last, tuple(records))):
                    pending.extendleft(reversed(chunk))
                    return False
                out.tip, out.confirm = last, False
            out.cursor = last
        return True

    # time passing

    def tick(self, now: float, send: Send) -> None:
        """Heartbeats to every neighbor; notice the ones that went quiet."""
        for peer, inbound in self.inbound.items():
            out = self.outbound[peer]
            if inbound.alive and now - inbound.last_heard > self.dead_after:
                inbound.alive = False
                out.cursor = None  # it will tell us where to resume when it is back
                out.pending.clear()
                self.events.append(f"neighbor {peer} disconnected (silent {self.dead_after:g} s)")
            tip = out.tip if out.cursor is not None else -1
            send(peer, Heartbeat(self.epoch, tip))

    def start(self, now: float, send: Send) -> None:
        """On boot: announce ourselves and ask every neighbor for what we lack."""
        for inbound in self.inbound.values():
            self._ask(inbound, now)
        self.tick(now, send)
        self.flush(send)
