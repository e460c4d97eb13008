"""Flooding and Clone-style catch-up, driven purely in memory.

A `SimHerd` joins Replicators with per-direction FIFO queues (ZeroMQ keeps order per
connection, nothing more), a seeded scheduler that picks which link delivers next,
and a simulated clock. Every message goes through wire.encode/decode, as on the bus.
A link can refuse sends (a DEALER with IMMEDIATE and no peer: "would block") or
swallow them silently (in flight when the connection broke). A node can crash (its
memory is gone) and boot empty, or restart with what its disk kept: its entries
(all of them, or a prefix: a tail lost to power loss), its positions in its
neighbors' streams, and the epochs its stream continues.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Iterable
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocol import NS, IAmAt, parse_line
from zherd import wire
from zherd.counters import LinkCounters
from zherd.locations import FROM_CLIENT, Locations, record_of, seq_of, via_of
from zherd.record import Record, client_of, fields, format_skew, make
from zherd.replication import (
    CHEAP_REWIND,
    CHUNK_BYTES,
    RECORD_OVERHEAD,
    CatchUp,
    Deferred,
    Dropped,
    NeighborDown,
    NeighborUp,
    Replicator,
    Rules,
    Send,
)
from zherd.wire import Heartbeat, Message, Sync, Updates

PAPER = [
    ("Alford", "Parker"),
    ("Alford", "Powell"),
    ("Bolden", "Parker"),
    ("Bolden", "Powell"),
    ("Hamilton", "Parker"),
]
LINE = [("N1", "N2"), ("N2", "N3"), ("N3", "N4")]

HEARTBEAT = 1.0
DEAD_AFTER = 3.0
SYNC_RETRY = 1.0
FULL_RESEND = 10.0

NAMES = ["Alford", "Bolden", "Hamilton", "Parker", "Powell"]
ORIGINS = frozenset(n.encode() for n in [*NAMES, "N1", "N2", "N3", "N4", "A", "B", "C"])
MAX_ID = 64 * 1024
RULES = Rules(ORIGINS, max_future_ns=86400 * NS, max_id=MAX_ID)
LATEST = 10**12 * NS  # far past every client time used here

Direction = tuple[str, str]


def links_of(neighbors: Iterable[str]) -> dict[str, LinkCounters]:
    return {n: LinkCounters() for n in neighbors}


class SimHerd:
    """Replicators on an in-memory network with a simulated clock."""

    def __init__(
        self, links: Iterable[tuple[str, str]], *, seed: int = 0, capacity: int | None = None
    ) -> None:
        self.adjacent: dict[str, set[str]] = {}
        for a, b in links:
            self.adjacent.setdefault(a, set()).add(b)
            self.adjacent.setdefault(b, set()).add(a)
        self.queues: dict[Direction, deque[Message]] = {
            (a, b): deque() for a, peers in self.adjacent.items() for b in peers
        }
        self.rng = random.Random(seed)
        self.capacity = capacity  # messages a direction holds before sends would block
        self.refusing: set[Direction] = set()  # link down: sends fail at once
        self.dropping: set[Direction] = set()  # link broken: sends "succeed", messages vanish
        self.now = 0.0
        self.nodes: dict[str, Replicator] = {}
        self.disks: dict[str, Replicator] = {}  # the last process of a node, as its disk
        self.sent: list[tuple[str, str, Message]] = []  # every message a link accepted
        self._epochs = itertools.count(0x5EED_0001, 0x1_0000)
        for name in sorted(self.adjacent):
            self.boot(name)

    # nodes

    def boot(self, name: str) -> Replicator:
        """A fresh process: new epoch, empty store, then announce itself."""
        node = Replicator(
            name,
            next(self._epochs),
            tuple(sorted(self.adjacent[name])),
            Locations(),
            RULES,
            links_of(self.adjacent[name]),
            heartbeat=HEARTBEAT,
            dead_after=DEAD_AFTER,
            sync_retry=SYNC_RETRY,
            full_resend_interval=FULL_RESEND,
            cheap_rewind=0,  # stores of a few records: every rewind counts
        )
        self.nodes[name] = node
        node.start(self.now, self.sender(name))
        return node

    def crash(self, name: str) -> Replicator:
        """The process dies: its memory and everything in flight to or from it are lost
        (what it had written stays on its disk, for `restart`)."""
        node = self.nodes.pop(name)
        self.disks[name] = node
        for (a, b), queue in self.queues.items():
            if name in (a, b):
                queue.clear()
        return node

    def restart(self, name: str, keep: int | None = None) -> Replicator:
        """Boot with what the disk kept, as node.py restores it (crashing the node first
        if it is up): the entries (only those up to seq `keep`: a tail lost to power
        loss, and the positions with it), the positions in the neighbors' streams, and
        the epochs the new stream continues."""
        if name in self.nodes:
            self.crash(name)
        old = self.disks[name]
        store = Locations()
        store.restore(
            sorted((e for e in old.store if keep is None or seq_of(e) <= keep), key=seq_of)
        )
        node = Replicator(
            name,
            next(self._epochs),
            tuple(sorted(self.adjacent[name])),
            store,
            RULES,
            links_of(self.adjacent[name]),
            heartbeat=HEARTBEAT,
            dead_after=DEAD_AFTER,
            sync_retry=SYNC_RETRY,
            full_resend_interval=FULL_RESEND,
            cheap_rewind=0,  # stores of a few records: every rewind counts
        )
        ancestors = {e: min(s, store.head) for e, s in old.ancestors.items()}
        ancestors[old.epoch] = store.head
        node.restore(old.cursors() if keep is None else {}, ancestors)
        self.nodes[name] = node
        node.start(self.now, self.sender(name))
        return node

    def iamat(
        self, name: str, client: str, time: str, coords: str = "+34.068930-118.445127"
    ) -> bytes:
        """A client's IAMAT heard by `name`, recorded as the node would."""
        event = parse_line(f"IAMAT {client} {coords} {time}".encode(), max_id=MAX_ID)
        assert isinstance(event, IAmAt)
        record = make(name.encode(), format_skew(1000), event.client_id, event.coords, event.time)
        self.nodes[name].store.put(
            client.encode(), event.time_ns, name.encode(), record, FROM_CLIENT
        )
        return record

    # links

    def cut(self, a: str, b: str, *, silently: bool = False, one_way: bool = False) -> None:
        directions = {(a, b)} if one_way else {(a, b), (b, a)}
        (self.dropping if silently else self.refusing).update(directions)

    def heal(self) -> None:
        self.refusing.clear()
        self.dropping.clear()

    def sender(self, src: str) -> Send:
        def send(dst: str, message: Message) -> bool:
            queue = self.queues[src, dst]
            if dst not in self.nodes or (src, dst) in self.refusing:
                return False
            if self.capacity is not None and len(queue) >= self.capacity:
                return False
            self.sent.append((src, dst, message))
            if (src, dst) not in self.dropping:
                decoded = wire.decode(wire.encode(message))
                assert decoded == message
                queue.append(decoded)
            return True

        return send

    # running

    def step(self) -> bool:
        """Deliver one message from a random busy link; the receiver then flushes."""
        busy = [d for d, q in self.queues.items() if q]
        if not busy:
            return False
        src, dst = self.rng.choice(busy)
        message = self.queues[src, dst].popleft()
        node = self.nodes[dst]
        node.receive(src, message, self.now, LATEST)
        node.flush(self.sender(dst))
        return True

    def flush_all(self) -> None:
        for name, node in self.nodes.items():
            node.flush(self.sender(name))

    def settle(self, limit: int = 200_000) -> None:
        """Deliver until nothing is in flight and no flush has more to send."""
        for _ in range(limit):
            self.flush_all()
            if not self.step():
                return
            while self.step():
                pass
        raise AssertionError("the herd never went quiet")

    def advance(self, seconds: float) -> None:
        """Let time pass in heartbeat steps: every node ticks, then the herd settles.

        What is in flight arrives first: a message takes far less than a heartbeat."""
        self.settle()
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + HEARTBEAT)
            names = list(self.nodes)
            self.rng.shuffle(names)
            for name in names:
                self.nodes[name].tick(self.now, self.sender(name))
            self.settle()

    # observing

    def view(self, name: str) -> dict[bytes, bytes]:
        return {client_of(record_of(e)): record_of(e) for e in self.nodes[name].store}

    def assert_converged(self) -> dict[bytes, bytes]:
        views = {name: self.view(name) for name in self.nodes}
        first = next(iter(views.values()))
        for name, view in views.items():
            assert view == first, f"{name} differs"
        return first

    def updates(self, since: int = 0) -> list[tuple[str, str, Updates]]:
        return [(s, d, m) for s, d, m in self.sent[since:] if isinstance(m, Updates)]

    def records_sent(self, since: int = 0) -> int:
        return sum(len(m.records) for _, _, m in self.updates(since))

    def syncs_sent(self, since: int = 0) -> int:
        return sum(isinstance(m, Sync) for _, _, m in self.sent[since:])

    def full_resends(self) -> int:
        return sum(c.full_resends for n in self.nodes.values() for c in n.links.values())


def key(record: bytes) -> tuple[int, str]:
    _, origin, time_ns, _, _ = fields(record)
    return time_ns, origin.decode()


def started(
    links: Iterable[tuple[str, str]], *, seed: int = 0, capacity: int | None = None
) -> SimHerd:
    """A herd one heartbeat after boot: every neighbor has Synced every other."""
    herd = SimHerd(links, seed=seed, capacity=capacity)
    herd.advance(HEARTBEAT)
    return herd


def steady(links: Iterable[tuple[str, str]], *, seed: int = 0) -> SimHerd:
    """A herd past the interval of its boot's full resends: a node that restarts empty
    now gets everything at once (sooner, it waits for the interval: see
    test_an_empty_restart_soon_after_boot_waits_for_the_full_resend_interval)."""
    herd = started(links, seed=seed)
    herd.advance(FULL_RESEND)
    return herd


def populate(herd: SimHerd, name: str, n: int, time: str = "1000", prefix: str = "client") -> None:
    for i in range(n):
        herd.iamat(name, f"{prefix}{i}", time, coords=f"+{i % 90}.5-{i % 180}.25")
    herd.settle()


# flooding


@pytest.mark.parametrize(("links", "at"), [(PAPER, "Hamilton"), (PAPER, "Bolden"), (LINE, "N1")])
def test_an_update_at_one_end_reaches_every_node(links: list[tuple[str, str]], at: str) -> None:
    herd = started(links)
    record = herd.iamat(at, "kiwi.cs.ucla.edu", "1400794645.392014450")
    herd.settle()
    for name, node in herd.nodes.items():
        assert node.store.get(b"kiwi.cs.ucla.edu") == record, name
    assert herd.syncs_sent() > 0  # the boot Syncs; none since, see test_no_sync_storm


def test_flood_ends_and_never_echoes_back() -> None:
    herd = started(LINE)
    mark = len(herd.sent)
    herd.iamat("N1", "kiwi", "10")
    herd.settle()
    updates = [(s, d, len(m.records)) for s, d, m in herd.updates(mark)]
    assert sorted(updates) == [("N1", "N2", 1), ("N2", "N3", 1), ("N3", "N4", 1)]


def test_live_updates_are_coalesced_per_flush() -> None:
    herd = started(LINE)
    mark = len(herd.sent)
    for i in range(10):
        herd.iamat("N1", f"c{i}", "10")
    herd.settle()
    assert herd.records_sent(mark) == 30
    assert len(herd.updates(mark)) == 3
    assert not any(m.bulk for _, _, m in herd.updates(mark))  # the live flow


def test_each_node_files_a_record_under_the_neighbor_it_came_from() -> None:
    herd = started(LINE)
    herd.iamat("N1", "kiwi", "10")
    herd.settle()
    for name, came_from in [("N2", "N1"), ("N3", "N2"), ("N4", "N3")]:
        node = herd.nodes[name]
        (entry,) = list(node.store)
        assert via_of(entry) == node.via[came_from]
        assert node.links[came_from].applied == 1
    assert via_of(next(iter(herd.nodes["N1"].store))) == FROM_CLIENT


def chunk_bytes(message: Updates) -> int:
    return sum(len(r) + RECORD_OVERHEAD for r in message.records)


def test_a_big_store_goes_out_in_byte_bounded_chunks() -> None:
    herd = started(LINE)
    mark = len(herd.sent)
    n = 3 * CHUNK_BYTES // 70  # records of ~70 bytes: more than three chunks' worth
    populate(herd, "N1", n)
    assert len(herd.assert_converged()) == n
    from_n1 = [m for s, _, m in herd.updates(mark) if s == "N1"]
    assert sum(len(m.records) for m in from_n1) == n
    assert len(from_n1) >= 3
    assert all(chunk_bytes(m) <= CHUNK_BYTES for m in from_n1)
    assert all(len(wire.encode(m)) <= CHUNK_BYTES for m in from_n1)
    assert [(m.first, m.last) for m in from_n1[1:]] == [
        (p.last, c.last) for p, c in pairwise(from_n1)
    ]


def test_chunks_of_big_records_never_exceed_chunk_bytes() -> None:
    """60 KB records (a client id as long as a client line allows): a chunk stops before
    the record that would take it past the bound, not after."""
    herd = started(LINE)
    mark = len(herd.sent)
    for i in range(20):
        herd.iamat("N1", f"{i:02d}" + "x" * 60_000, "10")
    herd.settle()
    assert len(herd.assert_converged()) == 20
    chunks = [m for s, _, m in herd.updates(mark) if s == "N1"]
    assert sum(len(m.records) for m in chunks) == 20
    for m in chunks:
        assert chunk_bytes(m) <= CHUNK_BYTES, [len(r) for r in m.records]
        assert len(wire.encode(m)) <= CHUNK_BYTES


def expected_winners(ops: list[tuple[str, str, int, int]]) -> dict[bytes, tuple[int, str, int]]:
    """Per client: the max (time, origin); among equal keys the first one its origin heard."""
    best: dict[bytes, tuple[int, str, int]] = {}
    for index, (node, client, t, _) in enumerate(ops):
        candidate = (t * NS, node, index)
        c = client.encode()
        if c not in best or candidate[:2] > best[c][:2]:
            best[c] = candidate
    return best


OP = st.tuples(
    st.sampled_from(NAMES),
    st.sampled_from(["a", "b", "c"]),
    st.integers(0, 4),  # client time: small, so equal times (origin tie-break) are common
    st.integers(0, 6),  # deliveries before the next IAMAT
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(OP, min_size=1, max_size=25),
    seed=st.integers(0, 2**32),
    capacity=st.sampled_from([None, 1, 2]),
)
def test_newest_wins_under_any_delivery_interleaving(
    ops: list[tuple[str, str, int, int]], seed: int, capacity: int | None
) -> None:
    herd = started(PAPER, seed=seed, capacity=capacity)
    for index, (node, client, t, deliveries) in enumerate(ops):
        decimals = "." + "0" * (index % 10) if index % 10 else ""  # same time, other text
        herd.iamat(node, client, f"{t}{decimals}", coords=f"+{index}-{index}")
        herd.nodes[node].flush(herd.sender(node))
        for _ in range(deliveries):
            herd.step()
    herd.settle()
    view = herd.assert_converged()
    winners = expected_winners(ops)
    assert set(view) == set(winners)
    for client, (time_ns, origin, index) in winners.items():
        assert key(view[client]) == (time_ns, origin)
        assert f" +{index}-{index} ".encode() in view[client]  # the first IAMAT with that key


CHAOS = st.one_of(
    st.tuples(st.just("iamat"), st.sampled_from(NAMES), st.sampled_from("abcd"), st.integers(0, 9)),
    st.tuples(st.just("step"), st.integers(1, 10)),
    st.tuples(st.just("cut"), st.sampled_from(PAPER), st.booleans(), st.booleans()),
    st.tuples(st.just("heal")),
    st.tuples(st.just("crash"), st.sampled_from(NAMES)),
    st.tuples(st.just("boot"), st.sampled_from(NAMES)),
    st.tuples(st.just("restart"), st.sampled_from(NAMES), st.one_of(st.none(), st.integers(0, 8))),
    st.tuples(st.just("advance"), st.integers(1, 5)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(CHAOS, max_size=30), seed=st.integers(0, 2**32))
def test_herd_converges_after_any_cuts_and_restarts(ops: list[tuple], seed: int) -> None:
    """Whatever happened, once every link and node is back all stores agree, and no update
    whose origin kept it (stayed up, or restarted with its whole disk) is lost or beaten
    by an older one."""
    herd = started(PAPER, seed=seed)
    injected: list[tuple[int, str, bytes]] = []  # (op index, origin, record)
    lost_at: dict[str, int] = {}  # the last op at which a node lost what it held
    for index, (kind, *args) in enumerate(ops):
        if kind == "iamat" and args[0] in herd.nodes:
            name, client, t = args
            injected.append((index, name, herd.iamat(name, client, str(t), f"+{index}+0")))
            herd.nodes[name].flush(herd.sender(name))
        elif kind == "step":
            for _ in range(args[0]):
                herd.step()
        elif kind == "cut":
            (a, b), silently, one_way = args
            herd.cut(a, b, silently=silently, one_way=one_way)
        elif kind == "heal":
            herd.heal()
        elif kind == "crash" and args[0] in herd.nodes:
            herd.crash(args[0])
            lost_at[args[0]] = index
        elif kind == "boot" and args[0] not in herd.nodes:
            herd.boot(args[0])
        elif kind == "restart" and (args[0] in herd.nodes or args[0] in herd.disks):
            name, keep = args
            if keep is not None:
                lost_at[name] = index  # a tail lost (the whole disk survives a plain restart)
            herd.restart(name, keep)
        elif kind == "advance":
            herd.advance(args[0])
    floor: dict[bytes, tuple[int, str]] = {}  # the newest each client has on a node that stays up
    for node in herd.nodes.values():
        for entry in node.store:
            record = record_of(entry)
            floor[client_of(record)] = max(floor.get(client_of(record), (-1, "")), key(record))
    herd.heal()
    for name in NAMES:
        if name not in herd.nodes:
            herd.boot(name)
    herd.settle()
    herd.advance(FULL_RESEND + DEAD_AFTER + 3)  # deferred full resends are served by then
    view = herd.assert_converged()
    assert all(key(view[client]) >= k for client, k in floor.items())
    assert set(view.values()) <= {record for _, _, record in injected}  # nothing made up
    for index, origin, record in injected:
        if lost_at.get(origin, -1) < index:
            assert client_of(record) in view
            assert key(view[client_of(record)]) >= key(record)
    mark = len(herd.sent)
    herd.advance(FULL_RESEND)
    assert herd.syncs_sent(mark) == 0  # and goes quiet
    assert herd.records_sent(mark) == 0


# restarts


def test_restarted_node_gets_everything_back_without_client_resends() -> None:
    herd = steady(PAPER, seed=3)
    for i, name in enumerate(sorted(herd.nodes) * 40):
        herd.iamat(name, f"c{i % 150}", str(i))
    herd.settle()
    before = herd.assert_converged()
    assert len(before) == 150
    herd.crash("Parker")
    herd.advance(DEAD_AFTER + 2)  # the neighbors notice
    assert not herd.nodes["Alford"].inbound["Parker"].alive
    herd.iamat("Hamilton", "c0", "5000")  # Hamilton is alone while its only link is down
    herd.iamat("Alford", "c1", "5000")
    herd.advance(2)
    mark = len(herd.sent)
    parker = herd.boot("Parker")
    assert len(parker.store) == 0
    herd.settle()  # boot messages arrive at once, before the next heartbeat
    herd.advance(3)
    after = herd.assert_converged()
    assert len(after) == 150
    assert key(after[b"c0"]) == (5000 * NS, "Hamilton")
    assert key(after[b"c1"]) == (5000 * NS, "Alford")
    assert {c: v for c, v in after.items() if c not in (b"c0", b"c1")} == {
        c: v for c, v in before.items() if c not in (b"c0", b"c1")
    }
    # One snapshot each way per link of the restarted node, not a storm of them.
    assert herd.syncs_sent(mark) <= 2 * 3
    assert herd.records_sent(mark) <= 2 * 3 * 150 + 3 * 2 * 2


@pytest.mark.parametrize("wait", [0.0, DEAD_AFTER + 2], ids=["fast", "noticed"])
def test_restarted_node_gets_back_what_it_told_its_neighbors(wait: float) -> None:
    """Its own clients' fixes survive only in its neighbors, filed as having come from it."""
    herd = steady([("A", "B"), ("B", "C")], seed=7)
    for i in range(50):
        herd.iamat("B", f"b{i}", "10")
    herd.iamat("A", "a0", "10")
    herd.settle()
    herd.advance(HEARTBEAT)
    before = herd.assert_converged()
    herd.crash("B")
    herd.advance(wait)
    herd.boot("B")
    herd.settle()
    herd.advance(2)
    assert herd.assert_converged() == before
    assert len(before) == 51


def test_fast_restart_before_anyone_notices() -> None:
    herd = steady(LINE, seed=5)
    populate(herd, "N1", 300)
    herd.iamat("N4", "n4-only", "7")
    herd.settle()
    herd.crash("N2")
    n2 = herd.boot("N2")  # new epoch, empty store, same instant
    assert herd.nodes["N1"].inbound["N2"].alive
    herd.advance(3)
    assert len(n2.store) == 301
    herd.assert_converged()


def test_restart_of_every_node_in_turn_loses_nothing() -> None:
    herd = steady(PAPER, seed=11)
    populate(herd, "Hamilton", 50)
    for name in sorted(herd.nodes):
        herd.crash(name)
        herd.advance(1)
        herd.boot(name)
        herd.advance(2)
    assert len(herd.assert_converged()) == 50


def test_an_empty_restart_soon_after_an_empty_boot_is_served_at_once() -> None:
    """The resends at boot cost nothing (empty stores): they do not start the interval."""
    herd = started(LINE, seed=14)
    populate(herd, "N1", 100)
    herd.crash("N2")
    n2 = herd.boot("N2")
    herd.advance(HEARTBEAT)
    assert len(n2.store) == 100
    events = herd.nodes["N1"].take_events() + herd.nodes["N3"].take_events()
    assert not [e for e in events if isinstance(e, Deferred)]
    herd.assert_converged()
    mark = len(herd.sent)
    herd.advance(FULL_RESEND)
    assert herd.syncs_sent(mark) == 0


def test_a_second_expensive_restart_within_the_interval_waits_for_it() -> None:
    herd = started(LINE, seed=14)
    populate(herd, "N1", 100)
    herd.crash("N2")
    herd.boot("N2")
    herd.advance(HEARTBEAT)
    herd.crash("N2")
    n2 = herd.boot("N2")
    herd.advance(HEARTBEAT)
    assert len(n2.store) == 0  # N1 and N3 sent N2 everything a moment ago
    deferred = herd.nodes["N1"].take_events() + herd.nodes["N3"].take_events()
    assert {e.peer for e in deferred if isinstance(e, Deferred)} == {"N2"}
    herd.advance(FULL_RESEND)
    assert len(n2.store) == 100
    herd.assert_converged()


# restarts with a disk: the streams resume


@pytest.mark.parametrize("wait", [0.0, DEAD_AFTER + 2], ids=["fast", "noticed"])
def test_a_restart_with_its_disk_costs_what_was_missed_not_the_store(wait: float) -> None:
    herd = started(LINE, seed=21)
    populate(herd, "N1", 2000)
    populate(herd, "N4", 10, prefix="n4-")
    herd.advance(HEARTBEAT)
    herd.crash("N2")
    herd.advance(wait)
    for i in range(7):  # missed by N2 while it was down
        herd.iamat("N1", f"client{i * 11}", "3000")
    herd.iamat("N3", "n3-new", "3000")
    full = herd.full_resends()
    mark = len(herd.sent)
    for node in herd.nodes.values():
        node.take_events()
    n2 = herd.restart("N2")
    assert len(n2.store) == 2010
    herd.settle()
    herd.advance(3)
    view = herd.assert_converged()
    assert len(view) == 2011
    assert all(key(view[f"client{i * 11}".encode()]) == (3000 * NS, "N1") for i in range(7))
    assert herd.full_resends() == full
    to_n2 = sum(len(m.records) for _, d, m in herd.updates(mark) if d == "N2")
    from_n2 = sum(len(m.records) for s, _, m in herd.updates(mark) if s == "N2")
    # What it missed, which it forwards on; nothing of its old stream again. (Twice at
    # most: a Sync can cross the live flow that carries the same records.)
    assert 8 <= to_n2 <= 2 * 8
    assert 8 <= from_n2 <= 2 * 8
    catch_ups = [
        e for e in herd.nodes["N1"].events + herd.nodes["N3"].events if isinstance(e, CatchUp)
    ]
    assert catch_ups and all(e.start > 0 for e in catch_ups)


def test_a_restart_keeps_its_stream_so_neighbors_resume_in_it() -> None:
    """N1 holds N2's stream up to some seq of N2's old epoch; the new N2 vouches for it."""
    herd = started(LINE, seed=22)
    populate(herd, "N3", 500)
    herd.advance(HEARTBEAT)
    old = herd.nodes["N2"]
    position = herd.nodes["N1"].inbound["N2"]
    assert (position.epoch, position.seq) == (old.epoch, old.store.head)
    mark = len(herd.sent)
    new = herd.restart("N2")
    assert new.ancestors == {old.epoch: old.store.head}
    herd.settle()
    syncs = [(s, d, m) for s, d, m in herd.sent[mark:] if isinstance(m, Sync)]
    assert ("N1", "N2", Sync(herd.nodes["N1"].epoch, old.epoch, old.store.head)) in syncs
    assert (
        "N2",
        "N1",
        Sync(new.epoch, herd.nodes["N1"].epoch, herd.nodes["N1"].store.head),
    ) in syncs
    assert herd.records_sent(mark) == 0  # nobody missed anything
    herd.iamat("N2", "fresh", "9")
    herd.settle()
    assert herd.nodes["N1"].inbound["N2"].epoch == new.epoch  # the stream goes on in the new epoch
    herd.assert_converged()
    mark = len(herd.sent)
    herd.advance(10)
    assert herd.syncs_sent(mark) == 0  # and is taken as it is: no Sync again and again


def test_ancestors_chain_over_several_restarts() -> None:
    """N1, cut off, slept through two restarts of N2 and resumes in N2's first epoch."""
    herd = started(LINE, seed=23)
    populate(herd, "N2", 300)
    herd.advance(HEARTBEAT)
    first = herd.nodes["N2"].epoch
    herd.cut("N1", "N2")
    herd.restart("N2")
    herd.iamat("N2", "after-one", "5000")
    herd.advance(2)
    second = herd.nodes["N2"].epoch
    n2 = herd.restart("N2")
    assert set(n2.ancestors) == {first, second}
    herd.iamat("N2", "after-two", "5000")
    herd.advance(DEAD_AFTER + 2)
    full = herd.full_resends()
    mark = len(herd.sent)
    herd.heal()
    herd.advance(3)
    herd.assert_converged()
    assert herd.full_resends() == full
    to_n1 = sum(len(m.records) for s, d, m in herd.updates(mark) if (s, d) == ("N2", "N1"))
    assert to_n1 == 2


def test_a_restart_that_lost_its_tail_sends_the_whole_stream() -> None:
    """A neighbor's position past what the disk kept cannot be vouched for."""
    herd = steady(LINE, seed=24)
    populate(herd, "N2", 100)
    herd.advance(HEARTBEAT)
    old = herd.nodes["N2"]
    assert old.store.head == 100
    mark = len(herd.sent)
    n2 = herd.restart("N2", keep=60)
    assert len(n2.store) == 60 and n2.ancestors == {old.epoch: 60}
    herd.settle()
    herd.advance(3)
    assert len(herd.assert_converged()) == 100  # its lost tail came back from its neighbors
    served = [e for e in n2.events if isinstance(e, CatchUp)]
    assert {(e.peer, e.start) for e in served} == {("N1", 0), ("N3", 0)}
    assert n2.links["N1"].full_resends == n2.links["N3"].full_resends == 1
    to_n2 = sum(len(m.records) for _, d, m in herd.updates(mark) if d == "N2")
    assert to_n2 >= 40


# cuts


def test_a_position_moves_past_records_left_out_for_the_neighbor() -> None:
    """A's stream to B holds only what came from B: B's position in it still moves (at the
    next heartbeat), so a cut or a restart resumes there instead of from the start."""
    herd = steady([("A", "B")], seed=15)
    a, b = herd.nodes["A"], herd.nodes["B"]
    populate(herd, "B", 100)
    assert a.store.head == 100 and b.inbound["A"].seq < 100
    herd.advance(HEARTBEAT)
    assert (b.inbound["A"].epoch, b.inbound["A"].seq) == (a.epoch, 100)
    assert a.outbound["B"].tip == 100
    mark, full = len(herd.sent), herd.full_resends()
    herd.cut("A", "B")
    herd.advance(DEAD_AFTER + 2)
    herd.heal()
    herd.advance(3)
    assert Sync(b.epoch, a.epoch, 100) in [m for _, _, m in herd.sent[mark:]]
    assert herd.full_resends() == full
    assert herd.records_sent(mark) == 0


@pytest.mark.parametrize("silently", [False, True], ids=["refused", "dropped"])
@pytest.mark.parametrize("outage", [1.0, 10.0], ids=["short", "long"])
@pytest.mark.parametrize("steady", [True, False], ids=["steady", "right-after-flood"])
def test_cut_catch_up_costs_what_was_missed_not_the_store(
    silently: bool, outage: float, steady: bool
) -> None:
    herd = started(LINE, seed=1)
    populate(herd, "N1", 10_000)
    assert len(herd.assert_converged()) == 10_000
    if steady:
        herd.advance(HEARTBEAT)  # a heartbeat round before the cut
    herd.cut("N2", "N3", silently=silently)
    moved = [f"client{i * 997}".encode() for i in range(10)]
    for client in moved:
        herd.iamat("N1", client.decode(), "2000")
    herd.advance(outage)
    if outage > DEAD_AFTER:
        assert not herd.nodes["N3"].inbound["N2"].alive
        assert not herd.nodes["N2"].inbound["N3"].alive
    assert all(key(herd.view("N4")[c]) == (1000 * NS, "N1") for c in moved)
    mark = len(herd.sent)
    herd.heal()
    herd.advance(3)
    view = herd.assert_converged()
    assert all(key(view[c]) == (2000 * NS, "N1") for c in moved)
    catch_up = herd.records_sent(mark)
    assert 10 <= catch_up < 100, catch_up
    assert herd.syncs_sent(mark) <= 4


def test_cut_with_moves_on_both_sides() -> None:
    herd = started(LINE, seed=2)
    populate(herd, "N4", 2000)
    herd.advance(HEARTBEAT)
    herd.cut("N2", "N3")
    for i in range(20):
        herd.iamat("N1", f"client{i}", "3000")
        herd.iamat("N4", f"client{i + 1000}", "3000")
    herd.advance(DEAD_AFTER + 3)
    mark = len(herd.sent)
    herd.heal()
    herd.advance(3)
    view = herd.assert_converged()
    assert sum(key(v) == (3000 * NS, "N1") for v in view.values()) == 20
    assert sum(key(v) == (3000 * NS, "N4") for v in view.values()) == 20
    assert herd.records_sent(mark) < 200


def test_catch_up_never_replaces_newer_data_with_older() -> None:
    herd = steady(LINE, seed=4)
    herd.iamat("N1", "kiwi", "10")
    herd.settle()
    herd.cut("N2", "N3")
    herd.iamat("N1", "kiwi", "20")  # N1, N2 hold 20
    herd.iamat("N4", "kiwi", "30")  # N3, N4 hold 30
    herd.iamat("N4", "pear", "5")
    herd.iamat("N1", "pear", "6")
    herd.advance(DEAD_AFTER + 2)
    herd.heal()
    herd.advance(3)
    view = herd.assert_converged()
    assert key(view[b"kiwi"]) == (30 * NS, "N4")
    assert key(view[b"pear"]) == (6 * NS, "N1")


def test_restarted_node_with_stale_snapshot_does_not_win() -> None:
    """N4 restarts and is fed an old snapshot by N3 while N1's newer update is on its way."""
    herd = steady(LINE, seed=9)
    herd.iamat("N1", "kiwi", "10")
    herd.settle()
    herd.crash("N4")
    herd.iamat("N1", "kiwi", "11")
    herd.boot("N4")
    herd.advance(3)
    assert key(herd.assert_converged()[b"kiwi"]) == (11 * NS, "N1")


def test_one_way_silent_cut_retries_sync_at_most_once_per_retry_interval() -> None:
    herd = started(PAPER, seed=6)
    populate(herd, "Alford", 100)
    herd.cut("Parker", "Hamilton", silently=True, one_way=True)  # Hamilton hears nothing
    mark = len(herd.sent)
    herd.advance(30)
    syncs = [(s, d) for s, d, m in herd.sent[mark:] if isinstance(m, Sync)]
    assert len(syncs) <= 30 / SYNC_RETRY + 2
    assert set(syncs) <= {("Parker", "Hamilton")}  # the one who hears the "resync me" tip
    herd.iamat("Alford", "client1", "99999")
    herd.advance(1)
    herd.heal()
    herd.advance(FULL_RESEND + 3)  # Hamilton's Syncs ask for everything: served once a while
    assert key(herd.assert_converged()[b"client1"]) == (99999 * NS, "Alford")


def test_backpressure_loses_nothing() -> None:
    """Links that take one message at a time: flush reports blocked and resumes later."""
    herd = started(PAPER, seed=8, capacity=1)
    mark = len(herd.sent)
    n = 3 * CHUNK_BYTES // 70
    populate(herd, "Hamilton", n)
    herd.iamat("Bolden", "client0", "5000")
    herd.settle()
    view = herd.assert_converged()
    assert len(view) == n
    assert key(view[b"client0"]) == (5000 * NS, "Bolden")
    assert herd.syncs_sent(mark) == 0


# liveness


def test_dead_neighbor_is_detected_after_dead_after_of_silence() -> None:
    herd = started([("A", "B")])
    a = herd.nodes["A"]
    assert a.inbound["B"].alive
    assert NeighborUp("B", herd.nodes["B"].epoch) in a.events
    a.take_events()
    last = herd.now
    herd.crash("B")
    herd.advance(DEAD_AFTER)  # exactly dead_after of silence: not yet
    assert a.inbound["B"].alive and a.outbound["B"].cursor is not None
    assert a.events == []
    herd.advance(HEARTBEAT)
    assert not a.inbound["B"].alive
    assert a.outbound["B"].cursor is None
    assert a.take_events() == [NeighborDown("B", DEAD_AFTER)]
    assert herd.now - last > DEAD_AFTER
    herd.advance(10)
    assert a.take_events() == []  # reported once
    b = herd.boot("B")
    herd.advance(1)
    assert a.inbound["B"].alive
    assert NeighborUp("B", b.epoch) in a.events


def test_a_dead_neighbor_is_told_to_resync_by_heartbeat() -> None:
    sent, send = recorder()
    a = replicator()
    a.receive("B", Sync(0xB, 0, 0), 0.0, LATEST)
    a.flush(send)
    a.tick(1.0, send)
    assert sent[-1] == ("B", Heartbeat(0xA, 0))
    a.tick(5.0, send)
    assert sent[-1] == ("B", Heartbeat(0xA, -1))


def test_no_sync_storm_in_steady_state() -> None:
    herd = started(PAPER, seed=12)
    populate(herd, "Parker", 500)
    mark = len(herd.sent)
    rng = random.Random(12)
    names = sorted(herd.nodes)
    for second in range(60):
        for _ in range(5):
            herd.iamat(rng.choice(names), f"client{rng.randrange(600)}", str(2000 + second))
        herd.advance(1)
    herd.assert_converged()
    assert herd.syncs_sent(mark) == 0
    # One a second each way per link: a heartbeat, or the position past records left out.
    heartbeats = sum(
        isinstance(m, Heartbeat) or (isinstance(m, Updates) and not m.records)
        for _, _, m in herd.sent[mark:]
    )
    assert heartbeats == 60 * 2 * len(PAPER)


def test_no_sync_storm_during_a_long_outage() -> None:
    herd = started(PAPER, seed=13)
    populate(herd, "Alford", 100)
    herd.crash("Parker")
    mark = len(herd.sent)
    for second in range(60):
        herd.iamat("Alford", f"client{second}", str(5000 + second))
        herd.advance(1)
    assert herd.syncs_sent(mark) == 0
    herd.boot("Parker")
    herd.settle()
    herd.advance(3)
    assert herd.syncs_sent(mark) <= 2 * 3
    herd.assert_converged()


# a single node, message by message


def recorder() -> tuple[list[tuple[str, Message]], Send]:
    sent: list[tuple[str, Message]] = []

    def send(peer: str, message: Message) -> bool:
        sent.append((peer, message))
        return True

    return sent, send


class FullLink:
    """A link that takes `budget` more messages, then refuses (a neighbor's queue full)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.sent: list[Message] = []

    def __call__(self, peer: str, message: Message) -> bool:
        if self.budget == 0:
            return False
        self.budget -= 1
        self.sent.append(message)
        return True


def replicator(neighbors: tuple[str, ...] = ("B",), **options: float) -> Replicator:
    options.setdefault("cheap_rewind", 0)  # stores of a few records: every rewind counts
    return Replicator("A", 0xA, neighbors, Locations(), RULES, links_of(neighbors), **options)  # type: ignore[arg-type]


def record(client: str, time: str, origin: str = "B") -> bytes:
    return Record(origin, "+0.000000000", client, "+1+1", time).line


def own(node: Replicator, n: int, size: int = 0) -> None:
    """`n` records of clients of `node` (ids padded to `size` bytes)."""
    for i in range(n):
        client = f"c{i}".ljust(size, "x")
        node.store.put(client.encode(), NS, b"A", record(client, "1", "A"), FROM_CLIENT)


def updates(sent: list[tuple[str, Message]]) -> list[Updates]:
    return [m for _, m in sent if isinstance(m, Updates)]


def test_gap_in_a_stream_asks_for_a_sync_once_per_retry() -> None:
    sent, send = recorder()
    a = replicator(sync_retry=1.0)
    a.receive("B", Updates(0xB, 0, 5, (record("x", "1"),)), 0.0, LATEST)
    a.flush(send)
    assert [m for _, m in sent if isinstance(m, Sync)] == []
    a.receive("B", Updates(0xB, 8, 9, (record("y", "1"),)), 0.1, LATEST)  # 5..8 missed
    a.receive("B", Heartbeat(0xB, 9), 0.2, LATEST)  # crosses the Sync: no second one
    a.flush(send)
    assert [m for _, m in sent if isinstance(m, Sync)] == [Sync(0xA, 0xB, 5)]
    assert a.store.get(b"y") is not None  # newest-wins makes out-of-order records safe
    a.receive("B", Heartbeat(0xB, 9), 1.2, LATEST)
    a.flush(send)
    assert [m for _, m in sent if isinstance(m, Sync)] == [Sync(0xA, 0xB, 5)] * 2


def test_sync_resumes_the_stream_where_the_neighbor_is() -> None:
    sent, send = recorder()
    a = replicator(cheap_rewind=CHEAP_REWIND)
    own(a, 10)
    a.receive("B", Sync(0xB, 0xA, 7), 0.0, LATEST)
    a.flush(send)
    assert sent[0] == ("B", Sync(0xA, 0, 0))  # first contact: it asks for B's stream too
    del sent[0]
    assert sent == [
        ("B", Updates(0xA, 7, 10, tuple(record(f"c{i}", "1", "A") for i in (7, 8, 9)), True))
    ]
    assert a.take_events() == [NeighborUp("B", 0xB), CatchUp("B", 7, 10)]
    sent.clear()
    a.receive("B", Sync(0xB, 0xDEAD, 7), 0.0, LATEST)  # another epoch of ours: from the start
    a.flush(send)
    (m,) = updates(sent)
    assert (m.first, m.last, len(m.records), m.bulk) == (0, 10, 10, True)
    assert a.take_events() == [CatchUp("B", 0, 10)]
    assert (a.links["B"].syncs_served, a.links["B"].full_resends) == (2, 1)


def test_a_sync_past_our_head_gets_the_whole_stream() -> None:
    """A neighbor that claims more of our stream than we ever sent (forged, or our disk
    lost a tail it had been sent) is not trusted."""
    sent, send = recorder()
    a = replicator()
    own(a, 5)
    a.receive("B", Sync(0xB, 0xA, 6), 0.0, LATEST)
    a.flush(send)
    (m,) = updates(sent)
    assert (m.first, m.last, len(m.records)) == (0, 5, 5)


def restored(ancestors: dict[int, int]) -> Replicator:
    """A node restarted with 5 records, whose stream continues those of `ancestors`."""
    a = replicator()
    own(a, 5)
    a.restore({}, ancestors)
    return a


@pytest.mark.parametrize(
    ("known_epoch", "known_seq", "first", "count", "full"),
    [
        (0x77, 2, 0, 5, True),  # an epoch we never had: from the start
        (0, 0, 0, 5, True),  # it holds nothing of ours
        (0x99, 2, 2, 3, False),  # an ancestor's stream, within what it is good to
        (0x99, 3, 3, 2, False),
        (0x99, 4, 0, 5, True),  # past it: lost with the tail of our disk
        (0xA, 4, 4, 1, False),  # ours
        (0xA, 6, 0, 5, True),  # past our head
    ],
)
def test_a_sync_resumes_only_a_stream_we_can_vouch_for(
    known_epoch: int, known_seq: int, first: int, count: int, full: bool
) -> None:
    sent, send = recorder()
    a = restored({0x99: 3})
    a.receive("B", Sync(0xB, known_epoch, known_seq), 0.0, LATEST)
    a.flush(send)
    (m,) = updates(sent)
    assert (m.first, m.last, len(m.records)) == (first, 5, count)
    assert a.links["B"].full_resends == int(full)
    assert CatchUp("B", first, 5) in a.take_events()


def test_forged_syncs_within_the_interval_give_one_full_resend() -> None:
    sent, send = recorder()
    a = replicator(full_resend_interval=FULL_RESEND)
    own(a, 50)
    for i in range(20):  # each claims a new process: none is a mere duplicate
        a.receive("B", Sync(0xB + i, 0, 0), i * 0.1, LATEST)
        a.flush(send)
    full = [m for m in updates(sent) if m.first == 0]
    assert len(full) == 1 and len(full[0].records) == 50
    link = a.links["B"]
    assert (link.full_resends, link.syncs_deferred, link.syncs_served) == (1, 19, 1)
    events = a.take_events()
    deferred = [e for e in events if isinstance(e, Deferred)]
    assert len(deferred) == 1 and deferred[0].peer == "B"
    assert deferred[0].wait == pytest.approx(FULL_RESEND - 0.1)
    assert [e for e in events if isinstance(e, CatchUp)] == [CatchUp("B", 0, 50)]
    mark = len(sent)
    a.receive("B", Heartbeat(0xB, -1), 5.0, LATEST)
    a.tick(5.0, send)  # still within the interval: nothing served
    a.flush(send)
    assert updates(sent[mark:]) == [] and a.links["B"].full_resends == 1
    a.receive("B", Heartbeat(0xB, -1), FULL_RESEND - 1, LATEST)
    a.tick(FULL_RESEND, send)  # the interval since the first has passed: the deferred one
    a.flush(send)
    (again,) = updates(sent[mark:])
    assert (again.first, again.last, len(again.records)) == (0, 50, 50)
    assert a.links["B"].full_resends == 2
    assert a.take_events() == [CatchUp("B", 0, 50)]
    a.tick(FULL_RESEND + 1, send)
    a.flush(send)
    assert len(updates(sent[mark:])) == 1  # served once, not again at every tick


def test_a_deferred_full_resend_is_dropped_when_the_neighbor_goes_down() -> None:
    """It will Sync again when it is back; its old request is not served into the void."""
    sent, send = recorder()
    a = replicator(full_resend_interval=FULL_RESEND)
    own(a, 5)
    a.receive("B", Sync(0xB, 0, 0), 0.0, LATEST)
    a.receive("B", Sync(0xB1, 0, 0), 1.0, LATEST)
    assert a.outbound["B"].deferred is not None
    a.flush(send)
    a.take_events()
    mark = len(sent)
    for t in range(2, 30):
        a.tick(float(t), send)
        a.flush(send)
    assert not a.inbound["B"].alive
    assert updates(sent[mark:]) == []
    assert [e for e in a.take_events() if isinstance(e, CatchUp)] == []
    assert a.links["B"].full_resends == 1


def test_a_sync_asked_while_the_neighbor_was_down_is_sent_once_when_it_comes_up() -> None:
    """The retry interval runs from the send, not from the boot that asked for it: the
    neighbor's first heartbeat (tip -1: it has not had our Sync yet) crosses it."""
    sent: list[tuple[str, Message]] = []
    up = False

    def send(peer: str, message: Message) -> bool:
        if up:
            sent.append((peer, message))
        return up

    a = replicator()
    a.start(0.0, send)
    for t in range(1, 6):
        a.tick(float(t), send)
        a.flush(send)
    up = True
    a.tick(5.5, send)
    a.flush(send)  # the link is up: the Sync goes
    a.receive("B", Heartbeat(0xB, -1), 5.51, LATEST)
    a.receive("B", Sync(0xB, 0, 0), 5.52, LATEST)
    a.flush(send)
    assert [m for _, m in sent if isinstance(m, Sync)] == [Sync(0xA, 0, 0)]
    a.receive("B", Heartbeat(0xB, -1), 6.6, LATEST)  # still nothing after a retry interval
    a.flush(send)
    assert [m for _, m in sent if isinstance(m, Sync)] == [Sync(0xA, 0, 0)] * 2


def test_a_sync_that_crossed_our_answer_is_a_duplicate_not_a_request() -> None:
    _, send = recorder()
    a = replicator(full_resend_interval=FULL_RESEND)
    own(a, 50)
    a.receive("B", Sync(0xB, 0, 0), 0.0, LATEST)
    a.receive("B", Sync(0xB, 0, 0), 0.5, LATEST)
    a.flush(send)
    link = a.links["B"]
    assert (link.syncs_served, link.syncs_duplicate, link.syncs_deferred) == (1, 1, 0)
    assert not [e for e in a.take_events() if isinstance(e, Deferred)]


def test_a_cheap_resume_in_our_stream_is_never_deferred() -> None:
    _, send = recorder()
    a = replicator(cheap_rewind=CHEAP_REWIND)
    own(a, 10)
    a.receive("B", Sync(0xB, 0, 0), 0.0, LATEST)
    for i in range(5):
        a.receive("B", Sync(0xB, 0xA, 2 * i + 1), 0.1 + i / 10, LATEST)
    a.flush(send)
    assert a.links["B"].syncs_deferred == 0
    assert a.links["B"].syncs_served == 6


def test_catch_up_chunks_are_bulk_and_live_ones_are_not() -> None:
    sent, send = recorder()
    a = replicator()
    own(a, 3 * CHUNK_BYTES // 60)
    a.receive("B", Sync(0xB, 0, 0), 0.0, LATEST)
    a.flush(send)
    catch_up = updates(sent)
    assert len(catch_up) >= 2
    assert all(m.bulk for m in catch_up)
    assert catch_up[-1].last == a.store.head
    sent.clear()
    a.store.put(b"live", 2 * NS, b"A", record("live", "2", "A"), FROM_CLIENT)
    a.flush(send)
    (live,) = updates(sent)
    assert live.records == (record("live", "2", "A"),) and live.bulk is False


def test_a_catch_up_blocked_midway_stays_bulk_and_what_is_stored_meanwhile_is_live() -> None:
    """And leaves with the flush that drains the catch-up, not with some later one: the
    turn that stored it may be the last for a while."""
    a = replicator()
    own(a, 3 * CHUNK_BYTES // 60)
    head = a.store.head
    send = FullLink(2)  # the first-contact Sync and one chunk
    a.receive("B", Sync(0xB, 0, 0), 0.0, LATEST)
    assert not a.flush(send)
    a.store.put(b"live", 2 * NS, b"A", record("live", "2", "A"), FROM_CLIENT)
    send.budget = 100
    assert a.flush(send)  # the rest of the catch-up, then what was stored meanwhile
    sent = [m for m in send.sent if isinstance(m, Updates)]
    assert all(m.bulk for m in sent if m.last <= head)
    assert sent[-1].records[-1] == record("live", "2", "A")
    assert not sent[-1].bulk or sent[-1].last == head


def test_chunks_never_exceed_chunk_bytes_with_60_kb_records() -> None:
    sent, send = recorder()
    a = replicator()
    own(a, 30, size=60 * 1024)
    a.receive("B", Sync(0xB, 0, 0), 0.0, LATEST)
    a.flush(send)
    chunks = updates(sent)
    assert sum(len(m.records) for m in chunks) == 30
    for m in chunks:
        assert sum(len(r) + RECORD_OVERHEAD for r in m.records) <= CHUNK_BYTES
        assert len(wire.encode(m)) <= CHUNK_BYTES
    assert [(m.first, m.last) for m in chunks[1:]] == [
        (p.last, c.last) for p, c in pairwise(chunks)
    ]


def test_a_record_larger_than_a_chunk_still_goes_alone() -> None:
    sent, send = recorder()
    a = replicator()
    own(a, 3)
    a.store.put(b"huge", NS, b"A", record("h" * CHUNK_BYTES, "1", "A"), FROM_CLIENT)
    a.store.put(b"last", NS, b"A", record("last", "1", "A"), FROM_CLIENT)
    a.receive("B", Sync(0xB, 0, 0), 0.0, LATEST)
    a.flush(send)
    chunks = updates(sent)
    assert sum(len(m.records) for m in chunks) == 5
    for m in chunks:
        assert len(m.records) == 1 or chunk_bytes(m) <= CHUNK_BYTES


def test_sync_served_with_nothing_to_send_still_confirms() -> None:
    sent, send = recorder()
    a = replicator()
    a.receive("B", Sync(0xB, 0, 0), 0.0, LATEST)
    a.flush(send)
    assert ("B", Updates(0xA, 0, 0, ())) in sent


def test_stale_catch_up_records_are_counted_not_stored() -> None:
    a = replicator()
    a.receive("B", Updates(0xB, 0, 1, (record("x", "20"),)), 0.0, LATEST)
    stored = a.receive("B", Updates(0xB, 1, 3, (record("x", "10"), record("x", "15"))), 0.0, LATEST)
    assert stored == []
    assert a.store.get(b"x") == record("x", "20")
    assert (a.links["B"].applied, a.links["B"].stale, a.links["B"].records_in) == (1, 2, 3)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (Record("B", "+0.000000000", "x", "+91+0", "1").line, "coordinates out of range"),
        (b"B +0.0 x +1+1 1", "not a record"),
        (record("x", "1", origin="Zed"), "origin is no server of the topology"),
        (record("x" * (MAX_ID + 1), "1"), "client id too long"),
        (record("x", str(LATEST // NS + 1)), "time too far in the future"),
        ("B +0.000000000 x +1+1 1", "not a byte string"),
        (None, "not a byte string"),
        (("x", "+1+1", "1", "B", "+0.000000000"), "not a byte string"),
    ],
)
def test_an_invalid_record_is_dropped_with_its_reason(bad: object, reason: str) -> None:
    a = replicator()
    a.take_events()
    message = Updates(0xB, 0, 1, (bad, record("ok", "1")))  # type: ignore[arg-type]
    stored = a.receive("B", message, 0.0, LATEST)
    assert [record_of(e) for e in stored] == [record("ok", "1")]
    assert a.links["B"].invalid == 1
    assert len(a.store) == 1
    assert [e for e in a.take_events() if isinstance(e, Dropped)] == [Dropped("B", 1, reason)]


def test_dropped_counts_every_invalid_record_and_names_the_first_reason() -> None:
    a = replicator()
    bad = (None, 5, record("x", "1", origin="Zed"), b"", record("ok", "1"))
    stored = a.receive("B", Updates(0xB, 0, 1, bad), 0.0, LATEST)  # type: ignore[arg-type]
    assert len(stored) == 1
    assert Dropped("B", 4, "not a byte string") in a.take_events()
    assert a.links["B"].invalid == 4
    a.receive("B", Updates(0xB, 1, 2, (record("ok", "2"),)), 0.0, LATEST)
    assert not any(isinstance(e, Dropped) for e in a.take_events())


def test_the_time_bound_is_the_callers() -> None:
    a = replicator()
    late = record("x", "100")
    assert a.receive("B", Updates(0xB, 0, 1, (late,)), 0.0, 100 * NS - 1) == []
    assert [record_of(e) for e in a.receive("B", Updates(0xB, 1, 2, (late,)), 0.0, 100 * NS)] == [
        late
    ]


def test_a_sync_during_a_blocked_run_restarts_from_the_neighbors_position() -> None:
    """B lost the first chunk while the rest was held back: nothing may be skipped."""
    a = replicator()
    n = 3 * CHUNK_BYTES // 60
    own(a, n)
    send = FullLink(2)  # the first-contact Sync and one chunk, then the link is full
    sent = send.sent
    a.receive("B", Sync(0xB, 0, 0), 0.0, LATEST)
    assert not a.flush(send)
    assert [type(m) for m in sent] == [Sync, Updates]
    send.budget, mark = 100, len(sent)
    a.receive("B", Sync(0xB, 0xA, 0), 0.1 + FULL_RESEND, LATEST)  # the chunk never arrived
    assert a.flush(send)
    resent = [m for m in sent[mark:] if isinstance(m, Updates)]
    assert resent[0].first == 0
    assert [(m.first, m.last) for m in resent[1:]] == [
        (p.last, c.last) for p, c in pairwise(resent)
    ]
    assert {client_of(r) for m in resent for r in m.records} == {f"c{i}".encode() for i in range(n)}


def test_restore_and_cursors_round_trip() -> None:
    a = replicator(("B", "C"))
    assert a.cursors() == {}
    a.restore({"B": (0xB, 7), "Z": (1, 1)}, {0x9: 4})  # a neighbor no longer in the topology
    assert a.cursors() == {"B": (0xB, 7)}
    assert a.ancestors == {0x9: 4}
    sent, send = recorder()
    a.start(0.0, send)
    assert ("B", Sync(0xA, 0xB, 7)) in sent
    assert ("C", Sync(0xA, 0, 0)) in sent
    assert not a.cursors_changed
    a.receive("B", Updates(0xB, 7, 9, (record("x", "1"),)), 0.0, LATEST)
    assert a.cursors_changed
    assert a.cursors() == {"B": (0xB, 9)}
    assert not a.cursors_changed


def test_forget_asks_every_neighbor_for_everything() -> None:
    a = replicator(("B", "C"))
    a.restore({"B": (0xB, 7), "C": (0xC, 3)}, {})
    a.forget()
    assert a.cursors_changed
    assert a.cursors() == {}
    sent, send = recorder()
    a.start(0.0, send)
    assert [m for _, m in sent if isinstance(m, Sync)] == [Sync(0xA, 0, 0)] * 2
