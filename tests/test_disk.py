"""The disk: a CRC-framed append-only log written once per turn, snapshots, and damage
found (and survived) when the files are read back."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zherd import disk as disk_module
from zherd.disk import (
    ENTRY,
    FRAME,
    META,
    Disk,
    Meta,
    StorageError,
    frame,
    read_frames,
)
from zherd.locations import FROM_CLIENT, Locations, pack
from zherd.record import Record, fields

NS = 1_000_000_000


def entry(seq: int, client: str, time: str = "1400794645.5", via: int = FROM_CLIENT) -> bytes:
    record = Record("Alford", "+0.000000001", client, "+34.068930-118.445127", time).line
    return pack(seq, fields(record)[2], via, record)


def opened(folder: Path, fsync: str = "no") -> Disk:
    disk = Disk(folder, "A", fsync)  # type: ignore[arg-type]
    disk.open()
    return disk


def written(disk: Disk, entries: list[bytes], meta: Meta | None = None) -> None:
    for e in entries:
        disk.add(e)
    if meta is not None:
        disk.add_meta(meta)
    disk.commit()


def count_writes(monkeypatch: pytest.MonkeyPatch, fd: Callable[[], int]) -> list[int]:
    """The sizes of the write() calls made to the log's descriptor."""
    sizes: list[int] = []
    real = os.write

    def write(to: int, data: bytes) -> int:
        if to == fd():
            sizes.append(len(data))
        return real(to, data)

    monkeypatch.setattr(os, "write", write)
    return sizes


# round trips


def test_a_missing_folder_loads_as_nothing(tmp_path: Path) -> None:
    loaded = Disk(tmp_path / "nothing here", "A").load()
    assert (loaded.entries, loaded.meta, loaded.frames, loaded.damaged, loaded.problems) == (
        [],
        Meta(),
        0,
        0,
        [],
    )


async def test_entries_and_meta_survive_a_reopen(tmp_path: Path) -> None:
    disk = opened(tmp_path / "var")
    assert disk.load().entries == []
    meta = Meta(0xE2, {"Parker": (7, 42), "Powell": (2**62 + 1, 0)}, {0xE1: 40, 0xE0: 12})
    saved = [entry(1, "a"), entry(2, "b", via=0), entry(3, "a", "1400794646.5")]
    written(disk, saved, meta)
    await disk.close()

    loaded = Disk(tmp_path / "var", "A").load()
    assert loaded.entries == saved
    assert loaded.meta == meta
    # 3 entries and the meta, and the empty snapshot a first start writes
    assert (loaded.frames, loaded.damaged, loaded.problems) == (5, 0, [])
    store = Locations()
    store.restore(loaded.entries)
    assert list(store) == saved[1:]
    assert store.head == 3


async def test_the_newest_meta_is_the_one_loaded(tmp_path: Path) -> None:
    disk = opened(tmp_path)
    written(disk, [entry(1, "a")], Meta(1, {"B": (5, 1)}))
    written(disk, [entry(2, "b")], Meta(1, {"B": (5, 9)}))
    written(disk, [entry(3, "c")])
    await disk.close()
    assert Disk(tmp_path, "A").load().meta == Meta(1, {"B": (5, 9)})


async def test_reopening_appends(tmp_path: Path) -> None:
    for seq in range(1, 4):
        disk = opened(tmp_path)
        assert disk.log_bytes == (seq - 1) * len(frame(ENTRY, entry(1, "a")))
        written(disk, [entry(seq, "a")])
        await disk.close()
    assert Disk(tmp_path, "A").load().entries == [entry(s, "a") for s in (1, 2, 3)]


# one write per turn


@pytest.mark.parametrize("fsync", ["always", "everysec", "no"])
async def test_commit_writes_once_per_call_whatever_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: str
) -> None:
    disk = opened(tmp_path, fsync)
    sizes = count_writes(monkeypatch, lambda: disk._fd)
    assert disk.commit() == 0  # nothing pending: no write at all
    assert sizes == []
    batch = [entry(i, f"c{i}") for i in range(1, 1001)]
    for e in batch:
        disk.add(e)
    disk.add_meta(Meta(1))
    assert disk.commit() == 1001
    expected = sum(len(frame(ENTRY, e)) for e in batch) + len(frame(META, Meta(1).pack()))
    assert sizes == [expected]
    assert (disk.writes, disk.log_bytes) == (1, expected)
    assert disk.unsynced == (fsync != "always")
    disk.add(entry(1001, "x"))
    assert disk.commit() == 1
    assert len(sizes) == 2 and disk.writes == 2
    assert disk.commit() == 0
    assert len(sizes) == 2
    disk.sync()
    assert not disk.unsynced
    await disk.close()
    assert len(Disk(tmp_path, "A").load().entries) == 1001


async def test_a_failing_disk_keeps_the_turns_frames_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = opened(tmp_path)
    real = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    written(disk, [entry(1, "a"), entry(2, "b")])
    assert disk.failing == os.strerror(errno.ENOSPC)
    disk.add(entry(3, "b", "1400794699.5"))  # a later turn, while the disk is full
    assert disk.commit() == 0
    assert (disk.writes, disk.log_bytes) == (0, 0)
    monkeypatch.setattr(os, "write", real)
    assert disk.commit() == 3
    assert disk.failing is None
    await disk.close()
    store = Locations()
    store.restore(Disk(tmp_path, "A").load().entries)
    assert [store.get(c) for c in (b"a", b"b")] == [
        entry(1, "a")[17:],
        entry(3, "b", "1400794699.5")[17:],
    ]


async def test_a_write_cut_short_by_a_full_disk_goes_on_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write() takes what fits, then the next call fails: the file must not hold the start
    of the turn twice (a torn frame in the middle would make the rest unreadable)."""
    disk = opened(tmp_path)
    real = os.write
    room = [1000]

    def filling(fd: int, data: bytes) -> int:
        if room[0] == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, data[: room[0]])
        room[0] -= n
        return n

    monkeypatch.setattr(os, "write", filling)
    batch = [entry(i, f"c{i}") for i in range(1, 101)]
    written(disk, batch)
    assert disk.failing is not None
    monkeypatch.setattr(os, "write", real)
    written(disk, [entry(101, "late")])
    assert disk.failing is None
    await disk.close()
    loaded = Disk(tmp_path, "A").load()
    assert (loaded.damaged, loaded.problems) == (0, [])
    assert loaded.entries == [*batch, entry(101, "late")]
    assert disk.log_bytes == (tmp_path / "A.log").stat().st_size


# damage


async def write_three(folder: Path) -> tuple[list[bytes], int]:
    """Three entries and a meta; the byte offset of the second frame."""
    disk = opened(folder)
    saved = [entry(1, "a"), entry(2, "b"), entry(3, "c")]
    written(disk, saved, Meta(9, {"B": (1, 2)}))
    await disk.close()
    return saved, len(frame(ENTRY, saved[0]))


@pytest.mark.parametrize("where", ["kind", "crc", "payload", "last payload byte"])
async def test_a_changed_byte_drops_its_frame_and_the_others_load(
    tmp_path: Path, where: str
) -> None:
    saved, second = await write_three(tmp_path)
    at = {
        "kind": second + FRAME.size - 1,
        "crc": second + 5,
        "payload": second + FRAME.size + 30,
        "last payload byte": second + len(frame(ENTRY, saved[1])) - 1,
    }[where]
    log = tmp_path / "A.log"
    data = bytearray(log.read_bytes())
    data[at] ^= 0x20
    log.write_bytes(bytes(data))
    loaded = Disk(tmp_path, "A").load()
    assert loaded.entries == [saved[0], saved[2]]
    assert loaded.meta == Meta(9, {"B": (1, 2)})
    assert (loaded.frames, loaded.damaged) == (4, 1)  # with the first start's empty snapshot
    assert loaded.problems == [f"{log}: frame at byte {second} fails its checksum: dropped"]


async def test_an_entry_frame_is_no_meta_frame(tmp_path: Path) -> None:
    """The kind is under the checksum: a meta payload relabelled as an entry is caught."""
    saved, _ = await write_three(tmp_path)
    log = tmp_path / "A.log"
    data = bytearray(log.read_bytes())
    meta_at = 3 * len(frame(ENTRY, saved[0]))
    data[meta_at + FRAME.size - 1] = ENTRY
    log.write_bytes(bytes(data))
    loaded = Disk(tmp_path, "A").load()
    assert loaded.entries == saved
    assert loaded.meta == Meta()
    assert loaded.damaged == 1


@pytest.mark.parametrize("cut", [1, 5, FRAME.size - 1, FRAME.size, FRAME.size + 3])
async def test_a_file_cut_short_mid_frame_loads_up_to_the_cut(tmp_path: Path, cut: int) -> None:
    disk = opened(tmp_path)
    saved = [entry(1, "a"), entry(2, "b"), entry(3, "c")]
    written(disk, saved)
    await disk.close()
    log = tmp_path / "A.log"
    two = 2 * len(frame(ENTRY, saved[0]))
    os.truncate(log, two + cut)
    loaded = Disk(tmp_path, "A").load()
    assert loaded.entries == saved[:2]
    assert loaded.damaged == 1
    assert len(loaded.problems) == 1 and loaded.problems[0].startswith(f"{log}: ")
    assert f"at byte {two}" in loaded.problems[0]
    assert "cut short" in loaded.problems[0] or "runs past the end" in loaded.problems[0]


async def test_what_is_written_after_a_cut_short_tail_loads_again(tmp_path: Path) -> None:
    """A power loss can leave half a frame at the end of the log; the server then appends
    to it. What it appends must load on the next restart, or every restart after one
    power loss would lose all the server wrote since."""
    disk = opened(tmp_path)
    saved = [entry(1, "a"), entry(2, "b"), entry(3, "c")]
    written(disk, saved)
    await disk.close()
    log = tmp_path / "A.log"
    os.truncate(log, log.stat().st_size - 7)

    disk = opened(tmp_path)
    first = disk.load()
    assert (first.entries, first.damaged) == (saved[:2], 1)
    assert log.stat().st_size == disk.log_bytes == 2 * len(frame(ENTRY, saved[0]))
    written(disk, [entry(4, "d")], Meta(5))
    await disk.close()
    again = Disk(tmp_path, "A").load()
    assert (again.damaged, again.problems) == (0, [])
    assert again.entries == [*saved[:2], entry(4, "d")]
    assert again.meta == Meta(5)


@pytest.mark.parametrize(
    "junk",
    [
        b"\xff" * 64,  # a length far past MAX_FRAME
        FRAME.pack(3, 0, ENTRY) + b"abc",  # a checksum that fails
        FRAME.pack(0, 0, 7),  # an unknown kind, with a wrong checksum
    ],
)
def test_read_frames_reports_junk_and_never_raises(junk: bytes) -> None:
    good = frame(ENTRY, b"x")
    kinds: list[int] = []
    payloads: list[bytes] = []
    problems = read_frames(good + junk, "here", kinds, payloads)
    assert (kinds[0], payloads[0]) == (ENTRY, b"x")
    assert problems and all(p.startswith("here: ") for p in problems)


def test_an_unknown_kind_with_a_good_checksum_is_read_and_ignored(tmp_path: Path) -> None:
    import zlib

    odd = FRAME.pack(3, zlib.crc32(b"abc", zlib.crc32(bytes((7,)))), 7) + b"abc"
    (tmp_path / "A.log").write_bytes(
        frame(ENTRY, entry(1, "a")) + odd + frame(ENTRY, entry(2, "b"))
    )
    loaded = Disk(tmp_path, "A").load()
    assert loaded.entries == [entry(1, "a"), entry(2, "b")]
    assert (loaded.frames, loaded.damaged) == (3, 0)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x93\x01\x02\x03",  # [1, 2, 3]
        b"\xc1",
        b"",
        msgpack.packb([1, {}, 5]),
        msgpack.packb([1, {"B": [1]}, {}]),
        msgpack.packb([1, {}, {}, 4]),
        msgpack.packb({"epoch": 1}),
    ],
    ids=bytes.hex,
)
def test_an_unreadable_meta_is_reported(tmp_path: Path, payload: bytes) -> None:
    (tmp_path / "A.log").write_bytes(frame(ENTRY, entry(1, "a")) + frame(META, payload))
    loaded = Disk(tmp_path, "A").load()
    assert loaded.entries == [entry(1, "a")]
    assert loaded.meta == Meta()
    assert loaded.damaged == 1
    assert loaded.problems[0].startswith(f"{tmp_path / 'A.log'}: unreadable positions")


# compaction


async def test_compaction_then_load_gives_the_same_store(tmp_path: Path) -> None:
    disk = opened(tmp_path)
    store = Locations()
    for round_ in range(5):
        for i in range(200):
            record = Record("Alford", "+0.000000000", f"c{i}", "+1+1", f"{round_}.{i:03d}").line
            e = store.put(f"c{i}".encode(), round_ * NS + i * 1_000_000, b"Alford", record, 0)
            assert e is not None
            disk.add(e)
        disk.commit()
    before = disk.log_bytes
    meta = Meta(7, {"B": (3, 4)}, {6: 100})
    task = disk.compact(list(store), meta)
    assert disk.stats()["compacting"]
    assert not disk.wants_compaction(0)
    late = store.put(
        b"late", 9 * NS, b"Alford", Record("Alford", "+0.000000000", "late", "+1+1", "9").line, 1
    )
    assert late is not None
    disk.add(late)  # a later turn, while the snapshot is written: goes to the fresh log
    disk.commit()
    await task
    assert not disk.stats()["compacting"]
    assert not (tmp_path / "A.log.old").exists()
    assert (tmp_path / "A.snapshot").exists()
    assert disk.log_bytes < before
    await disk.close()

    loaded = Disk(tmp_path, "A").load()
    assert loaded.damaged == 0
    assert loaded.meta == meta
    again = Locations()
    again.restore(loaded.entries)
    assert list(again) == list(store)
    assert again.head == store.head
    assert len(loaded.entries) == len(store)  # the snapshot holds each client once


async def test_a_compaction_cut_short_still_loads_everything(tmp_path: Path) -> None:
    """Killed before the snapshot was in place: the old log is still there and is read."""
    disk = opened(tmp_path)
    written(disk, [entry(1, "a"), entry(2, "b")])
    await disk.close()
    (tmp_path / "A.log").rename(tmp_path / "A.log.old")
    (tmp_path / "A.snapshot.tmp").write_bytes(b"half a snapshot")
    disk = opened(tmp_path)
    written(disk, [entry(3, "a", "1400794699.5")])
    await disk.close()
    store = Locations()
    loaded = Disk(tmp_path, "A").load()
    assert loaded.damaged == 0
    store.restore(loaded.entries)
    assert list(store) == [entry(2, "b"), entry(3, "a", "1400794699.5")]


def test_wants_compaction_once_the_log_outgrows_the_live_data(tmp_path: Path) -> None:
    from zherd.disk import COMPACT_MIN

    disk = Disk(tmp_path, "A")
    disk.log_bytes = COMPACT_MIN
    assert not disk.wants_compaction(10)
    disk.log_bytes = COMPACT_MIN + 1
    assert disk.wants_compaction(10)
    assert not disk.wants_compaction(COMPACT_MIN // 300 + 1)


# storage that cannot be used


def test_open_under_a_file_raises_storage_error_with_the_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    disk = Disk(tmp_path / "file" / "var", "A")
    with pytest.raises(StorageError) as caught:
        disk.open()
    assert str(caught.value) == (
        f"storage {tmp_path / 'file' / 'var'}: cannot make the folder: Not a directory"
    )


def test_open_in_a_read_only_folder_raises_storage_error_with_the_path(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: a read-only folder is writable")
        with pytest.raises(
            StorageError, match=re.escape(f"storage {folder / 'A.log'}: cannot open")
        ):
            Disk(folder, "A").open()
    finally:
        folder.chmod(0o755)


def test_a_log_that_is_a_folder_cannot_be_opened_or_read(tmp_path: Path) -> None:
    (tmp_path / "A.log").mkdir()
    disk = Disk(tmp_path, "A")
    with pytest.raises(StorageError, match=r"A\.log: cannot open for writing: Is a directory"):
        disk.open()
    with pytest.raises(StorageError, match=r"A\.log: cannot read: Is a directory"):
        disk.load()


# with a server


def test_a_big_store_loads_while_clients_wait_connected(herd: Callable[..., object]) -> None:
    """The server listens before it reads its files; what clients ask meanwhile is answered
    from the whole store once it is loaded (never `?` from a half-loaded one)."""
    n = 60_000
    h = herd(servers=("A",), links=(), start=False)
    disk = opened(h.root / "var")  # type: ignore[attr-defined]
    for seq in range(1, n + 1):
        disk.add(entry(seq, f"c{seq}"))
    disk.commit()
    os.close(disk._fd)

    h.start()  # type: ignore[attr-defined]  # returns once the server accepts clients
    with h.client("A") as client:  # type: ignore[attr-defined]
        assert client.ask(f"WHATSAT c{n} 1 1").startswith(f"AT Alford +0.000000001 c{n} ")
    log = h.log("A")  # type: ignore[attr-defined]
    assert log.index("accepting clients") < log.index(f"{n} locations restored")


async def test_a_compaction_after_one_cut_short_keeps_what_only_its_old_log_held(
    tmp_path: Path,
) -> None:
    """A `.log.old` left by a compaction cut short may hold what no snapshot does: the
    next compaction adds the log to it, and until its snapshot lands both are read."""
    first, second = entry(1, "a"), entry(2, "b")
    disk = opened(tmp_path)
    written(disk, [first])
    await disk.close()
    (tmp_path / "A.log").replace(tmp_path / "A.log.old")  # cut short: no snapshot of it
    disk = opened(tmp_path)
    written(disk, [second])
    task = disk.compact([first, second], Meta())
    assert task is not None
    old = (tmp_path / "A.log.old").read_bytes()
    assert frame(ENTRY, first) in old and frame(ENTRY, second) in old  # nothing replaced
    assert Disk(tmp_path, "A").load().entries[-2:] == [first, second]  # as a crash now sees
    await task
    await disk.close()
    assert not (tmp_path / "A.log.old").exists()
    assert Disk(tmp_path, "A").load().entries == [first, second]


@given(st.lists(st.binary(max_size=300), max_size=20), st.sampled_from([ENTRY, META]))
def test_entries_are_framed_alike_in_c_and_python(entries: list[bytes], kind: int) -> None:
    """zherd._speedups.frame_entries (when built) gives exactly `frame`'s bytes."""
    seed = disk_module._SEEDS[kind]
    expected = b"".join(frame(kind, e) for e in entries)
    assert disk_module.frame_entries_python(entries, seed, kind) == expected
    assert disk_module.frame_entries(entries, seed, kind) == expected
