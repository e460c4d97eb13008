"""The store: newest wins by (client time, origin), and it doubles as the replication log."""

from __future__ import annotations

import pytest

from gateway.protocol import Location, location_from_wire
from zherd.replication import Replicator
from zherd.store import Entry, Store
from zherd.wire import Updates


def loc(
    client: str, time: str, origin: str = "Alford", coords: str = "+34.068930-118.445127"
) -> Location:
    location = location_from_wire((client, coords, time, origin, "+0.000000000"))
    assert location is not None
    return location


def test_first_put_stores_with_seq_one_and_via() -> None:
    store = Store()
    a = loc("kiwi", "10")
    assert store.put(a, "Parker") == Entry(1, a, "Parker")
    assert store.get("kiwi") == a
    assert store.get("other") is None
    assert store.head == 1
    assert len(store) == 1


def test_newer_client_time_wins_and_older_is_a_no_op() -> None:
    store = Store()
    old, new = loc("kiwi", "9.5"), loc("kiwi", "10")  # "10" < "9.5" as text: compared as numbers
    assert store.put(new) is not None
    assert store.put(old) is None
    assert store.get("kiwi") == new
    assert store.head == 1
    assert store.put(loc("kiwi", "10.000000001")) == Entry(2, loc("kiwi", "10.000000001"), None)


def test_equal_time_is_broken_by_origin_name() -> None:
    store = Store()
    assert store.put(loc("kiwi", "10", origin="Bolden")) is not None
    assert store.put(loc("kiwi", "10.0", origin="Alford")) is None
    assert store.put(loc("kiwi", "10.00", origin="Powell")) is not None
    assert store.get("kiwi") == loc("kiwi", "10.00", origin="Powell")
    assert store.head == 2


def test_duplicate_is_a_no_op_even_with_other_text_for_the_same_time() -> None:
    store = Store()
    first = loc("kiwi", "10.5", coords="+1+1")
    store.put(first)
    assert store.put(first) is None
    assert store.put(loc("kiwi", "10.500000000", coords="+2+2")) is None
    assert store.get("kiwi") == first
    assert store.head == 1
    assert [e.seq for e in store] == [1]


def test_iteration_is_in_sequence_order_and_a_moved_client_goes_last() -> None:
    store = Store()
    for i, client in enumerate(["a", "b", "c"]):
        store.put(loc(client, str(i)))
    store.put(loc("a", "100"))
    assert [(e.seq, e.location.client_id) for e in store] == [(2, "b"), (3, "c"), (4, "a")]


def test_since_returns_exactly_what_was_stored_after_seq_in_order() -> None:
    store = Store()
    for i in range(10):
        store.put(loc(f"c{i}", "1"))
    for seq in range(0, 11):
        assert [e.seq for e in store.since(seq)] == list(range(seq + 1, 11))
    assert store.since(10) == []
    assert store.since(1000) == []


def test_since_lists_a_client_updated_twice_once_with_its_newest() -> None:
    store = Store()
    store.put(loc("a", "1"))
    store.put(loc("b", "1"))
    store.put(loc("c", "1"))
    store.put(loc("b", "2"))
    store.put(loc("b", "3"))
    store.put(loc("a", "0"))  # stale: not stored, not listed
    got = [(e.seq, e.location.client_id, e.location.time) for e in store.since(1)]
    assert got == [(3, "c", "1"), (5, "b", "3")]
    assert [e.location.client_id for e in store.since(0)] == ["a", "c", "b"]


def test_restore_loads_entries_and_numbering_continues() -> None:
    saved = [
        Entry(3, loc("a", "1"), None),
        Entry(7, loc("b", "2", origin="Parker"), "Parker"),
        Entry(12, loc("c", "3"), "Powell"),
    ]
    store = Store()
    store.restore(saved)
    assert store.head == 12
    assert list(store) == saved
    assert store.get("b") == saved[1].location
    assert [e.seq for e in store.since(3)] == [7, 12]
    assert [e.seq for e in store.since(7)] == [12]
    assert store.put(loc("a", "0")) is None  # restored data still wins over older
    entry = store.put(loc("a", "5"))
    assert entry is not None and entry.seq == 13
    assert [e.location.client_id for e in store.since(7)] == ["c", "a"]


@pytest.mark.parametrize("n", [1, 100])
def test_len_counts_clients_not_updates(n: int) -> None:
    store = Store()
    for t in range(n):
        store.put(loc("a", str(t)))
        store.put(loc("b", str(t)))
    assert len(store) == 2
    assert store.head == 2 * n


def test_holds_is_true_only_for_an_exact_copy_of_what_is_held() -> None:
    store = Store()
    held = loc("kiwi", "10")
    store.put(held)
    assert store.holds(held[:5])
    assert store.holds(list(held[:5])) is False  # the wire gives tuples; anything else validates
    assert not store.holds(loc("kiwi", "10", origin="Bolden")[:5])
    assert not store.holds(loc("kiwi", "11")[:5])
    assert not store.holds(loc("other", "10")[:5])
    for junk in ((), ("kiwi",), ([1], 2), {"kiwi": 1}, 42, None, "kiwi", b"kiwi"):
        assert store.holds(junk) is False


def test_a_copy_by_another_path_is_counted_stale_and_not_stored_again() -> None:
    store = Store()
    replicator = Replicator("B", 1, ("A", "C"), store)
    record = loc("kiwi", "10")[:5]
    assert len(replicator.receive("A", Updates(5, 0, 1, (record,)), 0.0)) == 1
    assert replicator.receive("C", Updates(6, 0, 1, (record,)), 0.0) == []
    assert (replicator.counters.applied, replicator.counters.stale) == (1, 1)
    assert store.head == 1
