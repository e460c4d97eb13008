"""Client load, from processes of its own: one type per load shape, and the pool that runs them.

Load never comes from the process or the GIL of a server. A `ClientPool` starts its
processes once (multiprocessing, spawn) and hands each one job per run:

- `RequestResponse`: one line in flight per connection;
- `Pipelined`: up to `window` lines in flight per connection, topped up at half;
- `Paced`: `rate` lines/s offered by the process, spread over its connections, with
  at most `window` in flight on each;
- `Probes` (propagation): timed IAMATs, one at a time, and optionally a WHATSAT
  poll of another server until it knows each one.

What a connection sends is `Iamats`, `Geoadds` (Redis) or `Whatsats`. Every run is
bounded in time (warm-up + duration + a bounded drain) and in count (`max_lines`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.lines import CycleLines, GeoaddLines, IamatLines, LineReplies, WhatsatReplies
from bench.usage import cpu_seconds

# -- what a connection sends ---------------------------------------------------------------


@dataclass(frozen=True)
class Iamats:
    """IAMATs for `ids` client ids per connection, each line a new fix."""

    tag: str  # unique per process and run; connection i's ids are made with f"{tag}.{i}"
    ids: int = 100
    report_newest: bool = False  # the result carries each id's newest time field

    def lines(self, conn: int) -> IamatLines:
        return IamatLines(f"{self.tag}.{conn}", self.ids, int(time.time()))

    def replies(self) -> LineReplies:
        return LineReplies(b"?")


@dataclass(frozen=True)
class Geoadds:
    """Redis `GEOADD`s for `ids` members per connection: the twin of `Iamats`."""

    tag: str
    ids: int = 100

    def lines(self, conn: int) -> GeoaddLines:
        return GeoaddLines(f"{self.tag}.{conn}", self.ids)

    def replies(self) -> LineReplies:
        return LineReplies(b"-")


@dataclass(frozen=True)
class Whatsats:
    """The given WHATSAT requests, cycled, each connection from another place in the list."""

    requests: tuple[str, ...]

    def lines(self, conn: int) -> CycleLines:
        return CycleLines(self.requests, conn * 7919)

    def replies(self) -> WhatsatReplies:
        return WhatsatReplies()


Payload = Iamats | Geoadds | Whatsats


# -- load shapes -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Load:
    """What one client process does in one run: where, what, when, within which bounds."""

    ports: tuple[int, ...]  # connection i goes to ports[i % len(ports)]
    conns: int
    send: Payload
    start_at: float  # time.monotonic() when the measurement window opens
    duration: float  # seconds of the window; sending stops at its end
    warmup: float = 0.0  # seconds of sending before the window opens
    max_lines: int = 5_000_000  # lines per process, whatever the time
    drain_timeout: float = 10.0  # seconds to wait for replies after sending stops
    cpus: tuple[int, ...] | None = None  # pin the client process

    def opening(self) -> int:
        """Lines each connection sends when sending starts."""
        return 0

    def refill(self, outstanding: int, answered: int) -> int:
        """Lines a connection sends when `answered` replies came in, `outstanding` still due."""
        return 0


@dataclass(frozen=True, kw_only=True)
class RequestResponse(Load):
    """One line in flight per connection: the next leaves when the reply is in."""

    timed: bool = False  # the result carries each request's latency (seconds)

    def opening(self) -> int:
        return 1

    def refill(self, outstanding: int, answered: int) -> int:
        return answered


@dataclass(frozen=True, kw_only=True)
class Pipelined(Load):
    """Up to `window` lines in flight per connection, topped up when half are answered."""

    window: int = 64

    def opening(self) -> int:
        return self.window

    def refill(self, outstanding: int, answered: int) -> int:
        return self.window - outstanding if outstanding <= self.window // 2 else 0


@dataclass(frozen=True, kw_only=True)
class Paced(Load):
    """`rate` lines/s offered by the process over its connections, `window` in flight each."""

    rate: float
    window: int = 64


@dataclass(frozen=True, kw_only=True)
class Probes:
    """Timed IAMATs to `origin`; with `poll`, WHATSAT at that port until it knows each one."""

    origin: int
    poll: int | None
    tag: str
    start_at: float
    duration: float
    count: int
    interval: float = 0.02  # seconds from one probe to the next
    poll_gap: float = 0.0002  # seconds between polls
    poll_timeout: float = 2.0  # seconds a probe is polled for at most
    cpus: tuple[int, ...] | None = None


Job = RequestResponse | Pipelined | Paced | Probes


# -- the pool --------------------------------------------------------------------------------


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal non-negative integers (zeros dropped)."""
    per, extra = divmod(total, parts)
    return [n for n in (per + (1 if i < extra else 0) for i in range(parts)) if n > 0]


def total(results: Sequence[dict[str, Any]], key: str) -> int:
    """A count summed over the client processes of a run."""
    return sum(r[key] for r in results)


class ClientPool:
    """Client processes, started once and reused for every run of a script."""

    def __init__(self, nprocs: int) -> None:
        from bench.client_process import serve

        ctx = mp.get_context("spawn")
        self.counters = ctx.Array("q", nprocs, lock=False)
        self.pipes = []
        self.procs = []
        for i in range(nprocs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=serve, args=(child, i, self.counters), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def size(self) -> int:
        return len(self.procs)

    def run(
        self,
        jobs: Sequence[Job],
        *,
        timeout: float,
        on_tick: Callable[[int], None] | None = None,
        meter: Sequence[int] = (),
        window: tuple[float, float] | None = None,
    ) -> tuple[list[dict[str, Any]], dict[int, float | None]]:
        """Run one job per process (at most `size`); their results, and for each pid in
        `meter` the fraction of a cpu it used during `window` (monotonic start, end)."""
        assert len(jobs) <= self.size, "more jobs than client processes"
        for i in range(len(jobs)):
            self.counters[i] = 0
        for pipe, job in zip(self.pipes, jobs, strict=False):
            pipe.send(job)
        results: list[dict[str, Any] | None] = [None] * len(jobs)
        deadline = time.monotonic() + timeout
        cpu0: dict[int, tuple[float, float | None]] = {}
        cpu1: dict[int, tuple[float, float | None]] = {}
        while any(r is None for r in results):
            now = time.monotonic()
            if window is not None:
                if not cpu0 and now >= window[0]:
                    cpu0 = {pid: (now, cpu_seconds(pid)) for pid in meter}
                if cpu0 and not cpu1 and now >= window[1]:
                    cpu1 = {pid: (now, cpu_seconds(pid)) for pid in meter}
            for i, pipe in enumerate(self.pipes[: len(jobs)]):
                if results[i] is None and pipe.poll():
                    try:
                        results[i] = pipe.recv()
                    except (EOFError, OSError):
                        results[i] = {"error": f"client process {self.procs[i].pid} died"}
                elif results[i] is None and not self.procs[i].is_alive():
                    results[i] = {"error": f"client process {self.procs[i].pid} died"}
            if on_tick is not None:
                on_tick(sum(self.counters[: len(jobs)]))
            if now > deadline:
                self.close(force=True)
                raise TimeoutError(f"client processes did not finish within {timeout:.0f} s")
            time.sleep(0.02)
        errors = [r["error"] for r in results if r and "error" in r]
        if errors:
            raise RuntimeError("a client process failed:\n" + errors[0])
        return results, {pid: _share(cpu0.get(pid), cpu1.get(pid)) for pid in meter}  # type: ignore[return-value]

    def close(self, force: bool = False) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError, BrokenPipeError):
                if not force:
                    pipe.send(None)
        for proc in self.procs:
            proc.join(0 if force else 5)
            if proc.is_alive():
                proc.terminate()  # our own child, by its pid
                proc.join(5)
        self.procs.clear()
        self.pipes.clear()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _share(
    start: tuple[float, float | None] | None, end: tuple[float, float | None] | None
) -> float | None:
    """The fraction of a cpu used between two (wall time, cpu seconds) readings."""
    if start is None or end is None or start[1] is None or end[1] is None:
        return None
    dt = end[0] - start[0]
    return (end[1] - start[1]) / dt if dt > 0 else None
