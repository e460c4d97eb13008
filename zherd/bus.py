"""The ZeroMQ side of a node: one ROUTER bound for neighbors, one DEALER per neighbor.

A single DEALER connected to several peers would round-robin, not broadcast, so
each neighbor gets its own. Traffic only flows DEALER -> ROUTER: the ROUTER is
receive-only. The ROUTER's descriptor wakes the loop; each wake-up drains everything
queued (~4x over one await per message). Sends never block: with IMMEDIATE set, a
message for a neighbor that is down fails at once and the replication layer resends
it later from the store.

Who sent a message is decided by keys, not by names. Every ROUTER is a CURVE server,
every DEALER a CURVE client holding its own key pair and its neighbor's public key,
and the ZAP handler (`zherd.zap`) admits only the neighbors' keys, naming each
connection by the neighbor it is. That name arrives with every message as its
`User-Id`; DEALERs claim no routing id, so ZeroMQ gives each connection a fresh one,
and a second connection with a neighbor's key (a restart, an impostor) is just
another connection: nothing can take over or shadow the live one (libzmq's
ROUTER_HANDOVER left the old connection open and unread, libzmq issue 4407). A peer
that still claims a routing id must claim its own name, or its messages are dropped.
With `[security] curve = false` the DEALERs log in with PLAIN user names instead:
the same path, without proof or encryption.

ZeroMQ heartbeats close a connection whose peer went silent (a host that vanished
without a reset, a half-open TCP connection), so a DEALER reconnects instead of
queueing into the void.
"""

from __future__ import annotations

import asyncio
import errno
import os
import struct
from collections import Counter
from collections.abc import Callable, Sequence

import zmq
from loguru import logger
from zmq.utils import z85

from zherd.config import is_ipv6
from zherd.keys import BusKeys
from zherd.zap import DOMAIN, Gatekeeper, Rejections

MAX_MESSAGE = 16 * 1024 * 1024  # bytes; a larger frame is a hostile or broken peer
DRAIN_BYTES = 1 << 20  # per wake-up (~10k records) before the gateway gets its turn
HEARTBEAT_IVL, HEARTBEAT_TIMEOUT = 1000, 3000  # ms: a silent peer's connection is closed
HANDSHAKE_IVL = 5000  # ms a connection may take to authenticate
CONNECT_TIMEOUT = 1000  # ms: a connect into a dead route is retried, not left to TCP (~2 min)
PLAIN_PASSWORD = b"zherd"  # PLAIN needs one; with curve = false, names are all there is

# (neighbor, payload) pairs, and why each dropped frame was dropped
Deliver = Callable[[Sequence[tuple[str, bytes]], Sequence[str]], None]

_MONITORED = (
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_PROTOCOL_ERRORS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: ("not CURVE", "not a CURVE client"),
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: (
        "failed handshake",
        "its CURVE handshake failed (not made for this server's public key?)",
    ),
}
INSECURE = (
    "[security] curve = false: the bus is neither authenticated nor encrypted; anyone who "
    "can reach a bus port can claim to be a neighbor and write any client's location"
)


class Bus:
    def __init__(
        self,
        name: str,
        bind: str,
        neighbors: dict[str, str],
        deliver: Deliver,
        *,
        keys: BusKeys | None,
        context: zmq.Context | None = None,
    ) -> None:
        """`neighbors` maps each permitted neighbor to its ROUTER endpoint; `keys` are
        this server's CURVE keys (None: `curve = false`, names in clear text)."""
        self.name = name
        self.deliver = deliver
        self.ctx = context or zmq.Context()  # our own: one ZAP handler per context
        self._own_context = context is None
        self.rejections = Rejections(logger.warning)
        if keys is None:
            logger.warning(f"bus: {INSECURE}")
        curve_keys = None if keys is None else {z85.decode(k): n for n, k in keys.neighbors.items()}
        self.gatekeeper = Gatekeeper(
            self.ctx,
            curve_keys=curve_keys,
            neighbors=frozenset(neighbors),
            known={} if keys is None else keys.known,
            reject=self.rejections,
        )
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        self.router.setsockopt(zmq.RCVHWM, 1000)
        self.router.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL)
        _heartbeats(self.router)
        _as_server(self.router, keys)
        _ipv6(self.router, bind)
        self.monitor = self.router.get_monitor_socket(_MONITORED)
        try:
            self.router.bind(bind)
        except zmq.ZMQError:  # a port in use: leave nothing open behind us
            self.monitor.close(linger=0)
            self.router.close(linger=0)
            self.gatekeeper.close()
            if self._own_context:
                self.ctx.term()
            raise
        self.dealers: dict[str, zmq.Socket] = {}
        for peer, endpoint in neighbors.items():
            dealer = self.ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.IMMEDIATE, 1)
            dealer.setsockopt(zmq.SNDHWM, 1000)  # x up to 1024 records: bounded memory
            dealer.setsockopt(zmq.RECONNECT_IVL, 50)  # ms; a neighbor that starts later, or
            dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 250)  # restarts, is found within 1/4 s
            dealer.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT)
            dealer.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL)
            _heartbeats(dealer)
            _as_client(dealer, name, peer, keys)
            _ipv6(dealer, endpoint)
            dealer.connect(endpoint)
            self.dealers[peer] = dealer
        self._permitted = {peer: peer.encode() for peer in neighbors}
        self.dropped: Counter[str] = Counter()  # messages refused after the handshake, by why
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._flush_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.gatekeeper.start()
        self._loop.add_reader(self.monitor.getsockopt(zmq.FD), self._monitored)
        self._loop.add_reader(self.router.getsockopt(zmq.FD), self._readable)
        self._readable()  # messages may have queued before we watched the descriptor
        self._monitored()
        self._flush_rejections()

    def send(self, peer: str, payload: bytes) -> bool:
        """Queue a message for a neighbor; False if it is down or its queue is full."""
        try:
            self.dealers[peer].send(payload, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _readable(self) -> None:
        """Drain the ROUTER (its descriptor is edge-triggered: read until it is empty).

        A message is its routing id, then its payload, read as a frame for its User-Id
        (two plain recv calls: cheaper than recv_multipart, ~1.3 us against ~1.9)."""
        if self._draining or self.router.closed:  # a drain scheduled before close()
            return
        self._draining = True
        batch: list[tuple[str, bytes]] = []
        dropped: list[str] = []
        router, permitted = self.router, self._permitted
        recv, events = router.recv, router.getsockopt
        budget = DRAIN_BYTES
        try:
            while budget > 0:
                # Asking first costs a getsockopt; ending on zmq.Again cost an exception
                # a wake-up, which at light load is one a message.
                if not events(zmq.EVENTS) & zmq.POLLIN:
                    break
                routing_id = recv(zmq.NOBLOCK)
                frame = recv(zmq.NOBLOCK, copy=False)
                payload = frame.bytes
                budget -= 64 + len(payload)  # tiny frames (a hostile flood) count too
                peer = _user(frame)
                claimed = permitted.get(peer)
                if claimed is None or (routing_id[0] and routing_id != claimed):
                    self._refuse(peer, routing_id)
                    if frame.more:
                        self._discard()
                    continue
                if frame.more:
                    dropped.append(f"{peer}: a {2 + self._discard()}-frame message")
                    continue
                batch.append((peer, payload))
            else:
                assert self._loop is not None
                self._loop.call_soon(self._readable)  # more queued: come back after the gateway
        finally:
            self._draining = False
        if batch or dropped:
            self.deliver(batch, dropped)

    def _discard(self) -> int:
        """Read the rest of a multipart message; how many frames that was."""
        count = 0
        while self.router.getsockopt(zmq.RCVMORE):
            self.router.recv(zmq.NOBLOCK, copy=False)
            count += 1
        return count

    def _refuse(self, user: str, routing_id: bytes) -> None:
        """A message whose authenticated sender is not who it claims (or not a neighbor:
        ZAP admits none, so this is a broken handler)."""
        claim = routing_id.decode(errors="backslashreplace")[:64]
        if user in self._permitted:
            kind, why = "claims another name", f"neighbor {user} claims to be {claim!r}"
        else:
            kind, why = "not a neighbor", f"from {user!r}, not a neighbor (claims {claim!r})"
        self.dropped[kind] += 1
        self.rejections(kind, f"bus: dropped a message: {why}")

    def _monitored(self) -> None:
        """Handshakes that failed before ZAP could say who: libzmq 4.3 reports neither
        the peer's address nor a key for these, only why."""
        while True:
            try:
                head, _endpoint = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:  # not two frames: not a monitor event
                continue
            event, value = struct.unpack("=HI", head[:6])
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                continue  # ZAP refused it, and said who and why
            if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                kind, why = _PROTOCOL_ERRORS.get(
                    value, ("failed handshake", f"protocol error 0x{value:08x}")
                )
            else:
                kind, why = "failed handshake", f"the handshake did not complete ({_errno(value)})"
            self.rejections(kind, f"bus: refused a connection (address not reported): {why}")

    def _flush_rejections(self) -> None:
        assert self._loop is not None
        self.rejections.flush()
        self._flush_timer = self._loop.call_later(self.rejections.window, self._flush_rejections)

    def close(self, linger: float = 0.2) -> None:
        """Stop reading; give queued messages `linger` seconds to leave (a neighbor that
        misses them catches up later anyway)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self._loop is not None and not self.router.closed:
            self._loop.remove_reader(self.router.getsockopt(zmq.FD))
            self._loop.remove_reader(self.monitor.getsockopt(zmq.FD))
        self.rejections.close()
        refused = self.rejections.counts
        if refused:
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(refused.items()))
            logger.info(f"bus: refused in all: {counts}")
        self.router.disable_monitor()
        self.monitor.close(linger=0)
        self.router.close(linger=0)
        self.gatekeeper.close()
        for dealer in self.dealers.values():
            dealer.close(linger=int(linger * 1000))
        if self._own_context:
            self.ctx.term()  # waits for the dealers' linger, no longer


def _user(frame: zmq.Frame) -> str:
    """The name ZAP gave the frame's connection ("" if none: then it is refused)."""
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:
        return ""


def _as_server(sock: zmq.Socket, keys: BusKeys | None) -> None:
    """A CURVE server (PLAIN without keys) whose every peer the ZAP handler must admit."""
    sock.setsockopt(zmq.ZAP_DOMAIN, DOMAIN)
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP handler: nobody gets in
    if keys is None:
        sock.setsockopt(zmq.PLAIN_SERVER, 1)
    else:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


def _as_client(sock: zmq.Socket, name: str, peer: str, keys: BusKeys | None) -> None:
    """A CURVE client with our pair and `peer`'s public key (PLAIN, our name, without)."""
    if keys is None:
        sock.setsockopt(zmq.PLAIN_USERNAME, name.encode())
        sock.setsockopt(zmq.PLAIN_PASSWORD, PLAIN_PASSWORD)
    else:
        sock.setsockopt(zmq.CURVE_SERVERKEY, keys.neighbors[peer])
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


def _heartbeats(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT)


def _ipv6(sock: zmq.Socket, endpoint: str) -> None:
    host = endpoint.removeprefix("tcp://").rpartition(":")[0].strip("[]")
    if is_ipv6(host):
        sock.setsockopt(zmq.IPV6, 1)


def _errno(value: int) -> str:
    return f"{errno.errorcode.get(value, value)}: {os.strerror(value)}" if value else "closed"
