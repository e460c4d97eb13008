"""Every count a server keeps, in one place that programs read (`/status`, `/metrics`).

Plain integer attributes bumped on the hot paths: a counter costs an attribute
add, never a lock, a label lookup or a log line.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(slots=True)
class LinkCounters:
    """Traffic with one neighbor."""

    records_in: int = 0  # records received in Updates
    applied: int = 0  # newer than what we held: stored
    stale: int = 0  # we held it already (or newer)
    invalid: int = 0  # failed validation: dropped
    records_out: int = 0  # records sent in Updates
    messages_in: int = 0
    messages_out: int = 0
    malformed: int = 0  # frames that were not messages
    syncs_sent: int = 0
    syncs_served: int = 0  # catch-ups we started for it
    full_resends: int = 0  # of those, the expensive ones (over CHEAP_REWIND records)
    syncs_deferred: int = 0  # expensive rewinds asked for too soon after the last one
    syncs_duplicate: int = 0  # a Sync served a moment ago, asked again (crossed in flight)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class Counters:
    """A server's counts since it started."""

    links: dict[str, LinkCounters]
    iamat: int = 0  # client updates answered AT
    iamat_stale: int = 0  # of those, older than what we held (answered, not stored)
    whatsat: int = 0  # WHATSATs answered
    foreign_frames: int = 0  # bus frames from no neighbor, or not authenticated as one

    @classmethod
    def for_neighbors(cls, neighbors: tuple[str, ...]) -> Counters:
        return cls({n: LinkCounters() for n in neighbors})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class GcPauses:
    """The longest pause of the cyclic garbage collector, measured by gc.callbacks
    (the store is built so that a collection never walks it: this shows it holds)."""

    def __init__(self) -> None:
        self.longest = 0.0  # seconds
        self.collections = 0
        self._began = 0.0

    def install(self) -> None:
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.collections += 1
            self.longest = max(self.longest, time.perf_counter() - self._began)
