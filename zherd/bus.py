"""The ZeroMQ side of a node: one ROUTER bound for neighbors, one DEALER per neighbor.

A single DEALER connected to several peers would round-robin, not broadcast, so
each neighbor gets its own. Traffic only flows DEALER -> ROUTER: the ROUTER is
receive-only and names the sender by its routing id, which must be a permitted
neighbor. The ROUTER's descriptor wakes the loop; each wake-up drains everything
queued (DESIGN.md: ~4x over one await per message). Sends never block: with
IMMEDIATE set, a message for a neighbor that is down fails at once and the
replication layer resends it later from the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import zmq

MAX_MESSAGE = 16 * 1024 * 1024  # bytes; a larger frame is a hostile or broken peer
DRAIN_BYTES = 1 << 20  # per wake-up (~10k records) before the gateway gets its turn

# (neighbor, payload) pairs, and why each dropped frame was dropped
Deliver = Callable[[Sequence[tuple[str, bytes]], Sequence[str]], None]


class Bus:
    def __init__(
        self,
        name: str,
        bind: str,
        neighbors: dict[str, str],
        deliver: Deliver,
        *,
        context: zmq.Context | None = None,
    ) -> None:
        """`neighbors` maps each permitted neighbor to its ROUTER endpoint."""
        self.name = name
        self.deliver = deliver
        self.ctx = context or zmq.Context.instance()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted neighbor takes its id back
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        self.router.setsockopt(zmq.RCVHWM, 1000)
        self.router.bind(bind)
        self.dealers: dict[str, zmq.Socket] = {}
        for peer, endpoint in neighbors.items():
            dealer = self.ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.ROUTING_ID, name.encode())
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.IMMEDIATE, 1)
            dealer.setsockopt(zmq.SNDHWM, 1000)  # x up to 1024 records: bounded memory
            dealer.setsockopt(zmq.RECONNECT_IVL, 50)  # ms; a neighbor that starts later, or
            dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 250)  # restarts, is found within 1/4 s
            dealer.connect(endpoint)
            self.dealers[peer] = dealer
        self._permitted = {peer.encode(): peer for peer in neighbors}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.router.getsockopt(zmq.FD), self._readable)
        self._readable()  # messages may have queued before we watched the descriptor

    def send(self, peer: str, payload: bytes) -> bool:
        """Queue a message for a neighbor; False if it is down or its queue is full."""
        try:
            self.dealers[peer].send(payload, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _readable(self) -> None:
        """Drain the ROUTER (its descriptor is edge-triggered: read until it is empty)."""
        if self._draining:
            return
        self._draining = True
        batch: list[tuple[str, bytes]] = []
        dropped: list[str] = []
        recv, permitted = self.router.recv_multipart, self._permitted
        budget = DRAIN_BYTES
        try:
            while budget > 0:
                try:
                    frames = recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                budget -= 64 + len(frames[-1])  # tiny frames (a hostile flood) count too
                peer = permitted.get(frames[0])
                if peer is None:
                    dropped.append(f"frame from non-neighbor {frames[0]!r}")
                    continue
                if len(frames) != 2:
                    dropped.append(f"{peer}: a {len(frames)}-frame message")
                    continue
                batch.append((peer, frames[1]))
            else:
                assert self._loop is not None
                self._loop.call_soon(self._readable)  # more queued: come back after the gateway
        finally:
            self._draining = False
        if batch or dropped:
            self.deliver(batch, dropped)

    def close(self, linger: float = 0.2) -> None:
        """Stop reading; give queued messages `linger` seconds to leave (a neighbor that
        misses them catches up later anyway)."""
        if self._loop is not None and not self.router.closed:
            self._loop.remove_reader(self.router.getsockopt(zmq.FD))
        self.router.close(linger=0)
        for dealer in self.dealers.values():
            dealer.close(linger=int(linger * 1000))
