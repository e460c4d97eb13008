"""Shared pieces of the bench scripts: results, machine info, progress, tables, plots, load.

Every script writes `bench/results/<name>-<YYYY-MM-DD>.json` and a PNG next to it.
Figures are summarised over repeats as median with min/max and the quartiles.

Client load always comes from separate processes (`ClientPool`, multiprocessing with
the spawn start method), never from the process or the GIL of a server. Each client
process runs uvloop with `asyncio.Protocol` connections (the same shape as the
servers under test, so the client is as cheap per line as Python gets) and has three
ways to load its connections:

- `rr`: request/response, one line in flight per connection;
- `pipeline`: up to `window` lines in flight per connection, topped up when half
  of them are answered;
- `paced`: an offered rate (lines/s per process) spread over the connections,
  with at most `window` lines in flight per connection.

Every run is bounded in time (warm-up + duration + a bounded drain) and in count
(`max_lines` per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import importlib.metadata
import json
import math
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"
console = Console(width=None if sys.stdout.isatty() else 150)

# A few fixes around UCLA, ISO 6709 as clients send them.
COORDS = tuple(f"+{34.0 + i * 0.0137:.6f}-{118.0 + i * 0.0211:.6f}" for i in range(16))


# -- results ---------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import psutil

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("pyzmq", "msgpack", "uvloop", "aiohttp", "loguru", "zherd"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        import zmq

        versions["libzmq"] = zmq.zmq_version()
    except ImportError:
        versions["libzmq"] = None
    return {
        "cpu_model": cpu,
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_bytes": psutil.virtual_memory().total,
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "versions": versions,
        "load_average_at_start": list(os.getloadavg()),
    }


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median and spread (min/max, quartiles) of repeated measurements."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    if not xs:
        return {
            "n": 0,
            "median": None,
            "min": None,
            "max": None,
            "q1": None,
            "q3": None,
            "values": list(values),
        }
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {
        "n": len(xs),
        "median": statistics.median(xs),
        "min": xs[0],
        "max": xs[-1],
        "q1": q1,
        "q3": q3,
        "values": list(values),
    }


def percentile(xs: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of unsorted data; None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def today() -> str:
    return _dt.date.today().isoformat()


def result_paths(name: str, out_dir: Path | None = None, quick: bool = False) -> tuple[Path, Path]:
    """`<name>-<date>.json` and `.png`; a --quick smoke run writes `<name>-quick-<date>.*`,
    so that it never overwrites a measuring run of the same day."""
    folder = out_dir or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-quick-{today()}" if quick else f"{name}-{today()}"
    return folder / f"{stem}.json", folder / f"{stem}.png"


def parameters_of(args: Any, **extra: Any) -> dict[str, Any]:
    """A run's parameters for its JSON: the command-line arguments (not --out), and extras."""
    return {k: v for k, v in vars(args).items() if k != "out"} | extra


def write_results(
    name: str,
    parameters: dict[str, Any],
    figures: Any,
    *,
    targets: Sequence[dict[str, Any]] = (),
    notes: Sequence[str] = (),
    machine: dict[str, Any] | None = None,
    started: float | None = None,
    out_dir: Path | None = None,
    path: Path | None = None,
) -> Path:
    path = path or result_paths(name, out_dir)[0]
    data = {
        "bench": name,
        "date": today(),
        "finished_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "wall_seconds": None if started is None else round(time.monotonic() - started, 2),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "machine": machine or machine_info(),
        "parameters": parameters,
        "figures": figures,
        "targets": list(targets),
        "notes": list(notes),
    }
    data["machine"]["load_average_at_end"] = list(os.getloadavg())
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def target(name: str, value: float | None, goal: str, met: bool | None, note: str = "") -> dict:
    return {"target": name, "value": value, "goal": goal, "met": met, "note": note}


# -- console ---------------------------------------------------------------------------------


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=escape(title), show_lines=False)
    for i, col in enumerate(columns):
        table.add_column(escape(col), justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[escape(fmt(c)) for c in row])
    console.print(table)


def print_targets(goals: Sequence[dict]) -> None:
    """The targets table every script ends with (rows made by `target`)."""
    print_table(
        "targets",
        ["target", "value", "goal", "met", "note"],
        [(g["target"], g["value"], g["goal"], g["met"], g["note"]) for g in goals],
    )


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def spread(s: dict[str, Any], scale: float = 1.0, unit: str = "") -> str:
    """`median [min-max]` of a summary, scaled."""
    if not s or s.get("median") is None:
        return "-"
    med, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    if s["n"] == 1:
        return f"{fmt(float(med))}{unit}"
    return f"{fmt(float(med))}{unit} [{fmt(float(lo))}-{fmt(float(hi))}]"


def finish(json_path: Path, png_path: Path | None) -> None:
    console.print(
        f"results: [bold]{json_path}[/bold]" + (f"\nplot:    {png_path}" if png_path else "")
    )


# -- plots -----------------------------------------------------------------------------------


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def errorbar_args(summaries: Sequence[dict[str, Any]], scale: float = 1.0):
    """(medians, [lower errors, upper errors]) from summaries, for plt.errorbar (min/max)."""
    med = [
        (s["median"] or 0) * scale if s.get("median") is not None else float("nan")
        for s in summaries
    ]
    pairs = list(zip(med, summaries, strict=True))
    lo = [m - s["min"] * scale if s.get("min") is not None else 0 for m, s in pairs]
    hi = [s["max"] * scale - m if s.get("max") is not None else 0 for m, s in pairs]
    return med, [lo, hi]


def save_figure(fig, png_path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    pyplot().close(fig)
    return png_path


# -- processes we start ----------------------------------------------------------------------


def cpu_split(pin: bool, server_cpus: int = 1) -> tuple[set[int] | None, set[int] | None]:
    """(server cpus, client cpus) when pinning: servers on the first cpus, clients on the rest.

    With fewer than two usable cpus nothing is pinned.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin or len(cpus) < 2:
        return None, None
    n = min(server_cpus, len(cpus) - 1)
    return set(cpus[:n]), set(cpus[n:])


def pin_pid(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of a process we started (threads started later inherit it)."""
    if not cpus:
        return
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)


def wait_port(port: int, timeout: float = 10.0, interval: float = 0.001) -> float:
    """Poll-connect until `port` accepts; seconds waited. TimeoutError after `timeout`."""
    t0 = time.perf_counter()
    deadline = t0 + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return time.perf_counter() - t0
        except OSError:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"port {port} not accepting after {timeout} s") from None
            time.sleep(interval)


def stop_pid(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM a child we started (SIGKILL after `timeout`); its status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def cpu_seconds(pid: int) -> float | None:
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def log_sections(args: Any) -> dict[str, Any] | None:
    """Topology tables for a --log-level or --no-curve given on the command line (None: the
    product's)."""
    level = getattr(args, "log_level", None)
    sections: dict[str, Any] = {"logging": {"dir": "logs", "level": level.upper()}} if level else {}
    if getattr(args, "no_curve", False):
        sections["security"] = {"curve": False}
    return sections or None


class HerdRun:
    """A zherd herd (harness.Herd) in a fresh temp folder, stopped and removed on exit."""

    def __init__(
        self,
        servers: Sequence[str] | None = None,
        links=None,
        *,
        storage: bool = True,
        keep: bool = False,
        prefix: str = "zherd-bench-",
        sections=None,
    ) -> None:
        from zherd.harness import PAPER_LINKS, PAPER_SERVERS, Herd

        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.herd = Herd(
            self.root,
            servers=tuple(servers or PAPER_SERVERS),
            links=tuple(PAPER_LINKS if links is None else links),
            sections=sections,
        )
        self.storage = storage
        self.keep = keep

    def __enter__(self) -> HerdRun:
        try:
            self.herd.start(storage=self.storage)
        except BaseException:
            self.herd.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.herd.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def names(self) -> list[str]:
        return list(self.herd.ports)

    def port(self, name: str) -> int:
        return self.herd.port(name)

    def pid(self, name: str) -> int:
        return self.herd.procs[name].pid

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"


# -- client load -----------------------------------------------------------------------------


@dataclass
class LoadSpec:
    """What one client process does in one run (picklable)."""

    ports: tuple[int, ...]  # connection i goes to ports[i % len(ports)]
    conns: int
    mode: str  # "rr" | "pipeline" | "paced" | "probe"
    payload: str  # "iamat" | "geoadd" | "whatsat"
    tag: str  # client-id prefix, unique per process and run
    start_at: float  # time.monotonic() when the measurement window opens
    duration: float  # seconds of the measurement window; sending stops at its end
    warmup: float = 0.0  # seconds of sending before the window opens
    window: int = 64  # lines in flight per connection (pipeline, paced)
    rate: float = 0.0  # paced: lines/s offered by this process
    max_lines: int = 5_000_000  # lines per process, whatever the time
    ids_per_conn: int = 100  # distinct client ids per connection (iamat, geoadd)
    drain_timeout: float = 10.0  # seconds to wait for replies after sending stops
    latency: bool = False  # rr: record each request's latency (seconds)
    whatsat_lines: tuple[str, ...] = ()  # whatsat: the requests to cycle through
    want_newest: bool = False  # iamat: return each client id's newest time field
    cpus: tuple[int, ...] | None = None  # pin this client process
    # probe mode (propagation): IAMAT to ports[0], optionally poll WHATSAT at ports[1]
    probes: int = 0
    probe_interval: float = 0.02
    probe_poll: bool = False
    poll_gap: float = 0.0002
    poll_timeout: float = 2.0


class _IamatLines:
    __slots__ = ("coords", "ids", "prefix", "seq", "t0")

    def __init__(self, prefix: str, ids: int, t0: int) -> None:
        self.prefix, self.ids, self.t0, self.seq = prefix, ids, t0, 0
        self.coords = COORDS

    def make(self, n: int) -> bytes:
        s, p, ids, t0, c = self.seq, self.prefix, self.ids, self.t0, self.coords
        self.seq = s + n
        return "".join(
            [f"IAMAT {p}{i % ids} {c[i % 16]} {t0}.{i:09d}\n" for i in range(s, s + n)]
        ).encode()

    def newest(self) -> dict[str, str]:
        """Each client id's last time field sent on this connection."""
        last, ids = self.seq - 1, self.ids
        out = {}
        for i in range(min(ids, self.seq)):
            s = last - ((last - i) % ids)
            out[f"{self.prefix}{i}"] = f"{self.t0}.{s:09d}"
        return out


class _GeoaddLines:
    """RESP `GEOADD zherd <lon> <lat> <member>`: the Redis twin of an IAMAT."""

    __slots__ = ("ids", "pairs", "prefix", "seq")

    def __init__(self, prefix: str, ids: int) -> None:
        self.prefix, self.ids, self.seq = prefix, ids, 0
        self.pairs = []
        for c in COORDS:
            lat, lon = c[:10], c[10:]
            lon = f"{float(lon):.6f}"
            lat = f"{float(lat):.6f}"
            self.pairs.append(f"${len(lon)}\r\n{lon}\r\n${len(lat)}\r\n{lat}\r\n")

    def make(self, n: int) -> bytes:
        s, p, ids, pairs = self.seq, self.prefix, self.ids, self.pairs
        self.seq = s + n
        out = []
        for i in range(s, s + n):
            m = f"{p}{i % ids}"
            out.append(f"*5\r\n$6\r\nGEOADD\r\n$5\r\nzherd\r\n{pairs[i % 16]}${len(m)}\r\n{m}\r\n")
        return "".join(out).encode()


class _CycleLines:
    __slots__ = ("i", "lines")

    def __init__(self, lines: Sequence[str], start: int) -> None:
        self.lines = [(ln + "\n").encode() for ln in lines]
        self.i = start % max(1, len(self.lines))

    def make(self, n: int) -> bytes:
        lines, i, k = self.lines, self.i, len(self.lines)
        out = [lines[(i + j) % k] for j in range(n)]
        self.i = (i + n) % k
        return b"".join(out)


class WhatsatFramer:
    """Counts WHATSAT replies in a byte stream: `? ...\\n` or `AT ...\\n<json>\\n\\n`."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> tuple[int, int]:
        buf = self.buf + data if self.buf else data
        n = err = pos = 0
        end = len(buf)
        while pos < end:
            if buf[pos] == 63:  # "?"
                j = buf.find(b"\n", pos)
                if j < 0:
                    break
                n, err, pos = n + 1, err + 1, j + 1
            else:
                j = buf.find(b"\n\n", pos)
                if j < 0:
                    break
                n, pos = n + 1, j + 2
        self.buf = buf[pos:]
        return n, err


class _Conn(asyncio.Protocol):
    def __init__(self, w: _Worker, gen: Any) -> None:
        self.w, self.gen = w, gen
        self.transport: asyncio.Transport | None = None
        self.outstanding = self.sent = self.received = self.errors = 0
        self.sent_at: deque[float] = deque()
        self.framer = WhatsatFramer() if w.spec.payload == "whatsat" else None
        self.err_byte = b"-" if w.spec.payload == "geoadd" else b"?"
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        with contextlib.suppress(OSError, AttributeError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.w.check_done()

    def data_received(self, data: bytes) -> None:
        if self.framer is not None:
            n, err = self.framer.feed(data)
        else:
            n = data.count(b"\n")
            err = data.count(self.err_byte) if self.err_byte in data else 0
        if not n:
            return
        now = time.monotonic()
        w = self.w
        self.outstanding -= n
        self.received += n
        self.errors += err
        w.received += n
        w.last_reply = now
        if w.t_open <= now < w.t_close:
            w.in_window += n
        if w.record_latency:
            sent_at = self.sent_at
            for _ in range(min(n, len(sent_at))):
                w.latencies.append(now - sent_at.popleft())
        if w.sending:
            mode = w.mode
            if mode == "rr":
                self.send(n)
            elif mode == "pipeline" and self.outstanding <= w.low_water:
                self.send(w.window - self.outstanding)
        elif self.outstanding <= 0:
            w.check_done()

    def send(self, n: int) -> None:
        w = self.w
        n = min(n, w.budget - w.sent)
        if n <= 0 or self.transport is None or self.lost:
            return
        self.transport.write(self.gen.make(n))
        self.outstanding += n
        self.sent += n
        w.sent += n
        if w.record_latency:
            now = time.monotonic()
            self.sent_at.extend([now] * n)


class _Worker:
    def __init__(self, spec: LoadSpec, counters: Any, slot: int) -> None:
        self.spec, self.counters, self.slot = spec, counters, slot
        self.mode, self.window = spec.mode, max(1, spec.window)
        self.low_water = self.window // 2
        self.budget = spec.max_lines
        self.t_open = spec.start_at
        self.t_close = spec.start_at + spec.duration
        self.sending = False
        self.sent = self.received = self.in_window = 0
        self.last_reply = 0.0
        self.record_latency = spec.latency and spec.mode == "rr"
        self.latencies: list[float] = []
        self.conns: list[_Conn] = []
        self.done: asyncio.Future[None] | None = None

    def check_done(self) -> None:
        if self.sending or self.done is None or self.done.done():
            return
        if all(c.outstanding <= 0 or c.lost for c in self.conns):
            self.done.set_result(None)

    def _gen(self, i: int) -> Any:
        spec = self.spec
        if spec.payload == "iamat":
            return _IamatLines(f"{spec.tag}.{i}.", spec.ids_per_conn, int(time.time()))
        if spec.payload == "geoadd":
            return _GeoaddLines(f"{spec.tag}.{i}.", spec.ids_per_conn)
        if spec.payload == "whatsat":
            return _CycleLines(spec.whatsat_lines, i * 7919)
        raise ValueError(f"unknown payload {spec.payload!r}")

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        for i in range(spec.conns):
            port = spec.ports[i % len(spec.ports)]
            gen = self._gen(i)
            _, conn = await loop.create_connection(lambda g=gen: _Conn(self, g), HOST, port)
            self.conns.append(conn)  # type: ignore[arg-type]
        t_begin = spec.start_at - spec.warmup
        await asyncio.sleep(max(0.0, t_begin - time.monotonic()))
        self.sending = True
        ticker = None
        if self.mode == "rr":
            for c in self.conns:
                c.send(1)
        elif self.mode == "pipeline":
            for c in self.conns:
                c.send(self.window)
        elif self.mode == "paced":
            ticker = asyncio.ensure_future(self._pace(time.monotonic()))
        cpu_open = wall_open = cpu_close = wall_close = None
        while True:
            now = time.monotonic()
            if cpu_open is None and now >= self.t_open:
                cpu_open, wall_open = time.process_time(), now
            if now >= self.t_close or self.sent >= self.budget:
                break
            self.counters[self.slot] = self.received
            await asyncio.sleep(min(0.05, max(0.001, self.t_close - now)))
        cpu_close, wall_close = time.process_time(), time.monotonic()
        if cpu_open is None:
            cpu_open, wall_open = cpu_close, wall_close
        self.sending = False
        t_stop = time.monotonic()
        if ticker is not None:
            ticker.cancel()
        self.check_done()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.done), spec.drain_timeout)
        self.counters[self.slot] = self.received
        drained = all(c.outstanding <= 0 for c in self.conns)
        for c in self.conns:
            if c.transport is not None:
                c.transport.close()
        result: dict[str, Any] = {
            "sent": self.sent,
            "received": self.received,
            "in_window": self.in_window,
            "errors": sum(c.errors for c in self.conns),
            "unanswered": sum(max(0, c.outstanding) for c in self.conns),
            "drained": drained,
            "lost_connections": sum(c.lost for c in self.conns),
            "t_stop": t_stop,
            "last_reply": self.last_reply,
            "cpu_fraction": (cpu_close - cpu_open) / (wall_close - wall_open)
            if wall_close and wall_open is not None and wall_close > wall_open
            else None,
        }
        if self.record_latency:
            result["latencies"] = self.latencies
        if spec.want_newest and spec.payload == "iamat":
            newest: dict[str, str] = {}
            for c in self.conns:
                newest.update(c.gen.newest())
            result["newest"] = newest
        return result

    async def _pace(self, t_begin: float) -> None:
        rate, conns, window = self.spec.rate, self.conns, self.window
        k = len(conns)
        rr = 0
        while self.sending:
            due = int((time.monotonic() - t_begin) * rate) - self.sent
            if due > 0:
                per, extra = divmod(due, k)
                for j in range(k):
                    c = conns[(rr + j) % k]
                    n = per + (1 if j < extra else 0)
                    n = min(n, window - c.outstanding)
                    if n > 0:
                        c.send(n)
                rr = (rr + extra) % k
            await asyncio.sleep(0.001)


def _probe(spec: LoadSpec, counters: Any, slot: int) -> dict[str, Any]:
    """Propagation probes: IAMAT at ports[0]; with probe_poll, WHATSAT at ports[1] until known.

    Blocking sockets on purpose: this process does nothing else, and a blocking recv
    wakes with the least delay.
    """
    a = socket.create_connection((HOST, spec.ports[0]))
    a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    h = None
    if spec.probe_poll:
        h = socket.create_connection((HOST, spec.ports[1]))
        h.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = {a: b"", h: b""}

    def read_until(s: socket.socket, marker: bytes) -> bytes:
        data = buf[s]
        while marker not in data:
            chunk = s.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed")
            data += chunk
        out, _, buf[s] = data.partition(marker)
        return out

    time.sleep(max(0.0, spec.start_at - time.monotonic()))
    deadline = spec.start_at + spec.duration
    records = []
    next_at = time.monotonic()
    for n in range(spec.probes):
        if time.monotonic() > deadline:
            break
        cid = f"{spec.tag}.{n}"
        tfield = f"{time.time():.9f}"
        line = f"IAMAT {cid} {COORDS[n % 16]} {tfield}\n".encode()
        t_send = time.time()
        a.sendall(line)
        reply = read_until(a, b"\n")
        t_reply = time.time()
        rec: dict[str, Any] = {
            "id": cid,
            "time": tfield,
            "t_send": t_send,
            "t_reply": t_reply,
            "ok": reply.startswith(b"AT "),
        }
        if h is not None:
            polls, last_miss_send, found, rtt = 0, None, None, None
            ask = f"WHATSAT {cid} 0.1 1\n".encode()
            while time.time() - t_reply < spec.poll_timeout:
                p0 = time.time()
                h.sendall(ask)
                first = read_until(h, b"\n")
                polls += 1
                if first.startswith(b"AT "):
                    read_until(h, b"\n\n")
                    found = time.time()
                    rtt = found - p0
                    break
                last_miss_send = p0
                if spec.poll_gap:
                    time.sleep(spec.poll_gap)
            rec.update(polls=polls, t_found=found, poll_rtt=rtt, last_miss_send=last_miss_send)
        records.append(rec)
        counters[slot] = n + 1
        next_at += spec.probe_interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    a.close()
    if h is not None:
        h.close()
    return {"probes": records}


def _worker_main(pipe: Any, slot: int, counters: Any) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    while True:
        try:
            spec = pipe.recv()
        except EOFError:
            return
        if spec is None:
            return
        try:
            if spec.cpus:
                os.sched_setaffinity(0, set(spec.cpus))
            if spec.mode == "probe":
                result = _probe(spec, counters, slot)
            else:
                result = asyncio.run(_Worker(spec, counters, slot).run())
        except Exception:
            result = {"error": traceback.format_exc()}
        pipe.send(result)


class ClientPool:
    """Client processes, started once and reused for every run of a script."""

    def __init__(self, nprocs: int) -> None:
        ctx = mp.get_context("spawn")
        self.counters = ctx.Array("q", nprocs, lock=False)
        self.pipes = []
        self.procs = []
        for i in range(nprocs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, i, self.counters), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def size(self) -> int:
        return len(self.procs)

    def run(
        self,
        specs: Sequence[LoadSpec],
        *,
        timeout: float,
        on_tick: Callable[[int], None] | None = None,
        meter: Sequence[int] = (),
        window: tuple[float, float] | None = None,
    ) -> tuple[list[dict[str, Any]], dict[int, float | None]]:
        """Run one spec per process (at most `size`); their results, and for each pid in
        `meter` the fraction of a cpu it used during `window` (monotonic start, end)."""
        assert len(specs) <= self.size, "more specs than client processes"
        for i in range(len(specs)):
            self.counters[i] = 0
        for pipe, spec in zip(self.pipes, specs, strict=False):
            pipe.send(spec)
        results: list[dict[str, Any] | None] = [None] * len(specs)
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
            for i, pipe in enumerate(self.pipes[: len(specs)]):
                if results[i] is None and pipe.poll():
                    try:
                        results[i] = pipe.recv()
                    except (EOFError, OSError):
                        results[i] = {"error": f"client process {self.procs[i].pid} died"}
                elif results[i] is None and not self.procs[i].is_alive():
                    results[i] = {"error": f"client process {self.procs[i].pid} died"}
            if on_tick is not None:
                on_tick(sum(self.counters[: len(specs)]))
            if now > deadline:
                self.close(force=True)
                raise TimeoutError(f"client processes did not finish within {timeout:.0f} s")
            time.sleep(0.02)
        errors = [r["error"] for r in results if r and "error" in r]
        if errors:
            raise RuntimeError("a client process failed:\n" + errors[0])
        usage: dict[int, float | None] = {}
        for pid in meter:
            if (
                pid in cpu0
                and pid in cpu1
                and cpu0[pid][1] is not None
                and cpu1[pid][1] is not None
            ):
                dt = cpu1[pid][0] - cpu0[pid][0]
                usage[pid] = (cpu1[pid][1] - cpu0[pid][1]) / dt if dt > 0 else None
            else:
                usage[pid] = None
        return results, usage  # type: ignore[return-value]

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


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal non-negative integers (zeros dropped)."""
    per, extra = divmod(total, parts)
    return [n for n in (per + (1 if i < extra else 0) for i in range(parts)) if n > 0]


# -- WHATSAT checks from the parent ----------------------------------------------------------


async def whatsat_times(
    port: int, ids: Sequence[str], *, window: int = 256, timeout: float = 30.0
) -> dict[str, str | None]:
    """The time field of the AT line each id gets from the server at `port` (None: unknown).

    Pipelined, `window` WHATSATs in flight; bounded by `timeout`.
    """
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 22)
    out: dict[str, str | None] = {}

    async def read_replies(n: int) -> None:
        for _ in range(n):
            first = await reader.readuntil(b"\n")
            if first.startswith(b"AT "):
                f = first.split()
                out[f[3].decode()] = f[5].decode()
                await reader.readuntil(b"\n\n")
            else:
                f = first.split()
                if len(f) >= 3:
                    out[f[2].decode()] = None

    async def go() -> None:
        for i in range(0, len(ids), window):
            chunk = ids[i : i + window]
            writer.write("".join(f"WHATSAT {c} 0.1 1\n" for c in chunk).encode())
            await read_replies(len(chunk))

    try:
        await asyncio.wait_for(go(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return out


async def check_herd(
    ports: dict[str, int], expected: dict[str, str], *, timeout: float = 30.0
) -> dict[str, list[str]]:
    """Per server, the ids whose newest known time differs from `expected` (all servers at once)."""
    ids = list(expected)

    async def one(name: str, port: int) -> tuple[str, list[str]]:
        got = await whatsat_times(port, ids, timeout=timeout)
        return name, [c for c in ids if got.get(c) != expected[c]]

    pairs = await asyncio.gather(*(one(n, p) for n, p in ports.items()))
    return dict(pairs)


def converge(
    ports: dict[str, int],
    expected: dict[str, str],
    *,
    timeout: float,
    interval: float = 0.01,
) -> tuple[float | None, dict[str, list[str]]]:
    """Poll until every server holds `expected`; (monotonic time it did or None, misses)."""
    deadline = time.monotonic() + timeout
    pending = dict(expected)
    while True:
        misses = asyncio.run(
            check_herd(ports, pending, timeout=max(1.0, deadline - time.monotonic()))
        )
        bad = {c for ids in misses.values() for c in ids}
        now = time.monotonic()
        if not bad:
            return now, {}
        pending = {c: expected[c] for c in bad}
        if now > deadline:
            return None, misses
        time.sleep(interval)


def seeded(seed: int | None) -> random.Random:
    return random.Random(seed)


# -- profiling -------------------------------------------------------------------------------


class Profiler:
    """py-spy (if installed) recording one server we started, as collapsed stacks."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 200) -> None:
        self.out = out
        self.proc: subprocess.Popen | None = None
        exe = shutil.which("py-spy")
        if exe is None:
            return
        argv = [
            exe,
            "record",
            "-p",
            str(pid),
            "-d",
            str(max(1, round(seconds))),
            "-r",
            str(rate),
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self, timeout: float = 30.0) -> dict[str, Any] | None:
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return top_frames(self.out) if self.out.exists() else None


def top_frames(raw: Path, n: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares of the busiest frames in a py-spy raw profile."""
    from collections import Counter

    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        k = int(count)
        total += k
        frames = stack.split(";")
        own[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    pct = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "self": [(f, pct(c)) for f, c in own.most_common(n)],
        "inclusive": [(f, pct(c)) for f, c in incl.most_common(2 * n)],
    }
