"""The per-turn log record: one physical line per event, each with its time, server and
level, whatever a client or neighbor sent; bounded per line and per turn."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger

from gateway.protocol import format_whatsat
from zherd import logs
from zherd.config import LoggingConfig
from zherd.journal import PLACES_SHOWN, Journal

PREFIX = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z \| Alford \| (INFO   |WARNING|ERROR  ) \| "
)
INFO = re.compile(PREFIX.pattern.replace("(INFO   |WARNING|ERROR  )", "INFO   "))


class LogLines:
    """The server's log file, as `logs.setup` writes it; `new()` is what came since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new(self) -> list[str]:
        logger.complete()
        data = self.path.read_bytes()
        text, self.offset = data[self.offset :].decode(), len(data)
        assert text == "" or text.endswith("\n")
        return text.splitlines()  # every line break a viewer may honour, not only \n


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogLines]:
    path = logs.setup("Alford", LoggingConfig(tmp_path_factory.mktemp("logs")), "CRITICAL")
    try:
        yield LogLines(path)
    finally:
        logger.remove()
        logger.configure(extra={})
        logger.add(sys.stderr)


def body(line: str) -> str:
    m = PREFIX.match(line)
    assert m is not None, line
    return line[m.end() :]


def test_each_event_is_one_line_with_the_prefix(log: LogLines) -> None:
    log.new()
    journal = Journal("Alford")
    journal.client("127.0.0.1:5555", [b"IAMAT kiwi +1+1 1", b"WHATSAT kiwi 1 1"], b"AT x\n? y\n")
    journal.add("bus <- Parker: sync")
    assert journal
    journal.write()
    assert not journal
    lines = log.new()
    assert all(INFO.match(line) for line in lines)
    assert [body(line) for line in lines] == [
        "client 127.0.0.1:5555 <- IAMAT kiwi +1+1 1",
        "client 127.0.0.1:5555 <- WHATSAT kiwi 1 1",
        "client 127.0.0.1:5555 -> AT x",
        "client 127.0.0.1:5555 -> ? y",
        "bus <- Parker: sync",
    ]
    journal.write()  # an empty turn writes nothing
    assert log.new() == []


@pytest.mark.parametrize(
    ("received", "shown"),
    [
        (b"IAMAT \x1b[31mred\r2026-01-01T00:00:00.000000Z | Alford | INFO    | forged", None),
        (b"a\rb", "a\\x0db"),
        (b"a\nb", "a\\x0ab"),
        (b"\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        (b"\x00\x7f\x0b\x0c\x1c\x1d\x1e", "\\x00\\x7f\\x0b\\x0c\\x1c\\x1d\\x1e"),
        ("a\u0085b\u2028c\u2029d".encode(), "a\\x85b\\u2028c\\u2029d"),
        (b"\xff\xfe caf\xc3\xa9", "\\xff\\xfe café"),
    ],
)
def test_control_bytes_are_escaped_so_a_line_stays_one(
    log: LogLines, received: bytes, shown: str | None
) -> None:
    log.new()
    journal = Journal("Alford")
    journal.client("peer", [received], b"")
    journal.write()
    (line,) = log.new()
    assert INFO.match(line)
    assert "\x1b" not in line and "\r" not in line
    if shown is not None:
        assert body(line) == f"client peer <- {shown}"


def test_a_forged_line_stays_inside_its_event(log: LogLines) -> None:
    log.new()
    journal = Journal("Alford")
    forged = b"x\n2026-01-01T00:00:00.000000Z | Alford | ERROR   | disk on fire"
    journal.client("peer", [forged], forged + b"\n")
    journal.write()
    lines = log.new()
    assert len(lines) == 3  # in, and out as the two lines it is on the wire
    assert body(lines[0]).startswith("client peer <- x\\x0a2026")
    assert body(lines[1]) == "client peer -> x"
    assert body(lines[2]).startswith("client peer -> 2026")  # a line the client sent itself


def test_a_whatsat_reply_is_its_at_line_and_one_line_for_its_places(log: LogLines) -> None:
    log.new()
    places = json.dumps({"results": [{"name": f"place {i}"} for i in range(300)]}, indent=2)
    sent = b"AT one\n" + format_whatsat(b"AT two", places.encode()) + b"? three\n"
    sent += format_whatsat(b"AT four", b'{"results": []}')
    journal = Journal("Alford")
    journal.client("peer", [b"IAMAT", b"WHATSAT", b"x", b"WHATSAT"], sent)
    journal.write()
    out = [body(line) for line in log.new()][4:]
    assert out[:2] == ["client peer -> AT one", "client peer -> AT two"]
    head = f"client peer -> places JSON ({len(places)} bytes): "
    assert out[2].startswith(head + '{ "results": [ { "name": "place 0" }, {')
    assert out[2].endswith(" ...") and len(out[2]) == len(head) + PLACES_SHOWN + 4
    assert out[3:] == [
        "client peer -> ? three",
        "client peer -> AT four",
        'client peer -> places JSON (15 bytes): {"results": []}',
    ]


def test_a_64_kb_line_is_cut_with_its_length_noted(log: LogLines) -> None:
    log.new()
    journal = Journal("Alford")
    journal.client("peer", [b"A" * 65536, b"\x00" * 65536], b"B" * 70000 + b"\n")
    journal.write()
    lines = log.new()
    assert len(lines) == 3
    assert body(lines[0]) == "client peer <- " + "A" * logs.MAX_LOGGED + "... (65536 bytes)"
    assert body(lines[1]) == "client peer <- " + "\\x00" * logs.MAX_LOGGED + "... (65536 bytes)"
    assert body(lines[2]) == "client peer -> " + "B" * logs.MAX_LOGGED + "... (70000 bytes)"
    assert logs.shown(b"C" * logs.MAX_LOGGED) == "C" * logs.MAX_LOGGED  # not cut at the limit


def test_a_turn_past_max_bytes_says_how_many_lines_it_left_out(log: LogLines) -> None:
    log.new()
    journal = Journal("Alford", max_bytes=1000)
    for i in range(100):
        journal.add(f"{i:03d}" + "x" * 97)  # 100 characters each
    journal.write()
    lines = log.new()
    kept = [body(line) for line in lines[:-1]]
    assert kept == [f"{i:03d}" + "x" * 97 for i in range(11)]  # up to the first past 1000
    assert body(lines[-1]) == "89 more lines this turn not logged (turn limit)"
    assert all(INFO.match(line) for line in lines)
    journal.add("next turn")  # the bound is per turn
    journal.write()
    assert [body(line) for line in log.new()] == ["next turn"]


def test_a_turn_of_only_left_out_lines_still_says_so(log: LogLines) -> None:
    log.new()
    journal = Journal("Alford", max_bytes=0)
    journal.add("x")
    journal.add("y")
    journal.add("z")
    journal.write()
    assert [body(line) for line in log.new()] == [
        "x",
        "2 more lines this turn not logged (turn limit)",
    ]


def test_warnings_are_written_at_once(log: LogLines) -> None:
    log.new()
    journal = Journal("Alford")
    journal.add("held for the turn")
    journal.warn(["bus <- Parker: 3 invalid records dropped (client id too long)", "second"])
    lines = log.new()
    assert [PREFIX.match(line)[1] for line in lines] == ["WARNING", "WARNING"]  # type: ignore[index]
    assert [body(line) for line in lines] == [
        "bus <- Parker: 3 invalid records dropped (client id too long)",
        "second",
    ]
    journal.write()
    assert [body(line) for line in log.new()] == ["held for the turn"]


def test_a_multi_line_message_from_anywhere_gets_the_prefix_on_every_line(log: LogLines) -> None:
    log.new()
    logger.error("storage: 2 damaged frames dropped:\nfirst problem\nsecond problem")
    lines = log.new()
    assert len(lines) == 3
    assert all(PREFIX.match(line) for line in lines)
    assert [body(line) for line in lines] == [
        "storage: 2 damaged frames dropped:",
        "first problem",
        "second problem",
    ]


def test_a_message_from_anywhere_cannot_start_a_line_of_its_own(log: LogLines) -> None:
    log.new()
    logger.warning("places failed: \r2026-01-01T00:00:00.000000Z | Alford | INFO    | fine\x1b[0m")
    (line,) = log.new()
    assert (
        body(line)
        == "places failed: \\x0d2026-01-01T00:00:00.000000Z | Alford | INFO    | fine\\x1b[0m"
    )


def test_a_traceback_gets_the_prefix_on_every_line(log: LogLines) -> None:
    log.new()
    try:
        raise OSError("index file is damaged")
    except OSError as e:
        logger.opt(exception=e).error("GeoNames index could not be opened")
    lines = log.new()
    assert len(lines) > 2
    assert all(PREFIX.match(line) for line in lines), lines
    assert body(lines[0]) == "GeoNames index could not be opened"
    assert body(lines[-1]) == "OSError: index file is damaged"


# any bytes at all

CLIENT_BYTES = st.binary(max_size=300) | st.text(max_size=100).map(
    lambda t: t.encode("utf-8", "surrogatepass")
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    received=st.lists(CLIENT_BYTES, max_size=8),
    sent=CLIENT_BYTES,
    notes=st.lists(st.text(max_size=40), max_size=3),
)
def test_any_bytes_from_a_client_make_one_prefixed_line_per_event(
    log: LogLines, received: list[bytes], sent: bytes, notes: list[str]
) -> None:
    log.new()
    journal = Journal("Alford")
    journal.client("peer", received, sent)
    for note in notes:
        journal.add(logs.escape(note))  # as Node.note does
    journal.write()
    events = len(received) + (len(sent.rstrip(b"\n").split(b"\n")) if sent else 0) + len(notes)
    lines = log.new()
    assert len(lines) == events
    assert all(INFO.match(line) for line in lines)
    assert all(
        body(line).startswith(("client peer <- ", "client peer -> "))
        for line in lines[: events - len(notes)]
    )


@given(st.binary() | st.text().map(str.encode))
def test_bytes_need_care_exactly_when_their_text_does(data: bytes) -> None:
    assert logs.bytes_need_care(data) == logs.needs_care(data.decode("utf-8", "backslashreplace"))
