"""The client line protocol, sans IO: bytes in, events out; events in, bytes out.

Nothing here touches a socket or a clock, so every rule of the protocol is a pure
function that tests (and hypothesis) can hammer directly. Records are NamedTuples:
immutable like frozen dataclasses but about 4x cheaper to build, which matters at
hundreds of thousands of lines a second, and msgpack sends them as plain arrays.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import NamedTuple

NS = 1_000_000_000
MAX_RADIUS_KM = 50.0
MAX_RESULTS = 20
_MAX_INT_DIGITS = 20  # far beyond any real POSIX time; bounds the cost of int()

_COORDS_RE = rb"([+-][0-9]+(?:\.[0-9]+)?)([+-][0-9]+(?:\.[0-9]+)?)"
_TIME_RE = rb"([+-]?)([0-9]{1,%d})(?:\.([0-9]{1,9}))?" % _MAX_INT_DIGITS
# The whole IAMAT grammar in one match, the hot path: in a bytes pattern \s is exactly
# the ASCII whitespace that bytes.split() cuts on.
_IAMAT = re.compile(rb"\s*IAMAT\s+(\S+)\s+(%s)\s+(%s)\s*" % (_COORDS_RE, _TIME_RE))
_RADIUS = re.compile(rb"[0-9]{1,10}(?:\.[0-9]{1,10})?")
_COUNT = re.compile(rb"[0-9]{1,10}")
_NEWLINES = re.compile(rb"\n+")


class IAmAt(NamedTuple):
    client_id: str
    coords: str
    time: str
    time_ns: int
    lat: float
    lon: float


class WhatsAt(NamedTuple):
    client_id: str
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


def format_skew(ns: int) -> str:
    """Signed seconds with exactly 9 decimals: `+0.263873386`, `-0.000012000`."""
    digits = str(-ns if ns < 0 else ns).rjust(10, "0")
    return ("-" if ns < 0 else "+") + digits[:-9] + "." + digits[-9:]


def parse_line(line: bytes) -> Event:
    """One command, without its `\\n`. Anything not understood is Invalid(line)."""
    try:
        if (m := _IAMAT.fullmatch(line)) is not None:
            return _iamat(m, line)
        fields = line.split()
        if len(fields) == 4 and fields[0] == b"WHATSAT":
            return _whatsat(fields, line)
    except UnicodeDecodeError:
        pass
    return Invalid(line)


def _iamat(m: re.Match[bytes], line: bytes) -> Event:
    client_id, coords, lat_text, lon_text, time, sign, whole, frac = m.groups()
    point = _point(lat_text, lon_text)
    if point is None:
        return Invalid(line)
    time_ns = _nanoseconds(sign, whole, frac)
    return IAmAt(client_id.decode(), coords.decode(), time.decode(), time_ns, *point)


def _whatsat(fields: list[bytes], line: bytes) -> Event:
    _, client_id, radius, count = fields
    if _RADIUS.fullmatch(radius) is None or _COUNT.fullmatch(count) is None:
        return Invalid(line)
    radius_km, n = float(radius), int(count)
    if not (0.0 < radius_km <= MAX_RADIUS_KM and 1 <= n <= MAX_RESULTS):
        return Invalid(line)
    return WhatsAt(client_id.decode(), radius_km, n)


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
    whatever arrives, and a cut line is never mistaken for a command.
    """

    __slots__ = ("_buf", "_max", "_skipping")

    def __init__(self, max_line: int) -> None:
        self._buf = b""
        self._max = max_line
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes | Invalid]:
        """Complete lines (without `\\n`) in arrival order."""
        if self._buf:
            data = self._buf + data
        lines: list[bytes | Invalid] = data.split(b"\n")  # type: ignore[assignment]
        rest: bytes = lines.pop()  # type: ignore[assignment]
        if self._skipping:
            if len(lines) == 0:
                return []
            del lines[0]  # the tail of a line already answered
            self._skipping = False
        if len(data) > self._max:  # only then can a line be too long
            lines = [Invalid(ln[: self._max]) if len(ln) > self._max else ln for ln in lines]
            if len(rest) > self._max:
                lines.append(Invalid(rest[: self._max]))
                rest = b""
                self._skipping = True
        self._buf = rest
        return lines

    def close(self) -> bytes | None:
        """At end of input: the last command if it had no newline."""
        rest, self._buf = self._buf, b""
        return rest or None
