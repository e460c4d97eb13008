"""Storage without a herd: round trips, and a write that fails (a full disk) loses nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from loguru import logger

from gateway.protocol import location_from_wire
from zherd.harness import Herd
from zherd.storage import Storage
from zherd.store import Entry


def entry(seq: int, client: str, time: str = "1400794645.5", via: str | None = None) -> Entry:
    loc = location_from_wire((client, "+34.068930-118.445127", time, "Alford", "+0.000000001"))
    assert loc is not None
    return Entry(seq, loc, via)


async def test_entries_and_stream_positions_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "A.sqlite3"
    storage = Storage(path)
    assert storage.open().entries == []
    for e in (entry(1, "a"), entry(2, "b", via="Parker"), entry(3, "a", "1400794646.5")):
        storage.mark(e)
    await storage.close({"Parker": (7, 42)})

    again = Storage(path)
    saved = again.open()
    assert [(e.seq, e.location.client_id, e.location.time, e.via) for e in saved.entries] == [
        (2, "b", "1400794645.5", "Parker"),
        (3, "a", "1400794646.5", None),
    ]
    assert saved.cursors == {"Parker": (7, 42)}
    await again.close({})


async def test_a_failed_commit_keeps_its_rows_and_newer_marks_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(tmp_path / "A.sqlite3")
    storage.open()
    real_write = storage._write
    storage.mark(entry(1, "a"))
    storage.mark(entry(2, "b"))

    def full_disk(*args: object) -> None:
        storage.mark(entry(3, "b", "1400794699.5"))  # arrives while the write is failing
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(storage, "_write", full_disk)
    with pytest.raises(sqlite3.OperationalError):
        await storage.commit({})
    monkeypatch.setattr(storage, "_write", real_write)
    await storage.close({})

    saved = Storage(storage.path).open()
    assert {e.location.client_id: e.location.time for e in saved.entries} == {
        "a": "1400794645.5",
        "b": "1400794699.5",
    }


async def test_the_commit_loop_reports_a_failing_disk_once_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(tmp_path / "A.sqlite3")
    storage.open()
    real_write = storage._write
    failures = 3

    def flaky(*args: object) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise sqlite3.OperationalError("disk I/O error")
        real_write(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "_write", flaky)
    messages: list[str] = []
    sink = logger.add(messages.append, format="{level} {message}")
    storage.mark(entry(1, "a"))
    task = asyncio.create_task(storage.run(0.001, dict))
    try:
        for _ in range(500):  # bounded: the loop retries within ~20 ms of each failure
            if failures == 0 and not storage._dirty:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        logger.remove(sink)
    assert failures == 0 and not storage._dirty
    errors = [m for m in messages if m.startswith("ERROR")]
    assert len(errors) == 1 and "disk I/O error" in errors[0]
    assert any("writing again" in m for m in messages)
    await storage.close({})
    assert [e.location.client_id for e in Storage(storage.path).open().entries] == ["a"]


def test_a_big_store_loads_while_clients_wait_connected(tmp_path: Path) -> None:
    """The server listens before it reads its file; what clients ask meanwhile is answered
    from the whole store once it is loaded (never `?` from a half-loaded one)."""
    n = 60_000
    storage = Storage(tmp_path / "var" / "A.sqlite3")
    storage.open()
    storage._write((entry(seq, f"c{seq}") for seq in range(1, n + 1)), {})
    asyncio.run(storage.close({}))

    with Herd(tmp_path, servers=("A",), links=()) as herd:
        herd.start()  # returns once the server accepts clients
        with herd.client("A") as client:
            assert client.ask(f"WHATSAT c{n} 1 1").startswith(f"AT Alford +0.000000001 c{n} ")
        log = herd.log("A")
        assert log.index("accepting clients") < log.index(f"{n} locations restored")
