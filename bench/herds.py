"""The herds a bench measures: real ones (zherd.harness) in scratch folders, and what they hold.

A server "holds" a client's update when WHATSAT there answers with that update's time
field; `misses` and `converge` ask every server at once (`Herd.holdings`).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from zherd.harness import PAPER_LINKS, PAPER_SERVERS, Herd


@contextlib.contextmanager
def scratch_herd(
    servers: Sequence[str] = PAPER_SERVERS,
    links: Sequence[tuple[str, str]] = PAPER_LINKS,
    *,
    storage: bool = True,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    keep: bool = False,
    prefix: str = "zherd-bench-",
    start: bool = True,
) -> Iterator[Herd]:
    """A herd in a fresh temp folder, started unless told not to; stopped (what runs of
    it), and the folder removed unless `keep`."""
    herd = Herd(Path(tempfile.mkdtemp(prefix=prefix)), servers, links, sections)
    try:
        if start:
            herd.start(storage=storage)
        yield herd
    finally:
        herd.stop()
        if not keep:
            shutil.rmtree(herd.root, ignore_errors=True)


def herd_options(p: argparse.ArgumentParser) -> None:
    """--no-storage, --no-curve and --log-level, for a script that measures a whole herd."""
    p.add_argument("--no-storage", action="store_true")
    p.add_argument("--no-curve", action="store_true", help="[security] curve = false (its cost)")
    p.add_argument(
        "--log-level",
        default=None,
        help="diagnostic: [logging] level for the servers (default: the product's, INFO)",
    )


def log_sections(level: str | None, curve: bool = True) -> dict[str, Any] | None:
    """Topology tables for --log-level and --no-curve given on the command line (None: the
    product's)."""
    sections: dict[str, Any] = {"logging": {"dir": "logs", "level": level.upper()}} if level else {}
    if not curve:
        sections["security"] = {"curve": False}
    return sections or None


def misses(
    herd: Herd,
    expected: Mapping[str, str],
    servers: Sequence[str] | None = None,
    timeout: float = 30.0,
) -> dict[str, list[str]]:
    """Server (default: every one) -> the ids whose time field there is not the expected one."""
    views = herd.holdings(expected, servers, timeout=timeout)
    return {
        name: [cid for cid, want in expected.items() if _time_of(view[cid]) != want]
        for name, view in views.items()
    }


def _time_of(at_line: str | None) -> str | None:
    return at_line.rsplit(" ", 1)[1] if at_line else None


def converge(
    herd: Herd, expected: Mapping[str, str], *, timeout: float, interval: float = 0.01
) -> tuple[float | None, dict[str, list[str]]]:
    """Poll until every server holds `expected`; (monotonic time it did or None, misses)."""
    deadline = time.monotonic() + timeout
    pending = dict(expected)
    while True:
        missed = misses(herd, pending, timeout=max(1.0, deadline - time.monotonic()))
        bad = {cid for ids in missed.values() for cid in ids}
        now = time.monotonic()
        if not bad:
            return now, {}
        pending = {cid: expected[cid] for cid in bad}
        if now > deadline:
            return None, missed
        time.sleep(interval)
