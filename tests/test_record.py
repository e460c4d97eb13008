"""The herd's record: one line of bytes, made once, checked with a reason when it fails."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zherd import record
from zherd.record import (
    NS,
    Record,
    Rejected,
    Valid,
    at_line,
    check,
    client_of,
    fields,
    format_skew,
    make,
)

ORIGINS = frozenset({b"Alford", b"Bolden", b"Hamilton", b"Parker", b"Powell"})
LATEST = 2_000_000_000 * NS  # the newest client time accepted
MAX_ID = 16

KIWI = b"Alford +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1400794645.392014450"


@pytest.fixture(autouse=True, params=["compiled", "python"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs against both checks: zherd._speedups and the pure Python."""
    if request.param == "python":
        monkeypatch.setattr(record, "parse_record", record.parse_record_python)
    elif record.parse_record is record.parse_record_python:
        pytest.skip("zherd._speedups is not built here")
    return request.param


def checked(line: object) -> Valid | Rejected:
    return check(line, ORIGINS, LATEST, MAX_ID)


def test_the_compiled_check_is_built_wherever_it_can_be(implementation: str) -> None:
    """pip builds zherd._speedups and gateway._speedups when a C compiler and the Python
    headers are there (CI's machine has both): a build that failed must not pass unnoticed."""
    headers = Path(sysconfig.get_paths()["include"], "Python.h").exists()
    if implementation == "compiled" or not (headers and shutil.which("cc")):
        return
    import gateway._speedups  # noqa: F401  (raises if it was not built)
    import zherd._speedups  # noqa: F401


def rec(
    client: str = "kiwi",
    time: str = "10",
    origin: str = "Alford",
    coords: str = "+1+1",
    skew: str = "+0.000000000",
) -> bytes:
    return Record(origin, skew, client, coords, time).line


# making and reading


def test_make_is_the_body_of_the_at_reply() -> None:
    line = make(
        b"Alford",
        b"+0.263873386",
        b"kiwi.cs.ucla.edu",
        b"+34.068930-118.445127",
        b"1400794645.392014450",
    )
    assert line == KIWI
    assert at_line(line) == b"AT " + KIWI
    assert b"\n" not in at_line(line)


def test_record_names_the_fields_and_gives_back_the_same_bytes() -> None:
    named = Record.parse(KIWI)
    assert named == Record(
        "Alford",
        "+0.263873386",
        "kiwi.cs.ucla.edu",
        "+34.068930-118.445127",
        "1400794645.392014450",
    )
    assert named.client_id == "kiwi.cs.ucla.edu"
    assert named.line == KIWI
    assert make(*(field.encode() for field in named)) == KIWI


def test_fields_of_a_valid_record() -> None:
    assert fields(KIWI) == (
        b"kiwi.cs.ucla.edu",
        b"Alford",
        1400794645392014450,
        34.06893,
        -118.445127,
    )
    assert fields(rec(time="-5.5", coords="-90+180")) == (
        b"kiwi",
        b"Alford",
        -5_500_000_000,
        -90,
        180,
    )
    assert fields(rec(time="+3.000000001")) == (b"kiwi", b"Alford", 3 * NS + 1, 1.0, 1.0)


def test_client_of_reads_the_third_field_without_checking() -> None:
    assert client_of(KIWI) == b"kiwi.cs.ucla.edu"
    assert client_of(b"x y z") == b"z"
    assert client_of(b"x y z w v") == b"z"
    with pytest.raises(IndexError):
        client_of(b"x y")


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "+0.000000000"),
        (1, "+0.000000001"),
        (263_873_386, "+0.263873386"),
        (-12_000, "-0.000012000"),
        (-NS, "-1.000000000"),
        (10 * NS + 1, "+10.000000001"),
        (-(10**20) - 7, "-100000000000.000000007"),
        (-1, "-0.000000001"),
        (123 * NS + 4, "+123.000000004"),
        (-(10**30) - 5, "-1000000000000000000000.000000005"),
    ],
)
def test_format_skew(ns: int, text: str) -> None:
    assert format_skew(ns) == text.encode()


# checking


@pytest.mark.parametrize(
    ("time", "ns"),
    [
        ("1400794645.392014450", 1400794645392014450),
        ("10", 10 * NS),
        ("10.5", 10 * NS + NS // 2),
        ("+3.000000001", 3 * NS + 1),
        ("-5.5", -5_500_000_000),
        ("0", 0),
        ("-0", 0),
        ("00000000000000000001", NS),  # 20 digits: the grammar's most
        ("2000000000", LATEST),  # exactly the bound
    ],
)
def test_a_valid_record_says_who_when_and_from_where(time: str, ns: int) -> None:
    assert checked(rec("kiwi", time, "Parker")) == Valid(b"kiwi", b"Parker", ns)


def test_every_origin_of_the_topology_is_accepted() -> None:
    for origin in ORIGINS:
        result = checked(rec(origin=origin.decode()))
        assert isinstance(result, Valid) and result.origin == origin


@pytest.mark.parametrize(
    "coords", ["+90+180", "-90-180", "+90.000-180.0", "+0-0", "+34.068930-118.445127", "-0.5+179.9"]
)
def test_coordinates_on_and_inside_the_edges_are_accepted(coords: str) -> None:
    assert isinstance(checked(rec(coords=coords)), Valid)


def test_a_client_id_of_exactly_max_id_is_accepted() -> None:
    assert checked(rec("x" * MAX_ID)) == Valid(b"x" * MAX_ID, b"Alford", 10 * NS)


@pytest.mark.parametrize(
    "line",
    ["kiwi", KIWI.decode(), bytearray(KIWI), memoryview(KIWI), None, 5, (KIWI,), [KIWI]],
    ids=repr,
)
def test_not_bytes_is_rejected(line: object) -> None:
    assert checked(line) == Rejected("not a byte string")


NOT_RECORDS = [
    b"",
    b" ",
    b"Alford",
    b"AT " + KIWI,  # a reply is not a record
    KIWI + b" extra",
    KIWI + b"\n",
    KIWI + b" ",
    b" " + KIWI,
    KIWI.replace(b" ", b"  ", 1),
    KIWI.replace(b" ", b"\t", 1),
    rec(skew="+0.1"),  # a skew has exactly 9 decimals
    rec(skew="0.000000000"),  # and a sign
    rec(skew="+0.0000000001"),
    rec(coords="1+1"),  # coordinates are signed
    rec(coords="+1"),
    rec(coords="+1+1+1"),
    rec(coords="+1.+1"),
    rec(coords="+.5+1"),
    rec(time="1.0000000001"),  # at most 9 decimals
    rec(time="123456789012345678901"),  # at most 20 digits
    rec(time="1."),
    rec(time=".5"),
    rec(time="1e9"),
    rec(time="++1"),
    rec(time=""),
    rec(client=""),
    rec(client="ki wi"),
    rec(origin=""),
]


@pytest.mark.parametrize("line", NOT_RECORDS, ids=repr)
def test_malformed_is_not_a_record(line: bytes) -> None:
    assert checked(line) == Rejected("not a record")


@pytest.mark.parametrize("origin", ["Zed", "alford", "Alford2", "Alfor", "Alford\x00"])
def test_an_origin_outside_the_topology_is_rejected(origin: str) -> None:
    assert checked(rec(origin=origin)) == Rejected("origin is no server of the topology")


@pytest.mark.parametrize("length", [MAX_ID + 1, 10 * MAX_ID, 65_536])
def test_a_client_id_longer_than_max_id_is_rejected(length: int) -> None:
    assert checked(rec("x" * length)) == Rejected("client id too long")


def test_max_id_counts_bytes_not_characters() -> None:
    assert checked(rec("ü" * (MAX_ID // 2))) == Valid(
        "ü".encode() * (MAX_ID // 2), b"Alford", 10 * NS
    )
    assert checked(rec("ü" * (MAX_ID // 2 + 1))) == Rejected("client id too long")


@pytest.mark.parametrize(
    "coords",
    [
        "+91+0",
        "-90.000001+0",
        "+0+180.000001",
        "+0-181",
        "+1000+0",
        "+90.0000000000000000000001+0",  # rounds to 90.0 as a float: decided exactly
        "+0-180.0000000000000000000001",
    ],
)
def test_coordinates_out_of_range_are_rejected(coords: str) -> None:
    assert checked(rec(coords=coords)) == Rejected("coordinates out of range")


@pytest.mark.parametrize("time", ["2000000000.000000001", "2000000001", "99999999999999999999"])
def test_a_time_beyond_the_bound_is_rejected(time: str) -> None:
    assert checked(rec(time=time)) == Rejected("time too far in the future")


def test_the_bound_is_the_callers() -> None:
    line = rec(time="100")
    assert isinstance(check(line, ORIGINS, 100 * NS, MAX_ID), Valid)
    assert check(line, ORIGINS, 100 * NS - 1, MAX_ID) == Rejected("time too far in the future")
    assert check(line, frozenset(), LATEST, MAX_ID) == Rejected(
        "origin is no server of the topology"
    )
    assert check(rec("kiwi"), ORIGINS, LATEST, 3) == Rejected("client id too long")


@pytest.mark.parametrize("client", [b"\xff", b"ki\xffwi", b"\xed\xa0\x80", b"\xc3", b"\xc0\xaf"])
def test_a_client_id_no_iamat_could_carry_is_rejected(client: bytes) -> None:
    """A client's IAMAT must be UTF-8 (the gateway answers `?` otherwise): so must a record."""
    line = b"Alford +0.000000000 " + client + b" +1+1 10"
    assert checked(line) == Rejected("client id is not UTF-8")


@given(
    st.sampled_from([b"Alford", b"B"]),
    st.one_of(st.integers(-(10**40), 10**40), st.sampled_from([2**63, -(2**63), 2**63 - 1])),
    st.binary(max_size=20),
)
def test_the_compiled_record_is_made_as_the_python_one(
    origin: bytes, skew_ns: int, client: bytes
) -> None:
    if record.make_record is record.make_record_python:
        return  # not built here
    fields_ = (origin, skew_ns, client, b"+1-1", b"1400794645.39")
    assert record.make_record(*fields_) == record.make_record_python(*fields_)
