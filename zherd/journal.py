"""A loop turn's log: every line in and out, every bus message, as one record.

One record per turn, not one call per line (a loguru call costs ~9 us, a line of a
batch ~0.15 us). A turn's record is bounded: each line is cut at
`logs.MAX_LOGGED` characters, and past `max_bytes` a turn logs how many lines it
left out instead of them, so no burst can write a record larger than the
rotation size. Warnings (hostile or broken input) are written at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from zherd import logs

MAX_TURN_BYTES = 4 << 20
PLACES_SHOWN = 400  # bytes of a WHATSAT's places JSON shown in its one log line
_INDENT = re.compile(rb"\n\s*")  # a line break of the JSON and the indentation after it


class Journal:
    __slots__ = ("_bytes", "_events", "_left_out", "max_bytes", "server")

    def __init__(self, server: str, max_bytes: int = MAX_TURN_BYTES) -> None:
        self.server = server
        self.max_bytes = max_bytes
        self._events: list[str] = []
        self._bytes = 0
        self._left_out = 0

    def __bool__(self) -> bool:
        return bool(self._events or self._left_out)

    def add(self, event: str) -> None:
        if self._bytes > self.max_bytes:
            self._left_out += 1
            return
        self._bytes += len(event)
        self._events.append(event)

    def client(self, peer: str, received: Sequence[bytes], sent: bytes) -> None:
        """A batch of one client connection: each line in, each reply out."""
        if received:
            self._lines(f"client {peer} <- ", received, b"\n".join(received))
        if sent:
            sent = sent.rstrip(b"\n")
            replies = reply_events(sent) if b"\n{" in sent else sent.split(b"\n")
            self._lines(f"client {peer} -> ", replies, b"\n".join(replies))

    def _lines(self, head: str, lines: Sequence[bytes], joined: bytes) -> None:
        """One event per line. The batch is decoded once and scanned once (in C) for
        anything to escape or cut; only a batch that has some goes line by line."""
        if self._bytes > self.max_bytes:
            self._left_out += len(lines)
            return
        text = joined.decode("utf-8", "backslashreplace")
        parts = text.split("\n")
        if (
            len(parts) != len(lines)
            or logs.needs_care(text)
            or max(map(len, parts)) > logs.MAX_LOGGED
        ):
            parts = [logs.shown(line) for line in lines]
        events = [head + part for part in parts]
        self._bytes += len(text) + len(head) * len(parts)
        self._events += events

    def write(self) -> None:
        """The turn's record, once per turn."""
        if self._left_out:
            self._events.append(f"{self._left_out} more lines this turn not logged (turn limit)")
        if self._events:
            logs.write(self.server, "INFO", self._events)
        self._events, self._bytes, self._left_out = [], 0, 0

    def warn(self, events: Sequence[str]) -> None:
        logs.write(self.server, "WARNING", events)


def reply_events(sent: bytes) -> list[bytes]:
    """Replies as log events: each AT or ? line, and a WHATSAT's places JSON as one event
    (a few hundred lines of JSON, each an event, once cost more than finding the places).

    A WHATSAT reply is its AT line, the JSON (the only line that starts with `{`), and a
    blank line (gateway.protocol.format_whatsat)."""
    events: list[bytes] = []
    for chunk in sent.split(b"\n\n"):
        lines, brace, body = chunk.partition(b"\n{")
        events += lines.split(b"\n")
        if brace:
            events.append(places_event(b"{" + body))
    return events


def places_event(body: bytes) -> bytes:
    """A places JSON on one line: its size, and its start with the line breaks flattened."""
    flat = _INDENT.sub(b" ", body[: 4 * PLACES_SHOWN])  # indentation takes room: 4x is plenty
    shown = flat if len(flat) <= PLACES_SHOWN else flat[:PLACES_SHOWN] + b" ..."
    return b"places JSON (%d bytes): %s" % (len(body), shown)
