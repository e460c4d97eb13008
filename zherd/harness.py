"""Real herds on free loopback ports, for the tests and the bench scripts.

Each server is a real `zherd serve` process; the harness writes a topology with
ports the kernel just handed out, waits until every server says it listens,
and stops exactly the processes it started, by pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from zherd import keys
from zherd.config import load
from zherd.launcher import await_ready, spawn, stop
from zherd.paper import PAPER_LINKS, PAPER_SERVERS

# WHATSATs per write; the replies of two windows stay far below a server's max_pending_output.
HOLDINGS_WINDOW = 256


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports free right now on `host` (held open together, so no repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def topology_toml(
    ports: Mapping[str, tuple[int, ...]],
    links: Iterable[tuple[str, str]],
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    servers: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """A topology file: servers with (port, bus_port) and any more keys of theirs in
    `servers` (host, bind), links, and extra tables."""
    out = ["links = [" + ", ".join(f'["{a}", "{b}"]' for a, b in links) + "]", ""]
    for table, values in (sections or {}).items():
        out.append(f"[{table}]")
        out += [f"{key} = {_toml(value)}" for key, value in values.items()]
        out.append("")
    for name, (port, bus_port, *status) in ports.items():
        out += [f"[servers.{name}]", f"port = {port}", f"bus_port = {bus_port}"]
        out += [f"status_port = {status[0]}"] if status else []
        out += [f"{key} = {_toml(value)}" for key, value in (servers or {}).get(name, {}).items()]
        out.append("")
    return "\n".join(out)


def make_keys(config: Path) -> None:
    """The CURVE key pair of every server of a topology that has none (as `zherd keys`)."""
    topology = load(config)
    if topology.security.curve:
        keys.ensure(topology.security.keys_dir, topology.servers)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def accepts(port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connect to 127.0.0.1:`port` succeeds now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll until `condition()` is truthy; its value, or AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


def records_received(log: str, peer: str) -> int:
    """Records carried by every message from `peer` in (a slice of) a server log: live
    records are a line each, a catch-up message says its count. Where the status
    endpoint cannot be reached (another network namespace), what a catch-up cost,
    counted from outside."""
    live = f"| bus <- {peer}:   AT "
    bulk = re.compile(rf"\| bus <- {re.escape(peer)}: updates .*: catch-up, (\d+) records$")
    count = 0
    for line in log.splitlines():
        if live in line:
            count += 1
        elif (m := bulk.search(line)) is not None:
            count += int(m[1])
    return count


class Client:
    """A plain blocking text client, as a phone or `nc` would be."""

    def __init__(self, port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}; got {self.buf!r}")
            self.buf += chunk
        out, _, self.buf = self.buf.partition(marker)
        return out + marker

    def line(self) -> str:
        return self.read_until(b"\n").decode()

    def ask(self, line: str) -> str:
        """One command, one reply (a WHATSAT reply runs to its blank line)."""
        self.send(line + "\n")
        first = self.line()
        if line.split()[:1] == ["WHATSAT"] and first.startswith("AT "):
            return first + self.read_until(b"\n\n").decode()
        return first

    def read_all(self) -> bytes:
        """Everything until the server closes (after we half-close, say)."""
        while chunk := self.sock.recv(1 << 16):
            self.buf += chunk
        out, self.buf = self.buf, b""
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def held_at(port: int, ids: Sequence[str], timeout: float = 30.0) -> dict[str, str | None]:
    """What the server at `port` holds for each id: the AT line WHATSAT returns, or None.

    One connection; WHATSATs pipelined a window ahead of the replies being read, so a
    server answers thousands a second. Any reply but the two a WHATSAT may get raises.
    """
    out: dict[str, str | None] = {}
    windows = [ids[i : i + HOLDINGS_WINDOW] for i in range(0, len(ids), HOLDINGS_WINDOW)]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        replies = _Replies(sock)
        for w in windows[:2]:
            sock.sendall(_whatsats(w))
        for i, window in enumerate(windows):
            for cid in window:
                out[cid] = replies.holding(cid)
            if i + 2 < len(windows):
                sock.sendall(_whatsats(windows[i + 2]))
    return out


def _whatsats(ids: Sequence[str]) -> bytes:
    return "".join(f"WHATSAT {cid} 0.1 1\n" for cid in ids).encode()


class _Replies:
    """WHATSAT replies read from a socket in large pieces, parsed in place (no re-copying)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf, self.pos = sock, b"", 0

    def _find(self, marker: bytes, start: int) -> int:
        while (at := self.buf.find(marker, start)) < 0:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("server closed while answering WHATSATs")
            self.buf = self.buf[self.pos :] + chunk
            start -= self.pos
            self.pos = 0
        return at

    def holding(self, cid: str) -> str | None:
        """The next reply, for `cid`: its AT line, or None for `? WHATSAT ...`."""
        end = self._find(b"\n", self.pos)
        first = self.buf[self.pos : end].decode()
        if first.startswith("AT ") and first.split()[3:4] == [cid]:
            self.pos = self._find(b"\n\n", end) + 2  # the places JSON ends at a blank line
            return first
        if first == f"? WHATSAT {cid} 0.1 1":
            self.pos = end + 1
            return None
        raise ValueError(f"WHATSAT {cid}: unexpected reply {first[:200]!r}")


class Herd:
    """Writes a topology under `root` and runs its servers as child processes."""

    def __init__(
        self,
        root: Path,
        servers: Sequence[str] = PAPER_SERVERS,
        links: Iterable[tuple[str, str]] = PAPER_LINKS,
        sections: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        extra: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Every server on `host` (an IPv6 address works too); `extra` adds keys to
        servers' tables (`bind`, say)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.host = host
        ports = free_ports(3 * len(servers), host)
        self.ports = {n: tuple(ports[3 * i : 3 * i + 3]) for i, n in enumerate(servers)}
        self.links = tuple(links)
        sections = {"logging": {"dir": "logs"}, "storage": {"dir": "var"}, **(sections or {})}
        per_server = {n: {"host": host, **(extra or {}).get(n, {})} for n in servers}
        self.config = self.root / "topology.toml"
        self.config.write_text(topology_toml(self.ports, self.links, sections, per_server))
        make_keys(self.config)
        self.env = {**os.environ, **(env or {})}
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def port(self, name: str) -> int:
        return self.ports[name][0]

    def status(self, name: str, timeout: float = 5.0) -> dict[str, Any]:
        """The server's `/status` document (what it holds, its links, its counters)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"http://{host}:{self.ports[name][2]}/status"
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return json.load(reply)

    def link(self, name: str, peer: str) -> dict[str, Any]:
        """One neighbor's entry in a server's status."""
        return self.status(name)["neighbors"][peer]

    def client(self, name: str) -> Client:
        return Client(self.port(name), host=self.host)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def holdings(
        self, ids: Iterable[str], servers: Iterable[str] | None = None, timeout: float = 30.0
    ) -> dict[str, dict[str, str | None]]:
        """Server -> id -> the AT line that server holds for the id (None: never heard of it).

        Every server (default: all of the topology) is asked at once, over one connection
        each, with pipelined `WHATSAT <id> 0.1 1` (see `held_at`): each known id costs a
        places query (a paid request with a Google provider).
        """
        ids, names = list(ids), list(self.ports if servers is None else servers)
        if len(names) == 1:
            return {names[0]: held_at(self.port(names[0]), ids, timeout)}
        with ThreadPoolExecutor(len(names) or 1) as pool:
            views = pool.map(lambda name: held_at(self.port(name), ids, timeout), names)
            return dict(zip(names, views, strict=True))

    def start(self, *names: str, storage: bool = True, timeout: float = 30.0) -> None:
        """Start servers (all if none named) and wait until each accepts clients."""
        started = {
            name: spawn(self.config, name, storage=storage, env=self.env, cwd=self.root)
            for name in names or tuple(self.ports)
        }
        self.procs.update(started)
        await_ready(started, timeout)
        for name in started:  # and its status endpoint answers (it comes up just after)
            wait_until(lambda n=name: self._answers(n), timeout, what=f"{name}'s /status")

    def _answers(self, name: str) -> bool:
        try:
            self.status(name, timeout=1.0)
        except OSError:
            return False
        return True

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        """Signal one server we started and wait for it to exit; its exit status."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """SIGTERM every server still running (SIGKILL after `timeout`); their statuses."""
        statuses = stop(self.procs, timeout)
        self.procs.clear()
        return statuses

    def __enter__(self) -> Herd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
