"""Who may connect to a server's bus: a ZAP handler (ZeroMQ RFC 27) on the node's loop.

libzmq asks it about every connection to the bus ROUTER once the CURVE handshake has
proved the peer holds the secret key of the public key it shows. It admits exactly
the public keys of the server's topology neighbors and names the peer by the
neighbor it is: that name comes back on every message as its `User-Id` property, so
a sender is who its key says, never the routing id it claims. With `curve = false`
the same handler admits the PLAIN user names of the neighbors (a claim, not a proof).

It is our own handler rather than pyzmq's authenticator so that it runs on the same
loop without a thread, and so that every refusal says who (address, key) and why, in
log lines that a hostile flood cannot multiply (`Rejections`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import NamedTuple

import zmq
from zmq.utils import z85

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27: one handler per context
DOMAIN = b"zherd"


class Verdict(NamedTuple):
    user: str  # the neighbor's name; empty when refused
    kind: str = ""  # the refusal's kind, a counter's name; empty when admitted
    why: str = ""  # the refusal in full, for the log


def decide(
    request: list[bytes],
    *,
    curve_keys: Mapping[bytes, str] | None,
    neighbors: frozenset[str],
    known: Mapping[bytes, str],
) -> Verdict:
    """Admit a neighbor, pure: its name, or why not. `curve_keys` maps each neighbor's
    32-byte public key to its name; None means PLAIN (names, no proof)."""
    if len(request) < 6 or request[0] != b"1.0" or request[2] != DOMAIN:
        return Verdict("", "malformed request", "not a ZAP request for the bus")
    mechanism, credentials = request[5], request[6:]
    expected = b"PLAIN" if curve_keys is None else b"CURVE"
    if mechanism != expected:
        shown = mechanism[:16].decode(errors="replace")
        return Verdict("", "wrong mechanism", f"{shown}, not {expected.decode()}")
    if curve_keys is not None:
        if len(credentials) != 1 or len(credentials[0]) != 32:
            return Verdict("", "malformed request", "not a CURVE public key")
        name = curve_keys.get(credentials[0])
        if name is not None:
            return Verdict(name)
        owner = known.get(z85.encode(credentials[0]))
        if owner:
            return Verdict("", "not a neighbor", f"the key of {owner}, not a neighbor")
        return Verdict("", "unknown key", "not the key of any neighbor")
    if len(credentials) != 2:
        return Verdict("", "malformed request", "not a PLAIN user name")
    name = credentials[0].decode(errors="replace")
    if name in neighbors:
        return Verdict(name)
    return Verdict("", "not a neighbor", f"user {name[:64]!r} is not a neighbor")


def describe_key(request: list[bytes]) -> str:
    """The key (or PLAIN user) a ZAP request shows, for a log line."""
    if len(request) >= 7 and request[5] == b"CURVE" and len(request[6]) == 32:
        return z85.encode(request[6]).decode()
    if len(request) >= 7 and request[5] == b"PLAIN":
        return f"user {request[6][:64].decode(errors='replace')!r}"
    return "(no key)"


class Rejections:
    """Every refusal counted; at most `burst` log lines per kind per `window` seconds,
    the rest summed up in one line, so a hostile flood cannot fill the disk."""

    def __init__(
        self,
        log: Callable[[str], None],
        *,
        burst: int = 10,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.burst, self.window, self.clock = burst, window, clock
        self.counts: Counter[str] = Counter()
        self._window_start: dict[str, float] = {}
        self._logged: Counter[str] = Counter()
        self._suppressed: Counter[str] = Counter()

    def __call__(self, kind: str, line: str) -> None:
        self.counts[kind] += 1
        now = self.clock()
        if now - self._window_start.get(kind, -self.window) >= self.window:
            self._summarize(kind)
            self._window_start[kind], self._logged[kind] = now, 0
        if self._logged[kind] < self.burst:
            self._logged[kind] += 1
            self.log(line)
        else:
            self._suppressed[kind] += 1

    def flush(self) -> None:
        """Say what was left unsaid (call it now and then, and at the end)."""
        for kind in list(self._suppressed):
            if self.clock() - self._window_start[kind] >= self.window:
                self._summarize(kind)

    def close(self) -> None:
        for kind in list(self._suppressed):
            self._summarize(kind)

    def _summarize(self, kind: str) -> None:
        count = self._suppressed.pop(kind, 0)
        if count:
            self.log(f"bus: {count} more refusals ({kind}) not logged, {self.counts[kind]} in all")


class Gatekeeper:
    """The ZAP handler of one context, served from the asyncio loop's reader callbacks."""

    def __init__(
        self,
        ctx: zmq.Context,
        *,
        curve_keys: Mapping[bytes, str] | None,
        neighbors: frozenset[str],
        known: Mapping[bytes, str],
        reject: Rejections,
    ) -> None:
        self.curve_keys, self.neighbors, self.known = curve_keys, neighbors, known
        self.reject = reject
        self.admitted: Counter[str] = Counter()
        self.socket = ctx.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)  # before the bus binds: never a moment without it
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.socket.getsockopt(zmq.FD), self.serve)
        self.serve()

    def serve(self) -> None:
        """Answer every queued request (the descriptor is edge-triggered)."""
        sock = self.socket
        while True:
            try:
                request = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            verdict = decide(
                request, curve_keys=self.curve_keys, neighbors=self.neighbors, known=self.known
            )
            request_id = request[1] if len(request) > 1 else b""
            if verdict.user:
                self.admitted[verdict.user] += 1
                sock.send_multipart([b"1.0", request_id, b"200", b"OK", verdict.user.encode(), b""])
            else:
                address = request[3].decode(errors="replace") if len(request) > 3 else "?"
                self.reject(
                    verdict.kind, f"bus: refused {address} {describe_key(request)}: {verdict.why}"
                )
                sock.send_multipart([b"1.0", request_id, b"400", verdict.why.encode(), b"", b""])

    def close(self) -> None:
        if self._loop is not None and not self.socket.closed:
            self._loop.remove_reader(self.socket.getsockopt(zmq.FD))
        self.socket.close(linger=0)
