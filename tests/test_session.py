"""The client session without a socket: events in, actions out.

A `Wire` plays the IO side exactly as gateway/server.py does (writes, reading on or
paused, lookups to answer, a turn to wait for) and checks, after every step, that the
session never contradicts itself: no pause while paused, no write after close or
abort, never more WHATSATs awaiting places than the cap.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.backend import Fix
from gateway.limits import Limits
from gateway.protocol import NS, IAmAt
from gateway.session import (
    LINE_COST,
    PLACES_COST,
    Abort,
    Action,
    Close,
    Lookup,
    PauseReading,
    ResumeReading,
    Session,
    WaitTurn,
    Write,
)
from zherd.record import format_skew  # what the node answers with, as the node makes it

NOW = 1_700_000_000 * NS  # the server's receive time in every test unless said
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(FAST, max_examples=500)


class StubBackend:
    """A node in miniature: stores fixes, builds AT lines, never answers places itself."""

    name = "S"

    def __init__(self) -> None:
        self.fixes: dict[str, Fix] = {}
        self.iamats: list[IAmAt] = []

    def iamat(self, event: IAmAt, received_ns: int) -> bytes:
        self.iamats.append(event)
        skew = format_skew(received_ns - event.time_ns)
        at = b"AT S %s %s %s %s" % (skew, event.client_id, event.coords, event.time)
        self.fixes[event.client_id] = Fix(at, event.lat, event.lon)
        return at

    def lookup(self, client_id: bytes) -> Fix | None:
        return self.fixes.get(client_id)


def places(lookup: Lookup) -> bytes:
    """The places document a test answers a lookup with: it says which lookup it was."""
    return json.dumps({"radius": lookup.radius_km, "count": lookup.count}).encode()


class Wire:
    """The IO side of one session: carries out its actions and checks them."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.out = bytearray()
        self.writes = 0
        self.received: list[bytes] = []  # every line traced as received, in order
        self.reading = True
        self.lookups: dict[int, Lookup] = {}
        self.waiting_turn = False
        self.closed = False
        self.aborted: str | None = None
        self.max_awaiting = 0

    def do(self, actions: Iterable[Action]) -> list[Action]:
        actions = list(actions)
        for action in actions:
            assert not self.closed and self.aborted is None, f"{action} after the end"
            if isinstance(action, Write):
                self.writes += bool(action.data)
                self.out += action.data
                self.received.extend(action.received)
            elif isinstance(action, Lookup):
                assert action.request not in self.lookups
                self.lookups[action.request] = action
            elif isinstance(action, PauseReading):
                assert self.reading, "paused twice"
                self.reading = False
            elif isinstance(action, ResumeReading):
                assert not self.reading, "resumed twice"
                self.reading = True
            elif isinstance(action, WaitTurn):
                assert not self.waiting_turn, "asked twice for a turn"
                self.waiting_turn = True
            elif isinstance(action, Close):
                self.closed = True
            elif isinstance(action, Abort):
                self.aborted = action.reason
        self.max_awaiting = max(self.max_awaiting, len(self.lookups))
        if self.session._held and self.aborted is None:
            assert not self.reading, "input held while the transport is told to read on"
        return actions

    # the events, as the IO side would deliver them

    def send(self, data: bytes | str, at: int = NOW) -> list[Action]:
        assert self.reading, "the transport does not deliver while paused"
        data = data.encode() if isinstance(data, str) else data
        return self.do(self.session.receive(data, at))

    def eof(self, at: int = NOW) -> list[Action]:
        assert self.reading
        self.reading = False
        return self.do(self.session.receive_eof(at))

    def answer(self, request: int | None = None, doc: bytes | None = b"") -> list[Action]:
        """Answer one lookup (the oldest by default) with its places."""
        request = min(self.lookups) if request is None else request
        lookup = self.lookups.pop(request)
        return self.do(self.session.answered(request, places(lookup) if doc == b"" else doc))

    def answer_all(self, order: str = "fifo") -> None:
        while self.lookups:
            self.answer(max(self.lookups) if order == "lifo" else None)

    def next_turn(self, allowance: int = 1 << 62) -> list[Action]:
        assert self.waiting_turn
        self.waiting_turn = False
        self.session.allowance = allowance
        return self.do(self.session.proceed())

    def take(self) -> bytes:
        out, self.out = bytes(self.out), bytearray()
        return out


def session(loading: bool = False, **limits: object) -> Wire:
    wire = Wire(Session(StubBackend(), Limits(**limits), loading=loading))  # type: ignore[arg-type]
    wire.do(wire.session.start())
    return wire


def at(client_id: str, coords: str = "+1+1", time: str = "1700000000", now: int = NOW) -> bytes:
    whole, _, frac = time.partition(".")
    skew = format_skew(now - int(whole) * NS - int(frac.ljust(9, "0")))
    return f"AT S {skew.decode()} {client_id} {coords} {time}\n".encode()


def whatsat_reply(at_line: bytes, radius: float, count: int) -> bytes:
    body = json.dumps({"radius": radius, "count": count}).encode()
    return at_line + body + b"\n\n"


# -- IAMAT, and one write per batch -----------------------------------------------------------


def test_a_batch_of_lines_is_answered_with_one_write() -> None:
    w = session()
    w.send("IAMAT a +1+1 1700000000\nIAMAT b +2+2 1700000000\nnonsense\nIAMAT c +3+3 1700000000\n")
    assert w.writes == 1
    assert w.take() == at("a") + at("b", "+2+2") + b"? nonsense\n" + at("c", "+3+3")
    assert w.received == [
        b"IAMAT a +1+1 1700000000",
        b"IAMAT b +2+2 1700000000",
        b"nonsense",
        b"IAMAT c +3+3 1700000000",
    ]


def test_a_line_split_across_reads_is_answered_when_complete() -> None:
    w = session()
    assert w.send("IAMAT a +1") == []
    w.send("+1 1700000000")
    assert w.out == b""
    w.send("\n")
    assert w.take() == at("a")


def test_skew_is_from_the_time_the_batch_was_read() -> None:
    w = session()
    w.send("IAMAT a +1+1 1700000000.5\n", at=NOW + 2 * NS)
    assert w.take() == b"AT S +1.500000000 a +1+1 1700000000.5\n"


# -- reply order under pipelining, with WHATSATs in flight ------------------------------------


def test_replies_keep_request_order_whatever_order_places_come_back_in() -> None:
    w = session()
    w.send("IAMAT a +1+1 1700000000\n")
    first = w.take()
    w.send("WHATSAT a 10 1\nIAMAT b +2+2 1700000000\nbad\nWHATSAT a 5 2\nIAMAT c +3+3 1700000000\n")
    assert w.out == b""  # everything waits behind the first WHATSAT
    assert sorted(w.lookups) == [1, 2]
    w.answer(2)
    assert w.out == b""  # the second is ready, the first is not
    w.answer(1)
    assert w.writes == 2  # the IAMAT, then all that waited in one write
    assert w.take() == (
        whatsat_reply(first, 10.0, 1)
        + at("b", "+2+2")
        + b"? bad\n"
        + whatsat_reply(first, 5.0, 2)
        + at("c", "+3+3")
    )


def test_replies_ready_before_a_whatsat_go_out_at_once() -> None:
    w = session()
    w.send("IAMAT a +1+1 1700000000\nWHATSAT a 10 1\nIAMAT b +2+2 1700000000\n")
    assert w.take() == at("a")
    w.answer()
    assert w.take() == whatsat_reply(at("a"), 10.0, 1) + at("b", "+2+2")


def test_whatsat_for_a_client_nobody_heard_of_is_answered_in_order() -> None:
    w = session()
    w.send("IAMAT a +1+1 1700000000\nWHATSAT a 10 1\nWHATSAT nobody 10 1\n")
    w.answer()
    assert w.take() == at("a") + whatsat_reply(at("a"), 10.0, 1) + b"? WHATSAT nobody 10 1\n"


def test_a_whatsat_answers_with_the_fix_held_when_it_was_asked() -> None:
    w = session()
    w.send("IAMAT a +1+1 1700000000\nWHATSAT a 10 1\nIAMAT a +2+2 1700000001\n")
    w.answer()
    assert w.take() == at("a") + whatsat_reply(at("a"), 10.0, 1) + at("a", "+2+2", "1700000001")


def test_places_that_could_not_be_had_are_answered_with_an_error_document() -> None:
    w = session()
    w.send("IAMAT a +1+1 1700000000\nWHATSAT a 10 1\n")
    w.answer(doc=None)
    reply = w.take()[len(at("a")) :]
    assert reply.startswith(at("a")) and reply.endswith(b"}\n\n")
    doc = json.loads(reply[len(at("a")) :])
    assert doc["status"] == "UNKNOWN_ERROR" and doc["results"] == []


def test_an_answer_for_no_such_request_is_ignored() -> None:
    w = session()
    assert w.do(w.session.answered(7, b"{}")) == []


COMMANDS = st.sampled_from(
    [
        "IAMAT a +1+1 1700000000",
        "IAMAT b -2+3.5 1699999999.25",
        "WHATSAT a 10 3",
        "WHATSAT b 1 1",
        "WHATSAT nobody 5 5",
        "WHATSAT a 0 1",
        "",
        "hello",
    ]
)


def expected_replies(lines: list[str]) -> bytes:
    """What a client must read back, computed line by line with no concurrency at all."""
    fixes: dict[str, bytes] = {}
    out = b""
    for line in lines:
        fields = line.split()
        if fields[:1] == ["IAMAT"]:
            fixes[fields[1]] = at(fields[1], fields[2], fields[3])
            out += fixes[fields[1]]
        elif fields[:1] == ["WHATSAT"] and fields[1] in fixes and float(fields[2]) > 0:
            out += whatsat_reply(fixes[fields[1]], float(fields[2]), int(fields[3]))
        else:
            out += b"? " + line.encode() + b"\n"
    return out


@THOROUGH
@given(
    lines=st.lists(COMMANDS, max_size=40),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
    rng=st.randoms(use_true_random=False),
    cap=st.integers(1, 4),
    allowance=st.sampled_from([1 << 62, 5000, 500, 100]),
    loading=st.booleans(),
    stalls=st.floats(0, 0.5),
)
def test_any_pipelining_any_timing_same_replies_as_one_at_a_time(
    lines: list[str],
    cuts: list[int],
    rng: random.Random,
    cap: int,
    allowance: int,
    loading: bool,
    stalls: float,
) -> None:
    """However the stream is cut into reads, whenever places come back, however small
    the allowance, whenever the client stops reading its replies and while the node
    loads: the client reads exactly the replies of a serial server, and the session is
    never stuck (not reading, with nothing that could make it read again)."""
    w = session(loading=loading, max_inflight=cap)
    still_loading = [loading]

    def happen() -> None:
        """One thing the event loop could deliver now that would let the session move."""
        options = []
        if w.waiting_turn:
            options.append(lambda: w.next_turn(allowance))
        if w.lookups:
            options.append(lambda: w.answer(rng.choice(sorted(w.lookups))))
        if w.session.waiting_for_reader:
            options.append(lambda: w.do(w.session.write_ready()))
        if still_loading[0]:
            options.append(
                lambda: (
                    still_loading.clear(),
                    still_loading.append(False),
                    w.do(w.session.loaded()),
                )
            )
        assert options, "stuck: nothing to wait for"
        rng.choice(options)()

    stream = "".join(line + "\n" for line in lines).encode()
    points = sorted({min(c, len(stream)) for c in cuts} | {len(stream)})
    start = 0
    for point in points:
        while not w.reading:
            happen()
        w.session.allowance = allowance
        w.send(stream[start:point])
        start = point
        if rng.random() < stalls and not w.session.waiting_for_reader:
            w.do(w.session.write_full())
        while w.lookups and rng.random() < 0.3:
            w.answer(rng.choice(sorted(w.lookups)))
        assert len(w.lookups) <= cap
    while not w.reading:
        happen()
    w.eof()
    while not w.closed:
        happen()
    assert w.take() == expected_replies(lines)
    assert w.received == [line.encode() for line in lines]
    assert not w.lookups and not w.session._held


# -- the in-flight cap --------------------------------------------------------------------------


def test_whatsats_beyond_the_cap_wait_with_everything_after_them() -> None:
    w = session(max_inflight=2)
    w.send("IAMAT a +1+1 1700000000\n")
    a = w.take()
    actions = w.send("WHATSAT a 1 1\nWHATSAT a 2 2\nWHATSAT a 3 3\nIAMAT b +2+2 1700000000\n")
    assert len(w.lookups) == 2 and PauseReading() in actions and not w.reading
    assert w.received[-2:] == [b"WHATSAT a 1 1", b"WHATSAT a 2 2"]  # the rest is not handled yet
    w.answer(2)  # a slot: the third starts, and the cap is reached again
    assert sorted(w.lookups) == [1, 3] and not w.reading and w.out == b""
    assert w.received[-1] == b"WHATSAT a 3 3"
    w.answer(1)  # a slot: the IAMAT is handled (queued behind the third), reading resumes
    assert list(w.lookups) == [3] and w.reading
    assert w.received[-1] == b"IAMAT b +2+2 1700000000"
    w.answer()
    assert w.take() == b"".join(
        whatsat_reply(a, r, c) for r, c in ((1.0, 1), (2.0, 2), (3.0, 3))
    ) + at("b", "+2+2")
    assert w.max_awaiting == 2


def test_reaching_the_cap_on_the_last_line_stops_reading_too() -> None:
    w = session(max_inflight=1)
    w.send("IAMAT a +1+1 1700000000\nWHATSAT a 1 1\n")
    assert not w.reading
    w.answer()
    assert w.reading


# -- half-close --------------------------------------------------------------------------------


def test_half_close_answers_a_last_line_without_newline_then_closes() -> None:
    w = session()
    actions = w.send("IAMAT a +1+1 1700000000\nIAMAT b +2+2 1700000000")
    assert Close() not in actions
    w.eof()
    assert w.take() == at("a") + at("b", "+2+2")
    assert w.closed


def test_half_close_waits_for_whatsats_and_held_lines() -> None:
    w = session(max_inflight=1)
    w.send("IAMAT a +1+1 1700000000\nWHATSAT a 1 1\nWHATSAT a 2 2\nIAMAT b +2+2 1700000000")
    assert not w.reading  # the cap: the second WHATSAT and the IAMAT are held
    w.do(w.session.receive_eof(NOW))  # (were end of input seen while paused: be robust)
    assert not w.closed
    w.answer()
    assert not w.closed
    w.answer()
    assert w.closed
    a = at("a")
    assert w.take() == a + whatsat_reply(a, 1.0, 1) + whatsat_reply(a, 2.0, 2) + at("b", "+2+2")


def test_half_close_with_nothing_sent_closes_at_once() -> None:
    w = session()
    assert w.eof() == [Close()]


def test_half_close_of_a_loading_node_answers_once_loaded() -> None:
    w = session(loading=True)
    w.do(w.session.receive(b"IAMAT a +1+1 1700000000", NOW))  # got in before the pause
    w.do(w.session.receive_eof(NOW))
    assert w.out == b"" and not w.closed
    w.do(w.session.loaded())
    assert w.take() == at("a") and w.closed


# -- a client that does not read its replies ----------------------------------------------


def test_a_full_write_buffer_stops_reading_and_holds_input_until_writable() -> None:
    w = session()
    w.send("IAMAT a +1+1 1700000000\n")
    w.take()
    assert w.do(w.session.write_full()) == [PauseReading()]
    assert w.session.waiting_for_reader
    w.do(w.session.receive(b"IAMAT b +2+2 1700000000\n", NOW))  # read before the pause
    assert w.out == b"" and not w.reading  # held, not answered
    actions = w.do(w.session.write_ready())
    assert w.take() == at("b", "+2+2") and w.reading
    assert actions[-1] == ResumeReading()
    assert not w.session.waiting_for_reader


def test_a_client_not_reading_is_aborted_once_its_replies_pass_the_bound() -> None:
    w = session(max_pending_output=3500)
    w.send("IAMAT a +1+1 1700000000\n" + "WHATSAT a 10 20\n" * 5)
    w.do(w.session.write_full())
    big = b"x" * 1000
    for request in sorted(w.lookups)[:3]:
        w.answer(request, doc=big)
    assert w.aborted is None  # 3 replies of ~1.04 kB: not yet over 3500 bytes
    w.answer(doc=big)
    assert w.aborted == "not reading its replies"
    w.lookups.clear()
    assert w.session.answered(5, big) == []  # nothing more, ever
    assert w.session.receive(b"IAMAT a +1+1 1\n", NOW) == []


def test_replies_queued_behind_a_whatsat_are_bounded() -> None:
    w = session(max_pending_output=1000)
    w.send("IAMAT a +1+1 1700000000\nWHATSAT a 10 1\n")
    w.take()
    line = "IAMAT b +2+2 1700000000\n"
    while w.reading:  # each read adds ~40 bytes of replies queued behind the WHATSAT
        w.send(line * 5)
    assert w.session._queued >= 1000 and w.session._queued < 1000 + 5 * 50
    w.answer()
    assert w.reading and w.session._queued == 0


# -- a node still loading its store ----------------------------------------------------------


def test_a_loading_node_reads_nothing_then_answers_what_waited() -> None:
    w = session(loading=True)
    assert not w.reading  # paused from the start: nothing is read, so nothing is held
    actions = w.do(w.session.loaded())
    assert actions == [ResumeReading()]
    w.send("IAMAT a +1+1 1700000000\n")
    assert w.take() == at("a")


def test_input_read_before_loading_was_known_is_held_until_loaded() -> None:
    w = session(loading=True)
    w.do(w.session.receive(b"IAMAT a +1+1 1700000000\nWHATSAT a 1 1\n", NOW))
    assert w.out == b"" and not w.lookups and not w.session._backend.iamats  # type: ignore[attr-defined]
    w.do(w.session.loaded())
    assert w.take() == at("a") and list(w.lookups) == [1]


# -- long lines, and what a connection may hold ------------------------------------------------


def test_a_long_line_is_cut_once_and_the_connection_goes_on() -> None:
    w = session(max_line=32)
    w.send("x" * 20)
    w.send("y" * 20)  # now 40 bytes without a newline: answered, cut
    assert w.take() == b"? " + b"x" * 20 + b"y" * 12 + b"\n"
    w.send("z" * 100)
    w.send("z\nIAMAT a +1+1 1700000000\n")  # the rest of the long line is skipped
    assert w.take() == at("a")
    assert len(w.session._splitter._buf) <= 32


@FAST
@given(chunks=st.lists(st.binary(max_size=300), max_size=30), max_line=st.integers(1, 64))
def test_what_a_session_holds_of_a_partial_line_is_at_most_max_line(
    chunks: list[bytes], max_line: int
) -> None:
    w = session(max_line=max_line)
    for chunk in chunks:
        if chunk:
            w.send(chunk)
        assert len(w.session._splitter._buf) <= max_line
        assert not w.session._held


# -- time and ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_future", [86_400.0, 60.0, 0.5])
def test_a_fix_from_further_ahead_than_max_future_is_refused_and_stored_nowhere(
    max_future: float,
) -> None:
    w = session(max_future=max_future)
    edge = NOW + int(max_future * NS)
    ok = f"IAMAT a +1+1 {edge // NS}.{edge % NS:09d}"
    late = f"IAMAT b +1+1 {(edge + 1) // NS}.{(edge + 1) % NS:09d}"
    w.send(ok + "\n" + late + "\n")
    reply = w.take()
    assert reply.startswith(b"AT S -") and reply.endswith(f"\n? {late}\n".encode())
    assert [e.client_id for e in w.session._backend.iamats] == [b"a"]  # type: ignore[attr-defined]
    w.send("WHATSAT b 1 1\n")
    assert w.take() == b"? WHATSAT b 1 1\n"


def test_a_fix_from_the_past_is_fine_however_old() -> None:
    w = session()
    w.send("IAMAT a +1+1 0\n")
    assert w.take() == at("a", time="0")


@pytest.mark.parametrize("max_id", [1, 8, 256])
def test_client_ids_longer_than_max_id_bytes_are_refused(max_id: int) -> None:
    w = session(max_id=max_id)
    ok, long = "i" * max_id, "i" * (max_id + 1)
    w.send(f"IAMAT {ok} +1+1 1700000000\nIAMAT {long} +1+1 1700000000\n")
    assert w.take() == at(ok) + f"? IAMAT {long} +1+1 1700000000\n".encode()
    w.send(f"WHATSAT {long} 1 1\n")
    assert w.take() == f"? WHATSAT {long} 1 1\n".encode()


def test_max_id_counts_bytes_not_characters() -> None:
    w = session(max_id=4)
    w.send("IAMAT üü +1+1 1700000000\nIAMAT üüü +1+1 1700000000\n")  # 4 bytes, then 6
    assert w.take() == at("üü") + "? IAMAT üüü +1+1 1700000000\n".encode()


# -- the allowance: bounded work per turn ------------------------------------------------------


def test_input_beyond_the_allowance_waits_for_a_turn() -> None:
    w = session()
    line = b"IAMAT a +1+1 1700000000\n"
    batch = line * 100
    allowance = 10 * (len(line) + LINE_COST)
    w.session.allowance = allowance
    actions = w.send(batch)
    assert WaitTurn() in actions and PauseReading() in actions
    assert len(w.received) * (len(line) + LINE_COST) <= 2 * allowance  # one slice over, at most
    assert w.session.held_bytes == len(batch) - len(w.received) * len(line)
    turns = 0
    while w.waiting_turn:
        turns += 1
        w.next_turn(allowance=allowance)
    assert w.take() == at("a") * 100 and w.reading
    assert turns >= 100 // 20


def test_tiny_lines_count_against_the_allowance_too() -> None:
    w = session()
    w.session.allowance = 64 * 1024
    w.send(b"\n" * 200_000)  # one read of 200,000 empty lines
    assert len(w.received) <= 64 * 1024 // LINE_COST + 1
    assert w.waiting_turn and not w.reading


def test_a_session_with_no_allowance_left_holds_the_read_and_asks_once() -> None:
    w = session()
    w.session.allowance = 0
    w.send("IAMAT a +1+1 1700000000\n")
    assert w.out == b"" and w.waiting_turn
    assert w.do(w.session.write_ready()) == []  # no second WaitTurn while one is pending
    w.next_turn()
    assert w.take() == at("a") and w.reading


def test_held_input_and_a_full_buffer_then_the_turn() -> None:
    """Two reasons to wait at once: the turn comes first, then the client reads."""
    w = session()
    w.session.allowance = 0
    w.send("IAMAT a +1+1 1700000000\n")
    w.do(w.session.write_full())
    w.next_turn()
    assert w.out == b"" and not w.reading  # the allowance is back, the client still not reading
    w.do(w.session.write_ready())
    assert w.take() == at("a") and w.reading


def test_a_line_read_in_pieces_is_paid_for_when_it_is_handled() -> None:
    """Buffering a long line is cheap; answering and logging it is not: the cost falls
    on the read that ends it, so many long lines ending in one turn cannot all pass."""
    w = session()
    w.session.allowance = 100_000
    w.send(b"x" * 60_000)
    assert w.session.allowance == 100_000 - 60_000 // 16  # only read so far
    w.session.allowance = 10_000
    w.send(b"\n")
    assert w.take() == b"? " + b"x" * 60_000 + b"\n"
    assert w.session.allowance <= 10_000 - 60_000


def test_end_of_input_pays_for_the_last_line() -> None:
    w = session()
    w.send(b"x" * 1000)
    w.session.allowance = 0
    w.eof()
    assert w.out == b"" and w.waiting_turn  # the last line waits for a turn too
    w.next_turn(allowance=10)
    assert w.take() == b"? " + b"x" * 1000 + b"\n" and w.closed


def test_a_whatsat_costs_its_places_lookup_too() -> None:
    w = session()
    w.send("IAMAT a +1+1 1700000000\n")
    w.session.allowance = 3 * PLACES_COST
    w.send("WHATSAT a 1 1\n" * 20)
    assert 1 <= len(w.lookups) <= 3 and w.waiting_turn  # the rest waits for later turns
    while w.waiting_turn or w.lookups:
        w.answer_all()
        if w.waiting_turn:
            w.next_turn(allowance=3 * PLACES_COST)
    assert w.take().count(b"\n\n") == 20
