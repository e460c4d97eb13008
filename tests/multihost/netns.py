"""Hosts made of Linux network namespaces, and a herd whose servers run on them.

Each server gets a namespace (its "host") with its address on `lo`, 10.77.0.N; each
topology link is a veth pair with a /30 of its own; IP forwarding and static routes
along shortest paths let any host reach any other, as on a routed network, so a host
that is no neighbor can still reach a bus port (and be refused). Cutting a link sets
both ends down, which also drops the kernel's routes through it; restoring it puts
them back (the job of a routing daemon). Every address exists only inside these
namespaces: the test process enters one (setns, per thread) to open a socket there,
so no test traffic ever reaches the machine's real network.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from zherd import keys
from zherd.harness import Client, topology_toml
from zherd.launcher import await_ready

CLONE_NEWNET = 0x40000000
PORT, BUS_PORT = 12200, 12201  # every host has its own ports: the same numbers everywhere
_libc = ctypes.CDLL(None, use_errno=True)


def unavailable() -> str | None:
    """Why namespaces cannot be made here; None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's `ip` (apt-get install iproute2)"
    probe = f"zh-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", *(("-n", ns) if ns else ()), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def entered(ns: str) -> Iterator[None]:
    """Run the block (this thread only) inside namespace `ns`; sockets made here stay there."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


@dataclass(frozen=True)
class Link:
    a: str
    b: str
    dev_a: str  # in a's namespace
    dev_b: str
    addr_a: str  # a's end of the link's /30
    addr_b: str


class Network:
    """Namespaces, veths, addresses and routes for a topology; `destroy` removes them all."""

    def __init__(self, servers: Sequence[str], links: Sequence[tuple[str, str]]) -> None:
        token = secrets.token_hex(2)
        self.ns = {name: f"zh{token}-{name}" for name in servers}
        self.address = {name: f"10.77.0.{i + 1}" for i, name in enumerate(servers)}
        self.links: dict[frozenset[str], Link] = {}
        for j, (a, b) in enumerate(links):
            subnet = f"10.77.{j + 1}"
            link = Link(a, b, f"zh{token}{j}a", f"zh{token}{j}b", f"{subnet}.1", f"{subnet}.2")
            self.links[frozenset((a, b))] = link
        self.down: set[frozenset[str]] = set()
        self.made: list[str] = []

    def create(self) -> None:
        for name, ns in self.ns.items():
            ip("netns", "add", ns)
            self.made.append(ns)
            ip("link", "set", "lo", "up", ns=ns)
            ip("addr", "add", f"{self.address[name]}/32", "dev", "lo", ns=ns)
            forward = ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]
            subprocess.run(forward, check=True, capture_output=True, timeout=30)
        for link in self.links.values():
            ip("link", "add", link.dev_a, "type", "veth", "peer", "name", link.dev_b)
            ip("link", "set", link.dev_a, "netns", self.ns[link.a])
            ip("link", "set", link.dev_b, "netns", self.ns[link.b])
            for end, dev, addr in (
                (link.a, link.dev_a, link.addr_a),
                (link.b, link.dev_b, link.addr_b),
            ):
                ip("addr", "add", f"{addr}/30", "dev", dev, ns=self.ns[end])
                ip("link", "set", dev, "up", ns=self.ns[end])
        self.route()

    def route(self) -> None:
        """(Re)install every static route whose first hop is up (`replace`: idempotent)."""
        for name in self.ns:
            for dest, link in self._first_hops(name).items():
                if frozenset((link.a, link.b)) in self.down:
                    continue
                via = link.addr_b if link.a == name else link.addr_a
                dev = link.dev_a if link.a == name else link.dev_b
                ip(
                    "route",
                    "replace",
                    f"{self.address[dest]}/32",
                    "via",
                    via,
                    "dev",
                    dev,
                    "src",
                    self.address[name],
                    ns=self.ns[name],
                )

    def _first_hops(self, source: str) -> dict[str, Link]:
        """Shortest paths over the whole topology: destination -> the link to leave by."""
        hops: dict[str, Link] = {}
        queue = deque([(source, None)])
        seen = {source}
        while queue:
            here, first = queue.popleft()
            for link in self.links.values():
                if here not in (link.a, link.b):
                    continue
                there = link.b if link.a == here else link.a
                if there in seen:
                    continue
                seen.add(there)
                hop = first or link
                hops[there] = hop
                queue.append((there, hop))
        return hops

    def cut(self, a: str, b: str) -> None:
        """`ip link set DEV down` on both ends: no packet crosses, nobody is told."""
        link = self.links[frozenset((a, b))]
        self.down.add(frozenset((a, b)))
        ip("link", "set", link.dev_a, "down", ns=self.ns[link.a])
        ip("link", "set", link.dev_b, "down", ns=self.ns[link.b])

    def restore(self, a: str, b: str) -> None:
        link = self.links[frozenset((a, b))]
        ip("link", "set", link.dev_a, "up", ns=self.ns[link.a])
        ip("link", "set", link.dev_b, "up", ns=self.ns[link.b])
        self.down.discard(frozenset((a, b)))
        self.route()

    def restore_all(self) -> None:
        for pair in list(self.down):
            self.restore(*sorted(pair))

    def neighbors(self, name: str) -> list[str]:
        return sorted(n for pair in self.links for n in pair if name in pair and n != name)

    def destroy(self) -> None:
        """Remove every namespace made (their veths go with them)."""
        for ns in self.made:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                ip("netns", "del", ns)
        self.made.clear()


class Hosts:
    """A herd over a Network: per host a folder with the topology, its own secret key and
    its neighbors' public keys (nothing else), and a `zherd serve` inside its namespace."""

    def __init__(self, root: Path, net: Network, sections: dict | None = None) -> None:
        self.root, self.net = root, net
        ports = {name: (PORT, BUS_PORT) for name in net.ns}
        links = [(link.a, link.b) for link in net.links.values()]
        base = {"logging": {"dir": "logs"}, "storage": {"dir": "var"}, **(sections or {})}
        text = topology_toml(ports, links, base, {n: {"host": a} for n, a in net.address.items()})
        admin = root / "admin" / "keys"  # where an operator made every pair
        keys.ensure(admin, net.ns)
        self.folders: dict[str, Path] = {}
        for name in net.ns:
            folder = root / "hosts" / name
            (folder / "keys").mkdir(parents=True)
            (folder / "topology.toml").write_text(text)
            shutil.copy2(keys.secret_path(admin, name), folder / "keys")
            for holder in [name, *net.neighbors(name)]:
                shutil.copy2(keys.public_path(admin, holder), folder / "keys")
            self.folders[name] = folder
        self.admin_keys = admin
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, *names: str, timeout: float = 30.0) -> None:
        started = {}
        for name in names or tuple(self.net.ns):
            argv = ["ip", "netns", "exec", self.net.ns[name], sys.executable, "-m", "zherd"]
            argv += ["serve", name, "--config", str(self.folders[name] / "topology.toml")]
            started[name] = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.procs.update(started)  # registered first: a failed start is still stopped
        await_ready(started, timeout)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(10)

    def stop(self) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        statuses = {}
        for name, proc in self.procs.items():
            try:
                statuses[name] = proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                statuses[name] = proc.wait()
        self.procs.clear()
        return statuses

    def client(self, name: str, *, on: str | None = None) -> Client:
        """A client on host `on` (default: the server's own) talking to `name`."""
        with entered(self.net.ns[on or name]):
            return Client(PORT, timeout=30, host=self.net.address[name])

    def log(self, name: str) -> str:
        path = self.folders[name] / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""
