"""Messages between neighbors, as msgpack arrays: pure encode and decode.

Every message flows DEALER -> ROUTER and carries the sender's boot epoch, so a
receiver can tell a restarted neighbor (new epoch, empty memory) from one that
was only cut off. `decode` trusts nothing: any bytes in, a message or None out.

- Sync(epoch, known_epoch, known_seq): "I hold your stream up to known_seq of
  known_epoch (0: nothing); send me what follows."
- Updates(epoch, first, last, records, bulk): your stream's range (first, last];
  records are the records (`zherd.record`: one line of bytes each) in it that
  you may not have (updates that came from you are left out of the live flow).
- Heartbeat(epoch, tip): "I am alive; my stream to you is at `tip`" (-1: send
  me a Sync first). A receiver whose position differs knows it missed something.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

SYNC, UPDATES, HEARTBEAT = 1, 2, 3
MAX_INT = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Sync:
    epoch: int
    known_epoch: int
    known_seq: int


@dataclass(frozen=True, slots=True)
class Updates:
    epoch: int
    first: int
    last: int
    records: tuple[bytes, ...]  # checked one by one on arrival: Locations.apply
    bulk: bool = False  # part of a catch-up (logged as a range), not the live flow


@dataclass(frozen=True, slots=True)
class Heartbeat:
    epoch: int
    tip: int


Message = Sync | Updates | Heartbeat


def encode(message: Message) -> bytes:
    if isinstance(message, Updates):
        fields: tuple[Any, ...] = (
            UPDATES,
            message.epoch,
            message.first,
            message.last,
            message.records,
            message.bulk,
        )
    elif isinstance(message, Sync):
        fields = (SYNC, message.epoch, message.known_epoch, message.known_seq)
    else:
        fields = (HEARTBEAT, message.epoch, message.tip)
    return msgpack.packb(fields)


def decode(payload: bytes) -> Message | None:
    """The message in `payload`, or None if it is not one (malformed, wrong types, extra data)."""
    try:
        fields = msgpack.unpackb(payload, use_list=False, raw=False, strict_map_key=True)
    except Exception:  # msgpack raises a zoo of types on garbage; none may escape
        return None
    if not isinstance(fields, tuple) or not fields or not _ints(fields[:4]):  # kind too: True == 1
        return None
    kind, n = fields[0], len(fields)
    if kind == UPDATES and n == 6 and type(fields[4]) is tuple and type(fields[5]) is bool:
        _, epoch, first, last, records, bulk = fields
        if epoch > 0 and 0 <= first <= last:
            return Updates(epoch, first, last, records, bulk)
    elif kind == SYNC and n == 4:
        _, epoch, known_epoch, known_seq = fields
        if epoch > 0 and known_epoch >= 0 and known_seq >= 0:
            return Sync(epoch, known_epoch, known_seq)
    elif kind == HEARTBEAT and n == 3:
        _, epoch, tip = fields
        if epoch > 0 and tip >= -1:
            return Heartbeat(epoch, tip)
    return None


def _ints(values: tuple[Any, ...]) -> bool:
    return all(type(v) is int and -1 <= v <= MAX_INT for v in values)
