"""Locations: newest wins by (client time, origin), entries are packed bytes, and the
store doubles as the replication log."""

from __future__ import annotations

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zherd import locations
from zherd.counters import LinkCounters
from zherd.locations import (
    FROM_CLIENT,
    HEADER,
    Locations,
    pack,
    record_of,
    seq_of,
    via_of,
)
from zherd.record import Record, fields
from zherd.replication import Replicator, Rules
from zherd.wire import Updates

NS = 1_000_000_000


@pytest.fixture(autouse=True, params=["compiled", "python"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs against both stores: zherd._speedups and the pure Python."""
    if request.param == "python":
        monkeypatch.setattr(locations, "store_put", locations.store_put_python)
        monkeypatch.setattr(locations, "store_apply", locations.store_apply_python)
    elif locations.store_put is locations.store_put_python:
        pytest.skip("zherd._speedups is not built here")
    return request.param


def rec(
    client: str, time: str, origin: str = "Alford", coords: str = "+34.068930-118.445127"
) -> bytes:
    return Record(origin, "+0.000000000", client, coords, time).line


def put(store: Locations, record: bytes, via: int = FROM_CLIENT) -> bytes | None:
    client_id, origin, time_ns, _, _ = fields(record)
    return store.put(client_id, time_ns, origin, record, via)


def clients(entries: list[bytes] | Locations) -> list[tuple[int, bytes]]:
    return [(seq_of(e), fields(record_of(e))[0]) for e in entries]


def test_first_put_stores_with_seq_one_and_via() -> None:
    store = Locations()
    a = rec("kiwi", "10")
    entry = put(store, a, via=3)
    assert entry == pack(1, 10 * NS, 3, a)
    assert entry is not None
    assert (seq_of(entry), via_of(entry), record_of(entry)) == (1, 3, a)
    assert HEADER.unpack_from(entry) == (1, 10 * NS, 3)
    assert store.get(b"kiwi") == a
    assert store.get(b"other") is None
    assert store.head == 1
    assert len(store) == 1


def test_newer_client_time_wins_and_older_is_a_no_op() -> None:
    store = Locations()
    old, new = rec("kiwi", "9.5"), rec("kiwi", "10")  # "10" < "9.5" as text: compared as numbers
    assert put(store, new) is not None
    assert put(store, old) is None
    assert store.get(b"kiwi") == new
    assert store.head == 1
    newer = rec("kiwi", "10.000000001")
    assert put(store, newer) == pack(2, 10 * NS + 1, FROM_CLIENT, newer)


def test_equal_time_is_broken_by_origin_name() -> None:
    store = Locations()
    assert put(store, rec("kiwi", "10", origin="Bolden")) is not None
    assert put(store, rec("kiwi", "10.0", origin="Alford")) is None
    assert put(store, rec("kiwi", "10.00", origin="Powell")) is not None
    assert store.get(b"kiwi") == rec("kiwi", "10.00", origin="Powell")
    assert store.head == 2


def test_origin_tie_break_compares_whole_names() -> None:
    """`Park` < `Parker` < `Parkes`: the held origin is read up to its space, not a prefix."""
    store = Locations()
    assert put(store, rec("kiwi", "10", origin="Parker")) is not None
    assert put(store, rec("kiwi", "10", origin="Park")) is None
    assert put(store, rec("kiwi", "10", origin="Parkes")) is not None
    assert store.get(b"kiwi") == rec("kiwi", "10", origin="Parkes")


def test_duplicate_is_a_no_op_even_with_other_text_for_the_same_time() -> None:
    store = Locations()
    first = rec("kiwi", "10.5", coords="+1+1")
    put(store, first)
    assert put(store, first) is None
    assert put(store, rec("kiwi", "10.500000000", coords="+2+2")) is None
    assert store.get(b"kiwi") == first
    assert store.head == 1
    assert [seq_of(e) for e in store] == [1]


def test_negative_and_huge_times_order_as_numbers() -> None:
    store = Locations()
    put(store, rec("kiwi", "-5"))
    assert put(store, rec("kiwi", "-6")) is None
    assert put(store, rec("kiwi", "-4.999999999")) is not None
    assert put(store, rec("kiwi", "9223372036.854775807")) is not None  # the largest int64 ns
    assert put(store, rec("kiwi", "9223372036.854775806")) is None
    assert store.get(b"kiwi") == rec("kiwi", "9223372036.854775807")


def test_iteration_is_in_sequence_order_and_a_moved_client_goes_last() -> None:
    store = Locations()
    for i, client in enumerate(["a", "b", "c"]):
        put(store, rec(client, str(i)))
    put(store, rec("a", "100"))
    assert clients(store) == [(2, b"b"), (3, b"c"), (4, b"a")]


def test_since_returns_exactly_what_was_stored_after_seq_in_order() -> None:
    store = Locations()
    for i in range(10):
        put(store, rec(f"c{i}", "1"))
    for seq in range(0, 11):
        assert [seq_of(e) for e in store.since(seq)] == list(range(seq + 1, 11))
    assert store.since(10) == []
    assert store.since(1000) == []
    assert store.since(-1) == list(store)


def test_since_lists_a_client_updated_twice_once_with_its_newest() -> None:
    store = Locations()
    put(store, rec("a", "1"))
    put(store, rec("b", "1"))
    put(store, rec("c", "1"))
    put(store, rec("b", "2"))
    put(store, rec("b", "3"))
    put(store, rec("a", "0"))  # stale: not stored, not listed
    got = [(seq_of(e), record_of(e)) for e in store.since(1)]
    assert got == [(3, rec("c", "1")), (5, rec("b", "3"))]
    assert [c for _, c in clients(store.since(0))] == [b"a", b"c", b"b"]


def test_restore_loads_entries_and_numbering_continues() -> None:
    saved = [
        pack(3, 1 * NS, FROM_CLIENT, rec("a", "1")),
        pack(7, 2 * NS, 0, rec("b", "2", origin="Parker")),
        pack(12, 3 * NS, 1, rec("c", "3")),
    ]
    store = Locations()
    store.restore(saved)
    assert store.head == 12
    assert list(store) == saved
    assert store.get(b"b") == rec("b", "2", origin="Parker")
    assert [seq_of(e) for e in store.since(3)] == [7, 12]
    assert [seq_of(e) for e in store.since(7)] == [12]
    assert put(store, rec("a", "0")) is None  # restored data still wins over older
    entry = put(store, rec("a", "5"))
    assert entry is not None and seq_of(entry) == 13
    assert [c for _, c in clients(store.since(7))] == [b"c", b"a"]


def test_restore_keeps_the_later_entry_of_a_client_as_a_log_replay_does() -> None:
    """The disk's log holds every entry a client ever had, oldest first."""
    log = [
        pack(1, 1 * NS, 0, rec("a", "1")),
        pack(2, 1 * NS, 0, rec("b", "1")),
        pack(3, 2 * NS, 0, rec("a", "2")),
        pack(4, 3 * NS, 0, rec("a", "3")),
    ]
    store = Locations()
    store.restore(log)
    assert len(store) == 2
    assert store.head == 4
    assert clients(store) == [(2, b"b"), (4, b"a")]
    assert store.get(b"a") == rec("a", "3")
    assert [seq_of(e) for e in store.since(2)] == [4]


def test_restore_into_a_store_with_a_higher_head_keeps_the_head() -> None:
    store = Locations()
    for i in range(5):
        put(store, rec(f"c{i}", "1"))
    store.restore([pack(2, 9 * NS, 0, rec("z", "9"))])
    assert store.head == 5
    assert len(store) == 6


@pytest.mark.parametrize("n", [1, 100])
def test_len_counts_clients_not_updates(n: int) -> None:
    store = Locations()
    for t in range(n):
        put(store, rec("a", str(t)))
        put(store, rec("b", str(t)))
    assert len(store) == 2
    assert store.head == 2 * n


def checked(store: Locations, record: object) -> bool:
    """Whether `apply` checked the record (no origin passes here, so a record checked is
    invalid) rather than dropping it unchecked as a copy of what is held."""
    _, invalid, _ = store.apply((record,), frozenset(), 2**62, 256, 0)
    return invalid == 1


def test_only_an_exact_copy_of_what_is_held_is_dropped_unchecked() -> None:
    store = Locations()
    held = rec("kiwi", "10")
    put(store, held)
    assert not checked(store, held)
    assert checked(store, bytearray(held))  # the wire gives bytes; anything else validates
    assert checked(store, held.decode())
    assert checked(store, rec("kiwi", "10", origin="Bolden"))
    assert checked(store, rec("kiwi", "11"))
    assert checked(store, rec("other", "10"))
    assert checked(store, held[1:])  # a suffix of the entry is no copy
    assert checked(store, b"X" + held)
    assert checked(store, held + b"0")
    for junk in ((), ("kiwi",), ([1], 2), {"kiwi": 1}, 42, None, "kiwi", b"kiwi", b"", b"a b"):
        assert checked(store, junk)


def test_the_held_record_is_the_same_bytes_whatever_the_text_of_its_time() -> None:
    store = Locations()
    put(store, rec("kiwi", "10.5"))
    assert checked(store, rec("kiwi", "10.500000000"))  # same key, other bytes: validated


# memory layout


def test_entries_are_bytes_and_the_store_is_never_gc_tracked() -> None:
    store = Locations()
    for i in range(2000):
        put(store, rec(f"client{i}", str(i)), via=i % 3)
        put(store, rec(f"client{i // 2}", str(i + 0.5)), via=FROM_CLIENT)
    assert all(type(e) is bytes for e in store)
    assert all(type(k) is bytes for k in store._entries)
    assert not gc.is_tracked(store._entries)
    store.restore([pack(store.head + 1, 0, 0, rec("restored", "1"))])
    assert not gc.is_tracked(store._entries)


def test_an_entry_is_its_header_then_its_record_and_nothing_else() -> None:
    store = Locations()
    record = rec("kiwi.cs.ucla.edu", "1400794645.392014450")
    entry = put(store, record)
    assert entry is not None
    assert len(entry) == HEADER.size + len(record)
    assert entry[: HEADER.size] == HEADER.pack(1, 1400794645392014450, FROM_CLIENT)


def test_a_time_beyond_int64_is_held_at_the_bound() -> None:
    entry = pack(1, 10**30, 0, rec("kiwi", "1"))
    assert HEADER.unpack_from(entry)[1] == 2**63 - 1
    entry = pack(1, -(10**30), 0, rec("kiwi", "1"))
    assert HEADER.unpack_from(entry)[1] == -(2**63)


# the replicator's use of `holds`


def test_a_copy_by_another_path_is_counted_stale_and_not_stored_again() -> None:
    store = Locations()
    links = {"A": LinkCounters(), "C": LinkCounters()}
    rules = Rules(frozenset({b"Alford"}), 86400 * NS, 256)
    replicator = Replicator("B", 1, ("A", "C"), store, rules, links)
    record = rec("kiwi", "10")
    latest = 100 * NS
    assert len(replicator.receive("A", Updates(5, 0, 1, (record,)), 0.0, latest)) == 1
    assert replicator.receive("C", Updates(6, 0, 1, (record,)), 0.0, latest) == []
    assert (links["A"].applied, links["A"].stale) == (1, 0)
    assert (links["C"].applied, links["C"].stale) == (0, 1)
    assert store.head == 1
    assert via_of(next(iter(store))) == 0  # filed under A, the first to deliver it


PUTS = st.lists(
    st.tuples(
        st.sampled_from([b"a", b"b", b"c"]),  # client id
        st.one_of(
            st.integers(-3, 3),
            st.sampled_from([2**63 - 1, 2**63, 2**70, -(2**63), -(2**63) - 1, -(2**80)]),
        ),
        st.sampled_from([b"Alford", b"Al", b"Bolden", b"B", b"Alfordx"]),  # origin
        st.integers(0, 255),  # via
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(PUTS)
def test_the_compiled_put_stores_as_the_python_one(puts: list) -> None:
    compiled = locations.store_put
    if compiled is locations.store_put_python:
        return  # not built here
    ours: dict[bytes, bytes] = {}
    theirs: dict[bytes, bytes] = {}
    for seq, (client, time_ns, origin, via) in enumerate(puts, 1):
        record = origin + b" +0.000000000 " + client + b" +1+1 " + str(time_ns).encode()
        assert compiled(ours, client, time_ns, origin, record, via, seq) == (
            locations.store_put_python(theirs, client, time_ns, origin, record, via, seq)
        )
        assert list(ours.items()) == list(theirs.items())  # the same entries, in the same order


ORIGINS = frozenset({b"Alford", b"Bolden"})
MESSAGE = st.lists(
    st.one_of(
        st.builds(
            lambda origin, client, t: Record(origin, "+0.000000000", client, "+1+1", t).line,
            st.sampled_from(["Alford", "Bolden", "Nobody"]),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["1", "2", "2.5", "99999999999", "-3"]),
        ),
        st.binary(max_size=30),
        st.integers(),
    ),
    max_size=12,
).map(tuple)


@settings(max_examples=300, deadline=None)
@given(st.lists(MESSAGE, max_size=4), st.sampled_from([0, 3]))
def test_the_compiled_apply_answers_as_the_python_one(messages: list, via: int) -> None:
    compiled = locations.store_apply
    if compiled is locations.store_apply_python:
        return  # not built here
    ours: dict[bytes, bytes] = {}
    theirs: dict[bytes, bytes] = {}
    head = 0
    for records in messages:
        got = compiled(ours, records, ORIGINS, 50 * NS, 1, via, head)
        assert got == locations.store_apply_python(theirs, records, ORIGINS, 50 * NS, 1, via, head)
        assert list(ours.items()) == list(theirs.items())
        head = got[1]
