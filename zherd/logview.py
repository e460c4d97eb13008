"""`zherd logs`: the herd's log files merged in time order, filtered, and followed.

Every line of a server log starts `2026-12-02T07:40:01.123456Z | Alford | INFO    | `:
a fixed-width UTC stamp, so comparing stamps as text compares times. Each file is in
time order (one server writes it), so the herd's history is a heapq.merge of lazy
per-file readers, and memory stays small however large the files are.
"""

from __future__ import annotations

import heapq
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, NamedTuple, TextIO

PREFIX = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) \| (\S+) \| [A-Z]+ *\| ?")
STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"
RELATIVE = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
CHUNK = 1 << 16
POLL_BYTES = 4 << 20  # read at most this much of one file per poll when following
POLL_INTERVAL = 0.2  # seconds between polls of a quiet herd


class Entry(NamedTuple):
    """One stamped line, with any unstamped lines that follow it (a traceback, say)."""

    stamp: str  # "" for unstamped lines at the start of a file
    server: str
    message: str  # what follows the prefix, continuation lines included
    text: str  # the lines as they are in the file, each ending in a newline


# -- pure: lines, times, filters --------------------------------------------------------------


def entries(lines: Iterable[str], server: str, stamp: str = "") -> Iterator[Entry]:
    """Group lines (each ending in a newline) into entries; an unstamped line belongs to the
    entry before it, or, at the start, to one with `stamp` (where the last batch ended)."""
    message: list[str] = []
    text: list[str] = []
    name = server
    for line in lines:
        m = PREFIX.match(line)
        if m is None:
            message.append(line)
            text.append(line)
            continue
        if text:
            yield Entry(stamp, name, "".join(message), "".join(text))
        stamp, name = m[1], m[2]
        message, text = [line[m.end() :]], [line]
    if text:
        yield Entry(stamp, name, "".join(message), "".join(text))


def stamp_of(moment: datetime) -> str:
    """A time in the log's own format (UTC), so that it compares as text with stamps."""
    return moment.astimezone(UTC).strftime(STAMP)


def parse_since(text: str, now: datetime) -> str:
    """`--since`: an ISO time (UTC unless it gives an offset) or an age (`30s`, `10m`, `2h`,
    `1d`, `1h30m`); the stamp from which lines are shown."""
    text = text.strip()
    if RELATIVE.fullmatch(text):
        seconds = sum(
            float(n) * UNITS[unit] for n, unit in re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
        )
        return stamp_of(now - timedelta(seconds=seconds))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give an ISO time (2026-12-02T07:40:00Z) or an age (10m, 2h, 30s)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return stamp_of(moment)


@dataclass(frozen=True)
class Filter:
    """Which entries `zherd logs` shows."""

    since: str = ""  # a stamp; "" for all
    client: str | None = None  # a whitespace-delimited token of the message
    grep: str | None = None  # a substring of the line(s)

    def __call__(self, entry: Entry) -> bool:
        return (
            entry.stamp >= self.since
            and (self.grep is None or self.grep in entry.text)
            and (self.client is None or self.client in entry.message.split())
        )


def merge(streams: Iterable[Iterable[Entry]]) -> Iterator[Entry]:
    """Entries of time-ordered streams in time order (ties keep the streams' order)."""
    return heapq.merge(*streams, key=lambda entry: entry.stamp)


def log_files(log_dir: Path, name: str) -> list[Path]:
    """A server's log files, oldest first: those rotation left (`NAME.<date>[.N].log`, as
    loguru renames them), then the current `NAME.log`."""
    rotated = re.compile(re.escape(name) + r"\.\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}(?:\.\d+)?\.log")
    try:
        names = sorted(p.name for p in log_dir.iterdir() if rotated.fullmatch(p.name))
    except FileNotFoundError:
        return []
    current = log_dir / f"{name}.log"
    return [log_dir / n for n in names] + ([current] if current.exists() else [])


# -- IO: reading files as they grow ---------------------------------------------------------------


class Tail:
    """The lines of one log file, read on from where the last read stopped.

    When loguru rotates (renames the file and starts a new one under the name), what
    was written to the old file is read through the open descriptor before the new
    file is opened, so no line is lost. A file that does not exist yet is tried again
    at each read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: BinaryIO | None = None
        self.pending = b""  # a line not yet ended
        self.stamp = ""  # of the last entry read: for an unstamped line at a batch's start

    def lines(self, limit: int | None = None, *, final: bool = False) -> Iterator[str]:
        """Complete lines written since the last read (at most about `limit` bytes);
        with `final`, a last unended line too."""
        budget = limit
        while budget is None or budget > 0:
            if self.file is None and not self._open():
                break
            assert self.file is not None
            chunk = self.file.read(CHUNK if budget is None else min(CHUNK, budget))
            if chunk:
                if budget is not None:
                    budget -= len(chunk)
                *complete, self.pending = (self.pending + chunk).split(b"\n")
                for raw in complete:
                    yield raw.decode("utf-8", "replace") + "\n"
            elif self._replaced():
                yield from self._unended()
                self.file.close()
                self.file = None
            else:
                break
        if final:
            yield from self._unended()

    def entries(self, server: str, limit: int | None = None, *, final: bool = False) -> list[Entry]:
        batch = list(entries(self.lines(limit, final=final), server, self.stamp))
        if batch:
            self.stamp = batch[-1].stamp
        return batch

    def _unended(self) -> Iterator[str]:
        if self.pending:
            line, self.pending = self.pending.decode("utf-8", "replace") + "\n", b""
            yield line

    def _open(self) -> bool:
        try:
            self.file = self.path.open("rb")
        except FileNotFoundError:
            return False
        return True

    def _replaced(self) -> bool:
        """At the end of our descriptor: is another file under the name now (rotation)?"""
        assert self.file is not None
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed, and the new file is not there yet: keep reading ours
        mine = os.fstat(self.file.fileno())
        if (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
            return True
        if now.st_size < self.file.tell():  # truncated in place: start again from its top
            self.file.seek(0)
            self.pending = b""
        return False

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def history(
    log_dir: Path, names: Iterable[str], keep: Filter, *, final: bool = True
) -> tuple[Iterator[Entry], dict[str, Tail]]:
    """The herd's log so far, merged and filtered, and a Tail per server positioned
    where that history will end (for following)."""
    streams: list[Iterator[Entry]] = []
    tails: dict[str, Tail] = {}
    for name in names:
        files = log_files(log_dir, name)
        current = log_dir / f"{name}.log"
        for path in files:
            if path != current:
                streams.append(_read_all(path, name, keep))
        tails[name] = Tail(current)
        streams.append(_read_tail(tails[name], name, keep, final))
    return merge(streams), tails


def _read_all(path: Path, name: str, keep: Filter) -> Iterator[Entry]:
    tail = Tail(path)
    try:
        yield from filter(keep, entries(tail.lines(final=True), name))
    finally:
        tail.close()


def _read_tail(tail: Tail, name: str, keep: Filter, final: bool) -> Iterator[Entry]:
    for entry in entries(tail.lines(final=final), name):
        tail.stamp = entry.stamp
        if keep(entry):
            yield entry


def follow(
    tails: Mapping[str, Tail],
    keep: Filter,
    out: TextIO,
    *,
    interval: float = POLL_INTERVAL,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Print what the servers write from now on, each poll's lines in time order, until
    `stop()` (or Ctrl-C). A poll reads at most POLL_BYTES of a file and costs one read per
    file when the herd is quiet."""
    while not stop():
        batch = [
            [e for e in tail.entries(name, POLL_BYTES) if keep(e)] for name, tail in tails.items()
        ]
        for entry in merge(batch):
            out.write(entry.text)
        out.flush()
        time.sleep(interval)
