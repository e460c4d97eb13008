"""A line client for the herd: `zherd client`, `zherd iamat`, `zherd whatsat`.

Formatting and reply framing are pure functions; `Connection` is the thin blocking
socket around them. A WHATSAT reply runs to its blank line, anything else is one line,
so the client knows when a reply is complete without a timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple, TextIO

from zherd.config import ServerConfig

HISTORY_FILE = "~/.zherd_history"
HISTORY_LENGTH = 1000
HELP = """\
IAMAT <client-id> <lat+lon> <posix-time>   report where a client is, e.g.
    IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1400794645.392014450
WHATSAT <client-id> <radius-km> <count>    its last location and up to <count> places
    within <radius-km> (0 < radius <= 50, 1 <= count <= 20), e.g. WHATSAT kiwi.cs.ucla.edu 10 5
iamat <client-id> <lat> <lon>              IAMAT with the coordinates formatted and time = now
help, quit"""


class TargetError(ValueError):
    """A server that cannot be named or reached; the message is for the operator."""


# -- pure: what to send ---------------------------------------------------------------------------


def format_coords(lat: float, lon: float) -> str:
    """ISO 6709 signed decimal degrees, 6 decimals (~0.1 m): `+34.068930-118.445127`."""
    if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
        raise ValueError(f"latitude must be in [-90, 90] and longitude in [-180, 180]: {lat} {lon}")
    return f"{lat:+.6f}{lon:+.6f}"


def format_time(ns: int) -> str:
    """POSIX time in seconds with 9 decimals, from integer nanoseconds (no float rounding)."""
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    return f"{sign}{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def check_client_id(client_id: str) -> str:
    if not client_id or any(c.isspace() for c in client_id):
        raise ValueError(f"a client id is one word with no whitespace, not {client_id!r}")
    return client_id


def iamat_line(client_id: str, lat: float, lon: float, now_ns: int) -> str:
    return f"IAMAT {check_client_id(client_id)} {format_coords(lat, lon)} {format_time(now_ns)}"


def whatsat_line(client_id: str, radius_km: float, count: int) -> str:
    return f"WHATSAT {check_client_id(client_id)} {radius_km:g} {count}"


def shorthand(line: str, now_ns: int) -> str:
    """What an interactive line means on the wire: `iamat ID LAT LON` is IAMAT, time now."""
    fields = line.split()
    if len(fields) == 4 and fields[0] == "iamat":
        try:
            lat, lon = float(fields[2]), float(fields[3])
        except ValueError:
            return line
        return iamat_line(fields[1], lat, lon, now_ns)
    return line


# -- pure: what comes back ------------------------------------------------------------------------


def reply_end(command: str, buf: bytes) -> int | None:
    """Length of the complete reply to `command` at the start of `buf`, or None if more
    is to come. A WHATSAT answered with an AT line runs to its blank line."""
    first = buf.find(b"\n")
    if first < 0:
        return None
    if command.split()[:1] == ["WHATSAT"] and buf.startswith(b"AT "):
        end = buf.find(b"\n\n", first)
        return None if end < 0 else end + 2
    return first + 1


def is_refusal(reply: str) -> bool:
    """The server did not understand the command (or knows no such client)."""
    return reply.startswith("?")


def render(reply: str, pretty: bool) -> str:
    """A reply for the console: the JSON of a WHATSAT re-indented (and non-ASCII shown as
    such) when `pretty`, else exactly as received."""
    if not pretty or not reply.startswith("AT "):
        return reply
    at_line, _, body = reply.partition("\n")
    if not body.strip():
        return reply
    try:
        doc = json.loads(body)
    except ValueError:
        return reply
    return f"{at_line}\n{json.dumps(doc, indent=2, ensure_ascii=False)}\n\n"


def parse_address(text: str) -> tuple[str, int] | None:
    """`HOST:PORT`, `[v6]:PORT` or a bare `PORT` (on 127.0.0.1); None if it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


class Target(NamedTuple):
    name: str  # the server's name in the topology; "" for a bare address
    host: str
    port: int


def resolve(target: str | None, servers: Mapping[str, ServerConfig] | None) -> Target:
    """Where to connect: a server of the topology by name (the first if none), or an address."""
    if target is None:
        if not servers:
            raise TargetError("no server to talk to: name one (NAME or HOST:PORT)")
        target = next(iter(servers))
    if servers and target in servers:
        return Target(target, servers[target].host, servers[target].port)
    address = parse_address(target)
    if address is None:
        known = f" (the topology has {', '.join(servers)})" if servers else ""
        raise TargetError(f"{target!r} is neither a server of the topology nor HOST:PORT{known}")
    return Target("", *address)


def needs_topology(target: str | None) -> bool:
    """A server name (or none: the first) needs the topology; an address does not."""
    return target is None or parse_address(target) is None


# -- IO -------------------------------------------------------------------------------------------


class Connection:
    """One TCP connection to a server, reconnected once if the server dropped it (idle)."""

    def __init__(self, host: str, port: int, timeout: float = 30.0, name: str = "") -> None:
        self.host, self.port, self.timeout, self.name = host, port, timeout, name
        self.sock: socket.socket | None = None
        self.buf = b""

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.address})" if self.name else self.address

    def connect(self) -> None:
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            if isinstance(e, ConnectionRefusedError):
                why = "connection refused (is the herd running? `zherd start --all`)"
            else:
                why = str(e.strerror or e)
            raise TargetError(f"cannot connect to {self.label}: {why}") from None
        self.buf = b""

    def ask(self, command: str) -> str:
        """Send one command; its whole reply. Retried once on a connection the server closed
        before answering (idle timeout, restart)."""
        for attempt in (1, 2):
            if self.sock is None:
                self.connect()
            try:
                return self._exchange(command)
            except (ConnectionError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise TargetError(f"{self.label} closed the connection") from None
        raise AssertionError("unreachable")

    def _exchange(self, command: str) -> str:
        assert self.sock is not None
        self.sock.sendall(command.encode() + b"\n")
        while (end := reply_end(command, self.buf)) is None:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                raise TargetError(f"no reply from {self.label} in {self.timeout:g} s") from None
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        reply, self.buf = self.buf[:end], self.buf[end:]
        return reply.decode("utf-8", "backslashreplace")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def one_shot(target: Target, command: str, out: TextIO = sys.stdout) -> int:
    """Send one command and print its reply; 1 if the server answered `?`."""
    with Connection(target.host, target.port, name=target.name) as conn:
        reply = conn.ask(command)
    out.write(render(reply, pretty=out.isatty()))
    out.flush()
    return 1 if is_refusal(reply) else 0


def interactive(
    conn: Connection,
    prompt: str,
    lines: Iterable[str] | None = None,
    out: TextIO = sys.stdout,
    clock: Callable[[], int] | None = None,
) -> int:
    """Read commands (with line editing and history on a terminal) and print each reply.

    Piped input is sent line by line, each reply printed as received; the status is 1 if
    any reply was `?`, like a script would want.
    """
    clock = clock or time.time_ns
    tty = lines is None and sys.stdin.isatty()
    if tty:
        _history_on()
    refused = False
    source = _prompted(prompt) if tty else (lines if lines is not None else sys.stdin)
    conn.connect()  # a wrong address is said before the first command, not after it
    for raw in source:
        line = raw.strip()
        if not line:
            continue
        if line in ("quit", "exit"):
            break
        if line == "help":
            out.write(HELP + "\n")
            continue
        try:
            command = shorthand(line, clock())
        except ValueError as e:
            out.write(f"(not sent: {e})\n")
            continue
        try:
            reply = conn.ask(command)
        except TargetError as e:
            if not tty:
                raise
            out.write(f"({e}; the next command tries again)\n")
            continue
        refused |= is_refusal(reply)
        out.write(render(reply, pretty=out.isatty()))
        out.flush()
    return 1 if refused and not tty else 0


def _prompted(prompt: str) -> Iterable[str]:
    while True:
        try:
            yield input(prompt)
        except EOFError:
            print()
            return


def _history_on() -> None:
    """Readline editing, with history kept across sessions (ZHERD_HISTFILE overrides)."""
    try:
        import readline
    except ImportError:  # no readline on this platform: plain input() still works
        return
    path = Path(os.environ.get("ZHERD_HISTFILE") or HISTORY_FILE).expanduser()
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LENGTH)

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)

    atexit.register(save)
