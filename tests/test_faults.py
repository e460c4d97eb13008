"""Nothing is lost: real herds of `zherd serve` processes, killed, cut, corrupted, attacked.

Every test here starts its own servers on free loopback ports (`zherd.harness`),
stops exactly those (by pid), and waits on conditions, never on the clock:
a server "has" a location when WHATSAT there returns the AT line that the
server which heard the IAMAT replied with, byte for byte.

Load is bounded: each test says how many IAMATs it sends, and the background
feeder stops at its count or its deadline, whichever comes first.
"""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from relay import Relay

from zherd import keys
from zherd.disk import Disk
from zherd.harness import PAPER_LINKS, Client, Herd, topology_toml, wait_until
from zherd.locations import record_of
from zherd.record import client_of

BASE_TIME = 1_700_000_000  # client times: every test counts up from here
CATCH_UP = 60.0  # seconds a herd may take to converge on a busy 2-core machine
CHAIN = ("Alford", "Parker", "Hamilton")
CHAIN_LINKS = (("Alford", "Parker"), ("Hamilton", "Parker"))


# --- small helpers ------------------------------------------------------------------------


def coords(i: int) -> str:
    """A point near Los Angeles that differs for every i (so a move is visible)."""
    return f"{34.0 + (i % 9973) * 1e-5:+.6f}{-118.4 - (i % 7919) * 1e-5:+.6f}"


def iamat(client_id: str, i: int, t: float | None = None) -> str:
    t = BASE_TIME + i if t is None else t
    return f"IAMAT {client_id} {coords(i)} {t:.9f}"


def send_all(port: int, lines: Sequence[str], chunk: int = 200) -> list[str]:
    """Pipeline IAMATs in chunks; the AT replies, in order (each checked)."""
    replies: list[str] = []
    with Client(port, timeout=30) as c:
        for start in range(0, len(lines), chunk):
            part = lines[start : start + chunk]
            c.send("".join(line + "\n" for line in part))
            for line in part:
                reply = c.line().rstrip("\n")
                assert reply.startswith("AT "), (line, reply)
                assert reply.split()[3:] == line.split()[1:], (line, reply)
                replies.append(reply)
    return replies


def known(port: int, ids: Sequence[str], chunk: int = 200) -> dict[str, str | None]:
    """WHATSAT every id (pipelined): its stored AT line, or None for `? ...`."""
    out: dict[str, str | None] = {}
    with Client(port, timeout=30) as c:
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            c.send("".join(f"WHATSAT {cid} 10 1\n" for cid in part))
            for cid in part:
                first = c.line().rstrip("\n")
                if first.startswith("AT "):
                    c.read_until(b"\n\n")  # the places JSON
                    assert first.split()[3] == cid, (cid, first)
                    out[cid] = first
                else:
                    assert first == f"? WHATSAT {cid} 10 1", (cid, first)
                    out[cid] = None
    return out


def newest(replies: Iterable[str]) -> dict[str, str]:
    """Client id -> the AT line of its newest fix (client time; ties by origin name)."""
    best: dict[str, tuple[tuple[int, str], str]] = {}
    for reply in replies:
        _, origin, _, cid, _, t = reply.split()
        whole, _, frac = t.partition(".")
        key = (int(whole) * 10**9 + int(frac.ljust(9, "0")), origin)
        if cid not in best or key > best[cid][0]:
            best[cid] = (key, reply)
    return {cid: line for cid, (_, line) in best.items()}


def missing(port: int, expected: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """Clients whose stored AT line at `port` is not the expected one: id -> (want, got)."""
    got = known(port, list(expected))
    return {cid: (want, got[cid]) for cid, want in expected.items() if got[cid] != want}


def converge(herd: Herd, names: Iterable[str], expected: dict[str, str], what: str) -> None:
    """Wait until every named server holds exactly the expected line for every client."""
    for name in names:
        last: dict[str, tuple[str, str | None]] = {}

        def done(name: str = name) -> bool:
            nonlocal last
            last = missing(herd.port(name), expected)
            return not last

        try:
            wait_until(done, timeout=CATCH_UP, interval=0.25, what=f"{name}: {what}")
        except AssertionError:
            sample = dict(list(last.items())[:3])
            raise AssertionError(
                f"{name} still lacks {len(last)} of {len(expected)} ({what}); e.g. {sample}"
            ) from None


def log_count(herd: Herd, name: str, pattern: str, since: int = 0) -> int:
    return len(re.findall(pattern, herd.log(name)[since:]))


def status(herd: Herd, name: str, timeout: float = 30.0) -> dict[str, Any]:
    """A server's `/status` once it answers and has read its store back (healthy).

    The endpoint starts just after the server accepts clients, and a server reads
    its store after that: both are waited for, so what it says is about a whole store."""

    def healthy() -> dict[str, Any] | None:
        try:
            got = herd.status(name)
        except OSError:  # not listening yet (URLError is an OSError)
            return None
        return got if got["healthy"] else None

    return wait_until(healthy, timeout, interval=0.05, what=f"{name} to be healthy")


def restored(herd: Herd, name: str) -> int:
    """How many locations a server read back from its storage when it started."""
    return int(status(herd, name)["restored"])


def link_state(herd: Herd, name: str, peer: str, state: str, timeout: float = 30.0) -> None:
    """Wait until `name` says its neighbor `peer` is `state` ("up" or "down")."""
    wait_until(
        lambda: status(herd, name)["neighbors"][peer]["state"] == state,
        timeout,
        interval=0.05,
        what=f"{name} to see {peer} {state}",
    )


def records_in(herd: Herd, name: str, peer: str) -> int:
    """Records `name` has received from `peer` since it started (live and catch-up)."""
    return int(status(herd, name)["neighbors"][peer]["records_in"])


def held_on_disk(var: Path, name: str) -> set[str]:
    """The AT lines a server's storage files hold, as a fresh reader sees them."""
    return {"AT " + record_of(e).decode() for e in Disk(var, name).load().entries}


def on_disk(var: Path, name: str) -> int:
    """Clients in a server's storage files as a fresh reader sees them (what a SIGKILL keeps)."""
    return len({client_of(record_of(e)) for e in Disk(var, name).load().entries})


class Feeder(threading.Thread):
    """A client of its own sending `n` IAMATs over `ids` client ids, paced and bounded.

    Update i goes to client ids[i % len(ids)] at client time BASE_TIME + i, so a
    client's newest fix is the last one sent for it. Stops at `n` or `deadline`.
    """

    def __init__(self, port: int, ids: Sequence[str], n: int, rate: float, deadline: float):
        super().__init__(daemon=True)
        self.port, self.ids, self.n, self.rate, self.deadline = port, ids, n, rate, deadline
        self.replies: list[str] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        batch = 10
        try:
            with Client(self.port, timeout=30) as c:
                t0 = time.monotonic()
                for start in range(0, self.n, batch):
                    if self.stop.is_set() or time.monotonic() - t0 > self.deadline:
                        return
                    lines = [
                        iamat(self.ids[i % len(self.ids)], i)
                        for i in range(start, min(start + batch, self.n))
                    ]
                    c.send("".join(line + "\n" for line in lines))
                    for line in lines:
                        reply = c.line().rstrip("\n")
                        assert reply.startswith("AT ") and reply.endswith(line.split(None, 2)[2])
                        self.replies.append(reply)
                    pause = t0 + (start + batch) / self.rate - time.monotonic()
                    if pause > 0:
                        self.stop.wait(pause)  # pacing, not waiting for a condition
        except BaseException as e:  # reported by the test
            self.error = e


# --- SIGKILL the middle server under load -------------------------------------------------

KILL_UPDATES = 3000  # IAMATs sent to Alford in the background
KILL_CLIENTS = 1200  # over this many client ids, round-robin (each moves 2 or 3 times)
KILL_RATE = 300.0  # per second


@pytest.mark.parametrize("storage", [True, False], ids=["storage", "no-storage"])
def test_sigkill_parker_under_load_loses_nothing(tmp_path: Path, storage: bool) -> None:
    """Parker (Hamilton's only neighbor) dies by SIGKILL mid-stream and comes back.

    3000 IAMATs over 1200 clients go to Alford at ~300/s; Parker is killed after
    a third, stays down at least until Alford declares it dead and until two
    thirds were sent, then restarts (with its storage, or empty with
    --no-storage). Every IAMAT is acked, and Hamilton, Parker, Bolden and Powell
    end with every client's newest AT line, including the hundreds of clients
    whose last fix was sent while Parker was down (only catch-up carries those).
    """
    ids = [f"kill-{i:03d}" for i in range(KILL_CLIENTS)]
    with Herd(tmp_path) as herd:
        herd.start(storage=storage)
        feeder = Feeder(herd.port("Alford"), ids, KILL_UPDATES, KILL_RATE, deadline=90)
        feeder.start()
        try:
            wait_until(lambda: len(feeder.replies) >= KILL_UPDATES // 3 or feeder.error, 60)
            # the stream reaches Hamilton through Parker: the kill cuts a live flow
            wait_until(
                lambda: None not in known(herd.port("Hamilton"), ids[:100]).values(),
                CATCH_UP,
                interval=0.1,
                what="Hamilton to hear the first clients",
            )
            assert herd.kill("Parker", signal.SIGKILL) == -signal.SIGKILL
            killed_at = len(feeder.replies)
            link_state(herd, "Alford", "Parker", "down")
            wait_until(
                lambda: len(feeder.replies) >= 2 * KILL_UPDATES // 3 or feeder.error,
                60,
                what="the load to go on while Parker is down",
            )
            herd.start("Parker", storage=storage)
            restarted_at = len(feeder.replies)
            feeder.join(120)
        finally:
            feeder.stop.set()
            feeder.join(10)
        assert feeder.error is None, feeder.error
        assert len(feeder.replies) == KILL_UPDATES, "every IAMAT must be acked"
        assert restarted_at - killed_at > 0, "some updates must arrive while Parker is down"
        expected = newest(feeder.replies)
        assert len(expected) == KILL_CLIENTS
        last_sent = {ids[i % KILL_CLIENTS]: i for i in range(KILL_UPDATES)}
        only_while_down = [c for c, i in last_sent.items() if killed_at <= i < restarted_at]
        assert len(only_while_down) >= 50, "the test must exercise catch-up, not live flow"
        converge(herd, ["Hamilton", "Parker", "Bolden", "Powell"], expected, "after restart")
        if storage:
            assert restored(herd, "Parker") > 0, "Parker restarts from its own storage"
        else:
            parker = status(herd, "Parker")
            assert parker["restored"] == 0 and parker["storage"] is None


# --- the whole herd stops and starts --------------------------------------------------------

HERD_CLIENTS = 1000  # IAMATs, spread round-robin over the five servers


def _populate(herd: Herd, prefix: str, n: int, offset: int = 0) -> dict[str, str]:
    """n clients, client i heard by server i % 5; their AT lines once the herd has them all."""
    names = list(herd.ports)
    replies: list[str] = []
    for k, name in enumerate(names):
        lines = [iamat(f"{prefix}-{i:04d}", offset + i) for i in range(k, n, len(names))]
        replies += send_all(herd.port(name), lines)
    return newest(replies)


def test_whole_herd_sigterm_and_restart_keeps_everything(tmp_path: Path) -> None:
    """1000 IAMATs over the five servers, then SIGTERM to all while a client keeps sending
    new clients to Alford (up to 20000, fast): every server exits cleanly, restores its
    storage, and every IAMAT that was acked, even in the last batch, is back everywhere."""
    busy = [f"busy-{i:05d}" for i in range(20_000)]  # one fix each: acked = exact line
    with Herd(tmp_path) as herd:
        herd.start()
        expected = _populate(herd, "term", HERD_CLIENTS)
        converge(herd, herd.ports, expected, "before the stop")
        feeder = Feeder(herd.port("Alford"), busy, len(busy), rate=5000.0, deadline=30)
        feeder.start()
        wait_until(lambda: len(feeder.replies) >= 500 or feeder.error, 30, what="the load")
        statuses = herd.stop()  # SIGTERM to every server while Alford is busy
        feeder.join(30)
        assert statuses == dict.fromkeys(herd.ports, 0), statuses
        assert feeder.error is None or isinstance(feeder.error, OSError), feeder.error
        acked = newest(feeder.replies)
        assert len(acked) >= 500
        herd.start()
        for name in herd.ports:  # from its own storage, not from a neighbor's stream
            assert restored(herd, name) >= HERD_CLIENTS, name
        assert restored(herd, "Alford") >= HERD_CLIENTS + len(acked)
        converge(herd, herd.ports, expected | acked, "after the restart")


def test_whole_herd_sigkill_keeps_committed_batches(tmp_path: Path) -> None:
    """1000 IAMATs, committed on every server; SIGKILL all; restart: nothing committed is lost.

    Then 200 more IAMATs right before a second SIGKILL of everything: whatever
    survived anywhere must spread to every server, each client ending the same
    everywhere (all servers hold its newest surviving fix, or none holds it).
    """
    with Herd(tmp_path) as herd:
        herd.start()
        expected = _populate(herd, "kill", HERD_CLIENTS)
        converge(herd, herd.ports, expected, "before the kill")
        var = tmp_path / "var"
        for name in herd.ports:  # held everywhere; now also written everywhere
            wait_until(lambda n=name: on_disk(var, n) == HERD_CLIENTS, 30, what=f"{name} to write")
        for name in list(herd.ports):
            assert herd.kill(name, signal.SIGKILL) == -signal.SIGKILL
        herd.start()
        for name in herd.ports:
            assert restored(herd, name) == HERD_CLIENTS, name
        converge(herd, herd.ports, expected, "after the SIGKILL restart")

        late = [iamat(f"late-{i:03d}", HERD_CLIENTS + i) for i in range(200)]
        send_all(herd.port("Bolden"), late)
        for name in list(herd.ports):
            herd.kill(name, signal.SIGKILL)
        herd.start()
        late_ids = [f"late-{i:03d}" for i in range(200)]

        def agreed() -> bool:
            views = [known(herd.port(n), late_ids) for n in herd.ports]
            return all(v == views[0] for v in views)

        wait_until(agreed, CATCH_UP, interval=0.25, what="the herd to agree on the late clients")
        converge(herd, herd.ports, expected, "the first 1000 after the second kill")


# --- a cut link, both ends up ---------------------------------------------------------------


class SplitHerd(Herd):
    """A Herd whose servers may each read their own topology file (`configs`)."""

    configs: dict[str, Path]

    def start(self, *names: str, storage: bool = True, timeout: float = 30.0) -> None:
        shared = self.config
        try:
            for name in names or tuple(self.ports):
                self.config = self.configs.get(name, shared)
                super().start(name, storage=storage, timeout=timeout)
        finally:
            self.config = shared


CUT_KNOWN = 2000  # clients every server knows before the cut
CUT_MOVED = 20  # of them move at Alford during the cut
CUT_NEW = 5  # new clients heard by Hamilton during the cut


def test_cut_link_catch_up_costs_what_was_missed(tmp_path: Path) -> None:
    """Parker <-> Hamilton runs through two relays; cut both while every server stays up.

    2000 clients known everywhere; the cut lasts until both ends declare the
    other dead; meanwhile 20 clients move at Alford (Parker's side) and 5 new
    ones appear at Hamilton. After the link is restored each side gets what it
    missed, and Hamilton's status shows Parker's catch-up carried tens of records,
    not the 2000 it holds (the same for Parker's status the other way).
    """
    to_hamilton, to_parker = Relay(), Relay()  # bound first: the herd's ports avoid them
    herd = SplitHerd(tmp_path, servers=CHAIN, links=CHAIN_LINKS)
    try:
        herd.configs = {}
        for name, (peer, proxy) in {
            "Parker": ("Hamilton", to_hamilton),
            "Hamilton": ("Parker", to_parker),
        }.items():
            ports = dict(herd.ports)
            # this server reaches `peer` via the relay
            ports[peer] = (ports[peer][0], proxy.port, *ports[peer][2:])
            path = tmp_path / f"topology-{name}.toml"
            sections = {"logging": {"dir": "logs"}, "storage": {"dir": "var"}}
            path.write_text(topology_toml(ports, CHAIN_LINKS, sections))
            herd.configs[name] = path
        to_hamilton.start(herd.ports["Hamilton"][1])
        to_parker.start(herd.ports["Parker"][1])
        herd.start()

        ids = [f"cut-{i:04d}" for i in range(CUT_KNOWN)]
        before = newest(send_all(herd.port("Alford"), [iamat(c, i) for i, c in enumerate(ids)]))
        converge(herd, ["Hamilton"], before, "before the cut")
        assert to_hamilton.accepted and to_parker.accepted, "the link runs through the relays"
        marks = {"Hamilton": records_in(herd, "Hamilton", "Parker")}
        marks["Parker"] = records_in(herd, "Parker", "Hamilton")

        to_hamilton.cut()
        to_parker.cut()
        link_state(herd, "Hamilton", "Parker", "down")
        link_state(herd, "Parker", "Hamilton", "down")
        moved = newest(
            send_all(
                herd.port("Alford"),
                [iamat(ids[i * 97], CUT_KNOWN + i) for i in range(CUT_MOVED)],
            )
        )
        fresh = newest(
            send_all(
                herd.port("Hamilton"),
                [iamat(f"cut-new-{i}", CUT_KNOWN + CUT_MOVED + i) for i in range(CUT_NEW)],
            )
        )
        converge(herd, ["Parker"], moved, "the moves on Parker's side of the cut")
        stale = known(herd.port("Hamilton"), list(moved))
        assert stale == {c: before[c] for c in moved}, "the cut must really cut"
        assert set(known(herd.port("Parker"), list(fresh)).values()) == {None}

        to_hamilton.restore()
        to_parker.restore()
        converge(herd, ["Hamilton"], {**before, **moved, **fresh}, "after the cut")
        converge(herd, ["Parker", "Alford"], {**moved, **fresh}, "after the cut")

        # the catch-up carried about what was missed, not the whole store (both ways)
        to_h = records_in(herd, "Hamilton", "Parker") - marks["Hamilton"]
        to_p = records_in(herd, "Parker", "Hamilton") - marks["Parker"]
        assert CUT_MOVED <= to_h <= 10 * (CUT_MOVED + CUT_NEW), to_h
        assert CUT_NEW <= to_p <= 10 * (CUT_MOVED + CUT_NEW), to_p
        assert to_h < CUT_KNOWN // 10 and to_p < CUT_KNOWN // 10
    finally:
        herd.stop()
        to_hamilton.close()
        to_parker.close()


# --- newest wins across catch-up --------------------------------------------------------------


@pytest.mark.parametrize("storage", [True, False], ids=["storage", "no-storage"])
def test_catch_up_never_undoes_newer_data(tmp_path: Path, storage: bool) -> None:
    """While Parker is down, fixes of different ages land on both sides of it.

    x: newest at Hamilton, an older one later at Bolden. y: newest at Alford,
    an older one later at Hamilton. z: only at Hamilton. w: known before, older
    fixes arrive on both sides (must be ignored). After Parker restarts (with
    its now stale storage, or empty) every server holds the newest of each.
    """
    t = BASE_TIME + 10_000
    with Herd(tmp_path) as herd:
        herd.start(storage=storage)
        first = newest(
            send_all(
                herd.port("Alford"),
                [iamat(c, k, t) for k, c in enumerate(["x", "y", "w"])],
            )
        )
        converge(herd, herd.ports, first, "before the kill")
        if storage:
            wait_until(lambda: on_disk(tmp_path / "var", "Parker") == 3, 30)
        herd.kill("Parker", signal.SIGKILL)

        at_hamilton = send_all(
            herd.port("Hamilton"),
            [iamat("x", 10, t + 30), iamat("y", 11, t + 10), iamat("z", 12, t + 5)],
        )
        elsewhere = send_all(herd.port("Bolden"), [iamat("x", 20, t + 20)])
        elsewhere += send_all(herd.port("Alford"), [iamat("y", 21, t + 40)])
        older = send_all(herd.port("Hamilton"), [iamat("w", 30, t - 5)])
        older += send_all(herd.port("Powell"), [iamat("w", 31, t - 1)])
        expected = newest(list(first.values()) + at_hamilton + elsewhere + older)
        assert expected["x"] == at_hamilton[0] and expected["y"] == elsewhere[1]
        assert expected["w"] == first["w"]

        herd.start("Parker", storage=storage)
        converge(herd, herd.ports, expected, "after Parker's return")


# --- a broken or missing log file -------------------------------------------------------------

STORE_CLIENTS = 300  # clients known before Hamilton is stopped
STORE_DOWN = 50  # clients heard at Alford while it is down


def errors(log: str) -> list[str]:
    """The lines of a server log written at level ERROR."""
    return [line for line in log.splitlines() if re.match(r"\S+ \| \S+ \| ERROR +\| ", line)]


@pytest.mark.parametrize("damage", ["garbage", "deleted"])
def test_broken_storage_is_reported_and_rebuilt(tmp_path: Path, damage: str) -> None:
    """Hamilton stops; its log file is overwritten with garbage (or deleted); it starts,
    says so at ERROR naming the file, and gets all 350 clients back from Parker; the
    storage it then writes is whole again (a second restart needs no neighbor)."""
    with Herd(tmp_path, servers=CHAIN, links=CHAIN_LINKS) as herd:
        herd.start()
        ids = [f"disk-{i:03d}" for i in range(STORE_CLIENTS)]
        expected = newest(send_all(herd.port("Alford"), [iamat(c, i) for i, c in enumerate(ids)]))
        converge(herd, ["Hamilton"], expected, "before the stop")
        assert herd.kill("Hamilton", signal.SIGTERM) == 0
        var = tmp_path / "var"
        path = var / "Hamilton.log"
        assert on_disk(var, "Hamilton") == STORE_CLIENTS
        if damage == "garbage":
            path.write_bytes(random.Random(7).randbytes(64 * 1024))
        else:
            path.unlink()
        expected |= newest(
            send_all(
                herd.port("Alford"),
                [iamat(f"down-{i:02d}", STORE_CLIENTS + i) for i in range(STORE_DOWN)],
            )
        )
        mark = len(herd.log("Hamilton"))
        herd.start("Hamilton")
        assert restored(herd, "Hamilton") == 0  # waits for the storage to be read
        reported = errors(herd.log("Hamilton")[mark:])
        assert any(str(path) in line for line in reported), reported
        damage_said = "missing" if damage == "deleted" else "runs past the end|checksum|cut short"
        assert any(re.search(damage_said, line) for line in reported), reported
        converge(herd, ["Hamilton"], expected, "rebuilt from Parker")
        # and the storage is whole again: it survives a restart on its own
        wait_until(
            lambda: on_disk(var, "Hamilton") == len(expected), 30, what="the rebuilt storage"
        )
        assert herd.kill("Hamilton", signal.SIGTERM) == 0
        mark = len(herd.log("Hamilton"))
        herd.start("Hamilton")
        assert restored(herd, "Hamilton") == len(expected)
        assert errors(herd.log("Hamilton")[mark:]) == []


# --- hostile neighbors ------------------------------------------------------------------------

EPOCH = 0x1234567  # any positive epoch a forger might pick


def _record(
    client_id: str, origin: str = "Hamilton", coords: str = "+34.000000-118.000000"
) -> bytes:
    return f"{origin} +0.000000000 {client_id} {coords} {BASE_TIME}.5".encode()


def _updates(records: tuple[object, ...], first: int = 0, last: int = 1) -> bytes:
    return msgpack.packb((2, EPOCH, first, last, records, False))


def test_hostile_frames_are_dropped_logged_and_never_applied(tmp_path: Path) -> None:
    """Raw CURVE DEALERs on Parker's bus port: non-neighbors' keys, and a forged neighbor
    (Hamilton's key; Hamilton is not running) sending malformed msgpack, wrong types,
    wrong fields and invalid records. Parker stays up, applies nothing, counts and logs
    every drop, and a real neighbor's updates still flow (tests/test_curve.py: the rest)."""
    with Herd(tmp_path, links=PAPER_LINKS) as herd:
        herd.start("Parker", "Alford")
        bus = f"tcp://127.0.0.1:{herd.ports['Parker'][1]}"
        keys_dir = herd.root / "keys"
        ctx = zmq.Context()
        sockets: dict[bytes, zmq.Socket] = {}

        def dealer(holder: bytes) -> zmq.Socket:
            """A DEALER holding the key pair of server `holder` (any other: a new pair)."""
            if holder not in sockets:
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                name = holder.decode(errors="replace")
                try:
                    public, secret = keys.load_secret(keys_dir, name)
                except keys.KeyFileError:
                    public, secret = zmq.curve_keypair()
                s.curve_publickey, s.curve_secretkey = public, secret
                s.curve_serverkey = keys.load_public(keys_dir, "Parker")
                s.connect(bus)
                sockets[holder] = s
            return sockets[holder]

        def expect_logged(pattern: str, send: Callable[[], object]) -> None:
            before = log_count(herd, "Parker", pattern)
            send()
            wait_until(
                lambda: log_count(herd, "Parker", pattern) > before, 20, what=f"log {pattern!r}"
            )

        def foreign() -> int:
            return int(status(herd, "Parker")["counters"]["foreign_frames"])

        def from_hamilton(counter: str) -> Callable[[], int]:
            return lambda: int(status(herd, "Parker")["neighbors"]["Hamilton"][counter])

        def expect_dropped(
            counter: Callable[[], int], pattern: str, send: Callable[[], object], n: int = 1
        ) -> None:
            """`send` makes Parker count `n` more drops, and log them as a warning."""
            logged = rf"\| WARNING \| {pattern}"
            before, before_logged = counter(), log_count(herd, "Parker", logged)
            send()
            wait_until(lambda: counter() >= before + n, 20, what=f"drops of {pattern!r}")
            assert counter() == before + n, pattern
            wait_until(
                lambda: log_count(herd, "Parker", logged) > before_logged,
                20,
                what=f"log {pattern!r}",
            )

        good = _record("evil-a", origin="Powell")
        try:
            # not a neighbor: a valid Updates with a valid record, with Powell's key, a
            # key of no server, and Parker's own: ZAP refuses them, said once each
            for rid, why in (
                (b"Powell", "the key of Powell, not a neighbor"),
                (b"\xffintruder", "not the key of any neighbor"),
                (b"Parker", "the key of Parker, not a neighbor"),
            ):
                rec = _record(f"evil-{rid.hex()}", origin="Powell")
                expect_logged(
                    rf"bus: refused 127\.0\.0\.1 \S{{40}}: {re.escape(why)}",
                    lambda rid=rid, rec=rec: dealer(rid).send(_updates((rec,))),
                )
                sockets.pop(rid).close(linger=0)  # its retries would use up the log's quota
            # the forged neighbor: frames that are not messages
            forged = dealer(b"Hamilton")
            valid = _updates((good,))
            not_messages = [
                b"\xc1",  # never-used msgpack byte
                b"\x96\x02\x01",  # truncated array
                b"",  # empty frame
                valid + b"\x00",  # trailing data
                msgpack.packb((9, EPOCH, 0, 0)),  # unknown message type
                msgpack.packb({"type": 2, "records": [good]}),  # a map, not an array
                msgpack.packb((2, str(EPOCH), 0, 1, (good,), False)),  # epoch as text
                msgpack.packb((2, EPOCH, 0, 1.5, (good,), False)),  # float seq
                msgpack.packb((2, True, 0, 1, (good,), False)),  # bool epoch
                msgpack.packb((2, EPOCH, 5, 1, (good,), False)),  # first > last
                msgpack.packb((2, -EPOCH, 0, 1, (good,), False)),  # negative epoch
                msgpack.packb((2, EPOCH, 0, 1, b"records", False)),  # records not an array
                msgpack.packb((2, EPOCH, 0, 2**64 - 1, (good,), False)),  # beyond int64
                msgpack.packb((2, EPOCH, 0, 1, (good,))),  # Updates without its bulk flag
                msgpack.packb((2, EPOCH, 0, 1, (good,), 1)),  # bulk flag not a bool
                msgpack.packb((1, EPOCH, 0, "0")),  # Sync with a text seq
                msgpack.packb((3, EPOCH)),  # Heartbeat without its tip
                b"\x92\x03\xa2\xff\xfe",  # invalid UTF-8 in a string
            ]
            for payload in not_messages:
                expect_dropped(
                    from_hamilton("malformed"),
                    r"bus <- Hamilton: malformed message dropped",
                    lambda p=payload: forged.send(p),
                )
            # a multipart frame from a neighbor's id: dropped at the bus
            expect_dropped(
                foreign,
                r"bus: Hamilton: a 3-frame message: dropped",
                lambda: forged.send_multipart([_updates((good,)), b"extra"]),
            )
            # a well-formed Updates whose records are all invalid
            t = f"{BASE_TIME}.5"
            future = f"{int(time.time()) + 3 * 86400}"
            bad_records: tuple[object, ...] = (
                _record("evil-lat", coords="+500.000000-118.000000"),
                _record("evil-lon", coords="+34.000000-181.000000"),
                _record("evil-nan", coords="+nan-118.000000"),
                _record("evil-origin", origin="Nowhere"),
                _record("evil-" + "x" * 300),  # longer than max_id
                f"Hamilton +0.000000000 evil-time +34-118 {BASE_TIME}.1234567890".encode(),
                f"Hamilton +0.000000000 evil-future +34-118 {future}".encode(),
                f"Hamilton 0.5 evil-skew +34-118 {t}".encode(),
                f"Hamilton +0.000000000 evil space +34-118 {t}".encode(),
                f"Hamilton +0.000000000  +34-118 {t}".encode(),  # an empty client id
                b"Hamilton +0.000000000 evil-short +34-118",
                f"Hamilton +0.000000000 evil-long +34-118 {t} x".encode(),
                f"Hamilton +0.000000000 evil-text +34-118 {t}",  # text, not bytes
                None,
                42,
                {"client_id": "evil-map"},
                ["evil-list"],
            )
            expect_dropped(
                from_hamilton("invalid"),
                rf"bus <- Hamilton: {len(bad_records)} invalid records dropped",
                lambda: forged.send(_updates(bad_records)),
                n=len(bad_records),
            )

            herd_procs = herd.procs
            assert herd_procs["Parker"].poll() is None, "Parker must survive all of it"
            assert status(herd, "Parker")["neighbors"]["Hamilton"]["applied"] == 0
            evil = [f"evil-{rid.hex()}" for rid in (b"Powell", b"\xffintruder", b"Parker")]
            evil += ["evil-a", "evil-lat", "evil-lon", "evil-nan", "evil-origin", "evil-time"]
            evil += ["evil-future", "evil-skew", "evil-short", "evil-long", "evil-text"]
            evil += ["evil-map", "evil-list"]
            for name in ("Parker", "Alford"):
                assert set(known(herd.port(name), evil).values()) == {None}, name

            # a real neighbor still gets through, both ways
            fine = newest(send_all(herd.port("Alford"), [iamat("after-attack", 1)]))
            converge(herd, ["Parker"], fine, "a real update after the attack")
            fine2 = newest(send_all(herd.port("Parker"), [iamat("after-attack-2", 2)]))
            converge(herd, ["Alford"], fine2, "a real update after the attack")
            assert herd_procs["Parker"].poll() is None
        finally:
            for s in sockets.values():
                s.close(linger=0)
            ctx.term()
