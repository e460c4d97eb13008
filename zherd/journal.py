"""A loop turn's log: every line in and out, every bus message, as one record.

One record per turn, not one call per line (a loguru call costs ~9 us, a line of a
batch ~0.15 us). Lines that arrive together (a client's batch, a message's records)
stay together: decoded, checked and prefixed as one text, in C, so that a record
costs the log ~0.1 us whatever the batch. A turn's record is bounded: each line is
cut at `logs.MAX_LOGGED` bytes, and past `max_bytes` a turn logs how many lines it
left out instead of them, so no burst can write a record larger than the rotation
size. Warnings (hostile or broken input) are written at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from zherd import logs

MAX_TURN_BYTES = 4 << 20
PLACES_SHOWN = 400  # bytes of a WHATSAT's places JSON shown in its one log line
CLIENT_HEAD = 32  # characters of `client <peer> -> ` a line, counted against max_bytes
PEERS_KEPT = 4096  # connections whose heads (`client <peer> <- `) are kept made


Batch = tuple[str, Sequence[bytes], bytes]  # a client's: peer, lines received, bytes sent


class Journal:
    """The turn's events, in order, as the bytes of the file: an entry of `_events` is
    one line or several, each with the turn's prefix already (time, server, level), or
    a client's batch, which `write` formats together with the turn's other batches.

    The prefix is made once a turn, at its first event (the time every line of the turn
    shows), so a batch of lines takes it in the same pass that puts on its head."""

    __slots__ = (
        "_batches",
        "_bytes",
        "_events",
        "_heads",
        "_left_out",
        "_prefix",
        "max_bytes",
        "server",
    )

    def __init__(self, server: str, max_bytes: int = MAX_TURN_BYTES) -> None:
        self.server = server
        self.max_bytes = max_bytes
        self._events: list[bytes | Batch] = []
        self._batches = 0
        self._bytes = 0
        self._left_out = 0
        self._prefix = b""  # the turn's, once it has an event
        self._heads: dict[str, tuple[bytes, bytes]] = {}  # peer -> its heads in and out

    def __bool__(self) -> bool:
        return bool(self._events or self._left_out)

    def _turn_prefix(self) -> bytes:
        """The prefix of this turn's lines: time, server, level."""
        if not self._prefix:
            self._prefix = logs.prefix(self.server, "INFO").encode()
        return self._prefix

    def _head(self, head: str) -> bytes:
        return self._turn_prefix() + head.encode("utf-8", "backslashreplace")

    def add(self, event: str) -> None:
        """One event, escaped already (`logs.escape`)."""
        if self._bytes > self.max_bytes:
            self._left_out += 1
            return
        line = self._head(event)
        if b"\n" in line:  # every line of the file starts with the prefix
            line = line.replace(b"\n", b"\n" + self._turn_prefix())
        self._bytes += len(event)  # the prefixes are not counted: they are bounded by lines
        self._events.append(line)

    def client(self, peer: str, received: Sequence[bytes], sent: bytes) -> None:
        """A batch of one client connection: each line in, each reply out. Kept as it
        is until `write`, which formats every client batch of the turn in one pass (a
        request/response turn is fifty batches of a line each)."""
        lines = len(received) + sent.count(b"\n")
        if self._bytes > self.max_bytes:
            self._left_out += lines
            return
        size = sum(map(len, received)) + len(sent)  # at most MAX_LOGGED a line is shown
        self._bytes += min(size, logs.MAX_LOGGED * lines) + CLIENT_HEAD * lines
        self._events.append((peer, received, sent))
        self._batches += 1

    def lines(self, head: str, lines: Sequence[object]) -> None:
        """Lines a client or neighbor sent or was sent, each an event behind `head`.

        The batch is joined and scanned once for anything to escape, and takes the
        prefix and head in one pass; only a batch that has something to escape (or a
        line to cut, or something not bytes) goes line by line."""
        if not lines:
            return
        if self._bytes > self.max_bytes:
            self._left_out += len(lines)
            return
        head_bytes = self._head(head)
        data = _shown_lines(lines)
        self._bytes += len(data) + len(head) * len(lines)
        self._events.append(head_bytes + data.replace(b"\n", b"\n" + head_bytes))

    def write(self) -> None:
        """The turn's record, once per turn."""
        if self._left_out:
            self._bytes = 0  # the note itself is let through
            self.add(f"{self._left_out} more lines this turn not logged (turn limit)")
        events = self._with_batches() if self._batches else self._events
        if events:
            logs.write_info(b"\n".join(events) + b"\n")  # type: ignore[arg-type]
        self._events, self._batches, self._bytes, self._left_out = [], 0, 0, 0
        self._prefix = b""

    def _with_batches(self) -> list[bytes]:
        """The turn's entries, its client batches formatted together: one join and one
        scan for all their lines, then each line takes its prefix and head."""
        events = self._events
        lines: list[bytes] = []
        replies: list[list[bytes]] = []  # each batch's lines out
        for event in events:
            if type(event) is tuple:
                _, received, sent = event
                out = _replies(sent) if sent else []
                replies.append(out)
                lines += received
                lines += out
        texts = _shown_lines(lines).split(b"\n") if lines else []
        prefix, formatted = self._turn_prefix(), []
        at = batch = 0
        for event in events:
            if type(event) is not tuple:
                formatted.append(event)  # type: ignore[arg-type]
                continue
            into, out = self._peer_heads(event[0])
            for head, n in ((into, len(event[1])), (out, len(replies[batch]))):
                if n == 1:  # the usual batch: a line each way
                    formatted.append(prefix + head + texts[at])
                elif n:
                    formatted += [prefix + head + text for text in texts[at : at + n]]
                at += n
            batch += 1
        return formatted

    def _peer_heads(self, peer: str) -> tuple[bytes, bytes]:
        """`client <peer> <- ` and `-> `, made once a connection (kept for the last few
        thousand peers)."""
        heads = self._heads.get(peer)
        if heads is None:
            if len(self._heads) >= PEERS_KEPT:
                self._heads.clear()
            name = peer.encode("utf-8", "backslashreplace")
            heads = self._heads[peer] = (b"client %s <- " % name, b"client %s -> " % name)
        return heads

    def warn(self, events: Sequence[str]) -> None:
        logs.write(self.server, "WARNING", events)


def _replies(sent: bytes) -> list[bytes]:
    sent = sent.rstrip(b"\n")
    return reply_events(sent) if b"\n{" in sent else sent.split(b"\n")


def _shown_lines(lines: Sequence[object]) -> bytes:
    """Lines as the log shows them, one a line, in UTF-8: ASCII with nothing to cut or
    escape (the usual batch) as it came; otherwise decoded, escaped and cut line by line."""
    try:
        joined = b"\n".join(lines)  # type: ignore[arg-type]
        careful = (
            max(map(len, lines), default=0) > logs.MAX_LOGGED  # type: ignore[arg-type]
            or joined.count(b"\n") != len(lines) - 1  # a line break inside a line
            or logs.bytes_need_care(joined)
        )
    except TypeError:  # not all bytes (a neighbor's records are checked later)
        careful = True
    if careful:
        return "\n".join(map(_shown, lines)).encode("utf-8", "backslashreplace")
    if joined.isascii():
        return joined
    return joined.decode("utf-8", "backslashreplace").encode()


def _shown(line: object) -> str:
    """A line as the log shows it, the careful way (`logs.shown`)."""
    if type(line) is bytes:
        return logs.shown(line)
    return f"(not bytes: {logs.escape(repr(line)[:200])})"


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
    """A places JSON on one line: its size, and its start with each run of whitespace (a
    line break and the indentation after it) shown as one space."""
    flat = b" ".join(body[: 4 * PLACES_SHOWN].split())  # indentation takes room: 4x is plenty
    shown = flat if len(flat) <= PLACES_SHOWN else flat[:PLACES_SHOWN] + b" ..."
    return b"places JSON (%d bytes): %s" % (len(body), shown)
