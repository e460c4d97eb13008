"""Durable locations: an append-only log written once per loop turn, and snapshots.

An `AT` reply promises that the location survives a crash of this process, so a
turn's new entries reach the file before that turn's replies leave: one
`write()` per turn (group commit), whatever the number of updates in it. The
kernel's page cache then holds them, which a killed process cannot lose;
`fsync` decides what a power loss can take (`always`: nothing; `everysec`: up
to a second of this server's updates, which its neighbors already hold; `no`:
what the kernel had not written back).

Every frame carries a CRC-32, so a damaged byte is found when the file is read:
the frame is dropped, logged, and the server asks its neighbors for everything
(`Loaded.damaged`). When the log outgrows the live data it is compacted: the
entries of one moment are written to a new snapshot in a thread while later
turns go to a fresh log, then the old log is removed.

Files, in `dir`: `NAME.snapshot` (written empty on a first start, so that a log
lost later is noticed), `NAME.log.old` (a log being compacted away; present only if
a compaction was cut short), `NAME.log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgpack
from loguru import logger

from zherd.locations import seq_of

FRAME = struct.Struct("<IIB")  # payload length, CRC-32 of kind + payload, kind
ENTRY, META = 1, 2  # frame kinds: a `locations` entry; the stream positions (msgpack)
MAX_FRAME = 1 << 24
Fsync = Literal["always", "everysec", "no"]
COMPACT_MIN = 64 << 20  # bytes of log before a compaction is worth it
SNAPSHOT_BATCH = 4096  # entries framed and written at once by a snapshot


class StorageError(RuntimeError):
    """Storage that cannot be used; the message says what and where, for the operator."""


@dataclass
class Meta:
    """What a restart needs besides the entries."""

    epoch: int = 0  # the epoch of the process that wrote it
    cursors: dict[str, tuple[int, int]] = field(default_factory=dict)
    ancestors: dict[int, int] = field(default_factory=dict)

    def pack(self) -> bytes:
        return msgpack.packb(
            (self.epoch, {p: list(c) for p, c in self.cursors.items()}, self.ancestors)
        )

    @classmethod
    def unpack(cls, payload: bytes) -> Meta:
        epoch, cursors, ancestors = msgpack.unpackb(payload, strict_map_key=False)
        return cls(epoch, {p: (e, s) for p, (e, s) in cursors.items()}, dict(ancestors))


@dataclass
class Loaded:
    entries: list[bytes]  # in the order written (restore keeps the newest per client)
    meta: Meta
    frames: int
    damaged: int  # frames whose checksum failed, a file cut short mid-frame, a lost log
    problems: list[str]  # what was damaged, where: for the log


_SEEDS = {kind: zlib.crc32(bytes((kind,))) for kind in (ENTRY, META)}


def frame(kind: int, payload: bytes) -> bytes:
    return FRAME.pack(len(payload), zlib.crc32(payload, _SEEDS[kind]), kind) + payload


def frame_entries_python(entries: list[bytes], seed: int, kind: int) -> bytes:
    """`frame` for many payloads of one kind, joined (zherd._speedups has it in C)."""
    pack, crc32 = FRAME.pack, zlib.crc32
    return b"".join([pack(len(e), crc32(e, seed), kind) + e for e in entries])


try:
    from zherd._speedups import frame_entries
except ImportError:  # not built (no C compiler where it was installed)
    frame_entries = frame_entries_python


def read_frames(data: bytes, where: str, kinds: list[int], payloads: list[bytes]) -> list[str]:
    """Append each intact frame's kind and payload; the problems met, for the log.

    The restore's inner loop (a million frames in well under a second): one slice
    and one CRC per frame, nothing else allocated.
    """
    problems = []
    offset, end, size = 0, len(data), FRAME.size
    unpack, crc32, seeds = FRAME.unpack_from, zlib.crc32, _SEEDS
    add_kind, add_payload = kinds.append, payloads.append
    while offset < end:
        if end - offset < size:
            problems.append(f"{where}: cut short at byte {offset}")
            break
        length, crc, kind = unpack(data, offset)
        start = offset + size
        offset = start + length
        if length > MAX_FRAME or offset > end:
            at = start - size
            problems.append(f"{where}: frame at byte {at} runs past the end: rest dropped")
            break
        payload = data[start:offset]
        seed = seeds[kind] if kind in seeds else crc32(bytes((kind,)))  # a kind of the future
        if crc32(payload, seed) != crc:
            problems.append(f"{where}: frame at byte {start - size} fails its checksum: dropped")
            continue
        add_kind(kind)
        add_payload(payload)
    return problems


def whole_frames(data: bytes) -> int:
    """How many bytes of `data` are whole frames (checksums unread): where a tail cut
    short, or a length that runs past the end, begins."""
    offset, end, size = 0, len(data), FRAME.size
    while end - offset >= size:
        length = FRAME.unpack_from(data, offset)[0]
        if length > MAX_FRAME or offset + size + length > end:
            break
        offset += size + length
    return offset


class Disk:
    def __init__(self, folder: Path, name: str, fsync: Fsync = "everysec") -> None:
        self.folder = folder
        self.log_path = folder / f"{name}.log"
        self.old_path = folder / f"{name}.log.old"
        self.snapshot_path = folder / f"{name}.snapshot"
        self.fsync = fsync
        self._fd = -1
        self._pending: list[bytes] = []  # frames to write (entries' framed together)
        self._entries: list[bytes] = []  # entries to frame
        self.log_bytes = 0
        self.unsynced = False
        self.writes = 0  # write() calls that carried frames
        self.entries = 0  # entries those writes carried
        self._pending_entries = 0
        self._pending_frames = 0  # in `_pending` (a blob of entries' frames counts each)
        self.failing: str | None = None  # why the last write failed, until one succeeds
        self.lost: str | None = None  # the log was missing though this server had started before
        self._compacting: asyncio.Task[None] | None = None

    # opening

    def open(self) -> None:
        """Make the folder and open the log for appending; StorageError says why not.

        Called before the server says it is ready, so that a folder it cannot write
        stops it with one clear line instead of failing later."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # exist_ok still raises for a file in the folder's place
            why = "a file is in its place" if isinstance(e, FileExistsError) else e.strerror
            raise StorageError(f"storage {self.folder}: cannot make the folder: {why}") from None
        try:
            traces = [p.exists() for p in (self.log_path, self.old_path, self.snapshot_path)]
            self._fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if not any(traces):  # a first start
                self._snapshot((), Meta())
        except OSError as e:
            why = f"storage {self.log_path}: cannot open for writing: {e.strerror}"
            raise StorageError(why) from None
        if not traces[0] and any(traces):
            self.lost = f"{self.log_path}: missing (lost or deleted): what it held is gone"
        self.log_bytes = os.fstat(self._fd).st_size

    def load(self) -> Loaded:
        """Read everything back (in a thread: the loop meanwhile accepts clients).

        Entries come back in the order they were stored. A log being compacted away
        (`.log.old`, left by a compaction cut short) only adds what its snapshot lacks.
        A log cut short mid-frame is cut back to its last whole frame, so that what is
        appended next can be read.
        """
        loaded = Loaded([], Meta(), 0, 0, [])
        snapshot_head = 0
        if self.lost:
            loaded.damaged += 1
            loaded.problems.append(self.lost)
        for path in (self.snapshot_path, self.old_path, self.log_path):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StorageError(f"storage {path}: cannot read: {e.strerror}") from None
            kinds: list[int] = []
            payloads: list[bytes] = []
            problems = read_frames(data, str(path), kinds, payloads)
            if path == self.log_path and problems:
                self._cut_torn_tail(len(data), whole_frames(data))
            del data
            loaded.damaged += len(problems)
            loaded.problems += problems
            loaded.frames += len(kinds)
            if kinds.count(ENTRY) != len(kinds):  # positions, or kinds this version ignores
                for kind, payload in zip(kinds, payloads, strict=True):
                    if kind == META:
                        self._meta(loaded, payload, path)
                payloads = [p for k, p in zip(kinds, payloads, strict=True) if k == ENTRY]
            if path == self.old_path and snapshot_head:
                payloads = [p for p in payloads if seq_of(p) > snapshot_head]
            if path == self.snapshot_path and payloads:
                snapshot_head = seq_of(payloads[-1])
            loaded.entries += payloads
        return loaded

    @staticmethod
    def _meta(loaded: Loaded, payload: bytes, path: Path) -> None:
        try:
            loaded.meta = Meta.unpack(payload)
        except (ValueError, TypeError, AttributeError) as e:  # another shape
            loaded.damaged += 1
            loaded.problems.append(f"{path}: unreadable positions ({e})")

    def _cut_torn_tail(self, size: int, good: int) -> None:
        """Drop the bytes after the last whole frame (a write cut short by a crash), or
        the frames appended from now on would sit behind them, unreadable."""
        if good < size:
            try:
                os.truncate(self.log_path, good)
            except OSError as e:
                raise StorageError(f"storage {self.log_path}: cannot cut: {e.strerror}") from None
            self.log_bytes = good

    # writing, once per loop turn

    def add(self, entry: bytes) -> None:
        self._entries.append(entry)

    def add_all(self, entries: list[bytes]) -> None:
        self._entries += entries

    def add_meta(self, meta: Meta) -> None:
        self._frame_entries()  # the entries before it stay before it
        self._pending.append(frame(META, meta.pack()))
        self._pending_frames += 1

    def _frame_entries(self) -> None:
        """The entries added since the last call, framed in one pass."""
        entries = self._entries
        if entries:
            self._pending.append(frame_entries(entries, _SEEDS[ENTRY], ENTRY))
            self._pending_entries += len(entries)
            self._pending_frames += len(entries)
            self._entries = []

    def commit(self) -> int:
        """Write the turn's frames in one call; how many frames went out.

        A failing disk (full, read-only) keeps the frames for the next turn and says
        why in `failing`: the server goes on serving, from memory and its neighbors.
        """
        self._frame_entries()
        pending = self._pending
        if not pending:
            return 0
        data = b"".join(pending)
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
            if self.fsync == "always":
                os.fdatasync(self._fd)
            else:
                self.unsynced = True
        except OSError as e:
            self.failing = e.strerror or str(e)
            if written:  # the file holds the start (a disk filling up): go on from there
                self.log_bytes += written
                self._pending = [data[written:]] if written < len(data) else []
            return 0
        self.failing = None
        self.writes += 1
        self.entries += self._pending_entries
        frames, self._pending_entries, self._pending_frames = self._pending_frames, 0, 0
        self.log_bytes += len(data)
        self._pending = []
        return frames

    def sync(self) -> None:
        """fdatasync the log (for `everysec`, from a thread)."""
        if self.unsynced and self._fd >= 0:
            self.unsynced = False
            os.fdatasync(self._fd)

    # compaction

    def wants_compaction(self, live_entries: int) -> bool:
        return self._compacting is None and self.log_bytes > max(COMPACT_MIN, 300 * live_entries)

    def compact(self, entries: Sequence[bytes], meta: Meta) -> asyncio.Task[None] | None:
        """Start writing a snapshot of `entries` (taken this turn) while later turns go
        to a fresh log; the old log is removed once the snapshot is safely in place.

        A `.log.old` still there (a compaction cut short) may hold what no snapshot
        does yet, so the log is added to it, not put in its place. A failure is kept in
        `failing` (the turn goes on: its replies and updates must still leave)."""
        self.commit()
        os.close(self._fd)
        self._fd = -1  # never a stale number another file or socket could be given
        try:
            try:
                if self.old_path.exists():
                    with open(self.old_path, "ab") as old:
                        old.write(self.log_path.read_bytes())
                    self.log_path.unlink()
                else:
                    os.replace(self.log_path, self.old_path)
            finally:
                self._fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as e:
            self.failing = f"compaction: {e.strerror or e}"
            logger.error(f"storage {self.log_path}: cannot compact ({self.failing}); will retry")
            return None
        self.log_bytes = 0
        self.add_meta(meta)
        self._compacting = asyncio.ensure_future(asyncio.to_thread(self._snapshot, entries, meta))
        self._compacting.add_done_callback(self._compacted)
        return self._compacting

    def _compacted(self, task: asyncio.Task[None]) -> None:
        self._compacting = None
        if not task.cancelled() and (e := task.exception()) is not None:
            self.failing = f"snapshot: {e}"
            logger.error(
                f"storage {self.snapshot_path}: cannot write a snapshot ({e}); the log "
                f"{self.old_path.name} is kept and read at the next start"
            )

    def _snapshot(self, entries: Sequence[bytes], meta: Meta) -> None:
        tmp = self.snapshot_path.with_name(self.snapshot_path.name + ".tmp")
        with open(tmp, "wb") as f:
            entries = list(entries)
            for start in range(0, len(entries), SNAPSHOT_BATCH):
                batch = entries[start : start + SNAPSHOT_BATCH]
                f.write(frame_entries(batch, _SEEDS[ENTRY], ENTRY))
            f.write(frame(META, meta.pack()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.snapshot_path)
        _fsync_dir(self.folder)
        self.old_path.unlink(missing_ok=True)

    async def close(self) -> None:
        if self._compacting is not None:
            with contextlib.suppress(Exception):
                await self._compacting
        self.commit()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                if self.fsync != "no":
                    os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def stats(self) -> dict[str, Any]:
        return {
            "log": str(self.log_path),
            "log_bytes": self.log_bytes,
            "writes": self.writes,
            "entries": self.entries,
            "fsync": self.fsync,
            "failing": self.failing,
            "compacting": self._compacting is not None,
        }


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
