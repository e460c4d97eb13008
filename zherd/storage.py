"""Durable locations: SQLite in WAL mode, written in batches off the event loop.

The store stays the source of truth in memory; this file only has to survive a
restart. Updates are coalesced per client between commits (a client that moves
ten times in a batch costs one row), and each commit also saves how far each
neighbor's stream was applied, in the same transaction, so a restarted server
asks its neighbors for exactly what it lacks.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from gateway.protocol import location_from_wire
from zherd.store import Entry

SCHEMA = """
CREATE TABLE IF NOT EXISTS locations (
    client_id TEXT PRIMARY KEY,
    coords TEXT NOT NULL, time TEXT NOT NULL, origin TEXT NOT NULL, skew TEXT NOT NULL,
    seq INTEGER NOT NULL, via TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams (
    peer TEXT PRIMARY KEY, epoch INTEGER NOT NULL, seq INTEGER NOT NULL
) WITHOUT ROWID;
"""
UPSERT = """
INSERT INTO locations VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(client_id) DO UPDATE SET coords = excluded.coords, time = excluded.time,
    origin = excluded.origin, skew = excluded.skew, seq = excluded.seq, via = excluded.via
"""

Cursors = dict[str, tuple[int, int]]  # neighbor -> (epoch, seq) of its stream applied here


@dataclass(frozen=True)
class Saved:
    entries: list[Entry]  # in sequence order
    cursors: Cursors
    skipped: int  # rows that failed validation


class Storage:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._dirty: dict[str, Entry] = {}
        self._lock = asyncio.Lock()

    def open(self) -> Saved:
        """Open (or create) the file and read it back; a broken file is set aside and rebuilt."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():  # a first start, or the file was lost: say which it may be
            logger.info(
                f"storage {self.path} not found: creating it and starting empty "
                "(a first start, or the file was lost: neighbors will send everything they hold)"
            )
        try:
            self._db = self._connect()
            return self._read()
        except sqlite3.DatabaseError as e:
            if self._db is not None:
                self._db.close()
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            logger.error(
                f"storage {self.path} is unreadable ({e}); moved it to {aside.name} and "
                "starting empty: neighbors will send everything they hold"
            )
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._db = self._connect()
            return Saved([], {}, 0)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing
        db.executescript(SCHEMA)
        return db

    def _read(self) -> Saved:
        assert self._db is not None
        rows = self._db.execute(
            "SELECT client_id, coords, time, origin, skew, seq, via FROM locations ORDER BY seq"
        ).fetchall()
        entries, skipped = [], 0
        for *fields, seq, via in rows:
            location = location_from_wire(fields)
            if location is None or type(seq) is not int:
                skipped += 1
                continue
            entries.append(Entry(seq, location, via))
        cursors = {
            peer: (epoch, seq)
            for peer, epoch, seq in self._db.execute("SELECT peer, epoch, seq FROM streams")
        }
        return Saved(entries, cursors, skipped)

    def mark(self, entry: Entry) -> None:
        """Remember a stored entry for the next commit."""
        self._dirty[entry.location.client_id] = entry

    async def run(self, interval: float, cursors: Callable[[], Cursors]) -> None:
        """Commit what changed every `interval` seconds until cancelled.

        A failing write (a full disk, say) is logged once and retried: the server
        keeps serving from memory and its neighbors, and nothing dirty is dropped.
        """
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.commit(cursors())
            except sqlite3.Error as e:
                if not failing:
                    logger.error(f"storage {self.path}: cannot write ({e}); will keep retrying")
                failing = True
                await asyncio.sleep(min(1.0, 20 * interval))
            else:
                if failing:
                    logger.info(f"storage {self.path}: writing again")
                failing = False

    async def commit(self, cursors: Cursors) -> None:
        async with self._lock:
            if not self._dirty:
                return
            rows, self._dirty = self._dirty, {}
            write = asyncio.ensure_future(asyncio.to_thread(self._write, rows.values(), cursors))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:  # the thread writes on: keep the lock until it is done,
                await write  # or close() would start a second transaction on this connection
                raise
            except sqlite3.Error:
                for client_id, entry in rows.items():  # newer marks since then win
                    self._dirty.setdefault(client_id, entry)
                raise

    def _write(self, entries: Iterable[Entry], cursors: Cursors) -> None:
        assert self._db is not None
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(UPSERT, [(*e.location[:5], e.seq, e.via) for e in entries])
            db.executemany(
                "INSERT OR REPLACE INTO streams VALUES (?, ?, ?)",
                [(peer, epoch, seq) for peer, (epoch, seq) in cursors.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self, cursors: Cursors) -> None:
        await self.commit(cursors)
        if self._db is not None:
            self._db.close()
            self._db = None
