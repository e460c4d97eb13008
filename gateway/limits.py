"""What one client may cost a server: the `[limits]` table of topology.toml.

docs/protocol.md states what each bound means for memory and work per connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.protocol import MAX_ID


@dataclass(frozen=True)
class Limits:
    max_line: int = 64 * 1024  # bytes; a longer line is answered "? <cut line>"
    idle_timeout: float = 120.0  # seconds silent (or not reading) before we hang up
    max_clients: int = 10_000  # open connections per server
    max_pending_output: int = 1024 * 1024  # bytes of replies waiting for one client
    max_inflight: int = 32  # WHATSATs awaiting places per connection before we stop reading
    # A phone's clock is off by seconds, at worst hours (a wrong time zone); never by a
    # day. A fix from further ahead is a broken or hostile clock: stored, it would win
    # "newest wins" against every true fix of that client until its time came.
    max_future: float = 86_400.0  # seconds an IAMAT's time may be ahead of the server's
    max_id: int = MAX_ID  # bytes of a client id; at most max_line
