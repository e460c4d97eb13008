"""`zherd status`: the whole herd at a glance, from each server's `/status` and `/healthz`.

Every server is asked at once (one thread each, ~1 s timeout), so a dead or hung
server costs the command one timeout, not one per server. What the answers mean
(a server's state, a link's state) is decided by pure functions on the documents,
shared with the live herd page (`zherd.dashboard`), so both always agree.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from zherd.config import ServerConfig, Topology

TIMEOUT = 1.0  # seconds a server has to answer before it is shown down
UP, STARTING, DOWN, UNKNOWN = "up", "starting", "down", "unknown"
COLOURS = {UP: "green", STARTING: "yellow", DOWN: "red", UNKNOWN: "bright_black"}


@dataclass(frozen=True)
class Probe:
    """What one server said (or why it said nothing)."""

    name: str
    url: str | None  # its status endpoint; None when the topology gives it no status_port
    status: dict[str, Any] | None = None  # the /status document
    healthz: int | None = None  # the /healthz HTTP status
    reason: str = ""  # the /healthz line, or why the server could not be asked

    @property
    def healthy(self) -> bool:
        return self.healthz == 200


def status_url(server: ServerConfig) -> str | None:
    if server.status_port is None:
        return None
    return f"http://{server.host}:{server.status_port}"


# -- asking ---------------------------------------------------------------------------------------


# urllib and threads are imported only to ask servers: `zherd start` imports this module
# (for the live page) and needs its rules alone.


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:  # 503 from /healthz is an answer, not a failure
        return e.code, e.read()


def _why(error: BaseException) -> str:
    import urllib.error

    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, TimeoutError):
        return "no answer"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def probe(server: ServerConfig, timeout: float = TIMEOUT) -> Probe:
    """One server's /healthz and /status; never raises."""
    url = status_url(server)
    if url is None:
        return Probe(server.name, None, reason="no status_port in the topology")
    try:
        code, body = _get(url + "/healthz", timeout)
        reason = body.decode(errors="replace").strip()
        _, doc = _get(url + "/status", timeout)
        return Probe(server.name, url, json.loads(doc), code, reason)
    except (OSError, ValueError) as e:  # URLError, timeouts and resets are OSErrors
        return Probe(server.name, url, reason=_why(e))


def probe_all(topology: Topology, timeout: float = TIMEOUT) -> dict[str, Probe]:
    """Every server's probe, asked in parallel, in topology order."""
    from concurrent.futures import ThreadPoolExecutor

    servers = list(topology.servers.values())
    with ThreadPoolExecutor(max_workers=max(1, len(servers))) as pool:
        probes = list(pool.map(lambda s: probe(s, timeout), servers))
    return {p.name: p for p in probes}


# -- what the answers mean (pure) -----------------------------------------------------------------


def server_state(has_port: bool, doc: Mapping[str, Any] | None) -> str:
    """up (answers clients), starting (answers /status, not yet clients: loading, or
    shutting down), down (no answer), unknown (nothing to ask)."""
    if not has_port:
        return UNKNOWN
    if doc is None:
        return DOWN
    return UP if doc.get("healthy") else STARTING


def link_end(has_port: bool, doc: Mapping[str, Any] | None, peer: str) -> str:
    """How one end sees a link: a server that does not answer has no links up."""
    if not has_port:
        return UNKNOWN
    if doc is None:
        return DOWN
    return doc.get("neighbors", {}).get(peer, {}).get("state", UNKNOWN)


def link_state(ends: tuple[str, str]) -> str:
    """Down if either end says so; up only if every end that can tell says up."""
    if DOWN in ends:
        return DOWN
    told = [e for e in ends if e != UNKNOWN]
    return UP if told and all(e == UP for e in told) else UNKNOWN


def links(topology: Topology, docs: Mapping[str, Mapping[str, Any] | None]) -> list[dict[str, Any]]:
    """Every link of the topology, sorted: its state and each direction's lag (records of
    one server's stream the other has not been sent)."""
    out = []
    for a, b in sorted(tuple(sorted(link)) for link in topology.links):
        has = {n: topology.servers[n].status_port is not None for n in (a, b)}
        ends = (link_end(has[a], docs.get(a), b), link_end(has[b], docs.get(b), a))
        out.append(
            {
                "a": a,
                "b": b,
                "state": link_state(ends),
                "ends": {a: ends[0], b: ends[1]},
                "lag": {f"{a}->{b}": _lag(docs.get(a), b), f"{b}->{a}": _lag(docs.get(b), a)},
            }
        )
    return out


def _lag(doc: Mapping[str, Any] | None, peer: str) -> int | None:
    if doc is None:
        return None
    return doc.get("neighbors", {}).get(peer, {}).get("lag")


def report(topology: Topology, probes: Mapping[str, Probe]) -> dict[str, Any]:
    """The herd as one JSON document (what `--json` prints)."""
    servers = {}
    for name, p in probes.items():
        servers[name] = {
            "state": UP if p.healthy else server_state(p.url is not None, p.status),
            "healthy": p.healthy,
            "reason": p.reason,
            "url": p.url,
            "healthz": p.healthz,
            "status": p.status,
        }
    docs = {name: p.status for name, p in probes.items()}
    return {
        "healthy": all(p.healthy for p in probes.values()),
        "servers": servers,
        "links": links(topology, docs),
    }


def duration(seconds: float | None) -> str:
    """An uptime as an operator reads it: 42s, 5m 03s, 2h 07m, 3d 04h."""
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


# -- the table ------------------------------------------------------------------------------------


def table(doc: Mapping[str, Any]) -> Any:
    """A rich Table of `report`'s document: one row per server, its links in one cell."""
    from rich.table import Table
    from rich.text import Text

    healthy = sum(1 for s in doc["servers"].values() if s["healthy"])
    up_links = sum(1 for link in doc["links"] if link["state"] == UP)
    title = (
        f"zherd herd: {healthy}/{len(doc['servers'])} servers healthy, "
        f"{up_links}/{len(doc['links'])} links up"
    )
    t = Table(title=title, title_justify="left", header_style="bold")
    for column, justify in (
        ("server", "left"),
        ("state", "left"),
        ("pid", "right"),
        ("uptime", "right"),
        ("clients", "right"),
        ("conns", "right"),
        ("IAMAT", "right"),
        ("WHATSAT", "right"),
        ("links (lag: records not yet sent)", "left"),
    ):
        t.add_column(column, justify=justify)  # type: ignore[arg-type]
    by_server: dict[str, list[tuple[str, str, int | None]]] = {n: [] for n in doc["servers"]}
    for link in doc["links"]:
        a, b = link["a"], link["b"]
        by_server[a].append((b, link["state"], link["lag"][f"{a}->{b}"]))
        by_server[b].append((a, link["state"], link["lag"][f"{b}->{a}"]))
    for name, server in doc["servers"].items():
        state = server["state"]
        s = server["status"] or {}
        counters = s.get("counters", {})
        shown = Text(state, style=COLOURS[state])
        if state != UP and server["reason"]:
            shown.append(f" ({server['reason']})", style="dim")
        cell = Text()
        for i, (peer, link_state_, lag) in enumerate(sorted(by_server[name])):
            cell.append("\n" if i else "")
            cell.append("● ", style=COLOURS[link_state_])
            cell.append(f"{peer} {link_state_}")
            if lag is not None:
                cell.append(f"  lag {lag}", style="dim" if lag == 0 else "yellow")
        t.add_row(
            Text(name, style="bold"),
            shown,
            str(s.get("pid", "")),
            duration(s.get("uptime_s")),
            _num(s.get("clients_known")),
            _num(s.get("connections")),
            _num(counters.get("iamat")),
            _num(counters.get("whatsat")),
            cell,
        )
    return t


def _num(value: Any) -> str:
    return "" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def main(topology: Topology, as_json: bool, out: TextIO | None = None) -> int:
    """Print the herd's status; 0 only if every server answers /healthz with 200."""
    out = out or sys.stdout
    doc = report(topology, probe_all(topology))
    if as_json:
        json.dump(doc, out, indent=2)
        out.write("\n")
    else:
        from rich.console import Console

        wide = None if out.isatty() else 160  # piped (grep, a file): no wrapping at 80
        Console(file=out, width=wide).print(table(doc))
    return 0 if doc["healthy"] else 1
