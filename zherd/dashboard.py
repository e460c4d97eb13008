"""The live herd page: the topology as a graph, each server and link up or down, its
clients, update rates and lag, pushed to open pages over Server-Sent Events.

    browser --GET /events (SSE)--> dashboard --GET /status, 2x a second--> each server

`zherd start` runs it in a child process (`python -m zherd.dashboard`): the
supervisor stays a select() loop with no event loop, no aiohttp and no thread of
its own. The supervisor binds the page's socket itself and hands it down, so it
knows at once whether the port is free and can print the address straight away.
Alone: `python -m zherd.dashboard --config topology.toml [--port N]`.

While a page is open, one poller asks every server's `/status` at once (1 s
timeout: no answer is down), turns the answers into one view (`view`, pure, on the
rules of `zherd.herdstatus`) and pushes it to every page. The page itself is three
static files (`zherd/static/`): no build step, nothing fetched from elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zherd import herdstatus
from zherd.config import ConfigError, Topology
from zherd.latency import quantile

if TYPE_CHECKING:
    from aiohttp import ClientSession, web

STATIC = Path(__file__).resolve().parent / "static"
INTERVAL = 0.5  # seconds between polls of the herd while a page is open
TIMEOUT = 1.0  # seconds a server has to answer /status
KEEPALIVE = 15.0  # seconds between SSE comments when nothing else is sent
READY = "zherd-dashboard"
BRUTE_FORCE = 7  # up to this many servers, the circle order with fewest crossings is searched

# -- the view (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Poll:
    """The herd's /status documents at one moment (None: the server did not answer)."""

    at: float  # time.time()
    mono: float  # time.monotonic(), for rates
    docs: Mapping[str, Mapping[str, Any] | None]


def rate(
    now: Poll, before: Poll | None, name: str, read: Callable[[Mapping], float]
) -> float | None:
    """Per second between two polls of one server; None across a restart or a gap."""
    if before is None:
        return None
    cur, old = now.docs.get(name), before.docs.get(name)
    dt = now.mono - before.mono
    if cur is None or old is None or dt <= 0 or cur.get("pid") != old.get("pid"):
        return None
    return max(0.0, read(cur) - read(old)) / dt


def recent_quantile(now: Poll, before: Poll | None, name: str, kind: str, q: float) -> float | None:
    """Quantile `q` of a latency (seconds, a bucket's upper bound) over the last interval."""
    if before is None:
        return None
    cur, old = now.docs.get(name), before.docs.get(name)
    if cur is None or old is None or cur.get("pid") != old.get("pid"):
        return None
    try:
        a, b = cur["latency"][kind], old["latency"][kind]
    except KeyError:  # a server from before histograms
        return None
    counts = [x - y for x, y in zip(a["counts"], b["counts"], strict=True)]
    return quantile(a["bounds_s"], counts, q)


def crossings(order: Sequence[str], links: Iterable[tuple[str, str]]) -> int:
    """How many pairs of links cross when the servers sit on a circle in `order`."""
    at = {name: i for i, name in enumerate(order)}
    chords = [tuple(sorted((at[a], at[b]))) for a, b in links]
    count = 0
    for (a, b), (c, d) in itertools.combinations(chords, 2):
        if len({a, b, c, d}) == 4 and (a < c < b) != (a < d < b):
            count += 1
    return count


def circle_order(names: Sequence[str], links: Iterable[tuple[str, str]]) -> list[str]:
    """Where the servers go round the circle: the first stays at the top, and for a small
    herd the rest are ordered so that as few links cross as can be (the paper's herd: none);
    among equals, the order closest to the topology's."""
    names, links = list(names), list(links)
    if len(names) > BRUTE_FORCE or len(names) < 4:
        return names
    best, fewest = names, crossings(names, links)
    for rest in itertools.permutations(names[1:]):
        if fewest == 0:
            break
        order = [names[0], *rest]
        n = crossings(order, links)
        if n < fewest:
            best, fewest = order, n
    return best


def _applied(doc: Mapping) -> float:
    return sum(n.get("applied", 0) for n in doc.get("neighbors", {}).values())


def topology_order(topology: Topology) -> list[str]:
    """`circle_order` of a topology (searched once per dashboard, not per view)."""
    pairs = sorted((min(link), max(link)) for link in topology.links)
    return circle_order(list(topology.servers), pairs)


def view(
    topology: Topology, now: Poll, before: Poll | None, layout: list[str] | None = None
) -> dict[str, Any]:
    """What the page draws, as plain JSON (`layout`: the servers round the circle)."""
    servers = []
    for name, server in topology.servers.items():
        doc = now.docs.get(name)
        has_port = server.status_port is not None
        state = herdstatus.server_state(has_port, doc)
        doc = doc or {}
        if state == herdstatus.DOWN:
            reason = "no answer"
        else:
            reason = doc.get("health", "") if has_port else "no status_port"
        servers.append(
            {
                "name": name,
                "state": state,
                "reason": reason,
                "address": f"{server.host}:{server.port}",
                "pid": doc.get("pid"),
                "uptime_s": doc.get("uptime_s"),
                "clients": doc.get("clients_known"),
                "connections": doc.get("connections"),
                "rates": {
                    "iamat": rate(now, before, name, lambda d: d["counters"]["iamat"]),
                    "whatsat": rate(now, before, name, lambda d: d["counters"]["whatsat"]),
                    "applied": rate(now, before, name, _applied),
                },
                "p99_s": {
                    kind: recent_quantile(now, before, name, kind, 0.99)
                    for kind in ("iamat", "whatsat", "flush")
                },
            }
        )
    links = herdstatus.links(topology, now.docs)
    for link in links:
        a, b = link["a"], link["b"]
        link["rate"] = {
            f"{x}->{y}": rate(now, before, x, lambda d, y=y: _sent(d, y))
            for x, y in ((a, b), (b, a))
        }
    return {
        "at": now.at,
        "interval_s": INTERVAL,
        "layout": layout or list(topology.servers),
        "summary": {
            "servers": len(servers),
            "up": sum(1 for s in servers if s["state"] == herdstatus.UP),
            "links": len(links),
            "links_up": sum(1 for x in links if x["state"] == herdstatus.UP),
        },
        "servers": servers,
        "links": links,
    }


def _sent(doc: Mapping, peer: str) -> float:
    return doc.get("neighbors", {}).get(peer, {}).get("records_out", 0)


# -- polling --------------------------------------------------------------------------------------


class Poller:
    """Polls the herd while anyone watches; every view goes to every subscriber."""

    def __init__(self, topology: Topology, interval: float = INTERVAL) -> None:
        self.topology = topology
        self.interval = interval
        self.latest: dict[str, Any] | None = None
        self.layout = topology_order(topology)
        self._previous: Poll | None = None
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._watched = asyncio.Event()
        self._session: ClientSession | None = None

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=2)
        self._subscribers.add(queue)
        self._watched.set()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(queue)
        if not self._subscribers:
            self._watched.clear()

    async def run(self) -> None:
        while True:
            await self._watched.wait()
            began = time.monotonic()
            try:
                self._publish(await self.poll())
            except Exception as e:  # a document we cannot read must not end the page
                print(f"zherd.dashboard: poll failed: {e!r}", file=sys.stderr, flush=True)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - began)))

    async def poll(self) -> dict[str, Any]:
        """Ask every server now; the new view (also kept as `latest`)."""
        from aiohttp import ClientSession, ClientTimeout

        if self._session is None:
            self._session = ClientSession(timeout=ClientTimeout(total=TIMEOUT))
        servers = list(self.topology.servers.values())
        docs = await asyncio.gather(*(self._status(herdstatus.status_url(s)) for s in servers))
        now = Poll(
            time.time(), time.monotonic(), dict(zip(self.topology.servers, docs, strict=True))
        )
        self.latest = view(self.topology, now, self._previous, self.layout)
        self._previous = now
        return self.latest

    async def _status(self, url: str | None) -> dict[str, Any] | None:
        from aiohttp import ClientError

        if url is None:
            return None
        assert self._session is not None
        try:
            async with self._session.get(url + "/status") as reply:
                return await reply.json() if reply.status == 200 else None
        except (ClientError, OSError, TimeoutError, ValueError):
            return None  # refused, reset, timed out, not JSON: all mean "no answer"

    def _publish(self, latest: dict[str, Any] | None) -> None:
        for queue in self._subscribers:
            if queue.full():  # a slow page skips a view rather than holding up the others
                queue.get_nowait()
            queue.put_nowait(latest)

    async def close(self) -> None:
        self._publish(None)  # every open page's stream ends
        if self._session is not None:
            await self._session.close()


# -- the web app ----------------------------------------------------------------------------------


def app(topology: Topology, poller: Poller) -> web.Application:
    import orjson
    from aiohttp import web

    no_cache = {"Cache-Control": "no-cache"}

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers=no_cache)

    async def herd(request: web.Request) -> web.Response:
        fresh = poller.latest
        if fresh is None or time.time() - fresh["at"] > 2 * poller.interval:
            fresh = await poller.poll()
        return web.json_response(fresh, dumps=lambda v: orjson.dumps(v).decode())

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no", **no_cache}
        )
        await response.prepare(request)
        await response.write(b"retry: 1000\n\n")  # reconnect within 1 s if we restart
        queue = poller.subscribe()
        try:
            if poller.latest is not None:
                await response.write(b"data: " + orjson.dumps(poller.latest) + b"\n\n")
            while True:
                try:
                    latest = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if latest is None:
                    break
                await response.write(b"data: " + orjson.dumps(latest) + b"\n\n")
        except ConnectionResetError:
            pass  # the page went away
        finally:
            poller.unsubscribe(queue)
        return response

    application = web.Application()
    application.router.add_get("/", index)
    application.router.add_get("/herd.json", herd)
    application.router.add_get("/events", events)
    application.router.add_static("/static/", STATIC)
    return application


async def serve(topology: Topology, listen: socket.socket, announce: Callable[[str], None]) -> None:
    """Serve the page on `listen` until SIGTERM or SIGINT."""
    from aiohttp import web

    poller = Poller(topology)
    runner = web.AppRunner(app(topology, poller), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, listen).start()
    host, port = listen.getsockname()[:2]
    announce(url(host, port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    polling = asyncio.create_task(poller.run())
    try:
        await stop.wait()
    finally:
        polling.cancel()
        await poller.close()
        await runner.cleanup()


def url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


# -- the child process of `zherd start` -----------------------------------------------------------


def spawn(
    topology: Topology, say: Callable[[str], None], **popen: Any
) -> subprocess.Popen[bytes] | None:
    """Listen on the topology's `[dashboard]` address and start the page's process on that
    socket; None (after saying why) if it is off or the port cannot be had. The herd
    runs either way: the page is for watching it, not part of it."""
    page = topology.dashboard
    if not page.enabled:
        return None
    try:
        listen = socket.create_server((page.host, page.port), backlog=128)
    except OSError as e:
        say(f"page     none: cannot listen on {page.host}:{page.port}: {e.strerror or e}")
        return None
    with listen:
        host, port = listen.getsockname()[:2]
        fd = listen.fileno()
        argv = [sys.executable, "-m", "zherd.dashboard", "--config", str(topology.path.absolute())]
        proc = subprocess.Popen([*argv, "--fd", str(fd)], pass_fds=(fd,), **popen)
    say(f"page     {url(host, port)}  (the live herd page)")
    return proc


def main(argv: list[str] | None = None) -> int:
    from zherd import config

    parser = argparse.ArgumentParser(
        prog="python -m zherd.dashboard", description="The live herd page, on its own."
    )
    parser.add_argument("--config", default="topology.toml", metavar="PATH")
    parser.add_argument("--host", help="default: the topology's [dashboard] host")
    parser.add_argument("--port", type=int, help="default: the topology's [dashboard] port")
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a socket from `zherd start`
    args = parser.parse_args(argv)
    try:
        topology = config.load(args.config)
    except ConfigError as e:
        print(f"zherd.dashboard: {e}", file=sys.stderr)
        return 2
    if args.fd is not None:
        listen = socket.socket(fileno=args.fd)
    else:
        host = args.host or topology.dashboard.host
        port = topology.dashboard.port if args.port is None else args.port
        try:
            listen = socket.create_server((host, port), backlog=128)
        except OSError as e:
            print(f"zherd.dashboard: cannot listen on {host}:{port}: {e.strerror}", file=sys.stderr)
            return 2

    def announce(address: str) -> None:
        if args.fd is None:  # from `zherd start`, which has said the address already
            print(f"{READY} {address}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(topology, listen, announce))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
