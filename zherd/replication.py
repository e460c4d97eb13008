"""Flooding with catch-up between neighbors (the zguide Clone pattern), sans IO.

Each server streams its store, in sequence order, to each neighbor. Live flooding
and catch-up are the same mechanism: per neighbor a cursor into the store, and
each flush sends whatever lies past it. A neighbor that was cut off or restarted
says where its copy of our stream ends (Sync) and the cursor goes back there.

A restart keeps the stream: the entries a server restores from its disk keep
their sequence numbers, so a neighbor's position in the stream of our previous
epoch is still good up to the restored head (`ancestors`), and a restart costs
what was missed, not the size of the store. A position we cannot vouch for (a
tail lost to power loss, a server that lost its disk) gets the whole stream, at
most once per `full_resend_interval` per neighbor.

Heartbeats carry the stream's tip, which lets a receiver notice a gap even when
nothing else is flowing, and let both ends notice a dead neighbor.

Nothing here touches a socket or a clock: `now` and `send` come from the caller,
and what a caller should log comes back as typed events.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from zherd.counters import LinkCounters
from zherd.locations import HEADER, RECORD, VIA, Locations, seq_of, via_of
from zherd.wire import Heartbeat, Message, Sync, Updates

Send = Callable[[str, Message], bool]  # (neighbor, message) -> False if it would block
Cursors = dict[str, tuple[int, int]]  # neighbor -> (epoch, seq) of its stream applied here

CHUNK_BYTES = 256 * 1024  # records per Updates message, in bytes: far below any peer's limit
RECORD_OVERHEAD = 8  # msgpack framing counted per record, so tiny records are bounded too
CHEAP_REWIND = 1000  # records a Sync may always rewind our stream by (bounded work a message)


@dataclass(frozen=True, slots=True)
class NeighborUp:
    peer: str
    epoch: int


@dataclass(frozen=True, slots=True)
class NeighborDown:
    peer: str
    silent: float


@dataclass(frozen=True, slots=True)
class Dropped:
    """Records of a neighbor's message that failed validation."""

    peer: str
    count: int
    reason: str  # the first one's


@dataclass(frozen=True, slots=True)
class CatchUp:
    """A Sync served: the neighbor gets our stream from `start` (0: all of it)."""

    peer: str
    start: int
    head: int


@dataclass(frozen=True, slots=True)
class Deferred:
    """A full resend asked for too soon after the last one: served later."""

    peer: str
    wait: float


Event = NeighborUp | NeighborDown | Dropped | CatchUp | Deferred


@dataclass
class Outbound:
    """Our stream to one neighbor."""

    cursor: int | None = None  # store scanned up to here; None: the neighbor must Sync first
    tip: int = 0  # the `last` of the newest Updates it was sent: its position in our stream
    resend_until: int = 0  # catch-up range also carries what came from this neighbor
    peer_epoch: int = 0  # the neighbor's boot epoch at its last Sync
    pending: deque[bytes] = field(default_factory=deque)  # taken from the store, not yet sent
    pending_to: int = 0  # the seq the pending run ends at
    confirm: bool = False  # a Sync was served: open the stream even if there is nothing to send
    full_at: float = -math.inf  # when we last started a full resend to it
    deferred: Sync | None = None  # a full resend that waits for the interval
    served: Sync | None = None  # the last Sync served: the same one again is a duplicate
    catchup_to: int = 0  # what a served Sync owes it runs to here; later records are live


@dataclass(frozen=True, slots=True)
class Run:
    """The store past a cursor, as one flush found it."""

    entries: list[bytes]
    records: tuple[bytes, ...]  # each entry's record
    vias: bytes  # each entry's `via`: where it came from
    first: int  # the first entry's seq
    last: int  # the store's head: where the run ends
    size: int  # what its records take in a message


@dataclass
class Inbound:
    """A neighbor's stream to us."""

    epoch: int = 0  # 0: we hold nothing of it
    seq: int = 0  # its stream is applied up to here
    last_heard: float = -math.inf
    asked_at: float = -math.inf  # when we last sent a Sync
    ask: bool = False  # a Sync is due: sent by the next flush
    alive: bool = False
    peer_epoch: int = 0  # the epoch its last message carried
    synced: tuple[int, int] = (0, 0)  # the position our last Sync gave it


@dataclass(frozen=True)
class Rules:
    """What a neighbor's record must satisfy (see `record.parse_record`)."""

    origins: frozenset[bytes]
    max_future_ns: int
    max_id: int


class Replicator:
    def __init__(
        self,
        name: str,
        epoch: int,
        neighbors: tuple[str, ...],
        store: Locations,
        rules: Rules,
        links: Mapping[str, LinkCounters],
        *,
        heartbeat: float = 1.0,
        dead_after: float = 3.0,
        sync_retry: float = 1.0,
        full_resend_interval: float = 10.0,
        cheap_rewind: int = CHEAP_REWIND,
    ) -> None:
        self.name = name
        self.epoch = epoch
        self.store = store
        self.rules = rules
        self.links = links
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.sync_retry = sync_retry
        self.full_resend_interval = full_resend_interval
        self.cheap_rewind = cheap_rewind
        self.via = {n: i for i, n in enumerate(neighbors)}  # index kept in each entry
        self.outbound = {n: Outbound() for n in neighbors}
        self.inbound = {n: Inbound() for n in neighbors}
        self.ancestors: dict[int, int] = {}  # our earlier epochs -> seq their stream is good to
        self.events: list[Event] = []  # for the node's log, taken with `take_events`
        self.cursors_changed = False  # inbound positions moved since `cursors()` was last read
        self.now = -math.inf  # the latest time a caller gave (flush is given none)
        self._runs: dict[int, Run] = {}  # the runs past cursors at this head (see `_run`)
        self._runs_head = -1

    # restart

    def restore(self, cursors: Cursors, ancestors: Mapping[int, int]) -> None:
        """Resume from a previous run: its positions in our neighbors' streams, and
        the epochs whose streams ours continues (each good up to a seq)."""
        for peer, (epoch, seq) in cursors.items():
            if peer in self.inbound:
                self.inbound[peer].epoch, self.inbound[peer].seq = epoch, seq
        self.ancestors = dict(ancestors)

    def cursors(self) -> Cursors:
        """Our position in each neighbor's stream (what a restart resumes from)."""
        self.cursors_changed = False
        return {p: (s.epoch, s.seq) for p, s in self.inbound.items() if s.epoch}

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    # a neighbor's message

    def receive(self, peer: str, message: Message, now: float, latest_ns: int) -> list[bytes]:
        """Apply a message from an authenticated neighbor; the entries it stored.

        `latest_ns`: the newest client time a record may carry (now + the bound).
        """
        self.now = now
        inbound = self.inbound[peer]
        inbound.last_heard = now
        inbound.peer_epoch = message.epoch
        self.links[peer].messages_in += 1
        if not inbound.alive:
            inbound.alive = True
            self.events.append(NeighborUp(peer, message.epoch))
            if not isinstance(message, Updates):
                self._ask(inbound, now)  # first contact: do not wait for a heartbeat
        if isinstance(message, Updates):
            return self._updates(peer, inbound, message, now, latest_ns)
        if isinstance(message, Heartbeat):
            if message.tip < 0 or message.epoch != inbound.epoch or message.tip != inbound.seq:
                self._ask(inbound, now)
        else:
            self._serve(peer, message, now)
        return []

    def _updates(
        self, peer: str, inbound: Inbound, message: Updates, now: float, latest_ns: int
    ) -> list[bytes]:
        rules = self.rules
        stored, invalid, reason = self.store.apply(  # copies by another path count as stale
            message.records, rules.origins, latest_ns, rules.max_id, self.via[peer]
        )
        link = self.links[peer]
        link.records_in += len(message.records)
        link.applied += len(stored)
        link.invalid += invalid
        link.stale += len(message.records) - len(stored) - invalid
        if invalid:
            self.events.append(Dropped(peer, invalid, reason))
        # Newest-wins makes every update safe to apply; only a continuous stream moves us on.
        # A restarted neighbor answers our Sync in its new epoch, from where we were in
        # an earlier one (its disk kept that stream): the answer continues our position.
        position = (inbound.epoch, inbound.seq)
        in_order = message.first == inbound.seq and (
            message.epoch == inbound.epoch or position == inbound.synced
        )
        if in_order or message.first == 0:
            if (inbound.epoch, inbound.seq) != (message.epoch, message.last):
                inbound.epoch, inbound.seq = message.epoch, message.last
                self.cursors_changed = True
            inbound.asked_at = -math.inf
        else:
            self._ask(inbound, now)
        return stored

    def _ask(self, inbound: Inbound, now: float) -> None:
        """Sync at the next flush, unless one is on its way (stale heartbeats cross it)."""
        if now - inbound.asked_at >= self.sync_retry:
            inbound.ask, inbound.asked_at = True, now

    def _resume_point(self, sync: Sync) -> int | None:
        """Where the neighbor's copy of our stream ends, if our stream still holds it."""
        if sync.known_epoch == self.epoch:
            return sync.known_seq if sync.known_seq <= self.store.head else None
        good_to = self.ancestors.get(sync.known_epoch)
        return sync.known_seq if good_to is not None and sync.known_seq <= good_to else None

    def _serve(self, peer: str, sync: Sync, now: float) -> None:
        """Rewind our stream to where the neighbor's copy ends (the start, if we cannot
        vouch for it). A rewind costs the records past that point: a cheap one (up to
        `cheap_rewind`) is always granted, so a Sync costs bounded work like any message;
        an expensive one at most once per `full_resend_interval` per neighbor."""
        out = self.outbound[peer]
        head = self.store.head
        start = self._resume_point(sync) or 0
        if head - start > self.cheap_rewind:
            wait = out.full_at + self.full_resend_interval - now
            if wait > 0:
                if sync == out.served:  # asked again before our answer arrived: it flows
                    self.links[peer].syncs_duplicate += 1
                    return
                if out.deferred is None:
                    self.events.append(Deferred(peer, wait))
                out.deferred = sync
                self.links[peer].syncs_deferred += 1
                return
            out.full_at = now
        if start == 0 and head:
            self.links[peer].full_resends += 1
        out.deferred = None
        out.served = sync
        out.cursor = out.tip = start
        if sync.epoch != out.peer_epoch:  # a new process: it may have lost what it told us
            out.peer_epoch, out.resend_until = sync.epoch, head  # so that goes back too
        out.pending.clear()
        out.confirm = True
        out.catchup_to = head
        self.links[peer].syncs_served += 1
        self.events.append(CatchUp(peer, start, head))

    # our stream

    def flush(self, send: Send) -> bool:
        """Send due Syncs, then each neighbor what lies past its cursor; False if blocked."""
        done = True
        for peer, inbound in self.inbound.items():
            if inbound.ask:
                if send(peer, Sync(self.epoch, inbound.epoch, inbound.seq)):
                    inbound.synced = (inbound.epoch, inbound.seq)
                    # The retry interval runs from the send: a Sync asked for while the
                    # neighbor was down must not be sent twice when it comes up.
                    inbound.ask, inbound.asked_at = False, max(inbound.asked_at, self.now)
                    self.links[peer].syncs_sent += 1
                else:
                    done = False
        for peer, out in self.outbound.items():
            if out.cursor is not None and not self._flush_one(peer, out, send):
                done = False
        return done

    def _flush_one(self, peer: str, out: Outbound, send: Send) -> bool:
        store = self.store
        if not out.pending and store.head > out.cursor:  # type: ignore[operator]
            run = self._run(out.cursor)  # type: ignore[arg-type]
            if run.size <= CHUNK_BYTES:  # the live flow: one message, no loop over entries
                return self._send_run(peer, out, run, send)
            out.pending.extend(run.entries)
            out.pending_to = run.last
        pending = out.pending
        if out.confirm and not pending:
            if not send(peer, Updates(self.epoch, out.tip, out.tip, ())):
                return False
            out.confirm = False
        via, resend_until, link = self.via[peer], out.resend_until, self.links[peer]
        while pending:
            chunk: list[bytes] = []
            records: list[bytes] = []
            size = 0
            while pending:
                entry = pending[0]
                if via_of(entry) != via or seq_of(entry) <= resend_until:
                    cost = len(entry) - HEADER.size + RECORD_OVERHEAD
                    if records and size + cost > CHUNK_BYTES:
                        break  # the next chunk's (a record alone may be larger)
                    records.append(entry[RECORD])
                    size += cost
                chunk.append(pending.popleft())
            last = out.pending_to if not pending else seq_of(chunk[-1])
            if records or out.confirm:
                bulk = last <= out.catchup_to
                if not send(peer, Updates(self.epoch, out.tip, last, tuple(records), bulk)):
                    pending.extendleft(reversed(chunk))
                    return False
                out.tip, out.confirm = last, False
                link.records_out += len(records)
            out.cursor = last
        if store.head > out.cursor:  # stored while this run was held back: it goes now too
            return self._flush_one(peer, out, send)
        return True

    def _run(self, cursor: int) -> Run:
        """The store past `cursor`, taken once per flush for every neighbor at `cursor`."""
        runs = self._runs
        if self._runs_head != self.store.head:
            runs.clear()
            self._runs_head = self.store.head
        run = runs.get(cursor)
        if run is None:
            entries = self.store.since(cursor)
            records = tuple([entry[RECORD] for entry in entries])
            run = runs[cursor] = Run(
                entries,
                records,
                bytes([entry[VIA] for entry in entries]),
                seq_of(entries[0]),
                self.store.head,
                sum(map(len, records)) + RECORD_OVERHEAD * len(records),
            )
        return run

    def _send_run(self, peer: str, out: Outbound, run: Run, send: Send) -> bool:
        """A run that fits one message: its records, less what came from `peer` (unless
        the neighbor must get those back too: `resend_until`)."""
        via, records = self.via[peer], run.records
        if via in run.vias and run.first > out.resend_until:
            records = tuple([r for r, v in zip(records, run.vias, strict=True) if v != via])
        elif via in run.vias:
            records = tuple(
                [
                    entry[RECORD]
                    for entry in run.entries
                    if via_of(entry) != via or seq_of(entry) <= out.resend_until
                ]
            )
        if records or out.confirm:
            bulk = run.last <= out.catchup_to
            if not send(peer, Updates(self.epoch, out.tip, run.last, records, bulk)):
                out.pending.extend(run.entries)
                out.pending_to = run.last
                return False
            out.tip, out.confirm = run.last, False
            self.links[peer].records_out += len(records)
        out.cursor = run.last
        return True

    # time passing

    def tick(self, now: float, send: Send) -> None:
        """Heartbeats to every neighbor (or the stream's position, if it moved past
        records left out for it); notice the ones that went quiet; serve full resends
        whose interval has passed."""
        self.now = now
        for peer, inbound in self.inbound.items():
            out = self.outbound[peer]
            if inbound.alive and now - inbound.last_heard > self.dead_after:
                inbound.alive = False
                out.cursor = None  # it will tell us where to resume when it is back
                out.pending.clear()
                out.deferred = None  # and ask again: not served into the void meanwhile
                self.events.append(NeighborDown(peer, self.dead_after))
            if out.deferred is not None and now >= out.full_at + self.full_resend_interval:
                self._serve(peer, out.deferred, now)
                continue  # its catch-up goes next: a heartbeat ahead of it makes it ask again
            # What lies past its tip came from it and was left out: move its position past
            # that (instead of a heartbeat), or a Sync after a cut or a restart would
            # resume before it and get it all back.
            cursor = out.cursor
            if (
                cursor is not None
                and cursor > out.tip
                and not out.pending
                and send(peer, Updates(self.epoch, out.tip, cursor, ()))
            ):
                out.tip = cursor
                continue
            tip = out.tip if out.cursor is not None else -1
            send(peer, Heartbeat(self.epoch, tip))

    def start(self, now: float, send: Send) -> None:
        """On boot: announce ourselves and ask every neighbor for what we lack."""
        for inbound in self.inbound.values():
            self._ask(inbound, now)
        self.tick(now, send)
        self.flush(send)

    def forget(self) -> None:
        """Our disk was damaged: ask every neighbor for its whole stream."""
        for inbound in self.inbound.values():
            inbound.epoch = inbound.seq = 0
        self.cursors_changed = True
