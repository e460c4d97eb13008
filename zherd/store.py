"""Each client's newest location, kept in the order it was stored.

The store is also the replication log (the zguide Clone pattern): every stored
update gets the next sequence number and moves to the end of the dict, so "what
has changed since seq N" is a walk back from the end that costs what was missed,
not the size of the store, and an update superseded before it was sent is never
sent at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from gateway.protocol import Location


class Entry(NamedTuple):
    seq: int
    location: Location
    via: str | None  # the neighbor it came from; None if a client told this server


class Store:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self.head = 0  # the newest sequence number handed out

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        """Entries in sequence order."""
        return iter(self._entries.values())

    def get(self, client_id: str) -> Location | None:
        entry = self._entries.get(client_id)
        return None if entry is None else entry.location

    def holds(self, record: object) -> bool:
        """Whether a flooded (client_id, coords, time, origin, skew) is exactly what we hold.

        Cyclic topologies deliver most updates twice; this lets a receiver drop the
        copy for the price of a lookup instead of validating it first.
        """
        try:
            entry = self._entries.get(record[0])  # type: ignore[index]
        except (TypeError, KeyError, IndexError):  # not a record at all: validation says why
            return False
        return entry is not None and entry.location[:5] == record

    def put(self, location: Location, via: str | None = None) -> Entry | None:
        """Store `location` if it is newer than what we hold; the new entry, or None."""
        entries = self._entries
        old = entries.get(location.client_id)
        if old is not None:
            held = old.location  # newest wins: client time, then origin name
            if location.time_ns < held.time_ns or (
                location.time_ns == held.time_ns and location.origin <= held.origin
            ):
                return None
            del entries[location.client_id]  # re-inserted at the end: dict order is seq order
        self.head += 1
        entry = Entry(self.head, location, via)
        entries[location.client_id] = entry
        return entry

    def since(self, seq: int) -> list[Entry]:
        """Entries stored after `seq`, oldest first."""
        newer: list[Entry] = []
        for entry in reversed(self._entries.values()):
            if entry.seq <= seq:
                break
            newer.append(entry)
        newer.reverse()
        return newer

    def restore(self, entries: Iterable[Entry]) -> None:
        """Load an empty store from a previous run's entries (one per client, by seq)."""
        for entry in entries:
            self._entries[entry.location.client_id] = entry
            self.head = max(self.head, entry.seq)
