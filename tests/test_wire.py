"""Neighbor messages: encode/decode round trips, and decode turns anything else into None."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from zherd.wire import (
    HEARTBEAT,
    MAX_INT,
    SYNC,
    UPDATES,
    Heartbeat,
    Message,
    Sync,
    Updates,
    decode,
    encode,
)

RECORD = b"Alford +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1400794645.392014450"

MESSAGES: list[Message] = [
    Sync(1, 0, 0),
    Sync(MAX_INT, MAX_INT, MAX_INT),
    Sync(0x2F00_0000_0001, 0x1234, 99),
    Updates(7, 0, 0, ()),
    Updates(7, 0, 0, (), bulk=True),
    Updates(7, 3, 9, (RECORD,)),
    Updates(7, 3, 9, (RECORD, b"", b"\x00\xff\n"), bulk=True),
    Updates(MAX_INT, MAX_INT, MAX_INT, (RECORD,) * 1024, bulk=True),
    Updates(7, 3, 9, (b"x" * 70_000,)),
    Updates(7, 3, 9, (("junk",), 5, None, "text")),  # type: ignore[arg-type]  # checked later
    Heartbeat(1, -1),
    Heartbeat(5, 0),
    Heartbeat(MAX_INT, MAX_INT),
]


def pack(*fields: Any) -> bytes:
    return msgpack.packb(fields)


@pytest.mark.parametrize("message", MESSAGES, ids=repr)
def test_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


def test_tuples_on_the_wire_not_maps() -> None:
    assert msgpack.unpackb(encode(Sync(1, 2, 3))) == [SYNC, 1, 2, 3]
    assert msgpack.unpackb(encode(Heartbeat(4, -1))) == [HEARTBEAT, 4, -1]
    assert msgpack.unpackb(encode(Updates(4, 1, 2, (RECORD,)))) == [
        UPDATES,
        4,
        1,
        2,
        [RECORD],
        False,
    ]
    assert msgpack.unpackb(encode(Updates(4, 1, 2, (), bulk=True))) == [UPDATES, 4, 1, 2, [], True]


def test_records_go_as_msgpack_bin_and_come_back_as_bytes() -> None:
    payload = encode(Updates(4, 1, 2, (RECORD,)))
    assert b"\xc4" + bytes([len(RECORD)]) + RECORD in payload  # bin 8, not str
    message = decode(payload)
    assert isinstance(message, Updates)
    assert type(message.records) is tuple
    assert message.records == (RECORD,) and type(message.records[0]) is bytes


def test_a_text_record_stays_text_for_validation_to_refuse() -> None:
    message = decode(pack(UPDATES, 4, 1, 2, (RECORD.decode(), list(RECORD)), False))
    assert isinstance(message, Updates)
    assert message.records == (RECORD.decode(), tuple(RECORD))


def test_the_bulk_flag_is_kept() -> None:
    for bulk in (False, True):
        message = decode(encode(Updates(4, 1, 2, (RECORD,), bulk)))
        assert isinstance(message, Updates) and message.bulk is bulk


GARBAGE = [
    b"",
    b"\x00",
    b"\xc1",  # never used in msgpack
    b"hello world",
    b"\xff" * 64,
    b"\x93\x01\x02",  # array of 3, two given
    b"\xdc\xff\xff",  # array16 of 65535, nothing given
    b"\xdd\xff\xff\xff\xff",  # array32 of 4G, nothing given: must not allocate it
    b"\x91" * 100_000,  # nested a hundred thousand deep
    pack(SYNC, 1, 0, 0) + b"\x00",  # trailing data
    pack(SYNC, 1, 0, 0) * 2,
    b"\xa3\xed\xa0\x80",  # a string holding a lone surrogate
]


@pytest.mark.parametrize("payload", GARBAGE, ids=lambda p: p[:12].hex())
def test_garbage(payload: bytes) -> None:
    assert decode(payload) is None


@pytest.mark.parametrize("message", MESSAGES, ids=repr)
def test_every_truncation_is_none(message: Message) -> None:
    payload = encode(message)
    for cut in range(len(payload) - 1, -1, -max(1, len(payload) // 300)):
        assert decode(payload[:cut]) is None


INVALID = [
    # wrong message type
    pack(0, 1, 0, 0),
    pack(4, 1, 0),
    pack(-1, 1, 0, 0),
    pack("1", 1, 0, 0),
    pack(b"\x01", 1, 0, 0),
    pack(None, 1, 0, 0),
    pack(1.0, 1, 0, 0),
    pack(True, 1, 0, 0),  # True == 1 == SYNC in Python, but it is no int on the wire
    pack(True, 1, 0),
    # wrong counts
    pack(),
    pack(SYNC),
    pack(SYNC, 1, 0),
    pack(SYNC, 1, 0, 0, 0),
    pack(HEARTBEAT, 1),
    pack(HEARTBEAT, 1, 0, 0),
    pack(UPDATES, 1, 0, 0),
    pack(UPDATES, 1, 0, 0, ()),  # the five fields of the old format: no bulk flag
    pack(UPDATES, 1, 0, 0, (), False, False),
    pack(UPDATES, 1, 0, 0, (), (), False),
    # wrong field types
    pack(SYNC, "1", 0, 0),
    pack(SYNC, 1, 0.0, 0),
    pack(SYNC, 1, 0, None),
    pack(SYNC, 1, 0, b"0"),
    pack(HEARTBEAT, 1.5, 0),
    pack(HEARTBEAT, 1, [0]),
    pack(UPDATES, 1, 0, 0, "records", False),
    pack(UPDATES, 1, 0, 0, RECORD, False),
    pack(UPDATES, 1, 0, 0, {"a": 1}, False),
    pack(UPDATES, 1, 0, 0, 5, False),
    pack(UPDATES, 1, 0, 0, None, False),
    # a bulk flag that is no bool
    pack(UPDATES, 1, 0, 0, (), 0),
    pack(UPDATES, 1, 0, 0, (), 1),
    pack(UPDATES, 1, 0, 0, (), None),
    pack(UPDATES, 1, 0, 0, (), "true"),
    pack(UPDATES, 1, 0, 0, (), b"\x01"),
    pack(UPDATES, 1, 0, 0, (), ()),
    # bools where ints are expected
    pack(SYNC, True, 0, 0),
    pack(SYNC, 1, False, 0),
    pack(SYNC, 1, 0, False),
    pack(HEARTBEAT, 1, True),
    pack(UPDATES, 1, False, True, (), False),
    pack(UPDATES, True, 0, 0, (), False),
    # negative, zero or huge where they make no sense
    pack(SYNC, 0, 0, 0),
    pack(SYNC, -1, 0, 0),
    pack(SYNC, 1, -1, 0),
    pack(SYNC, 1, 0, -1),
    pack(SYNC, 1, 0, -(2**63)),
    pack(SYNC, 2**63, 0, 0),
    pack(SYNC, 1, 2**64 - 1, 0),
    pack(HEARTBEAT, 1, -2),
    pack(HEARTBEAT, 0, 0),
    pack(HEARTBEAT, 1, 2**63),
    pack(UPDATES, 1, -1, 0, (), False),
    pack(UPDATES, 1, 5, 4, (), False),
    pack(UPDATES, 1, 0, 2**64 - 1, (), False),
    pack(UPDATES, -5, 0, 0, (), False),
    pack(UPDATES, 0, 0, 0, (), False),
    # maps and nested junk
    msgpack.packb({}),
    msgpack.packb({"kind": SYNC, "epoch": 1, "known_epoch": 0, "known_seq": 0}),
    msgpack.packb({1: 2}),  # int keys are refused outright (strict_map_key)
    pack(SYNC, {"a": 1}, 0, 0),
    pack(SYNC, [1], 0, 0),
    pack((SYNC, 1, 0, 0)),
    pack([[[[]]]], [], {}, None),
    msgpack.packb(SYNC),
    msgpack.packb("Sync"),
    msgpack.packb(None),
    msgpack.packb(b"\x93\x01\x01\x00"),
    msgpack.packb(msgpack.ExtType(1, pack(SYNC, 1, 0, 0))),
    pack(UPDATES, 1, 0, 0, msgpack.ExtType(5, b"x"), False),
    pack(UPDATES, 1, 0, 0, (), msgpack.ExtType(5, b"x")),
]


@pytest.mark.parametrize("payload", INVALID, ids=lambda p: p.hex())
def test_well_formed_msgpack_that_is_no_message(payload: bytes) -> None:
    assert decode(payload) is None


def test_decode_does_not_trust_records_but_keeps_them_for_validation() -> None:
    junk = pack(UPDATES, 3, 0, 1, ({"a": 1}, [1, [2]], None, b"bin", 1.5, True, "t"), True)
    message = decode(junk)
    assert isinstance(message, Updates)
    assert message.records == ({"a": 1}, (1, (2,)), None, b"bin", 1.5, True, "t")
    assert message.bulk is True


def test_a_string_with_a_lone_surrogate_in_the_records_is_no_message() -> None:
    payload = bytes([0x96, UPDATES, 3, 0, 1, 0x91]) + b"\xa3\xed\xa0\x80" + b"\xc2"
    assert decode(payload.replace(b"\xed\xa0\x80", b"abc")) == Updates(3, 0, 1, ("abc",), False)  # type: ignore[arg-type]
    assert decode(payload) is None
