"""The herd's record: one client's fix as every server stores and floods it.

A record is one line of bytes, the body of the AT reply that the server which
heard the IAMAT gave:

    <origin> <skew> <client-id> <coords> <time>

so answering a WHATSAT is `b"AT " + record`, storing it is keeping the bytes, and
flooding it is sending them. No field may hold whitespace, so single spaces cut
it unambiguously. `Record` is the same thing with named fields, for code that is
not on a hot path. Records from neighbors are validated exactly like a client's
IAMAT (plus the origin and time rules), with a reason when they fail.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import NamedTuple

NS = 1_000_000_000

_COORD = rb"[+-][0-9]+(?:\.[0-9]+)?"
_TIME = rb"([+-]?)([0-9]{1,20})(?:\.([0-9]{1,9}))?"
_SKEW = rb"[+-][0-9]+\.[0-9]{9}"
# The whole record in one match (the herd's hot path: every server checks every
# update it is sent once). Groups: 1 origin, 2 client id, 3 latitude, 4 longitude,
# 5-7 the time's sign, whole seconds and fraction.
_LINE = re.compile(rb"(\S+) %s (\S+) (%s)(%s) %s" % (_SKEW, _COORD, _COORD, _TIME))
ORIGIN, CLIENT, LAT, LON, SIGN, WHOLE, FRAC = range(1, 8)


class Record(NamedTuple):
    """A record's fields, as text, in the order of the AT line."""

    origin: str
    skew: str
    client_id: str
    coords: str
    time: str

    @classmethod
    def parse(cls, line: bytes) -> Record:
        return cls(*line.decode().split(" "))

    @property
    def line(self) -> bytes:
        return " ".join(self).encode()


class Valid(NamedTuple):
    """What a checked record says, parsed once."""

    client_id: bytes
    origin: bytes
    time_ns: int


class Rejected(NamedTuple):
    reason: str


def make(origin: bytes, skew: bytes, client_id: bytes, coords: bytes, time: bytes) -> bytes:
    """The record an IAMAT makes at the server that heard it (the client's fields as sent)."""
    return b"%s %s %s %s %s" % (origin, skew, client_id, coords, time)


def make_record_python(
    origin: bytes, skew_ns: int, client_id: bytes, coords: bytes, time: bytes
) -> bytes:
    """`make` with the skew in ns (zherd._speedups has it in C: the gateway's hot path)."""
    return make(origin, format_skew(skew_ns), client_id, coords, time)


def at_line(record: bytes) -> bytes:
    """The AT reply for a record, without its newline."""
    return b"AT " + record


def format_skew(ns: int) -> bytes:
    """Signed seconds with exactly 9 decimals: `+0.263873386`, `-0.000012000`."""
    digits = b"%010d" % (-ns if ns < 0 else ns)
    return (b"-" if ns < 0 else b"+") + digits[:-9] + b"." + digits[-9:]


def nanoseconds(sign: bytes, whole: bytes, frac: bytes | None) -> int:
    ns = int(whole + frac.ljust(9, b"0")) if frac else int(whole) * NS
    return -ns if sign == b"-" else ns


def within(text: bytes, limit: int) -> bool:
    """|text| <= limit, exactly: rounding can land a text just past the limit on it."""
    value = float(text)
    if value != limit and value != -limit:
        return -limit < value < limit
    return abs(Decimal(text.decode())) <= limit


def check(line: object, origins: frozenset[bytes], latest_ns: int, max_id: int) -> Valid | Rejected:
    """Whether a record from a neighbor is one the herd could have made.

    `origins`: the servers of the topology; `latest_ns`: the newest client time
    accepted (now plus the future bound); `max_id`: the longest client id.
    """
    result = parse_record(line, origins, latest_ns, max_id)
    return Rejected(result) if type(result) is str else Valid(*result)


def parse_record_python(
    line: object, origins: frozenset[bytes], latest_ns: int, max_id: int
) -> tuple[bytes, bytes, int] | str:
    """`check` for the hot path: (client id, origin, time in ns), or why it is no record.

    zherd._speedups has the same in C (~0.3 us a record, against ~2), used when it was
    built; this one is used otherwise, and the tests hold the two to the same answers.
    """
    if type(line) is not bytes:
        return "not a byte string"
    m = _LINE.fullmatch(line)
    if m is None:
        return "not a record"
    origin, client_id, lat, lon, sign, whole, frac = m.groups()
    if origin not in origins:
        return "origin is no server of the topology"
    if len(client_id) > max_id:
        return "client id too long"
    if not client_id.isascii() and not _utf8(client_id):
        return "client id is not UTF-8"  # no IAMAT can carry it
    if not (within(lat, 90) and within(lon, 180)):
        return "coordinates out of range"
    time_ns = nanoseconds(sign, whole, frac)
    if time_ns > latest_ns:
        return "time too far in the future"
    return client_id, origin, time_ns


try:
    from zherd._speedups import make_record, parse_record
except ImportError:  # not built (no C compiler where it was installed)
    make_record, parse_record = make_record_python, parse_record_python


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def fields(line: bytes) -> tuple[bytes, bytes, int, float, float]:
    """(client id, origin, time in ns, lat, lon) of a record known to be valid."""
    m = _LINE.fullmatch(line)
    assert m is not None, line
    return (
        m[CLIENT],
        m[ORIGIN],
        nanoseconds(m[SIGN], m[WHOLE], m[FRAC]),
        float(m[LAT]),
        float(m[LON]),
    )


def client_of(line: bytes) -> bytes:
    """The client id of a record (the third field), without validating the rest."""
    return line.split(b" ", 3)[2]
