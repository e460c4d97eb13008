"""Hostile clients against a real server with small `[limits]`.

Throughout, a well-behaved client on the same server must keep getting exact
answers and the server process must stay up (the fixtures also require it to
exit with status 0 at the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import socket
import time
import uuid
from pathlib import Path

import pytest

from zherd.harness import Client, Herd, wait_until

MAX_LINE = 256
IDLE = 2.0  # seconds
PENDING = 256 * 1024  # bytes of replies queued for one client before it is dropped
LIMITS = {
    "max_line": MAX_LINE,
    "idle_timeout": IDLE,
    "max_clients": 64,
    "max_pending_output": PENDING,
    "max_inflight": 8,
    "max_id": 64,
}
UCLA = "+34.068930-118.445127"
WAIT = 30.0  # seconds: generous bound for anything the server should do "soon"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def solo(module_herd) -> Herd:
    return module_herd(servers=("Solo",), links=(), sections={"limits": LIMITS})


def served(herd: Herd, server: str = "Solo") -> None:
    """A normal client gets exact answers, and the server is still the process we started."""
    assert herd.procs[server].poll() is None, f"{server} died"
    cid = uid("normal")
    when = f"{time.time_ns() // 1_000_000_000}.000000001"
    with Client(herd.port(server), timeout=WAIT) as c:
        at = c.ask(f"IAMAT {cid} {UCLA} {when}")
        pattern = rf"AT {server} [+-][0-9]+\.[0-9]{{9}} {cid} {re.escape(UCLA)} {when}\n"
        assert re.fullmatch(pattern, at), at
        reply = c.ask(f"WHATSAT {cid} 10 3")
        assert reply.startswith(at) and reply.endswith("}\n\n")
        assert len(json.loads(reply[len(at) :])["results"]) == 3
        assert c.ask("nonsense") == "? nonsense\n"


def closed_by_server(sock: socket.socket, timeout: float = WAIT) -> bytes:
    """Everything the server still sends until it hangs up (bounded in time and size)."""
    sock.settimeout(timeout)
    got = b""
    try:
        while len(got) < 64 << 20:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    return got


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


# -- long lines ------------------------------------------------------------------------------


def test_a_line_longer_than_max_line_is_cut_and_the_connection_goes_on(solo) -> None:
    cid = uid("long")
    with solo.client("Solo") as c:
        c.send(b"A" * MAX_LINE + b"\n")  # at the limit: echoed whole
        assert c.read_until(b"\n") == b"? " + b"A" * MAX_LINE + b"\n"
        c.send(b"B" * (MAX_LINE + 1) + b"\n")
        assert c.read_until(b"\n") == b"? " + b"B" * MAX_LINE + b"\n"
        # A cut line is never taken for a command, even when it starts like one.
        padded = f"IAMAT {cid} +1+1 1".encode() + b" " * MAX_LINE + b"x"
        c.send(padded + b"\n")
        assert c.read_until(b"\n") == b"? " + padded[:MAX_LINE] + b"\n"
        assert c.ask(f"WHATSAT {cid} 1 1") == f"? WHATSAT {cid} 1 1\n"
        # Long, in pieces, then a command in the same packet as its end.
        for _ in range(10):
            c.send(b"C" * 100)
        c.send(b"C" * 100 + f"\nIAMAT {cid} +1+1 1.5\n".encode())
        assert c.read_until(b"\n") == b"? " + b"C" * MAX_LINE + b"\n"
        assert c.line().startswith("AT Solo ")
        # Megabytes without a newline: one answer, then the next command as usual.
        for _ in range(80):
            c.send(b"D" * 65536)
        c.send(b"D\n")
        assert c.read_until(b"\n") == b"? " + b"D" * MAX_LINE + b"\n"
        reply = c.ask(f"IAMAT {cid} +2+2 2")
        assert reply.startswith("AT Solo ") and reply.endswith(f" {cid} +2+2 2\n")
    served(solo)


# -- bytes that are not text -----------------------------------------------------------------

BINARY = [
    b"IAMAT \xff\xfe +34-118 1400794645",  # invalid UTF-8 client id
    b"WHATSAT \xc3\x28 10 5",
    b"IAMAT caf\xc3 +34-118 1400794645",  # a truncated UTF-8 sequence
    b"\x00",
    b"\x00\x00IAMAT a +1+1 1",
    b"IAMAT a +34-118\x00 1",
    b"IAMAT a +34-118 1\x00",
    b"IAMAT a +3\x004-118 1",
    b"\x80\x81\x82\x83\xfe\xff",
    b"\xef\xbb\xbfIAMAT a +1+1 1",  # a byte-order mark glued to the command
    b"\x1b[2J\x1b[H",
    b"\x7fELF\x02\x01\x01",
]


def test_invalid_utf8_nul_bytes_and_garbage_are_echoed_exactly(solo) -> None:
    with solo.client("Solo") as c:
        for line in BINARY:
            c.send(line + b"\n")
            assert c.read_until(b"\n") == b"? " + line + b"\n", line
        # Seeded random garbage, some of it longer than max_line, pipelined in odd pieces.
        rng = random.Random(131)
        lines = [
            rng.randbytes(rng.randrange(0, 3 * MAX_LINE)).replace(b"\n", b"\x00") for _ in range(60)
        ]
        data = b"".join(line + b"\n" for line in lines)
        expected = b"".join(b"? " + line[:MAX_LINE] + b"\n" for line in lines)
        pos = 0
        while pos < len(data):
            step = rng.randrange(1, 700)
            c.send(data[pos : pos + step])
            pos += step
        got = b""
        while len(got) < len(expected):
            got += c.read_until(b"\n")
        assert got == expected
        reply = c.ask("IAMAT after-garbage +1+1 1")
        assert reply.startswith("AT Solo ")
    served(solo)
    # The log holds every byte, escaped, never decoded wrongly.
    wait_until(lambda: "<- IAMAT \\xff\\xfe +34-118 1400794645" in solo.log("Solo"), timeout=WAIT)


def test_a_nul_inside_a_client_id_is_echoed_exactly_either_way(solo) -> None:
    """docs/protocol.md: a client id is any non-whitespace string, so NUL may be part of one.

    Whether the server takes it or refuses it, the reply must echo the bytes exactly.
    """
    line = b"IAMAT nul\x00id +1+1 1400794645"
    with solo.client("Solo") as c:
        c.send(line + b"\n")
        reply = c.read_until(b"\n")
    assert reply == b"? " + line + b"\n" or re.fullmatch(
        rb"AT Solo \+[0-9]+\.[0-9]{9} nul\x00id \+1\+1 1400794645\n", reply
    ), reply
    served(solo)


# -- silent clients ------------------------------------------------------------------------------


def test_a_silent_client_is_dropped_after_the_idle_timeout(solo) -> None:
    silent = socket.create_connection(("127.0.0.1", solo.port("Solo")))
    partial = socket.create_connection(("127.0.0.1", solo.port("Solo")))
    with silent, partial:
        partial.sendall(b"IAMAT half-a-line +1+1")  # and then nothing, ever
        local = f"127.0.0.1:{silent.getsockname()[1]}"
        served(solo)  # meanwhile, others are served
        assert closed_by_server(silent) == b""
        assert closed_by_server(partial) == b""
    wait_until(lambda: f"client {local} dropped: idle" in solo.log("Solo"), timeout=WAIT)
    served(solo)


def test_a_client_that_keeps_talking_is_not_dropped(solo) -> None:
    cid = uid("chatty")
    with Client(solo.port("Solo"), timeout=WAIT) as c:
        deadline = time.monotonic() + 2 * IDLE
        for i in range(100):  # bounded; ends after two idle timeouts have passed
            reply = c.ask(f"IAMAT {cid} +1+1 {i}")
            assert reply.startswith("AT Solo ") and reply.endswith(f" {i}\n")
            if time.monotonic() > deadline:
                break
            time.sleep(IDLE / 5)
        else:
            pytest.fail("never got past two idle timeouts")


# -- a client that does not read -------------------------------------------------------------------


def test_a_client_that_never_reads_is_dropped_and_memory_stays_bounded(solo) -> None:
    pid = solo.procs["Solo"].pid
    served(solo)
    baseline = rss_kib(pid)
    cid = uid("hog")
    with solo.client("Solo") as c:
        at_line = c.ask(f"IAMAT {cid} {UCLA} 1").encode()
        assert at_line.startswith(b"AT Solo ")
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(("127.0.0.1", solo.port("Solo")))
    local = f"127.0.0.1:{hog.getsockname()[1]}"
    line = f"WHATSAT {cid} 50 20\n".encode()  # each reply is kilobytes
    request = line * 4096
    peak, attempted = baseline, 0
    with hog:
        hog.settimeout(1.0)
        deadline = time.monotonic() + 15
        # Pipeline until the server stops taking more (or was done with us), bounded.
        with contextlib.suppress(TimeoutError, ConnectionError):
            while attempted < (256 << 20) and time.monotonic() < deadline:
                attempted += len(request)
                hog.sendall(request)
                peak = max(peak, rss_kib(pid))
        served(solo)  # another client is served while the hog is stuck
        wait_until(
            lambda: f"client {local} dropped: not reading its replies" in solo.log("Solo"),
            timeout=WAIT,
            what="the hog to be dropped",
        )
        peak = max(peak, rss_kib(pid))
        leftover = closed_by_server(hog)
    # What it did get was in order; far from everything it asked for was answered.
    replies = leftover.split(b"\n\n")[:-1]
    assert all(r.startswith(at_line) for r in replies)
    assert len(replies) < attempted // len(line)
    # Buffering every reply it asked for would take gigabytes; allow generous slack.
    assert peak - baseline < 150 * 1024, f"RSS grew from {baseline} KiB to {peak} KiB"
    served(solo)


# -- too many clients ------------------------------------------------------------------------------


def test_clients_beyond_max_clients_are_refused_while_the_others_work(herd) -> None:
    cap = herd(servers=("Cap",), links=(), sections={"limits": {"max_clients": 4}})
    port = cap.port("Cap")
    clients = [Client(port, timeout=WAIT) for _ in range(4)]
    try:
        for i, c in enumerate(clients):
            assert c.ask(f"IAMAT cap-{i} +1+1 1").startswith("AT Cap ")
        for _ in range(3):
            extra = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            with extra:
                with contextlib.suppress(ConnectionError):
                    extra.sendall(b"IAMAT refused +1+1 1\n")
                assert closed_by_server(extra) == b""
        for i, c in enumerate(clients):  # the open ones are unaffected
            assert c.ask(f"WHATSAT cap-{i} 1 1").startswith("AT Cap ")
        clients.pop().close()

        def room() -> bool:
            try:
                with Client(port, timeout=WAIT) as c:
                    return c.ask("IAMAT room +1+1 1").startswith("AT Cap ")
            except ConnectionError:
                return False

        wait_until(room, timeout=WAIT, what="a slot to free up")
    finally:
        for c in clients:
            c.close()
    assert "refused: 4 clients open" in cap.log("Cap")
    served(cap, "Cap")


def test_the_server_survived_everything(solo) -> None:
    served(solo)


# -- a flood of partial lines ----------------------------------------------------------------------

FLOODERS = 300
FLOOD_LINE = 64 * 1024  # each sends this much of a line, never its newline, then closes


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def test_a_flood_of_partial_lines_costs_bounded_memory_and_others_are_answered(herd) -> None:
    """Hundreds of clients each send 64 KB of a line (bytes no log can print as they are)
    and close. Work per loop turn is bounded, so what the server holds at once is too:
    a partial line per client (at most max_line) plus a turn's replies and log record.
    (Without the turn budget this test saw the server go from 51 MB to a peak of 452 MB.)"""
    flood = herd(servers=("Flood",), links=(), storage=False)
    pid = flood.procs["Flood"].pid
    served(flood, "Flood")
    before, descriptors = vm_kib(pid, "VmRSS"), open_descriptors(pid)
    junk = random.Random(64).randbytes(FLOOD_LINE).replace(b"\n", b"\xff")
    port = flood.port("Flood")
    with Client(port, timeout=WAIT) as early:  # a client already connected
        flooders = [socket.create_connection(("127.0.0.1", port)) for _ in range(FLOODERS)]
        started = time.monotonic()
        for sock in flooders:
            sock.sendall(junk)
            sock.close()
        reply = early.ask("IAMAT early +1+1 1")
        early_s = time.monotonic() - started
    assert reply.startswith("AT Flood ")
    served(flood, "Flood")  # a client connecting after the flood: behind it to be accepted
    late_s = time.monotonic() - started
    wait_until(lambda: open_descriptors(pid) <= descriptors, timeout=WAIT, what="the flood")
    done_s = time.monotonic() - started
    peak = vm_kib(pid, "VmHWM")
    print(
        f"\n{FLOODERS} x {FLOOD_LINE} B partial lines: a client connected before answered "
        f"after {early_s:.2f} s, one connecting after after {late_s:.2f} s, all handled after "
        f"{done_s:.2f} s; RSS {before} KiB before, peak {peak} KiB"
    )
    # What the flood may cost: a partial line per client (at most max_line, 64 KiB) and a
    # few turns of work in flight: replies, and log records of bytes escaped four to a
    # byte (at most 1.5 x 256 Ki of input per turn). 64 MiB is generous; the allocator
    # does not give everything back at once.
    bound = FLOODERS * FLOOD_LINE // 1024 + 64 * 1024
    assert peak - before < bound, f"RSS {before} KiB, peak {peak} KiB: more than {bound} KiB"
    served(flood, "Flood")


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- time, ids and numbers, end to end ------------------------------------------------------------


def test_a_fix_from_more_than_max_future_ahead_is_refused_and_stored_nowhere(solo) -> None:
    cid = uid("future")
    now = time.time()
    ahead = f"{int(now) + 86_400 + 600}.0"  # a day and ten minutes ahead
    soon = f"{int(now) + 3_600}.0"  # an hour ahead: a phone with a wrong time zone
    with solo.client("Solo") as c:
        assert c.ask(f"IAMAT {cid} +1+1 {ahead}") == f"? IAMAT {cid} +1+1 {ahead}\n"
        assert c.ask(f"WHATSAT {cid} 1 1") == f"? WHATSAT {cid} 1 1\n"
        assert c.ask(f"IAMAT {cid} +1+1 {soon}").startswith("AT Solo -")
        assert c.ask(f"WHATSAT {cid} 1 1").startswith("AT Solo -")


def test_client_ids_up_to_max_id_bytes(solo) -> None:
    long_id, longest = "i" * 65, "é" * 32  # max_id = 64 bytes: 65 bytes, then 64 in 32 letters
    with solo.client("Solo") as c:
        assert c.ask(f"IAMAT {long_id} +1+1 1") == f"? IAMAT {long_id} +1+1 1\n"
        assert c.ask(f"WHATSAT {long_id} 1 1") == f"? WHATSAT {long_id} 1 1\n"
        assert c.ask(f"IAMAT {longest} +1+1 1").startswith("AT Solo ")
        assert c.ask(f"IAMAT {longest}é +1+1 1") == f"? IAMAT {longest}é +1+1 1\n"


def test_whatsat_numbers_with_leading_zeros_and_many_decimals(solo) -> None:
    cid = uid("seed")
    with solo.client("Solo") as c:
        at = c.ask(f"IAMAT {cid} {UCLA} 1")
        for radius, count in (("0.00000000001", "1"), ("00000000010", "1"), ("10", "00020")):
            reply = c.ask(f"WHATSAT {cid} {radius} {count}")
            assert reply.startswith(at) and reply.endswith("}\n\n"), (radius, count)
        assert c.ask(f"WHATSAT {cid} 50.000000000000000000001 1").startswith("? ")


# -- the limits in topology.toml ---------------------------------------------------------------


def test_max_future_and_max_id_are_read_from_limits() -> None:
    from zherd.config import ConfigError, parse

    servers = {"A": {"port": 13000, "bus_port": 13001}}
    limits = parse({"servers": servers}, Path("t.toml")).limits
    assert (limits.max_future, limits.max_id) == (86_400.0, 256)
    raw = {"servers": servers, "limits": {"max_future": 60, "max_id": 4096, "max_line": 4096}}
    limits = parse(raw, Path("t.toml")).limits
    assert (limits.max_future, limits.max_id) == (60, 4096)
    for bad, words in (
        ({"max_id": 65537}, "max_id must be at most max_line (65536)"),
        ({"max_id": 0}, "max_id must be greater than 0"),
        ({"max_future": -1}, "max_future must be a number >= 0"),
        ({"max_future": "1d"}, "max_future must be a number"),
    ):
        with pytest.raises(ConfigError, match=re.escape(words)):
            parse({"servers": servers, "limits": bad}, Path("t.toml"))


# -- the turn budget, on a real event loop with transports that only record -------------------


class RecordingTransport:
    """What ClientConnection needs of a transport: writes kept, reading on or paused."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.out = bytearray()
        self.reading = True
        self.closing = False

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", self.port)

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closing = True

    abort = close


class CountingBackend:
    name = "T"

    def __init__(self) -> None:
        self.iamats = 0

    def iamat(self, event, received_ns: int) -> bytes:
        self.iamats += 1
        return b"AT T +0.000000000 %s %s %s" % (event.client_id, event.coords, event.time)

    def lookup(self, client_id: bytes) -> None:
        return None

    def trace(self, peer: str, received, sent: bytes) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def replies_waiting(self) -> None:
        """As the node's turn does: replies leave once the turn is over (its commit)."""
        asyncio.get_running_loop().call_soon(self.gateway.send)


async def test_a_loop_turn_handles_a_bounded_amount_and_every_client_gets_through() -> None:
    from gateway.limits import Limits as GatewayLimits
    from gateway.server import SHARE, TURN_BUDGET, ClientConnection, Gateway
    from gateway.session import LINE_COST

    backend = CountingBackend()
    gateway = backend.gateway = Gateway(backend, GatewayLimits())  # type: ignore[arg-type]
    clients = []
    for port in range(100):
        conn = ClientConnection(gateway)
        transport = RecordingTransport(port)
        conn.connection_made(transport)  # type: ignore[arg-type]
        clients.append((conn, transport))
    lines = [f"IAMAT c{i} +1+1 {i}\n".encode() for i in range(2000)]
    read = b"".join(lines)  # ~40 KB: each client pipelines 2,000 IAMATs in one read
    for conn, transport in clients:  # one loop turn: every client's read arrives
        assert transport.reading
        conn.data_received(read)
    cost = len(lines[0]) + LINE_COST  # what an IAMAT costs, give or take a digit
    assert backend.iamats * cost <= TURN_BUDGET + SHARE + len(read) + len(lines) * LINE_COST
    assert backend.iamats < len(clients) * len(lines) // 10  # most of it waits
    assert all(not t.reading for c, t in clients if t.out.count(b"\n") < len(lines))
    turns = 0
    while backend.iamats < len(clients) * len(lines):
        turns += 1
        assert turns < 10_000, "a client never got through"
        before = backend.iamats
        await asyncio.sleep(0)  # one loop turn: waiting clients go on
        handled = (backend.iamats - before) * cost
        assert handled <= 3 * TURN_BUDGET // 2 + SHARE + len(read) + len(lines) * LINE_COST
    await asyncio.sleep(0)  # the last turn ends: its replies leave (after its commit)
    expected = b"".join(b"AT T +0.000000000 " + line[6:] for line in lines)
    for _, transport in clients:
        assert bytes(transport.out) == expected
        assert transport.reading
    print(f"\n{len(clients)} x {len(lines)} pipelined IAMATs: {turns} loop turns")
