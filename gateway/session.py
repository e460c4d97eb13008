"""One client connection, sans IO: the h11 `Connection` model for the line protocol.

The session never touches a socket, a clock or a task. The IO side (gateway/server.py)
tells it what happened (bytes, end of input, the write buffer filling or draining, the
node done loading, a WHATSAT's places, a new loop turn) and carries out the actions it
returns, in order. Every rule of a connection lives here and is tested without a
socket: replies in request order, the WHATSAT in-flight cap, half-close, and the
bounds of docs/protocol.md.

There is one way to wait. Input the session may not handle yet is held, raw and in
arrival order, and reading stops, whatever is in the way: the node still loading its
store, a client not reading its replies, `max_inflight` WHATSATs awaiting places,
`max_pending_output` bytes of replies queued behind one, or this turn's allowance
spent. Once nothing is in the way, held input is handled and reading resumes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from gateway.backend import Backend
from gateway.limits import Limits
from gateway.protocol import (
    NS,
    IAmAt,
    Invalid,
    LineSplitter,
    format_invalid,
    format_whatsat,
    parse_line,
    places_error,
)

# What handling input costs, in bytes of allowance: each byte of a line handled (a line
# read in pieces is paid for when it ends: then it is parsed, answered and logged), 64
# more per line (what handling a line costs beyond its bytes), and 1/16 per byte read
# (a copy or a scan: reading a long line, or skipping one, is cheap but not free). So
# an allowance bounds the work of any input: long lines, tiny lines, lines that end long
# after they began, and bytes that never make a line.
LINE_COST = 64
READ_COST = 16  # bytes read per byte of allowance
PLACES_COST = 1024  # more for a WHATSAT that looks places up (~0.15 ms against ~4 us)

# Why the session holds its input (bits of Session._stops).
_LOADING = 1  # the node is still reading its store
_WRITE_FULL = 2  # the transport's write buffer is over its high-water mark
_DONE = 4  # aborted: nothing more is done


# Actions: what the IO side must do, in the order given.


class Write(NamedTuple):
    """Write `data` (if any), and log it with the lines `received` in the same batch
    (as received; none for replies that were waiting for places)."""

    data: bytes
    received: Sequence[bytes]


class Lookup(NamedTuple):
    """Find the places for WHATSAT number `request`; answer with `Session.answered`."""

    request: int
    lat: float
    lon: float
    radius_km: float
    count: int


class PauseReading(NamedTuple):
    pass


class ResumeReading(NamedTuple):
    pass


class WaitTurn(NamedTuple):
    """Input is held for want of allowance: call `Session.proceed` in a later loop turn."""


class Close(NamedTuple):
    """Half-closed and every reply written: close once the writes are out."""


class Abort(NamedTuple):
    reason: str


Action = Write | Lookup | PauseReading | ResumeReading | WaitTurn | Close | Abort

PAUSE, RESUME, WAIT_TURN, CLOSE = PauseReading(), ResumeReading(), WaitTurn(), Close()
_EOF = None  # in the held queue: the end of input


class Session:
    """One client: bytes in, actions out.

    `allowance` is the IO side's say in how much input may be handled now, in the units
    of LINE_COST and READ_COST; the session spends it (one read may overdraw it: a read
    is never cut, only the lines it holds are). Input beyond it waits (WaitTurn) for
    `proceed()` in a later turn. It is unlimited unless the IO side sets it.
    """

    def __init__(self, backend: Backend, limits: Limits, *, loading: bool = False) -> None:
        self.allowance = 1 << 62
        self._backend = backend
        self._splitter = LineSplitter(limits.max_line)
        self._max_id = limits.max_id
        self._max_future_ns = int(limits.max_future * NS)
        self._max_inflight = limits.max_inflight
        self._max_output = limits.max_pending_output
        self._stops = _LOADING if loading else 0
        self._reading = True  # what the IO side was last told
        self._waiting_turn = False  # WaitTurn said, proceed() not yet called
        self._held: deque[tuple[bytes | list[bytes | Invalid] | None, int]] = deque()
        self._eof = False
        self._closed = False
        # Replies in request order: bytes ready to go, or the number of a WHATSAT
        # whose places are awaited. Only the head of the queue may be written.
        self._queue: deque[bytes | int] = deque()
        self._queued = 0  # bytes of replies ready but waiting behind a WHATSAT's places
        self._awaiting: dict[int, bytes] = {}  # request -> its AT line
        self._answers: dict[int, bytes] = {}  # request -> its whole reply, until its turn
        self._requests = 0
        self._backlog = 0  # bytes written since the write buffer went over its mark

    # -- inputs ---------------------------------------------------------------------------

    def start(self) -> list[Action]:
        """The connection is open (a session made while the node loads reads nothing)."""
        return self._settle([])

    def receive(self, data: bytes, received_ns: int) -> list[Action]:
        """Bytes from the client, read at `received_ns` (the time IAMAT skews are from)."""
        room = self.allowance
        if (
            self._held
            or self._stops
            or room <= 0
            or len(self._awaiting) >= self._max_inflight
            or self._queued >= self._max_output
        ):
            if self._stops & _DONE:
                return []
            self._held.append((data, received_ns))
            return self._pump([])
        # The hot path: nothing waits, nothing is in the way.
        lines, unread = self._splitter.split(data, room // LINE_COST or 1)
        if unread:
            self._held.append((unread, received_ns))
        self.allowance = room - self._cost(len(data) - len(unread), len(lines))
        actions: list[Action] = []
        if lines:
            self._handle(lines, received_ns, actions)
        if (
            self._held
            or self._stops
            or len(self._awaiting) >= self._max_inflight
            or self._queued >= self._max_output
        ):
            return self._settle(actions)
        return actions  # still reading, as before

    def receive_eof(self, received_ns: int) -> list[Action]:
        """The client half-closed: answer what it sent (a last line needs no newline), close."""
        if not self._eof:
            self._eof = True
            self._reading = False  # a transport at end of input reads no more by itself
            self._held.append((_EOF, received_ns))
        return self._pump([])

    def write_full(self) -> list[Action]:
        """The transport's write buffer went over its high-water mark."""
        self._stops |= _WRITE_FULL
        self._backlog = 0
        return self._settle([])

    def write_ready(self) -> list[Action]:
        """The client read enough of its replies: carry on."""
        self._stops &= ~_WRITE_FULL
        return self._pump([])

    def loaded(self) -> list[Action]:
        """The node has its store: answer what waited, read on."""
        self._stops &= ~_LOADING
        return self._pump([])

    def proceed(self) -> list[Action]:
        """A new turn (and a new allowance) after WaitTurn."""
        self._waiting_turn = False
        return self._pump([])

    def answered(self, request: int, places: bytes | None) -> list[Action]:
        """The places JSON for a WHATSAT, or None if none could be had."""
        at_line = self._awaiting.pop(request, None)
        if at_line is None or self._stops & _DONE:
            return []
        if places is None:
            places = places_error("UNKNOWN_ERROR", "places are not available right now")
        reply = self._answers[request] = format_whatsat(at_line, places)
        self._queued += len(reply)
        actions: list[Action] = []
        if sent := self._flush():
            self._write(sent, (), actions)
        return self._pump(actions)

    # -- state the IO side may look at ----------------------------------------------------

    @property
    def waiting_for_reader(self) -> bool:
        """The client is not reading its replies (so an idle one is not merely silent)."""
        return bool(self._stops & _WRITE_FULL)

    @property
    def held_bytes(self) -> int:
        """Raw input held, not yet handled."""
        return sum(len(d) for d, _ in self._held if type(d) is bytes)

    # -- the work -------------------------------------------------------------------------

    def _cost(self, read: int, lines: int) -> int:
        """Of `read` bytes just split into `lines` lines."""
        return read // READ_COST + self._splitter.taken + LINE_COST * lines

    def _blocked(self) -> bool:
        """Whether something other than the allowance is in the way of handling input."""
        return bool(
            self._stops
            or len(self._awaiting) >= self._max_inflight
            or self._queued >= self._max_output
        )

    def _pump(self, actions: list[Action]) -> list[Action]:
        """Handle held input, oldest first, for as long as nothing is in the way."""
        held = self._held
        while held and self.allowance > 0 and not self._blocked():
            data, received_ns = held.popleft()
            if data is _EOF:
                last = self._splitter.close()
                lines: list[bytes | Invalid] = [] if last is None else [last]
                self.allowance -= 0 if last is None else LINE_COST + len(last)
            elif type(data) is list:  # the rest of a batch stopped after a WHATSAT
                lines = data
            else:  # a read: never cut, only the number of lines taken from it is capped
                room = self.allowance
                lines, unread = self._splitter.split(data, room // LINE_COST or 1)  # type: ignore[arg-type]
                if unread:
                    held.appendleft((unread, received_ns))
                self.allowance = room - self._cost(len(data) - len(unread), len(lines))
            if lines:
                self._handle(lines, received_ns, actions)
        return self._settle(actions)

    def _handle(
        self, lines: list[bytes | Invalid], received_ns: int, actions: list[Action]
    ) -> None:
        """Answer a batch of lines; replies ready now go out in one write."""
        backend, max_id = self._backend, self._max_id
        latest = received_ns + self._max_future_ns
        queue = self._queue
        out: list[bytes] = []
        handled = lines
        cut = False  # a line too long among them (logged as the part kept)
        for i, line in enumerate(lines):
            if type(line) is Invalid:
                out.append(format_invalid(line.line))
                cut = True
                continue
            event = parse_line(line, max_id)
            if type(event) is IAmAt:
                if event.time_ns <= latest:
                    out.append(backend.iamat(event, received_ns) + b"\n")
                else:  # a clock from the future: stored nowhere
                    out.append(format_invalid(line))
            elif type(event) is Invalid or (fix := backend.lookup(event.client_id)) is None:  # type: ignore[union-attr]
                out.append(format_invalid(line))  # not understood, or a client nobody heard of
            else:
                if out:
                    ready = b"".join(out)
                    queue.append(ready)
                    self._queued += len(ready)
                    out = []
                self._requests += 1
                request = self._requests
                self.allowance -= PLACES_COST
                self._awaiting[request] = fix.at_line
                queue.append(request)
                actions.append(Lookup(request, fix.lat, fix.lon, event.radius_km, event.count))  # type: ignore[union-attr]
                full = len(self._awaiting) >= self._max_inflight or self.allowance <= 0
                if full and i + 1 < len(lines):  # the rest waits: the cap, or this turn
                    handled = lines[: i + 1]
                    self._held.appendleft((lines[i + 1 :], received_ns))
                    break
        if queue:
            if out:
                ready = b"".join(out)
                queue.append(ready)
                self._queued += len(ready)
            sent = self._flush()
        else:
            sent = b"".join(out)
        received = [ln.line if type(ln) is Invalid else ln for ln in handled] if cut else handled
        self._write(sent, received, actions)  # type: ignore[arg-type]

    def _flush(self) -> bytes:
        """The replies at the head of the queue that are ready, joined."""
        queue, ready = self._queue, []
        while queue:
            head = queue[0]
            if type(head) is not bytes:
                if head not in self._answers:
                    break
                head = self._answers.pop(head)  # type: ignore[arg-type]
            self._queued -= len(head)  # type: ignore[arg-type]
            queue.popleft()
            ready.append(head)
        return b"".join(ready)  # type: ignore[arg-type]

    def _write(self, data: bytes, received: Sequence[bytes], actions: list[Action]) -> None:
        actions.append(Write(data, received))
        if data and self._stops & _WRITE_FULL:
            self._backlog += len(data)
            if self._backlog > self._max_output:
                self._stops |= _DONE
                self._held.clear()
                actions.append(Abort("not reading its replies"))

    def _settle(self, actions: list[Action]) -> list[Action]:
        """Tell the IO side whether to read on, wait for a turn, or close."""
        if self._stops & _DONE:
            return actions
        blocked = self._blocked()
        if self._held:
            reading = False
            if not blocked and not self._waiting_turn:  # only the allowance is in the way
                self._waiting_turn = True
                actions.append(WAIT_TURN)
        else:
            reading = not blocked and not self._eof
        if reading != self._reading:
            self._reading = reading
            actions.append(RESUME if reading else PAUSE)
        if self._eof and not self._held and not self._queue and not self._closed:
            self._closed = True
            actions.append(CLOSE)
        return actions
