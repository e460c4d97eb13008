"""The client line protocol, sans IO: bytes in, events out; events in, bytes out.

Nothing here touches a socket or a clock, so every rule of the protocol is a pure
function that tests (and hypothesis) can hammer directly. Records are NamedTuples:
immutable like frozen dataclasses but about 4x cheaper to build, which matters at
hundreds of thousands of lines a second, and msgpack sends them as plain arrays.
"""

from __future__ import annotations

import json
import re
import sys
from decimal import Decimal
from typing import NamedTuple

NS = 1_000_000_000
MAX_RADIUS_KM = 50.0
MAX_RESULTS = 20
MAX_ID = 256  # bytes of a client id, unless [limits] max_id says otherwise
# Digits a number may have (leading zeros included): far beyond any real POSIX time,
# radius or count, and small enough that int() and float() cost nothing.
MAX_DIGITS = 20

_COORDS_RE = rb"([+-][0-9]+(?:\.[0-9]+)?)([+-][0-9]+(?:\.[0-9]+)?)"
_TIME_RE = rb"([+-]?)([0-9]{1,%d})(?:\.([0-9]{1,9}))?" % MAX_DIGITS
_RADIUS_RE = rb"[0-9]{1,%d}(?:\.[0-9]{1,%d})?" % (MAX_DIGITS, MAX_DIGITS)
_COUNT_RE = rb"[0-9]{1,%d}" % MAX_DIGITS
# Each command's whole grammar in one match, the hot path: in a bytes pattern \s is
# exactly the ASCII whitespace that bytes.split() cuts on. docs/protocol.md has the table.
_IAMAT = re.compile(rb"\s*IAMAT\s+(\S+)\s+(%s)\s+(%s)\s*" % (_COORDS_RE, _TIME_RE))
_WHATSAT = re.compile(rb"\s*WHATSAT\s+(\S+)\s+(%s)\s+(%s)\s*" % (_RADIUS_RE, _COUNT_RE))
_NEWLINES = re.compile(rb"\n+")


class IAmAt(NamedTuple):
    """Fields as the client sent them, in bytes: the record is made of them unchanged
    (the client id is UTF-8: checked here)."""

    client_id: bytes
    coords: bytes
    time: bytes
    time_ns: int
    lat: float
    lon: float


class WhatsAt(NamedTuple):
    client_id: bytes
    radius_km: float
    count: int


class Invalid(NamedTuple):
    line: bytes


Event = IAmAt | WhatsAt | Invalid


def _point(lat_text: bytes, lon_text: bytes) -> tuple[float, float] | None:
    lat, lon = float(lat_text), float(lon_text)
    if _within(lat, lat_text, 90.0) and _within(lon, lon_text, 180.0):
        return lat, lon
    return None


def _within(value: float, text: bytes, limit: float) -> bool:
    """|value| <= limit, exactly: rounding can land a text just past the limit on it."""
    if value != limit and value != -limit:
        return -limit < value < limit
    return abs(Decimal(text.decode())) <= Decimal(int(limit))


def _nanoseconds(sign: bytes, whole: bytes, frac: bytes | None) -> int:
    ns = int(whole + frac.ljust(9, b"0")) if frac else int(whole) * NS
    return -ns if sign == b"-" else ns


def parse_line(line: bytes, max_id: int = MAX_ID) -> Event:
    """One command, without its `\\n`. Anything not understood is Invalid(line), and
    so is a client id longer than `max_id` bytes or not UTF-8."""
    if parse_iamat is not None and (event := parse_iamat(line, max_id, IAmAt)) is not None:
        return event  # the well-formed IAMAT, parsed in C (gateway/_speedups.c)
    if (m := _IAMAT.fullmatch(line)) is not None:
        return _iamat(m, line, max_id)
    if (m := _WHATSAT.fullmatch(line)) is not None:
        return _whatsat(m, line, max_id)
    return Invalid(line)


def _iamat(m: re.Match[bytes], line: bytes, max_id: int) -> Event:
    client_id, coords, lat_text, lon_text, time, sign, whole, frac = m.groups()
    point = _point(lat_text, lon_text)
    if point is None or not _client_id(client_id, max_id):
        return Invalid(line)
    return IAmAt(client_id, coords, time, _nanoseconds(sign, whole, frac), *point)


def _whatsat(m: re.Match[bytes], line: bytes, max_id: int) -> Event:
    client_id, radius, count = m.groups()
    radius_km, n = float(radius), int(count)
    if not (radius_km > 0 and _within(radius_km, radius, MAX_RADIUS_KM)):
        return Invalid(line)
    if not 1 <= n <= MAX_RESULTS or not _client_id(client_id, max_id):
        return Invalid(line)
    return WhatsAt(client_id, radius_km, n)


def _client_id(client_id: bytes, max_id: int) -> bool:
    """At most `max_id` bytes of UTF-8."""
    if len(client_id) > max_id:
        return False
    if client_id.isascii():
        return True
    try:
        client_id.decode()
    except UnicodeDecodeError:
        return False
    return True


try:
    from gateway._speedups import parse_iamat
except ImportError:  # not built (no C compiler where it was installed): Python parses all
    parse_iamat = None


def format_invalid(line: bytes) -> bytes:
    return b"? " + line + b"\n"


def format_whatsat(at_line: bytes, places_json: bytes) -> bytes:
    """The AT line, the places JSON with runs of newlines collapsed, then a blank line."""
    body = places_json.strip(b"\n")
    if b"\n\n" in body:  # encoders do not make blank lines; the rule holds whatever comes
        body = _NEWLINES.sub(b"\n", body)
    return at_line + b"\n" + body + b"\n\n"


def places_error(status: str, message: str) -> bytes:
    """A legacy-shaped answer for when no places could be had at all."""
    doc = {"html_attributions": [], "results": [], "status": status, "error_message": message}
    return json.dumps(doc, indent=2).encode()


class LineSplitter:
    """Cuts a byte stream into lines, holding at most `max_line` bytes of a partial one.

    A line longer than the limit comes out once as Invalid(first max_line bytes)
    and the rest of it is skipped up to its newline: memory stays bounded
    whatever arrives, and a cut line is never mistaken for a command. A partial
    line that grows over many reads is appended to, not copied whole each time.
    """

    __slots__ = ("_buf", "_max", "_skipping", "taken")

    def __init__(self, max_line: int) -> None:
        self._buf: bytes | bytearray = b""  # the partial line so far
        self._max = max_line
        self._skipping = False  # inside a line already answered as too long
        self.taken = 0  # bytes of the lines the last split returned (with their newlines)

    def feed(self, data: bytes) -> list[bytes | Invalid]:
        """Complete lines (without `\\n`) in arrival order."""
        return self.split(data, _ALL)[0]

    def split(self, data: bytes, max_lines: int) -> tuple[list[bytes | Invalid], bytes]:
        """At most `max_lines` complete lines, and the part of `data` left unread."""
        if self._buf or self._skipping:
            joined = self._join(data)
            if type(joined) is not bytes:
                self.taken = len(joined[0].line) if joined else 0  # type: ignore[union-attr]
                return joined, b""  # type: ignore[return-value]
            data = joined
        lines: list[bytes | Invalid] = data.split(b"\n", max_lines)  # type: ignore[assignment]
        if len(lines) > max_lines:
            unread: bytes = lines.pop()  # type: ignore[assignment]
            rest = b""
        else:
            unread = b""
            rest = lines.pop()  # type: ignore[assignment]
        if len(data) > self._max:  # only then can a line be too long
            lines = [Invalid(ln[: self._max]) if len(ln) > self._max else ln for ln in lines]
            if len(rest) > self._max:
                lines.append(Invalid(rest[: self._max]))
                rest = b""
                self._skipping = True
        self._buf = rest
        self.taken = len(data) - len(unread) - len(rest)
        return lines, unread

    def _join(self, data: bytes) -> bytes | list[bytes | Invalid]:
        """`data` behind the partial line held, once it holds a newline; until then,
        the lines it makes (none, or the partial line cut at max_line)."""
        if self._skipping:
            end = data.find(b"\n")
            if end < 0:
                return []
            data = data[end + 1 :]  # the tail of a line already answered
            self._skipping = False
        if b"\n" in data:
            data, self._buf = b"".join((self._buf, data)), b""
            return data
        if type(self._buf) is bytes:
            self._buf = bytearray(self._buf)
        self._buf += data
        if len(self._buf) <= self._max:
            return []
        cut = bytes(self._buf[: self._max])
        self._buf = b""
        self._skipping = True
        return [Invalid(cut)]

    def close(self) -> bytes | None:
        """At end of input: the last command if it had no newline."""
        rest, self._buf = bytes(self._buf), b""
        return rest or None


_ALL = sys.maxsize
