"""The asyncio side of the gateway: the only module that touches client sockets.

An asyncio `Protocol`, not Streams: all complete lines of one `data_received` are
handled together and answered with one write (~5x over `readline()`). The protocol
is a thin adapter that moves bytes between a transport and the connection's
`Session` (gateway/session.py), where every rule lives, and carries out its actions.

The `Gateway` accepts clients, hangs up on idle ones, and shares out each loop turn:
all connections together handle at most `turn_budget` of input in a turn, one
connection at most `share`; one over either waits, not reading, for a later turn, so
a flood of input, however it is spread over connections, never stalls the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

from gateway.backend import Backend
from gateway.limits import Limits
from gateway.session import (
    Abort,
    Action,
    Close,
    Lookup,
    PauseReading,
    ResumeReading,
    Session,
    WaitTurn,
    Write,
)

__all__ = ["ClientConnection", "Gateway", "Limits"]

# What may be handled in one loop turn, in the units of gateway/session.py (bytes, with
# a line counting 64 more and a byte read 1/16): about 2,000 IAMATs, a few ms of work.
TURN_BUDGET = 256 << 10  # all clients together
SHARE = 64 << 10  # one client


class Gateway:
    """Accepts clients for one node and enforces the per-client limits."""

    def __init__(
        self,
        backend: Backend,
        limits: Limits,
        *,
        turn_budget: int = TURN_BUDGET,
        share: int = SHARE,
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.connections: set[ClientConnection] = set()
        self.loading = False  # listening, but reading nothing: the node is still loading
        self.turn = 0  # turns so far (see _schedule_turn)
        self.left = turn_budget  # of this turn's budget
        self.share = share
        self._budget = turn_budget
        self._turn_scheduled = False
        self._waiting: deque[ClientConnection] = deque()  # for a turn, first come first served
        self._server: asyncio.Server | None = None
        self._outbox: list[ClientConnection] = []  # connections with replies to send

    def send(self) -> None:
        """Write every reply this turn made, one write per connection. The node calls it
        once the turn's updates are durable: an AT never leaves before its update."""
        outbox, self._outbox = self._outbox, []
        for conn in outbox:
            conn.send()

    def queue(self, conn: ClientConnection) -> None:
        if not self._outbox:
            self.backend.replies_waiting()
        self._outbox.append(conn)

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_address=True, backlog=4096
        )

    def hold(self) -> None:
        """Accept clients but read nothing until `release`, so no answer comes from a
        half-loaded node while a client still gets connected at once."""
        self.loading = True

    def release(self) -> None:
        self.loading = False
        for conn in list(self.connections):
            conn.step(conn.session.loaded)

    async def close(self) -> None:
        if self._server:
            self._server.close()
        for conn in list(self.connections):
            conn.transport.close()
        if self._server:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    # the turn budget

    def grant(self, conn: ClientConnection) -> int:
        """What `conn` may handle now: the rest of its share of this turn, within the turn's."""
        if conn.turn != self.turn:
            conn.turn, conn.share = self.turn, self.share
        return conn.share if conn.share < self.left else self.left

    def spend(self, conn: ClientConnection, used: int) -> None:
        conn.share -= used
        self.left -= used
        if self.left <= self._budget // 2 and not self._turn_scheduled:
            self._schedule_turn()

    def wait_turn(self, conn: ClientConnection) -> None:
        self._waiting.append(conn)
        if not self._turn_scheduled:
            self._schedule_turn()

    def _schedule_turn(self) -> None:
        """A callback scheduled now runs before the next loop iteration's IO: a new turn.

        A turn is one loop iteration or more: one ends only once half its budget is
        spent or a client waits, so light traffic costs no callback per iteration, and
        an iteration never does more than a turn allows."""
        self._turn_scheduled = True
        asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """Connections that waited go first, with the turn's budget; new input then still
        has half a budget (so a turn is at most one and a half)."""
        self._turn_scheduled = False
        self.turn += 1
        self.left = self._budget
        waiting = self._waiting
        for _ in range(len(waiting)):  # not those that wait again: they had their share
            if self.left <= 0:
                break
            conn = waiting.popleft()
            if conn in self.connections:
                conn.step(conn.session.proceed)
        self.left = max(self.left, self._budget // 2)
        if waiting and not self._turn_scheduled:
            self._schedule_turn()

    async def sweep(self) -> None:
        """Hang up on clients that went silent or stopped reading (no timer per connection).
        Runs until cancelled, in the task group of whoever owns the gateway."""
        loop = asyncio.get_running_loop()
        period = min(1.0, self.limits.idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            deadline = loop.time() - self.limits.idle_timeout
            for conn in [c for c in self.connections if c.last_active < deadline]:
                stalled = conn.session.waiting_for_reader
                conn.drop("not reading its replies" if stalled else "idle")


class ClientConnection(asyncio.Protocol):
    """One client: moves its bytes to and from its Session and does what the Session says."""

    transport: asyncio.Transport

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.backend = gateway.backend
        self.session: Session
        self.peer = "?"
        self.last_active = 0.0
        self.turn, self.share = -1, 0  # this connection's part of the gateway's turn
        self._lookups: set[asyncio.Task[None]] = set()
        self._acting = False  # carrying out actions (a write may fill the buffer meanwhile)
        self._full = False  # it did: tell the session once the actions under way are done
        self._out: list[bytes] = []  # replies made, waiting for the turn's commit
        self._close_after = False  # close once they are sent
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.last_active = self._loop.time()
        if len(self.gateway.connections) >= self.gateway.limits.max_clients:
            limit = self.gateway.limits.max_clients
            self.backend.note(f"client {self.peer} refused: {limit} clients open")
            transport.abort()
            return
        self.gateway.connections.add(self)
        self.session = Session(self.backend, self.gateway.limits, loading=self.gateway.loading)
        self.transport.set_write_buffer_limits(high=64 * 1024)
        self.backend.note(f"client {self.peer} connected")
        self._act(self.session.start())

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.gateway.connections:
            self.gateway.connections.discard(self)
            self.backend.note(f"client {self.peer} disconnected" + (f": {exc}" if exc else ""))
        for task in self._lookups:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        session, gateway = self.session, self.gateway
        granted = session.allowance = gateway.grant(self)  # self.step(), inlined: the hot path
        actions = session.receive(data, time.time_ns())
        gateway.spend(self, granted - session.allowance)
        self._act(actions)

    def eof_received(self) -> bool:
        self.step(self.session.receive_eof, time.time_ns())
        return True  # keep the socket open for our replies; the session says when to close

    def pause_writing(self) -> None:
        if self._acting:
            self._full = True
        else:
            self._act(self.session.write_full())

    def resume_writing(self) -> None:
        self.last_active = self._loop.time()
        self.step(self.session.write_ready)

    def step(self, event: Callable[..., list[Action]], *args: object) -> None:
        """Give the session one event, within what this turn allows, and act on it."""
        session, gateway = self.session, self.gateway
        granted = session.allowance = gateway.grant(self)
        actions = event(*args)
        gateway.spend(self, granted - session.allowance)
        self._act(actions)

    def _act(self, actions: list[Action]) -> None:
        transport = self.transport
        self._acting = True
        for action in actions:
            kind = type(action)
            if kind is Write:
                data = action.data  # type: ignore[union-attr]
                if data:
                    if not self._out:
                        self.gateway.queue(self)
                    self._out.append(data)
                self.backend.trace(self.peer, action.received, data)  # type: ignore[union-attr]
            elif kind is Lookup:
                task = self._loop.create_task(self._places(action))  # type: ignore[arg-type]
                self._lookups.add(task)
                task.add_done_callback(self._lookups.discard)
            elif kind is PauseReading:
                transport.pause_reading()
            elif kind is ResumeReading:
                transport.resume_reading()
            elif kind is WaitTurn:
                self.gateway.wait_turn(self)
            elif kind is Close:
                if self._out:
                    self._close_after = True  # after the replies it waits for
                else:
                    transport.close()
            elif kind is Abort:
                self.drop(action.reason)  # type: ignore[union-attr]
        self._acting = False
        if self._full:  # in order: after what the session said before it knew
            self._full = False
            self._act(self.session.write_full())

    def send(self) -> None:
        """The replies the session made this turn, in one write (see Gateway.send)."""
        out, self._out = self._out, []
        transport = self.transport
        if out and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self._close_after:
            transport.close()

    async def _places(self, lookup: Lookup) -> None:
        try:
            places = await self.backend.find_places(
                lookup.lat, lookup.lon, lookup.radius_km, lookup.count
            )
        except Exception as e:  # a provider must answer, but a client must never hang
            self.backend.note(f"places failed for {self.peer}: {type(e).__name__}")
            places = None
        self.step(self.session.answered, lookup.request, places)

    def drop(self, why: str) -> None:
        self.backend.note(f"client {self.peer} dropped: {why}")
        self.transport.abort()
