"""The client line protocol, exactly as docs/protocol.md writes it, without sockets.

Skews are checked against `decimal` arithmetic, never floats: the reply must be
exact to the nanosecond whatever the number of decimals the client sent.
"""

from __future__ import annotations

import json
import random
from decimal import Decimal, localcontext
from typing import Any

import pytest

from gateway import protocol
from gateway.protocol import (
    MAX_ID,
    NS,
    IAmAt,
    Invalid,
    LineSplitter,
    WhatsAt,
    format_invalid,
    format_whatsat,
    parse_line,
)
from zherd import record

FAR = 2**62  # no time bound in these checks


@pytest.fixture(autouse=True, params=["compiled", "python"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the IAMAT parse in C (gateway._speedups) and without."""
    if request.param == "python":
        monkeypatch.setattr(protocol, "parse_iamat", None)
    elif protocol.parse_iamat is None:
        pytest.skip("gateway._speedups is not built here")
    return request.param


def locate(event: IAmAt, server: str, received_ns: int) -> bytes:
    """The record an IAMAT makes at the server that heard it (as the node builds it)."""
    skew = record.format_skew(received_ns - event.time_ns)
    return record.make(server.encode(), skew, event.client_id, event.coords, event.time)


def accepted_by_a_neighbor(line: bytes, origin: str) -> bool:
    valid = record.check(line, frozenset({origin.encode()}), FAR, MAX_ID)
    return isinstance(valid, record.Valid)


EXAMPLE = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1400794645.392014450"


def iamat(line: bytes) -> IAmAt:
    event = parse_line(line)
    assert isinstance(event, IAmAt), event
    return event


def expected_skew(received_ns: int, client_time: str) -> str:
    """The reply's skew by exact decimal arithmetic: signed, exactly 9 decimals."""
    with localcontext(prec=100):
        skew = Decimal(received_ns).scaleb(-9) - Decimal(client_time)
    return ("-" if skew < 0 else "+") + f"{abs(skew):.9f}"


# IAMAT


def test_iamat_example_from_the_design() -> None:
    event = iamat(EXAMPLE)
    assert event == IAmAt(
        b"kiwi.cs.ucla.edu",
        b"+34.068930-118.445127",
        b"1400794645.392014450",
        1400794645392014450,
        34.06893,
        -118.445127,
    )


@pytest.mark.parametrize(
    "line",
    [
        b"IAMAT\tkiwi +34.068930-118.445127   1400794645.392014450",
        b"   IAMAT kiwi +34.068930-118.445127 1400794645.392014450   ",
        b"IAMAT  \t kiwi\x0b+34.068930-118.445127\x0c1400794645.392014450\r",
        b"\t\tIAMAT kiwi \t +34.068930-118.445127 \t 1400794645.392014450 \r",
    ],
)
def test_iamat_fields_split_on_any_run_of_ascii_whitespace(line: bytes) -> None:
    event = iamat(line)
    assert (event.client_id, event.coords, event.time) == (
        b"kiwi",
        b"+34.068930-118.445127",
        b"1400794645.392014450",
    )


@pytest.mark.parametrize(
    "client_id",
    ["kiwi.cs.ucla.edu", "x", "?", "IAMAT", "a,b;c=d", "ünï€ødé", "a\u00a0b", "a\x1cb"],
)
def test_client_id_is_any_run_of_non_whitespace(client_id: str) -> None:
    line = f"IAMAT {client_id} +1-1 1".encode()
    event = iamat(line)
    assert event.client_id == client_id.encode()
    assert accepted_by_a_neighbor(locate(event, "S", 0), "S")  # every id the gateway takes


@pytest.mark.parametrize(
    ("coords", "lat", "lon"),
    [
        ("+34.068930-118.445127", 34.06893, -118.445127),
        ("+34-118", 34.0, -118.0),
        ("-0+0", 0.0, 0.0),
        ("+1.5-2.25", 1.5, -2.25),
        ("+90-180", 90.0, -180.0),
        ("-90+180", -90.0, 180.0),
        ("+90.000000000000+180.0000000000000000000000", 90.0, 180.0),
        ("-89.999999999999+179.999999999999", -89.999999999999, 179.999999999999),
        ("+007.5-000.25", 7.5, -0.25),
        (
            "+34.06893012345678901234-118.44512712345678901234",
            34.06893012345679,
            -118.44512712345679,
        ),
    ],
)
def test_coords_any_number_of_decimals_bounds_inclusive(
    coords: str, lat: float, lon: float
) -> None:
    event = iamat(f"IAMAT c {coords} 1".encode())
    assert (event.coords, event.lat, event.lon) == (coords.encode(), lat, lon)


BAD_COORDS = [
    "34.068930-118.445127",  # no sign on latitude
    "+34.068930118.445127",  # no sign on longitude
    "+34.068930",  # one number
    "+34.068930-118.445127+1",  # three numbers
    "+34.-118",  # a point without decimals
    "+.5-118",  # decimals without a whole part
    "+34,5-118",
    "+1e1+1",
    "++34-118",
    "+34--118",
    "+inf+0",
    "+nan+0",
    "+91+0",
    "-90.000001+0",
    "+0+180.0000001",
    "+0-181",
    "+1000000000000000000000+0",
    "+90.00000000000000000001+0",  # out of range, though a float would round it to 90
    "+0-180.00000000000000000001",
    "+٣٤-١١٨",  # non-ASCII digits
    "",
]


@pytest.mark.parametrize("coords", BAD_COORDS)
def test_bad_or_out_of_range_coords_are_invalid(coords: str) -> None:
    line = f"IAMAT kiwi {coords} 1400794645.392014450".encode()
    assert parse_line(line) == Invalid(line)


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1400794645", 1400794645 * NS),
        ("1400794645.3", 1400794645 * NS + 300_000_000),
        ("1400794645.392014450", 1400794645392014450),
        ("0.000000001", 1),
        ("0", 0),
        ("12.123456789", 12123456789),
        ("99999999999999999999.999999999", 10**20 * NS - 1),
    ],
)
def test_time_is_exact_integer_nanoseconds(text: str, ns: int) -> None:
    assert iamat(f"IAMAT c +0+0 {text}".encode()).time_ns == ns


@pytest.mark.parametrize(
    "text",
    ["1.1234567891", "1.", ".5", "1e9", "abc", "1,5", "1.5.5", "0x10", "1_000", "", "١٢"],
)
def test_bad_times_are_invalid(text: str) -> None:
    line = f"IAMAT kiwi +1+1 {text}".encode()
    assert parse_line(line) == Invalid(line)


# the AT reply


def at_reply(line: bytes, server: str, received_ns: int) -> bytes:
    return record.at_line(locate(iamat(line), server, received_ns))


def test_at_reply_example_from_the_paper() -> None:
    reply = at_reply(EXAMPLE, "Alford", 1400794645655887836)
    assert reply == (
        b"AT Alford +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1400794645.392014450"
    )


@pytest.mark.parametrize(
    ("client_time", "received_ns", "skew"),
    [
        ("10.000012", 10 * NS, "-0.000012000"),
        ("10.5", 10_500_000_000, "+0.000000000"),
        ("10.500000000", 10_500_000_000, "+0.000000000"),
        ("10", 9 * NS, "-1.000000000"),
        ("10", 10 * NS + 1, "+0.000000001"),
        ("10.000000001", 10 * NS, "-0.000000001"),
        ("0", 1400794645 * NS, "+1400794645.000000000"),
    ],
)
def test_skew_is_signed_with_exactly_nine_decimals(
    client_time: str, received_ns: int, skew: str
) -> None:
    reply = at_reply(f"IAMAT c +0+0 {client_time}".encode(), "S", received_ns)
    assert reply.split()[2] == skew.encode()
    assert skew == expected_skew(received_ns, client_time)


@pytest.mark.parametrize("decimals", range(10))
def test_skew_and_echo_exact_for_every_number_of_decimals(decimals: int) -> None:
    rng = random.Random(decimals)
    for _ in range(200):
        whole = rng.randrange(10**10)
        frac = "".join(rng.choice("0123456789") for _ in range(decimals))
        client_time = f"{whole}.{frac}" if decimals else str(whole)
        coords = f"{rng.choice('+-')}{rng.randrange(90)}.{rng.randrange(10**6):06d}-118.4"
        received_ns = rng.randrange(10**19) if rng.random() < 0.5 else whole * NS
        line = f"IAMAT id{rng.randrange(100)} {coords} {client_time}".encode()
        fields = at_reply(line, "Server", received_ns).split(b" ")
        assert fields[:2] == [b"AT", b"Server"]
        assert fields[2].decode() == expected_skew(received_ns, client_time)
        assert fields[3:] == line.split()[1:]  # the client's own text, as sent


def test_echo_keeps_the_client_text_not_a_normalized_number() -> None:
    line = b"IAMAT c +007.50000-000.25000 0001400794645.100"
    assert at_reply(line, "S", 1400794645100000000) == (
        b"AT S +0.000000000 c +007.50000-000.25000 0001400794645.100"
    )


def test_locate_records_origin_and_parsed_fields() -> None:
    line = locate(iamat(EXAMPLE), "Alford", 1400794645392014450 - 12_000)
    assert record.Record.parse(line) == record.Record(
        "Alford",
        "-0.000012000",
        "kiwi.cs.ucla.edu",
        "+34.068930-118.445127",
        "1400794645.392014450",
    )
    assert record.fields(line) == (
        b"kiwi.cs.ucla.edu",
        b"Alford",
        1400794645392014450,
        34.06893,
        -118.445127,
    )
    assert accepted_by_a_neighbor(line, "Alford")  # what a client may send, a neighbor accepts


# WHATSAT


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"WHATSAT kiwi.cs.ucla.edu 10 5", WhatsAt(b"kiwi.cs.ucla.edu", 10.0, 5)),
        (b"  WHATSAT\tkiwi  50  20 \r", WhatsAt(b"kiwi", 50.0, 20)),
        (b"WHATSAT kiwi 0.001 1", WhatsAt(b"kiwi", 0.001, 1)),
        (b"WHATSAT kiwi 50.0000000000 01", WhatsAt(b"kiwi", 50.0, 1)),
        (b"WHATSAT kiwi 7.25 020", WhatsAt(b"kiwi", 7.25, 20)),
    ],
)
def test_whatsat_valid(line: bytes, event: WhatsAt) -> None:
    assert parse_line(line) == event


@pytest.mark.parametrize(
    "line",
    [
        b"WHATSAT kiwi 0 5",
        b"WHATSAT kiwi 0.0 5",
        b"WHATSAT kiwi 50.0001 5",
        b"WHATSAT kiwi 51 5",
        b"WHATSAT kiwi -5 5",
        b"WHATSAT kiwi +5 5",
        b"WHATSAT kiwi 1e1 5",
        b"WHATSAT kiwi nan 5",
        b"WHATSAT kiwi inf 5",
        b"WHATSAT kiwi abc 5",
        b"WHATSAT kiwi . 5",
        b"WHATSAT kiwi 10 0",
        b"WHATSAT kiwi 10 21",
        b"WHATSAT kiwi 10 -1",
        b"WHATSAT kiwi 10 +1",
        b"WHATSAT kiwi 10 1.5",
        b"WHATSAT kiwi 10 five",
        b"WHATSAT kiwi 10",
        b"WHATSAT kiwi 10 5 extra",
        b"whatsat kiwi 10 5",
        b"WhatsAt kiwi 10 5",
    ],
)
def test_whatsat_invalid(line: bytes) -> None:
    assert parse_line(line) == Invalid(line)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"   ",
        b"\r",
        b"IAMAT",
        b"IAMAT kiwi +34.068930-118.445127",
        b"IAMAT kiwi +34.068930-118.445127 1400794645.392014450 extra",
        b"IAMAT kiwi +34.068930 -118.445127 1400794645.392014450",
        b"iamat kiwi +34.068930-118.445127 1400794645.392014450",
        b"Iamat kiwi +34.068930-118.445127 1400794645.392014450",
        b"HELLO kiwi +34.068930-118.445127 1400794645.392014450",
        b"AT Alford +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1400794645.392014450",
        b"IAMAT kiwi +34.068930-118.445127 1400794645.3920144501",  # 10 decimals
        b"IAMAT \xff\xfe +34.068930-118.445127 1400794645.392014450",
        b"\x00IAMAT kiwi +34.068930-118.445127 1400794645.392014450",
    ],
)
def test_anything_else_is_invalid_with_the_line_as_received(line: bytes) -> None:
    assert parse_line(line) == Invalid(line)


def test_invalid_reply_echoes_the_line_as_received() -> None:
    line = b"  iamat  kiwi   +1+1 1\t"
    assert format_invalid(parse_line(line).line) == b"?   iamat  kiwi   +1+1 1\t\n"  # type: ignore[union-attr]


# WHATSAT reply


def split_whatsat(reply: bytes) -> tuple[bytes, bytes]:
    """The AT line and the JSON body; asserts the exact framing around them."""
    assert reply.endswith(b"\n\n")
    assert not reply.endswith(b"\n\n\n")
    at_line, _, rest = reply.partition(b"\n")
    return at_line, rest[:-2]


PLACES: dict[str, Any] = {
    "html_attributions": [],
    "results": [
        {"name": "Royce Hall\n\nUCLA", "vicinity": "Los Angeles", "types": ["point_of_interest"]},
        {"name": "Café Ünï", "geometry": {"location": {"lat": 34.07, "lng": -118.44}}},
    ],
    "status": "OK",
}


@pytest.mark.parametrize(
    "places",
    [PLACES, {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}, {}],
)
def test_format_whatsat_framing(places: dict[str, Any]) -> None:
    at = b"AT Alford +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1400794645.392014450"
    at_line, body = split_whatsat(format_whatsat(at, json.dumps(places, indent=3).encode()))
    assert at_line == at
    assert b"\n\n" not in body
    assert not body.endswith(b"\n")
    assert json.loads(body) == places


def test_format_whatsat_collapses_runs_of_newlines() -> None:
    """JSON encoders do not write blank lines, but a passed-through body could hold some."""
    body = b'\n{\n\n\n   "a": 1,\n\n   "b": 2\n}\n\n\n'
    reply = format_whatsat(b"AT S +0.000000000 c +0+0 0", body)
    assert reply == b'AT S +0.000000000 c +0+0 0\n{\n   "a": 1,\n   "b": 2\n}\n\n'


# LineSplitter


def feed_all(splitter: LineSplitter, chunks: list[bytes]) -> list[bytes | Invalid]:
    out: list[bytes | Invalid] = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
    return out


def test_splitter_joins_lines_split_across_chunks() -> None:
    s = LineSplitter(1024)
    assert s.feed(b"IAM") == []
    assert s.feed(b"AT a +1+1 1\nWHAT") == [b"IAMAT a +1+1 1"]
    assert s.feed(b"SAT a 1 1\n\n") == [b"WHATSAT a 1 1", b""]
    assert s.close() is None


def test_splitter_returns_the_final_line_without_newline_on_close() -> None:
    s = LineSplitter(1024)
    assert s.feed(b"one\ntw") == [b"one"]
    assert s.feed(b"o") == []
    assert s.close() == b"two"
    assert s.close() is None


def test_splitter_line_of_exactly_max_is_kept() -> None:
    s = LineSplitter(8)
    assert s.feed(b"12345678\n") == [b"12345678"]
    assert s.feed(b"1234") == []
    assert s.feed(b"5678\n") == [b"12345678"]


def test_splitter_cuts_an_overlong_line_once_in_one_chunk() -> None:
    s = LineSplitter(8)
    assert s.feed(b"0123456789abc\nok\n") == [Invalid(b"01234567"), b"ok"]


def test_splitter_cuts_an_overlong_line_once_across_chunks_and_skips_its_rest() -> None:
    s = LineSplitter(8)
    assert s.feed(b"0123") == []
    assert s.feed(b"456789") == [Invalid(b"01234567")]
    assert s.feed(b"more of the same line") == []
    assert s.feed(b"still") == []
    assert s.feed(b" going\nIAMAT\nne") == [b"IAMAT"]
    assert s.feed(b"xt\n") == [b"next"]
    assert s.close() is None


def test_splitter_overlong_final_line_is_not_returned_again_by_close() -> None:
    s = LineSplitter(4)
    assert s.feed(b"abcdefgh") == [Invalid(b"abcd")]
    assert s.feed(b"ijk") == []
    assert s.close() is None


def test_splitter_memory_is_bounded_by_max_line() -> None:
    rng = random.Random(7)
    max_line = 64
    s = LineSplitter(max_line)
    for _ in range(2000):
        n = rng.choice([1, 7, 63, 64, 65, 500])
        chunk = bytes(rng.choice(b"ab\n" if rng.random() < 0.3 else b"abcdef") for _ in range(n))
        for line in s.feed(chunk):
            raw = line.line if isinstance(line, Invalid) else line
            assert len(raw) <= max_line
        assert len(s._buf) <= max_line


def test_splitter_feeding_nothing_is_harmless() -> None:
    s = LineSplitter(8)
    assert s.feed(b"") == []
    assert s.feed(b"ab") == []
    assert s.feed(b"") == []
    assert s.feed(b"\n") == [b"ab"]
    assert feed_all(s, [b"", b"x\n", b""]) == [b"x"]


# The number grammar, at each edge (docs/protocol.md has the table)

DIGITS20 = "0" * 18 + "50"  # 20 digits, leading zeros included


@pytest.mark.parametrize(
    ("radius", "km"),
    [
        ("0.00000000001", 1e-11),  # 11 decimals
        ("00000000010", 10.0),  # 11 digits with leading zeros
        ("0." + "0" * 19 + "1", 1e-20),  # 20 decimals: the smallest radius there is
        ("1", 1.0),
        ("50", 50.0),
        ("50." + "0" * 20, 50.0),
        (DIGITS20, 50.0),
        (DIGITS20 + "." + "0" * 20, 50.0),
        ("49." + "9" * 20, 50.0),  # rounds to 50.0 as a float, and is within (0, 50]
        ("007.25", 7.25),
    ],
)
def test_whatsat_radius_any_decimal_in_0_to_50_up_to_20_digits_each_side(
    radius: str, km: float
) -> None:
    assert parse_line(f"WHATSAT seed {radius} 1".encode()) == WhatsAt(b"seed", km, 1)


@pytest.mark.parametrize(
    "radius",
    [
        "0",
        "0." + "0" * 20,
        "0" * 20,
        "0." + "0" * 20 + "1",  # 21 decimals
        "0" + DIGITS20,  # 21 digits, though it is 50
        "50." + "0" * 19 + "1",  # just over 50, though a float would round it to 50
        "50.00000000000000000001",
        "51",
        "1e1",
        "1.",
        ".5",
        "+1",
        "-1",
        "1_0",
        "\u0661",  # ARABIC-INDIC DIGIT ONE
    ],
)
def test_whatsat_radius_outside_the_grammar_is_invalid(radius: str) -> None:
    line = f"WHATSAT seed {radius} 1".encode()
    assert parse_line(line) == Invalid(line)


@pytest.mark.parametrize(
    ("count", "n"), [("1", 1), ("20", 20), ("01", 1), ("0" * 18 + "20", 20), ("0" * 19 + "7", 7)]
)
def test_whatsat_count_an_integer_in_1_to_20_up_to_20_digits(count: str, n: int) -> None:
    assert parse_line(f"WHATSAT seed 1 {count}".encode()) == WhatsAt(b"seed", 1.0, n)


@pytest.mark.parametrize(
    "count", ["0", "00", "21", "0" * 20 + "1", "1.0", "+1", "-1", "1e1", "20.", "", "٢"]
)
def test_whatsat_count_outside_the_grammar_is_invalid(count: str) -> None:
    line = f"WHATSAT seed 1 {count}".encode()
    assert parse_line(line) == Invalid(line)


def test_time_up_to_20_integer_digits_and_9_decimals() -> None:
    assert iamat(f"IAMAT c +0+0 {'0' * 19}1.123456789".encode()).time_ns == NS + 123456789
    for text in ("0" * 21, "1" * 21, "1.1234567890"):
        line = f"IAMAT c +0+0 {text}".encode()
        assert parse_line(line) == Invalid(line)


@pytest.mark.parametrize("command", ["IAMAT {} +1+1 1", "WHATSAT {} 1 1"])
def test_client_id_of_max_id_bytes_is_taken_one_more_is_not(command: str) -> None:
    assert not isinstance(parse_line(command.format("i" * MAX_ID).encode()), Invalid)
    line = command.format("i" * (MAX_ID + 1)).encode()
    assert parse_line(line) == Invalid(line)
    assert not isinstance(parse_line(line, max_id=MAX_ID + 1), Invalid)  # the limit is a setting
    multibyte = command.format("€" * (MAX_ID // 3 + 1)).encode()  # 3 bytes each: over by bytes
    assert parse_line(multibyte) == Invalid(multibyte)


def test_a_huge_line_of_fields_is_not_split_into_fields() -> None:
    """Parsing never makes an object per field: a line of 30,000 fields costs one match."""
    line = b"WHATSAT " + b"x " * 30_000
    assert parse_line(line) == Invalid(line)


# LineSplitter.split: stopping after a number of lines


def test_split_returns_at_most_max_lines_and_the_rest_unread() -> None:
    s = LineSplitter(1024)
    assert s.split(b"a\nb\nc\nd", 2) == ([b"a", b"b"], b"c\nd")
    assert s.split(b"c\nd", 2) == ([b"c"], b"")
    assert s.close() == b"d"


def test_split_with_a_partial_line_held_keeps_it_in_front() -> None:
    s = LineSplitter(1024)
    assert s.split(b"IAM", 1) == ([], b"")
    assert s.split(b"AT\nx\ny\n", 1) == ([b"IAMAT"], b"x\ny\n")


def test_a_partial_line_growing_over_many_reads_is_not_copied_whole_each_time() -> None:
    s = LineSplitter(1 << 20)
    for _ in range(1000):
        assert s.feed(b"x" * 1000) == []
    assert isinstance(s._buf, bytearray)  # appended in place (amortized), not bytes + bytes
    assert s.feed(b"\n") == [b"x" * 1_000_000]
