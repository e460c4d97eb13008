"""`zherd start`: one OS process per server, so that any one can be killed alone.

The supervisor validates the topology, checks the ports, spawns `zherd serve NAME`
children, waits until each reports that it listens, prints a table, and on
Ctrl-C or SIGTERM stops exactly the children it started, by pid.
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
from pathlib import Path
from subprocess import Popen
from typing import Any

from zherd.config import ServerConfig, Topology, is_ipv6

READY = "zherd-ready"
START_TIMEOUT = 30.0  # seconds for every child to listen
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL


class LaunchError(RuntimeError):
    """A herd that could not start; the message is for the operator."""


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


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def supervise(topology: Topology, names: Sequence[str], storage: bool) -> int:
    """Start the named servers as child processes and wait; the exit status of the herd."""
    servers = [topology.servers[n] for n in names]
    problems = port_problems(servers)
    if problems:
        raise LaunchError("cannot start:\n  " + "\n  ".join(problems))
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children: dict[str, subprocess.Popen[str]] = {}
    try:
        for server in servers:
            children[server.name] = spawn(
                topology.path, server.name, storage=storage, preexec_fn=_die_with_parent
            )
        await_ready(children, stopping=lambda: stopping)
        print(table(servers, {n: p.pid for n, p in children.items()}), flush=True)
        print("Ctrl-C stops the herd.", flush=True)
        running = dict(children)
        while running and not stopping:
            time.sleep(0.2)
            for name, proc in list(running.items()):
                if proc.poll() is not None:  # the rest of the herd carries on without it
                    print(f"{name} (pid {proc.pid}) exited with status {proc.returncode}")
                    del running[name]
    finally:
        stop(children)
    return 0


def spawn(config: Path, name: str, *, storage: bool = True, **popen: Any) -> Popen[str]:
    """A `zherd serve NAME` child, which prints its ready line once it accepts clients."""
    argv = [sys.executable, "-m", "zherd", "serve", name, "--config", str(Path(config).resolve())]
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
                raise LaunchError(f"{name} exited with status {proc.returncode} while starting")


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
