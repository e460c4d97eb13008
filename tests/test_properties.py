"""Property tests: the parsers, record.check and the replicator face arbitrary input
and never raise.

Each property checks results against an independent oracle (exact `decimal`
arithmetic, a naive line splitter, the IAMAT a record was made from), so passing
means "right", not just "no crash".
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext
from typing import Any

import msgpack
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway import protocol
from gateway.protocol import (
    IAmAt,
    Invalid,
    LineSplitter,
    WhatsAt,
    parse_line,
)
from zherd import record, wire
from zherd.counters import LinkCounters
from zherd.locations import Locations, record_of, seq_of, via_of
from zherd.record import Record, Rejected, Valid, at_line, check, fields, format_skew, make
from zherd.replication import Replicator, Rules
from zherd.wire import Heartbeat, Message, Sync, Updates

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ASCII_WS = " \t\n\r\x0b\x0c"


def text_skew(ns: int) -> str:
    return format_skew(ns).decode()


def text_record(*fields: str) -> bytes:
    return Record(*fields).line  # type: ignore[arg-type]


COORD = re.compile(r"([+-][0-9]+(?:\.[0-9]+)?)([+-][0-9]+(?:\.[0-9]+)?)", re.ASCII)
TIME = re.compile(r"[+-]?[0-9]+(?:\.[0-9]{1,9})?", re.ASCII)
SKEW = re.compile(r"[+-][0-9]+\.[0-9]{9}", re.ASCII)
ORIGINS = frozenset({b"B", b"C", b"Server"})
MAX_ID = 64
LATEST = 10**21 * 10**9  # past any time a client can write (20 digits of seconds)

# strategies

DIGITS = "0123456789"
WS = st.text(alphabet=" \t\r\x0b\x0c", min_size=1, max_size=3)
OPT_WS = st.text(alphabet=" \t\r\x0b\x0c", max_size=3)
TOKEN = st.one_of(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters=ASCII_WS), min_size=1, max_size=12
    ),
    st.sampled_from(["a\x1cb", "\u00a0", "x\u2003y", "\x85", "\x00", "ü"]),  # not ASCII space
)
FRACTION = st.one_of(
    st.just(""),
    st.text(DIGITS, min_size=1, max_size=24).map(lambda d: "." + d),
    st.sampled_from([".", ".0", ".000000000000000000001", ".99999999999999999999"]),
)


def degrees(limit: int) -> st.SearchStrategy[str]:
    whole = st.one_of(
        st.integers(0, limit + 2).map(str),
        st.sampled_from([str(limit), "0" + str(limit), "1000"]),
        st.text(DIGITS, max_size=4),
    )
    return st.builds(
        lambda s, w, f: s + w + f, st.sampled_from(["+", "-", "+", "-", ""]), whole, FRACTION
    )


COORDS = st.builds(lambda a, b: a + b, degrees(90), degrees(180))
TIMES = st.builds(
    lambda sign, whole, frac: sign + whole + frac,
    st.sampled_from(["", "", "", "+", "-"]),
    st.text(DIGITS, min_size=0, max_size=12),
    st.one_of(FRACTION, st.text(DIGITS, min_size=9, max_size=11).map(lambda d: "." + d)),
)
COMMANDS = st.sampled_from(["IAMAT", "IAMAT", "IAMAT", "iamat", "IAMATX", "WHATSAT", "AT"])


@st.composite
def iamat_like(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """A line shaped like an IAMAT, its fields drawn near and across every validity edge."""
    fields = [draw(COMMANDS), draw(TOKEN), draw(COORDS), draw(TIMES)]
    if draw(st.integers(0, 9)) == 0:
        fields.append(draw(TOKEN))  # one field too many
    line = draw(OPT_WS) + "".join(f + draw(WS) for f in fields[:-1]) + fields[-1] + draw(OPT_WS)
    return line.encode(), [f for f in fields if f]  # an empty field is no field at all


LINES = st.one_of(
    st.binary(max_size=120),
    iamat_like().map(lambda pair: pair[0]),
    st.builds(
        lambda ws, cid, r, n: f"{ws}WHATSAT {cid} {r} {n}".encode(),
        OPT_WS,
        TOKEN,
        st.one_of(st.floats(allow_nan=True).map(str), st.text(DIGITS + ".-+e", max_size=8)),
        st.one_of(st.integers(-5, 30).map(str), st.text(DIGITS + ".-", max_size=4)),
    ),
)

# oracles


def in_range(text: str, limit: int) -> bool:
    return abs(Decimal(text)) <= limit


def valid_iamat(fields: list[str]) -> bool | None:
    """The README's IAMAT, decided with exact arithmetic and nothing from the code under test.

    None where the design leaves it open (a signed time): either answer is fine there.
    """
    if len(fields) != 4 or fields[0] != "IAMAT":
        return False
    m = COORD.fullmatch(fields[2])
    if m is None or not (in_range(m[1], 90) and in_range(m[2], 180)):
        return False
    if TIME.fullmatch(fields[3]) is None:
        return False
    return None if fields[3][0] in "+-" else True


def assert_client_could_have_sent(record: bytes) -> None:
    """The record's fields are what a client's IAMAT (and its server's reply) carry,
    decided without the code under test: the IAMAT rebuilt from it parses to the same
    fix, and the rest is the server's."""
    text = record.decode()  # valid UTF-8, as every IAMAT is
    parts = text.split(" ")
    assert len(parts) == 5 and all(parts), parts
    origin, skew, client_id, coords, time = parts
    for part in parts:
        assert not set(part) & set(ASCII_WS)
    assert origin.encode() in ORIGINS
    assert len(client_id.encode()) <= MAX_ID
    m = COORD.fullmatch(coords)
    assert m is not None and in_range(m[1], 90) and in_range(m[2], 180)
    assert TIME.fullmatch(time) is not None
    assert SKEW.fullmatch(skew) is not None
    event = parse_line(f"IAMAT {client_id} {coords} {time}".encode())
    assert isinstance(event, IAmAt)
    assert Decimal(time) * 10**9 == event.time_ns
    assert fields(record) == (
        client_id.encode(),
        origin.encode(),
        event.time_ns,
        event.lat,
        event.lon,
    )
    assert (event.lat, event.lon) == (float(m[1]), float(m[2]))


def naive_split(stream: bytes, max_line: int) -> tuple[list[bytes | Invalid], bytes | None]:
    """What LineSplitter must produce, computed on the whole stream at once."""
    *lines, last = stream.split(b"\n")
    out: list[bytes | Invalid] = [
        Invalid(ln[:max_line]) if len(ln) > max_line else ln for ln in lines
    ]
    if len(last) > max_line:
        return [*out, Invalid(last[:max_line])], None
    return out, last or None


# client protocol


@FAST
@given(LINES)
def test_parse_line_never_raises_and_invalid_echoes_the_line(line: bytes) -> None:
    parsed = parse_line(line)
    assert isinstance(parsed, IAmAt | WhatsAt | Invalid)
    if isinstance(parsed, Invalid):
        assert parsed.line == line
    if isinstance(parsed, WhatsAt):
        assert 0 < parsed.radius_km <= 50 and 1 <= parsed.count <= 20
        assert line.split()[0] == b"WHATSAT"


@FAST
@given(iamat_like(), st.integers(-(10**20), 10**20))
def test_iamat_accepted_exactly_when_valid_and_echoed_exactly(
    drawn: tuple[bytes, list[str]], received_ns: int
) -> None:
    line, fields_ = drawn
    parsed = parse_line(line)
    expected = valid_iamat(fields_)
    if expected is not None:
        assert isinstance(parsed, IAmAt) == expected, parsed
    else:
        assert isinstance(parsed, IAmAt | Invalid)
    if isinstance(parsed, IAmAt):
        skew = format_skew(received_ns - parsed.time_ns)
        record = make(b"Server", skew, parsed.client_id, parsed.coords, parsed.time)
        reply = at_line(record).split(b" ")
        assert reply[3:] == line.split()[1:]  # the client's text, byte for byte
        with localcontext(prec=100):
            exact = Decimal(received_ns).scaleb(-9) - Decimal(fields_[3])
        assert Decimal(reply[2].decode()) == exact
        # ... and a neighbor accepts what a client sent (within the herd's bounds)
        if len(parsed.client_id) <= MAX_ID:
            assert check(record, ORIGINS, LATEST, MAX_ID) == Valid(
                parsed.client_id, b"Server", parsed.time_ns
            )
            assert_client_could_have_sent(record)


@FAST
@given(
    stream=st.lists(
        st.sampled_from([b"a", b"bc", b"\n", b"IAMAT x +1+1 1", b"\n\n", b"0123456789"]),
        max_size=40,
    ).map(b"".join),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    max_line=st.integers(1, 24),
)
def test_splitter_output_does_not_depend_on_chunking(
    stream: bytes, cuts: list[int], max_line: int
) -> None:
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    splitter = LineSplitter(max_line)
    lines: list[bytes | Invalid] = []
    for chunk in chunks:
        lines.extend(splitter.feed(chunk))
        assert len(splitter._buf) <= max_line
    assert (lines, splitter.close()) == naive_split(stream, max_line)


# neighbor messages

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=10),
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.lists(inner, max_size=6).map(tuple),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
    ),
    max_leaves=10,
)
SKEWS = st.builds(
    lambda sign, whole, frac: sign + whole + "." + frac,
    st.sampled_from("+-"),
    st.text(DIGITS, min_size=1, max_size=3),
    st.text(DIGITS, min_size=8, max_size=10),
)
CLIENT_IDS = st.one_of(st.sampled_from(["a", "b", "c", "x" * MAX_ID, "x" * (MAX_ID + 1)]), TOKEN)
GOOD_RECORDS = st.builds(
    text_record,
    st.sampled_from(["B", "C", "Server"]),
    st.integers(-(10**12), 10**12).map(text_skew),
    st.one_of(st.sampled_from(["a", "b", "c"]), TOKEN),
    st.sampled_from(["+34.068930-118.445127", "-90+180", "+0.5-0.25"]),
    st.builds(lambda s, ns: f"{s}.{ns:09d}", st.integers(0, 10**10), st.integers(0, 10**9 - 1)),
)
PARTS = st.tuples(  # a record's five fields, each drawn near and across its edges
    st.sampled_from(["B", "C", "Server", "Z", "b", "", "B\x00"]),
    st.one_of(st.integers(-(10**12), 10**12).map(text_skew), SKEWS),
    CLIENT_IDS,
    COORDS,
    TIMES,
)


def mutated(record: bytes, at: int, byte: int) -> bytes:
    at %= len(record) + 1
    return record[:at] + bytes([byte]) + record[at + 1 :]


RECORD_BYTES = st.one_of(
    GOOD_RECORDS,
    PARTS.map(lambda parts: " ".join(parts).encode()),
    st.builds(mutated, GOOD_RECORDS, st.integers(0, 200), st.integers(0, 255)),
    st.binary(max_size=80),
)
RECORDS = st.one_of(RECORD_BYTES, RECORD_BYTES.map(lambda b: b.decode(errors="replace")), JUNK)
INTS = st.one_of(st.integers(-2, 12), st.integers(-(2**63), 2**64 - 1), st.booleans())
BULK = st.one_of(st.booleans(), st.sampled_from([0, 1, None, "", b"\x01"]))


@FAST
@given(st.one_of(st.binary(max_size=200), JUNK.map(msgpack.packb)))
def test_decode_any_bytes_gives_a_message_or_none(payload: bytes) -> None:
    message = wire.decode(payload)
    if message is not None:
        assert wire.decode(wire.encode(message)) == message
        for value in (message.epoch, *_ints(message)):
            assert type(value) is int and -1 <= value < 2**63
        assert message.epoch > 0
        if isinstance(message, Updates):
            assert type(message.records) is tuple and type(message.bulk) is bool


def _ints(message: Message) -> tuple[int, ...]:
    if isinstance(message, Sync):
        return message.known_epoch, message.known_seq
    if isinstance(message, Updates):
        return message.first, message.last
    return (message.tip,)


@FAST
@given(
    st.one_of(
        st.tuples(st.sampled_from([1, 2, 3, 4, True]), INTS, INTS, INTS),
        st.tuples(
            st.sampled_from([2, 3, 1.0]),
            INTS,
            INTS,
            INTS,
            st.lists(RECORDS, max_size=4),
            BULK,
        ),
        st.tuples(st.sampled_from([2]), INTS, INTS, INTS, st.lists(RECORDS, max_size=4)),
        st.tuples(st.sampled_from([3, 1]), INTS, INTS),
    ).map(msgpack.packb)
)
def test_decode_near_miss_messages(payload: bytes) -> None:
    """Shapes one step away from a real message: every field type and range is checked."""
    fields_ = msgpack.unpackb(payload, use_list=False)
    assert wire.decode(payload) == expected_message(fields_)


def expected_message(fields_: tuple[Any, ...]) -> Message | None:
    """The wire format's rules, restated: int fields are ints (not bools) in [-1, 2**63)."""
    if not all(type(v) is int and -1 <= v < 2**63 for v in fields_[:4]):
        return None
    kind, epoch, *rest = fields_
    if epoch <= 0:
        return None
    if kind == 1 and len(rest) == 2 and min(rest) >= 0:
        return Sync(epoch, *rest)
    if kind == 3 and len(rest) == 1:
        return Heartbeat(epoch, rest[0])
    if (
        kind == 2
        and len(rest) == 4
        and type(rest[2]) is tuple
        and type(rest[3]) is bool
        and 0 <= rest[0] <= rest[1]
    ):
        return Updates(epoch, *rest)
    return None


def valid_record(parts: tuple[str, str, str, str, str]) -> bool:
    """A record's rules, decided with exact arithmetic and nothing from the code under test."""
    origin, skew, client_id, coords, time = parts
    if not all(parts) or any(set(p) & set(ASCII_WS) for p in parts):
        return False
    m = COORD.fullmatch(coords)
    return (
        origin.encode() in ORIGINS
        and SKEW.fullmatch(skew) is not None
        and len(client_id.encode()) <= MAX_ID
        and m is not None
        and in_range(m[1], 90)
        and in_range(m[2], 180)
        and TIME.fullmatch(time) is not None
        and len(time.lstrip("+-").split(".")[0]) <= 20
    )


@FAST
@given(PARTS)
def test_check_accepts_a_record_exactly_when_it_is_one(
    parts: tuple[str, str, str, str, str],
) -> None:
    result = check(" ".join(parts).encode(), ORIGINS, LATEST, MAX_ID)
    assert isinstance(result, Valid) == valid_record(parts), result
    if isinstance(result, Valid):
        with localcontext(prec=100):
            assert result.time_ns == Decimal(parts[4]) * 10**9


@FAST
@given(GOOD_RECORDS)
def test_a_record_a_client_could_send_is_accepted(record: bytes) -> None:
    client_id = record.split(b" ")[2]
    result = check(record, ORIGINS, LATEST, MAX_ID)
    if len(client_id) > MAX_ID:
        assert result == Rejected("client id too long")
    else:
        assert isinstance(result, Valid) and result.client_id == client_id
        assert_client_could_have_sent(record)


@FAST
@given(st.one_of(JUNK, RECORDS, st.lists(RECORDS, max_size=2)))
def test_check_never_raises_and_accepts_only_what_a_client_could_send(line: Any) -> None:
    result = check(line, ORIGINS, LATEST, MAX_ID)
    assert isinstance(result, Valid | Rejected)
    if isinstance(result, Valid):
        assert type(line) is bytes
        assert_client_could_have_sent(line)
        assert (result.client_id, result.origin, result.time_ns) == fields(line)[:3]
    else:
        assert result.reason


EPOCHS = st.one_of(st.sampled_from([0xA, 0xB, 0xC, 1]), INTS)  # ours, theirs, or anything
SEQS = st.one_of(st.integers(-1, 12), INTS)
MESSAGES = st.one_of(
    st.builds(Sync, EPOCHS, EPOCHS, SEQS),
    st.builds(Heartbeat, EPOCHS, SEQS),
    st.builds(Updates, EPOCHS, SEQS, SEQS, st.lists(RECORDS, max_size=6).map(tuple), BULK),
    st.builds(  # a well-formed envelope, so the records inside get applied
        lambda epoch, first, n, records, bulk: Updates(epoch, first, first + n, records, bulk),
        st.sampled_from([0xB, 0xC]),
        st.integers(0, 12),
        st.integers(0, 3),
        st.lists(RECORDS, min_size=1, max_size=6).map(tuple),
        st.booleans(),
    ),
)


@SLOW
@given(
    st.lists(
        st.tuples(st.sampled_from(["B", "C"]), MESSAGES, st.floats(0, 100), st.booleans()),
        max_size=20,
    )
)
def test_replicator_takes_any_decoded_message_from_a_neighbor(
    script: list[tuple[str, Message, float, bool]],
) -> None:
    sent: list[Message] = []

    def send(peer: str, message: Message) -> bool:
        assert peer in ("B", "C")
        sent.append(message)
        return True

    rules = Rules(ORIGINS, max_future_ns=0, max_id=MAX_ID)
    links = {"B": LinkCounters(), "C": LinkCounters()}
    node = Replicator("A", 0xA, ("B", "C"), Locations(), rules, links)
    node.start(0.0, send)
    now = 0.0
    for peer, raw, dt, tick in script:
        try:
            message = wire.decode(wire.encode(raw))
        except (OverflowError, TypeError, ValueError):  # not encodable: cannot arrive
            continue
        if message is None:
            continue
        now += dt
        stored = node.receive(peer, message, now, LATEST)
        node.flush(send)
        if tick:
            node.tick(now, send)
        for entry in stored:
            assert via_of(entry) == node.via[peer]
        node.take_events()
    event("stored some" if len(node.store) else "stored none")  # shows it is not vacuous
    for entry in node.store:
        assert_client_could_have_sent(record_of(entry))
    assert [seq_of(e) for e in node.store] == sorted(seq_of(e) for e in node.store)
    for link in links.values():
        assert link.records_in == link.applied + link.stale + link.invalid
    for message in sent:
        assert wire.decode(wire.encode(message)) == message  # what it sends is well formed


@FAST
@given(st.one_of(JUNK, RECORDS, PARTS.map(lambda parts: " ".join(parts).encode())))
def test_the_compiled_check_answers_as_the_python_one(line: Any) -> None:
    compiled = record.parse_record
    if compiled is record.parse_record_python:
        return  # not built here (test_record says whether it should have been)
    for latest, max_id in ((LATEST, MAX_ID), (0, 1), (-(10**30), 0)):
        python = record.parse_record_python(line, ORIGINS, latest, max_id)
        assert compiled(line, ORIGINS, latest, max_id) == python


@FAST
@given(st.one_of(LINES, iamat_like().map(lambda pair: pair[0])), st.sampled_from([1, 8, MAX_ID]))
def test_the_compiled_iamat_parse_answers_as_the_python_one(line: bytes, max_id: int) -> None:
    compiled = protocol.parse_iamat
    if compiled is None:
        return  # not built here
    event = compiled(line, max_id, IAmAt)
    m = protocol._IAMAT.fullmatch(line)
    python = protocol._iamat(m, line, max_id) if m is not None else Invalid(line)
    if event is None:  # left to Python: it is no well-formed IAMAT
        assert not isinstance(python, IAmAt)
    else:
        assert type(event) is IAmAt and event == python
