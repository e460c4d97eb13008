"""What the gateway needs from a herd node, and nothing more.

The gateway imports nothing from `zherd`: the node implements this interface,
so the client side can be read, tested and run against a stand-in on its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import NamedTuple, Protocol

from gateway.protocol import IAmAt


class Fix(NamedTuple):
    """A client's stored location: its AT line (no newline) and where it is."""

    at_line: bytes
    lat: float
    lon: float


class Backend(Protocol):
    name: str

    def iamat(self, event: IAmAt, received_ns: int) -> bytes:
        """Record a client's report; the AT line to answer with (no newline)."""

    def lookup(self, client_id: str) -> Fix | None: ...

    def find_places(self, lat: float, lon: float, radius_km: float, count: int) -> Awaitable[bytes]:
        """The places near a point as a JSON document (legacy Nearby Search shape)."""

    def trace(self, peer: str, received: Sequence[bytes], sent: bytes) -> None:
        """One call per batch: every line in, every byte out (the node logs them)."""

    def note(self, message: str) -> None:
        """Connection events and drops, for the node's log."""

    def replies_waiting(self) -> None:
        """Replies wait in the gateway: end the loop turn soon. The turn writes its
        updates to disk, then calls `Gateway.send`, so no AT leaves before its update
        is stored."""
