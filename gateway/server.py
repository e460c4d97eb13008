"""The asyncio side of the gateway: the only module that touches client sockets.

An `asyncio.Protocol`, not Streams: all complete lines of one `data_received` are
handled together and answered with one write (DESIGN.md measures ~5x over
`readline()`). Replies leave in request order even when a WHATSAT has to wait
for places: a per-connection queue holds later replies behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

from gateway.backend import Backend, Fix
from gateway.protocol import (
    IAmAt,
    Invalid,
    LineSplitter,
    WhatsAt,
    format_invalid,
    format_whatsat,
    parse_line,
    places_error,
)


@dataclass(frozen=True)
class Limits:
    """What one client may cost a server."""

    max_line: int = 64 * 1024  # bytes; a longer line is answered "? <cut line>"
    idle_timeout: float = 120.0  # seconds silent (or not reading) before we hang up
    max_clients: int = 10_000  # open connections per server
    max_pending_output: int = 1024 * 1024  # bytes queued for a client before we drop it
    max_inflight: int = 32  # WHATSATs awaiting places per connection before we stop reading
    max_future: float = 86400.0  # seconds a client's time may be ahead of ours
    max_id: int = 256  # bytes of a client id


Node = Backend


class Gateway:
    """Accepts clients for one node and enforces the per-client limits."""

    def __init__(self, node: Node, limits: Limits) -> None:
        self.node = node
        self.limits = limits
        self.connections: set[ClientConnection] = set()
        self.held = False  # listening, but not reading yet: the node is still loading
        self.outbox: list[ClientConnection] = []  # connections with replies for `send`
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_address=True, backlog=4096
        )
        self._sweeper = asyncio.create_task(self._sweep())

    def hold(self) -> None:
        """Accept clients but read nothing until `release`, so no answer comes from a
        half-loaded node while a client still gets connected at once."""
        self.held = True

    def release(self) -> None:
        self.held = False
        for conn in list(self.connections):
            conn.resume()

    def send(self) -> None:
        """Write the replies of this loop turn, one write per connection. The node calls
        this once the turn's updates are on disk: an AT promises the update survives."""
        outbox, self.outbox = self.outbox, []
        for conn in outbox:
            conn.send()

    async def close(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        if self._server:
            self._server.close()
        for conn in list(self.connections):
            conn.transport.close()
        if self._server:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _sweep(self) -> None:
        """Hang up on clients that went silent or stopped reading (no timer per connection)."""
        loop = asyncio.get_running_loop()
        period = min(1.0, self.limits.idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            deadline = loop.time() - self.limits.idle_timeout
            for conn in [c for c in self.connections if c.last_active < deadline]:
                conn.drop("idle" if not conn.write_paused else "not reading its replies")


class ClientConnection(asyncio.Protocol):
    """One client: lines in, replies out, in order."""

    transport: asyncio.Transport

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.node = gateway.node
        self.limits = gateway.limits
        self.splitter = LineSplitter(self.limits.max_line)
        self.peer = "?"
        self.last_active = 0.0
        self.write_paused = False
        self._queue: deque[bytes | asyncio.Task[bytes]] = deque()
        self._inflight = 0
        # lines waiting for room: behind the WHATSAT cap, a client not reading, a loading node
        self._held: tuple[list[bytes | Invalid], int] | None = None
        self._eof = False
        self._out: list[bytes] = []  # replies of this turn, written by `Gateway.send`
        self._close_after_send = False
        self._loop = asyncio.get_running_loop()

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.last_active = self._loop.time()
        if len(self.gateway.connections) >= self.limits.max_clients:
            self.node.note(f"client {self.peer} refused: {self.limits.max_clients} clients open")
            transport.abort()
            return
        self.gateway.connections.add(self)
        transport.set_write_buffer_limits(high=64 * 1024)
        self.node.note(f"client {self.peer} connected")

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.gateway.connections:
            self.gateway.connections.discard(self)
            self.node.note(f"client {self.peer} disconnected" + (f": {exc}" if exc else ""))
        for item in self._queue:
            if isinstance(item, asyncio.Task):
                item.cancel()
        self._queue.clear()
        self._held = None

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        self._take(self.splitter.feed(data))

    def eof_received(self) -> bool:
        last = self.splitter.close()
        self._eof = True
        if last is not None:
            self._take([last])
        self._flush()
        return True  # keep the socket open for our replies; _flush closes it

    def _take(self, lines: list[bytes | Invalid]) -> None:
        """Answer lines now, or queue them behind lines already waiting (order is kept)."""
        if self._held is None and not self.gateway.held:
            self._handle(lines, time.time_ns())
        elif self._held is None:
            self._held = (lines, time.time_ns())
        else:
            self._held[0].extend(lines)
        if self._held is not None:
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_active = self._loop.time()
        self.resume()

    def resume(self) -> None:
        """Room again (the client reads, the node has loaded): answer what waited, read on."""
        if self._held is None:
            self._read_on()
        elif sent := self._flush():
            self.node.trace(self.peer, (), sent)

    def _read_on(self) -> None:
        if not (self.write_paused or self._eof or self.gateway.held or self._held is not None):
            self.transport.resume_reading()

    # the work

    def _handle(self, lines: list[bytes | Invalid], received_ns: int) -> None:
        """Answer a batch of lines; replies ready now go out in one write."""
        node = self.node
        out: list[bytes] = []
        handled = lines
        for i, line in enumerate(lines):
            event = line if isinstance(line, Invalid) else parse_line(line)
            if isinstance(event, IAmAt):
                out.append(node.iamat(event, received_ns) + b"\n")
            elif isinstance(event, Invalid):
                out.append(format_invalid(event.line))
            elif (loc := node.lookup(event.client_id)) is None:
                out.append(format_invalid(line))  # type: ignore[arg-type]  # WhatsAt came from bytes
            else:
                if out:
                    self._queue.append(b"".join(out))
                    out = []
                self._queue.append(self._start_whatsat(loc, event))
                if self._inflight >= self.limits.max_inflight and i + 1 < len(lines):
                    handled, self._held = lines[: i + 1], (lines[i + 1 :], received_ns)
                    self.transport.pause_reading()
                    break
        if self._queue:
            if out:
                self._queue.append(b"".join(out))
            sent = self._flush()
        else:
            sent = b"".join(out)
            self._write(sent)
        node.trace(self.peer, [ln.line if isinstance(ln, Invalid) else ln for ln in handled], sent)

    def _start_whatsat(self, loc: Fix, event: WhatsAt) -> asyncio.Task[bytes]:
        self._inflight += 1
        task = self._loop.create_task(self._whatsat(loc, event))
        task.add_done_callback(self._whatsat_done)
        return task

    async def _whatsat(self, loc: Fix, event: WhatsAt) -> bytes:
        try:
            places = await self.node.find_places(loc.lat, loc.lon, event.radius_km, event.count)
        except Exception as e:  # a provider must answer, but a client must never hang
            self.node.note(f"places failed for {self.peer}: {type(e).__name__}")
            places = places_error("UNKNOWN_ERROR", "places are not available right now")
        return format_whatsat(loc.at_line, places)

    def _whatsat_done(self, task: asyncio.Task[bytes]) -> None:
        self._inflight -= 1
        if not task.cancelled():
            sent = self._flush()
            if sent:
                self.node.trace(self.peer, (), sent)

    def _flush(self) -> bytes:
        """Write every reply at the head of the queue that is ready, in one write.

        Returns what it wrote; lines held back for the in-flight cap are handled
        (and traced) here too once there is room again.
        """
        ready: list[bytes] = []
        queue = self._queue
        while queue:
            head = queue[0]
            if isinstance(head, bytes):
                ready.append(queue.popleft())
            elif head.done():
                queue.popleft()
                ready.append(head.result())
            else:
                break
        sent = b"".join(ready)
        if sent:
            self._write(sent)
        room = self._inflight < self.limits.max_inflight
        if self._held is not None and room and not (self.write_paused or self.gateway.held):
            lines, received_ns = self._held
            self._held = None
            self._read_on()
            self._handle(lines, received_ns)
        if self._eof and not queue and self._held is None and not self.transport.is_closing():
            if self._out:
                self._close_after_send = True
            else:
                self.transport.close()
        return sent

    def _write(self, data: bytes) -> None:
        """Queue replies for the end of the turn (`Gateway.send`)."""
        if not data or self.transport.is_closing():
            return
        if not self._out:
            self.gateway.outbox.append(self)
            self.node.replies_waiting()
        self._out.append(data)

    def send(self) -> None:
        data, self._out = b"".join(self._out), []
        if not data or self.transport.is_closing():
            return
        self.transport.write(data)
        if self.transport.get_write_buffer_size() > self.limits.max_pending_output:
            self.drop("not reading its replies")
        elif self._close_after_send:
            self.transport.close()

    def drop(self, why: str) -> None:
        self.node.note(f"client {self.peer} dropped: {why}")
        self.transport.abort()
