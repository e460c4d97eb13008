"""A server's HTTP endpoint for operators and programs: `/healthz`, `/status`.

aiohttp is imported only once the server accepts clients, so start-up stays fast.
`snapshot` is a pure read of the node's state; nothing here is on a hot path.
"""

from __future__ import annotations

import math
import os
import time
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

    from zherd.node import Node

try:
    VERSION = version("zherd")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0+unknown"


def health(node: Node) -> tuple[bool, str]:
    """Whether the server answers clients from a loaded store, and why not."""
    if not node.loaded:
        return False, "loading the store"
    if node.stopping:
        return False, "shutting down"
    return True, "ok"


def snapshot(node: Node) -> dict[str, Any]:
    """Everything `/status` tells, as plain JSON types."""
    now = node.loop_time()
    counters = node.counters
    neighbors = {}
    for peer, inbound in node.replicator.inbound.items():
        out = node.replicator.outbound[peer]
        link = counters.links[peer]
        heard = None if inbound.last_heard == -math.inf else round(now - inbound.last_heard, 3)
        neighbors[peer] = {
            "state": "up" if inbound.alive else "down",
            "epoch": f"{inbound.peer_epoch:x}",
            "position": inbound.seq,  # how far its stream is applied here
            "our_stream_sent_to": out.tip,
            # what is left to send: updates that came from this neighbor are never sent
            # back to it, so its tip may stay behind our head with nothing owed
            "lag": max(0, node.locations.head - out.cursor) if out.cursor is not None else None,
            "last_heard_s": heard,
            **link.as_dict(),
        }
    ok, why = health(node)
    disk = node.disk
    return {
        "name": node.name,
        "version": VERSION,
        "pid": os.getpid(),
        "uptime_s": round(time.time() - node.started, 3),
        "healthy": ok,
        "health": why,
        "epoch": f"{node.epoch:x}",
        "head": node.locations.head,
        "clients_known": len(node.locations),
        "restored": node.restored,
        "connections": len(node.gateway.connections),
        "counters": {k: v for k, v in counters.as_dict().items() if k != "links"},
        "neighbors": neighbors,
        "storage": disk.stats() if disk is not None else None,
        "places": {"provider": node.topology.places.provider},
    }


async def start(node: Node, host: str, port: int) -> web.AppRunner:
    """Serve the endpoint; the runner, for `cleanup()` at shutdown."""
    from aiohttp import web

    async def healthz(request: web.Request) -> web.Response:
        ok, why = health(node)
        return web.Response(status=200 if ok else 503, text=why + "\n")

    async def status(request: web.Request) -> web.Response:
        return web.json_response(snapshot(node))

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner
