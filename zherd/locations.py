"""Each client's newest record, in memory, kept in the order it was stored.

This is also the replication log (the zguide Clone pattern): every stored
update gets the next sequence number and moves to the end of the dict, so "what
changed since seq N" is a walk back from the end that costs what was missed,
not the size of the store, and an update superseded before it left is never sent.

An entry is one `bytes` object: a fixed header (sequence number, client time in
ns, the neighbor it came from) followed by the record. At a million clients that
is ~190 bytes a client where a tuple of fields cost ~700, and a dict of bytes is
never tracked by the cyclic GC, so a full collection does not walk the store.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from zherd.record import client_of, parse_record_python

HEADER = struct.Struct("<QqB")  # seq, client time (ns), via
RECORD = slice(HEADER.size, None)  # the record: an entry's bytes after its header
VIA = HEADER.size - 1  # the index of an entry's `via` byte
FROM_CLIENT = 255  # `via` of an update a client told this server
_MIN_NS, _MAX_NS = -(2**63), 2**63 - 1  # a time beyond these orders as the bound


def pack(seq: int, time_ns: int, via: int, record: bytes) -> bytes:
    return HEADER.pack(seq, min(max(time_ns, _MIN_NS), _MAX_NS), via) + record


def seq_of(entry: bytes) -> int:
    return HEADER.unpack_from(entry)[0]


def via_of(entry: bytes) -> int:
    return entry[VIA]


def record_of(entry: bytes) -> bytes:
    return entry[RECORD]


def _origin(record: bytes) -> bytes:
    return record[: record.index(b" ")]


def store_put_python(
    entries: dict[bytes, bytes],
    client_id: bytes,
    time_ns: int,
    origin: bytes,
    record: bytes,
    via: int,
    seq: int,
) -> bytes | None:
    """`Locations.put` on its dict: the entry stored (as number `seq`), or None.

    zherd._speedups has the same in C, used when it was built (the tests hold the two
    to the same answers)."""
    old = entries.get(client_id)
    if old is not None:
        _, held_ns, _ = HEADER.unpack_from(old)
        if time_ns < held_ns or (time_ns == held_ns and origin <= _origin(old[RECORD])):
            return None
        del entries[client_id]  # re-inserted at the end: dict order is seq order
    entry = entries[client_id] = pack(seq, time_ns, via, record)
    return entry


def _holds(entries: dict[bytes, bytes], record: object) -> bool:
    """Whether a flooded record is exactly what we hold: cyclic topologies deliver most
    updates twice, and this drops the copy for the price of a lookup, unchecked."""
    try:
        entry = entries.get(client_of(record))  # type: ignore[arg-type]
    except (IndexError, TypeError, AttributeError):  # not a record: validation says why
        return False
    return entry is not None and len(entry) == HEADER.size + len(record) and entry.endswith(record)  # type: ignore[arg-type]


def store_apply_python(
    entries: dict[bytes, bytes],
    records: tuple[object, ...],
    origins: frozenset[bytes],
    latest_ns: int,
    max_id: int,
    via: int,
    head: int,
) -> tuple[list[bytes], int, int, str]:
    """`Locations.apply` on its dict: (entries stored, new head, records invalid, the
    first one's reason). zherd._speedups has the same in C."""
    stored: list[bytes] = []
    invalid, reason = 0, ""
    for line in records:
        if _holds(entries, line):  # a copy by another path
            continue
        fields = parse_record_python(line, origins, latest_ns, max_id)
        if type(fields) is str:
            invalid += 1
            reason = reason or fields
            continue
        client_id, origin, time_ns = fields
        entry = store_put_python(entries, client_id, time_ns, origin, line, via, head + 1)  # type: ignore[arg-type]
        if entry is not None:
            head += 1
            stored.append(entry)
    return stored, head, invalid, reason


try:
    from zherd._speedups import apply as store_apply
    from zherd._speedups import put as store_put
except ImportError:  # not built (no C compiler where it was installed)
    store_apply, store_put = store_apply_python, store_put_python


class Locations:
    def __init__(self) -> None:
        self._entries: dict[bytes, bytes] = {}  # client id -> entry
        self.head = 0  # the newest sequence number handed out

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[bytes]:
        """Entries in sequence order."""
        return iter(self._entries.values())

    def get(self, client_id: bytes) -> bytes | None:
        """The record held for a client."""
        entry = self._entries.get(client_id)
        return None if entry is None else entry[RECORD]

    def put(
        self, client_id: bytes, time_ns: int, origin: bytes, record: bytes, via: int
    ) -> bytes | None:
        """Store a record if it is newer than what we hold; the new entry, or None.

        Newest wins: client time, then origin name (so every server picks the same).
        """
        entry = store_put(self._entries, client_id, time_ns, origin, record, via, self.head + 1)
        if entry is not None:
            self.head += 1
        return entry

    def apply(
        self,
        records: tuple[object, ...],
        origins: frozenset[bytes],
        latest_ns: int,
        max_id: int,
        via: int,
    ) -> tuple[list[bytes], int, str]:
        """A neighbor's records, each checked (`record.parse_record`) and put unless we
        hold it already (`holds`): (entries stored, records invalid, the first's reason)."""
        stored, self.head, invalid, reason = store_apply(
            self._entries, records, origins, latest_ns, max_id, via, self.head
        )
        return stored, invalid, reason

    def since(self, seq: int) -> list[bytes]:
        """Entries stored after `seq`, oldest first."""
        newer: list[bytes] = []
        unpack = HEADER.unpack_from
        for entry in reversed(self._entries.values()):
            if unpack(entry)[0] <= seq:
                break
            newer.append(entry)
        newer.reverse()
        return newer

    def restore(self, entries: Iterable[bytes]) -> None:
        """Load entries of a previous run, in the order they were stored (a later
        entry for the same client replaces an earlier one)."""
        store = self._entries
        pop, start = store.pop, HEADER.size
        last = None
        for entry in entries:
            # the client id: the record's third field (origin, skew, client id, ...)
            skew_at = entry.index(b" ", start) + 1
            id_at = entry.index(b" ", skew_at) + 1
            client_id = entry[id_at : entry.index(b" ", id_at)]
            pop(client_id, None)  # a later entry moves to the end: dict order is seq order
            store[client_id] = last = entry
        if last is not None:
            self.head = max(self.head, seq_of(last))
