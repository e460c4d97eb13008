"""Flooding and Clone-style catch-up, driven purely in memory.

A `Herd` joins Replicators with per-direction FIFO queues (ZeroMQ keeps order per
connection, nothing more), a seeded scheduler that picks which link delivers next,
and a simulated clock. Every message goes through wire.encode/decode, as on the bus.
A link can refuse sends (a DEALER with IMMEDIATE and no peer: "would block") or
swallow them silently (in flight when the connection broke).
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

from gateway.protocol import NS, IAmAt, Location, locate, location_from_wire, parse_line
from zherd import wire
from zherd.replication import CHUNK, Replicator, Send
from zherd.store import Store
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

Direction = tuple[str, str]


class Herd:
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
            Store(),
            heartbeat=HEARTBEAT,
            dead_after=DEAD_AFTER,
            sync_retry=SYNC_RETRY,
        )
        self.nodes[name] = node
        node.start(self.now, self.sender(name))
        return node

    def crash(self, name: str) -> None:
        """The process dies: its memory and everything in flight to or from it are lost."""
        del self.nodes[name]
        for (a, b), queue in self.queues.items():
            if name in (a, b):
                queue.clear()

    def iamat(
        self, name: str, client: str, time: str, coords: str = "+34.068930-118.445127"
    ) -> Location:
        """A client's IAMAT heard by `name`, recorded as the node would."""
        event = parse_line(f"IAMAT {client} {coords} {time}".encode())
        assert isinstance(event, IAmAt)
        location = locate(event, name, event.time_ns + 1000)
        self.nodes[name].store.put(location)
        return location

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
        node.receive(src, message, self.now)
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
        """Let time pass in heartbeat steps: every node ticks, then the herd settles."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + HEARTBEAT)
            names = list(self.nodes)
            self.rng.shuffle(names)
            for name in names:
                self.nodes[name].tick(self.now, self.sender(name))
            self.settle()

    # observing

    def view(self, name: str) -> dict[str, tuple[str, ...]]:
        return {e.location.client_id: tuple(e.location[:5]) for e in self.nodes[name].store}

    def assert_converged(self) -> dict[str, tuple[str, ...]]:
        views = {name: self.view(name) for name in self.nodes}
        first = next(iter(views.values()))
        for name, view in views.items():
            assert view == first, f"{name} differs"
        return first

    def records_sent(self, since: int = 0) -> int:
        return sum(len(m.records) for _, _, m in self.sent[since:] if isinstance(m, Updates))

    def syncs_sent(self, since: int = 0) -> int:
        return sum(isinstance(m, Sync) for _, _, m in self.sent[since:])


def key(location: Location | tuple[str, ...]) -> tuple[int, str]:
    loc = location if isinstance(location, Location) else location_from_wire(location)
    assert loc is not None
    return loc.time_ns, loc.origin


def started(
    links: Iterable[tuple[str, str]], *, seed: int = 0, capacity: int | None = None
) -> Herd:
    """A herd one heartbeat after boot: every neighbor has Synced every other."""
    herd = Herd(links, seed=seed, capacity=capacity)
    herd.advance(HEARTBEAT)
    return herd


def populate(herd: Herd, name: str, n: int, time: str = "1000") -> None:
    for i in range(n):
        herd.iamat(name, f"client{i}", time, coords=f"+{i % 90}.5-{i % 180}.25")
    herd.settle()


# flooding


@pytest.mark.parametrize(("links", "at"), [(PAPER, "Hamilton"), (PAPER, "Bolden"), (LINE, "N1")])
def test_an_update_at_one_end_reaches_every_node(links: list[tuple[str, str]], at: str) -> None:
    herd = started(links)
    location = herd.iamat(at, "kiwi.cs.ucla.edu", "1400794645.392014450")
    herd.settle()
    for name, node in herd.nodes.items():
        assert node.store.get("kiwi.cs.ucla.edu") == location, name
    assert herd.syncs_sent() > 0  # the boot Syncs; none since, see test_no_sync_storm


def test_flood_ends_and_never_echoes_back() -> None:
    herd = started(LINE)
    mark = len(herd.sent)
    herd.iamat("N1", "kiwi", "10")
    herd.settle()
    updates = [(s, d, len(m.records)) for s, d, m in herd.sent[mark:] if isinstance(m, Updates)]
    assert sorted(updates) == [("N1", "N2", 1), ("N2", "N3", 1), ("N3", "N4", 1)]


def test_live_updates_are_coalesced_per_flush() -> None:
    herd = started(LINE)
    mark = len(herd.sent)
    for i in range(10):
        herd.iamat("N1", f"c{i}", "10")
    herd.settle()
    assert herd.records_sent(mark) == 30
    assert sum(isinstance(m, Updates) for _, _, m in herd.sent[mark:]) == 3


def test_a_big_store_goes_out_in_chunks() -> None:
    herd = started(LINE)
    mark = len(herd.sent)
    populate(herd, "N1", CHUNK * 2 + 5)
    assert len(herd.assert_converged()) == CHUNK * 2 + 5
    sizes = [len(m.records) for s, _, m in herd.sent[mark:] if isinstance(m, Updates) and s == "N1"]
    assert sum(sizes) == CHUNK * 2 + 5
    assert max(sizes) <= CHUNK


def expected_winners(ops: list[tuple[str, str, int, int]]) -> dict[str, tuple[int, str, int]]:
    """Per client: the max (time, origin); among equal keys the first one its origin heard."""
    best: dict[str, tuple[int, str, int]] = {}
    for index, (node, client, t, _) in enumerate(ops):
        candidate = (t * NS, node, index)
        if client not in best or candidate[:2] > best[client][:2]:
            best[client] = candidate
    return best


NAMES = ["Alford", "Bolden", "Hamilton", "Parker", "Powell"]
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
        assert view[client][1] == f"+{index}-{index}"  # the first IAMAT with that key


CHAOS = st.one_of(
    st.tuples(st.just("iamat"), st.sampled_from(NAMES), st.sampled_from("abcd"), st.integers(0, 9)),
    st.tuples(st.just("step"), st.integers(1, 10)),
    st.tuples(st.just("cut"), st.sampled_from(PAPER), st.booleans(), st.booleans()),
    st.tuples(st.just("heal")),
    st.tuples(st.just("crash"), st.sampled_from(NAMES)),
    st.tuples(st.just("boot"), st.sampled_from(NAMES)),
    st.tuples(st.just("advance"), st.integers(1, 5)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(CHAOS, max_size=30), seed=st.integers(0, 2**32))
def test_herd_converges_after_any_cuts_and_restarts(ops: list[tuple], seed: int) -> None:
    """Whatever happened, once every link and node is back all stores agree, and no update
    whose origin stayed up is lost or beaten by an older one."""
    herd = started(PAPER, seed=seed)
    injected: list[tuple[int, str, Location]] = []  # (op index, origin, location)
    crashed_at: dict[str, int] = {}
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
            crashed_at[args[0]] = index
        elif kind == "boot" and args[0] not in herd.nodes:
            herd.boot(args[0])
        elif kind == "advance":
            herd.advance(args[0])
    floor: dict[str, tuple[int, str]] = {}  # the newest each client has on a node that stays up
    for node in herd.nodes.values():
        for entry in node.store:
            client = entry.location.client_id
            floor[client] = max(floor.get(client, (-1, "")), key(entry.location))
    herd.heal()
    for name in NAMES:
        if name not in herd.nodes:
            herd.boot(name)
    herd.settle()
    herd.advance(DEAD_AFTER + 3)
    view = herd.assert_converged()
    assert all(key(view[client]) >= k for client, k in floor.items())
    sent = {tuple(loc[:5]) for _, _, loc in injected}
    assert set(view.values()) <= sent  # nothing made up
    for index, origin, loc in injected:
        if crashed_at.get(origin, -1) < index:
            assert loc.client_id in view
            assert key(view[loc.client_id]) >= key(loc)


# restarts


def test_restarted_node_gets_everything_back_without_client_resends() -> None:
    herd = started(PAPER, seed=3)
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
    assert key(after["c0"]) == (5000 * NS, "Hamilton")
    assert key(after["c1"]) == (5000 * NS, "Alford")
    assert {c: v for c, v in after.items() if c not in ("c0", "c1")} == {
        c: v for c, v in before.items() if c not in ("c0", "c1")
    }
    # One snapshot each way per link of the restarted node, not a storm of them.
    assert herd.syncs_sent(mark) <= 2 * 3
    assert herd.records_sent(mark) <= 2 * 3 * 150 + 3 * 2 * 2


@pytest.mark.parametrize("wait", [0.0, DEAD_AFTER + 2], ids=["fast", "noticed"])
def test_restarted_node_gets_back_what_it_told_its_neighbors(wait: float) -> None:
    """Its own clients' fixes survive only in its neighbors, filed as having come from it."""
    herd = started([("A", "B"), ("B", "C")], seed=7)
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
    herd = started(LINE, seed=5)
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
    herd = started(PAPER, seed=11)
    populate(herd, "Hamilton", 50)
    for name in sorted(herd.nodes):
        herd.crash(name)
        herd.advance(1)
        herd.boot(name)
        herd.advance(2)
    assert len(herd.assert_converged()) == 50


# cuts


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
    moved = [f"client{i * 997}" for i in range(10)]
    for client in moved:
        herd.iamat("N1", client, "2000")
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
    herd = started(LINE, seed=4)
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
    assert key(view["kiwi"]) == (30 * NS, "N4")
    assert key(view["pear"]) == (6 * NS, "N1")


def test_restarted_node_with_stale_snapshot_does_not_win() -> None:
    """N4 restarts and is fed an old snapshot by N3 while N1's newer update is on its way."""
    herd = started(LINE, seed=9)
    herd.iamat("N1", "kiwi", "10")
    herd.settle()
    herd.crash("N4")
    herd.iamat("N1", "kiwi", "11")
    herd.boot("N4")
    herd.advance(3)
    assert key(herd.assert_converged()["kiwi"]) == (11 * NS, "N1")


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
    herd.advance(3)
    assert key(herd.assert_converged()["client1"]) == (99999 * NS, "Alford")


def test_backpressure_loses_nothing() -> None:
    """Links that take one message at a time: flush reports blocked and resumes later."""
    herd = started(PAPER, seed=8, capacity=1)
    mark = len(herd.sent)
    populate(herd, "Hamilton", CHUNK * 3)
    herd.iamat("Bolden", "client0", "5000")
    herd.settle()
    view = herd.assert_converged()
    assert len(view) == CHUNK * 3
    assert key(view["client0"]) == (5000 * NS, "Bolden")
    assert herd.syncs_sent(mark) == 0


# liveness


def test_dead_neighbor_is_detected_after_dead_after_of_silence() -> None:
    herd = started([("A", "B")])
    a = herd.nodes["A"]
    assert a.inbound["B"].alive
    assert any("neighbor B connected" in e for e in a.events)
    a.events.clear()
    last = herd.now
    herd.crash("B")
    herd.advance(DEAD_AFTER)  # exactly dead_after of silence: not yet
    assert a.inbound["B"].alive and a.outbound["B"].cursor is not None
    assert a.events == []
    herd.advance(HEARTBEAT)
    assert not a.inbound["B"].alive
    assert a.outbound["B"].cursor is None
    assert a.events == [f"neighbor B disconnected (silent {DEAD_AFTER:g} s)"]
    assert herd.now - last > DEAD_AFTER
    herd.advance(10)
    assert len(a.events) == 1  # reported once
    herd.boot("B")
    herd.advance(1)
    assert a.inbound["B"].alive
    assert any("neighbor B connected" in e for e in a.events[1:])


def test_a_dead_neighbor_is_told_to_resync_by_heartbeat() -> None:
    sent, send = recorder()
    a = Replicator("A", 0xA, ("B",), Store(), heartbeat=1, dead_after=3)
    a.receive("B", Sync(0xB, 0, 0), 0.0)
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
    heartbeats = sum(isinstance(m, Heartbeat) for _, _, m in herd.sent[mark:])
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


def record(client: str, time: str, origin: str = "B") -> tuple[str, ...]:
    return (client, "+1+1", time, origin, "+0.000000000")


def test_gap_in_a_stream_asks_for_a_sync_once_per_retry() -> None:
    sent, send = recorder()
    a = Replicator("A", 0xA, ("B",), Store(), sync_retry=1.0)
    a.receive("B", Updates(0xB, 0, 5, (record("x", "1"),)), 0.0)
    a.flush(send)
    assert [m for _, m in sent if isinstance(m, Sync)] == []
    a.receive("B", Updates(0xB, 8, 9, (record("y", "1"),)), 0.1)  # 5..8 missed
    a.receive("B", Heartbeat(0xB, 9), 0.2)  # crosses the Sync: no second one
    a.flush(send)
    assert [m for _, m in sent if isinstance(m, Sync)] == [Sync(0xA, 0xB, 5)]
    assert a.store.get("y") is not None  # newest-wins makes out-of-order records safe
    a.receive("B", Heartbeat(0xB, 9), 1.2)
    a.flush(send)
    assert [m for _, m in sent if isinstance(m, Sync)] == [Sync(0xA, 0xB, 5)] * 2


def test_sync_resumes_the_stream_where_the_neighbor_is() -> None:
    sent, send = recorder()
    a = Replicator("A", 0xA, ("B",), Store())
    for i in range(10):
        location = location_from_wire(record(f"c{i}", "1", origin="A"))
        assert location is not None
        a.store.put(location)
    a.receive("B", Sync(0xB, 0xA, 7), 0.0)
    a.flush(send)
    assert sent[0] == ("B", Sync(0xA, 0, 0))  # first contact: it asks for B's stream too
    del sent[0]
    assert sent == [("B", Updates(0xA, 7, 10, tuple(record(f"c{i}", "1", "A") for i in (7, 8, 9))))]
    sent.clear()
    a.receive("B", Sync(0xB, 0xDEAD, 7), 0.0)  # another epoch of ours: from the start
    a.flush(send)
    assert sent[0][1].first == 0 and sent[0][1].last == 10  # type: ignore[union-attr]
    assert len(sent[0][1].records) == 10  # type: ignore[union-attr]


def test_sync_served_with_nothing_to_send_still_confirms() -> None:
    sent, send = recorder()
    a = Replicator("A", 0xA, ("B",), Store())
    a.receive("B", Sync(0xB, 0, 0), 0.0)
    a.flush(send)
    assert ("B", Updates(0xA, 0, 0, ())) in sent


def test_stale_catch_up_records_are_counted_not_stored() -> None:
    a = Replicator("A", 0xA, ("B",), Store())
    a.receive("B", Updates(0xB, 0, 1, (record("x", "20"),)), 0.0)
    stored = a.receive("B", Updates(0xB, 1, 3, (record("x", "10"), record("x", "15"))), 0.0)
    assert stored == []
    assert a.store.get("x").time == "20"  # type: ignore[union-attr]
    assert (a.counters.applied, a.counters.stale) == (1, 2)


def test_invalid_records_are_dropped_and_counted() -> None:
    a = Replicator("A", 0xA, ("B",), Store())
    bad = (("x", "+91+0", "1", "B", "+0.000000000"), ("x y", "+1+1", "1", "B", "+0.0"), None, 5)
    stored = a.receive("B", Updates(0xB, 0, 1, (*bad, record("ok", "1"))), 0.0)
    assert [e.location.client_id for e in stored] == ["ok"]
    assert a.counters.invalid == 4
    assert len(a.store) == 1


def test_a_sync_during_a_blocked_run_restarts_from_the_neighbors_position() -> None:
    """B lost the first chunk while the rest was held back: nothing may be skipped."""
    a = Replicator("A", 0xA, ("B",), Store())
    for i in range(CHUNK * 3):
        location = location_from_wire(record(f"c{i}", "1", origin="A"))
        assert location is not None
        a.store.put(location)
    budget = 2  # the first-contact Sync and one chunk, then the link is full
    sent: list[Message] = []

    def send(peer: str, message: Message) -> bool:
        nonlocal budget
        if budget == 0:
            return False
        budget -= 1
        sent.append(message)
        return True

    a.receive("B", Sync(0xB, 0, 0), 0.0)
    assert not a.flush(send)
    assert [type(m) for m in sent] == [Sync, Updates]
    budget, mark = 100, len(sent)
    a.receive("B", Sync(0xB, 0xA, 0), 0.1)  # the chunk never arrived
    assert a.flush(send)
    resent = [m for m in sent[mark:] if isinstance(m, Updates)]
    assert resent[0].first == 0
    assert [(m.first, m.last) for m in resent[1:]] == [
        (p.last, n.last) for p, n in pairwise(resent)
    ]
    assert {r[0] for m in resent for r in m.records} == {f"c{i}" for i in range(CHUNK * 3)}
