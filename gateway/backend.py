"""What the gateway needs from the server behind it: the node, seen from a client session.

The gateway stores nothing and formats no record: the node builds the AT line of an
IAMAT (it alone knows how a record is kept) and hands back a stored one as a `Fix`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import NamedTuple, Protocol

from gateway.protocol import IAmAt


class Fix(NamedTuple):
    """A client's stored location, as a WHATSAT answer needs it."""

    at_line: bytes  # the AT line, without its newline
    lat: float
    lon: float


class Backend(Protocol):
    name: str

    def iamat(self, event: IAmAt, received_ns: int) -> bytes:
        """Record a client's fix; its AT line, without the newline."""

    def lookup(self, client_id: bytes) -> Fix | None: ...

    def find_places(self, lat: float, lon: float, radius_km: float, count: int) -> Awaitable[bytes]:
        """The places near a point as a JSON document (legacy Nearby Search shape)."""

    def trace(self, peer: str, received: Sequence[bytes], sent: bytes) -> None:
        """One call per batch: every line in, every byte out (the node logs them)."""

    def note(self, message: str) -> None:
        """Connection events and drops, for the node's log."""

    def replies_waiting(self) -> None:
        """Replies wait in the gateway: end the loop turn soon. The turn makes its
        updates durable, then calls `Gateway.send`, so no AT leaves before its update
        is stored."""
