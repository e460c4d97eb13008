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
from collections.abc import Sequence
from pathlib import Path

from zherd.config import ServerConfig, Topology

READY = "zherd-ready"
START_TIMEOUT = 30.0  # seconds for every child to listen
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL


class LaunchError(RuntimeError):
    """A herd that could not start; the message is for the operator."""


def port_problems(servers: Sequence[ServerConfig]) -> list[str]:
    """Ports that are already taken, checked before anything is spawned."""
    problems = []
    for server in servers:
        for key, port in (("port", server.port), ("bus_port", server.bus_port)):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((server.host, port))
                except OSError as e:
                    why = "in use" if e.errno == errno.EADDRINUSE else e.strerror
                    problems.append(f"{server.name}: {key} {server.host}:{port} is {why}")
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
            argv = [sys.executable, "-m", "zherd", "serve", server.name]
            argv += ["--config", str(Path(topology.path).resolve())]
            argv += [] if storage else ["--no-storage"]
            children[server.name] = subprocess.Popen(
                argv, stdout=subprocess.PIPE, text=True, preexec_fn=_die_with_parent
            )
        _await_ready(children, lambda: stopping)
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
        _stop(children)
    return 0


def _await_ready(children: dict[str, subprocess.Popen[str]], stopping: object) -> None:
    waiting = {p.stdout.fileno(): (n, p) for n, p in children.items() if p.stdout}
    deadline = time.monotonic() + START_TIMEOUT
    while waiting:
        if stopping() or time.monotonic() > deadline:  # type: ignore[operator]
            raise LaunchError("stopped before every server was up")
        readable, _, _ = select.select(list(waiting), [], [], 0.2)
        for fd in readable:
            name, proc = waiting[fd]
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.startswith(READY):
                del waiting[fd]
            elif not line:
                proc.wait()
                raise LaunchError(f"{name} exited with status {proc.returncode} while starting")


def _stop(children: dict[str, subprocess.Popen[str]]) -> None:
    """SIGTERM every child we started, then SIGKILL what is still there after a grace period."""
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for proc in children.values():
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
