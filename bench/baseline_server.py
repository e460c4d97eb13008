"""The ceiling for the gateway bench: the simplest asyncio line server there is.

    python -m bench.baseline_server PORT [--host 127.0.0.1] [--no-uvloop]

uvloop (when installed), `asyncio.Protocol`, and every complete line of one
`data_received` answered with the same fixed AT-sized line, all in one write.
No parsing, no state: whatever zherd does per IAMAT beyond this is its own cost.
Prints `ready PORT` once it listens; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

REPLY = b"AT Alford +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1400794645.392014450\n"


class LineEcho(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        n = data.count(b"\n")
        if n:
            self.transport.write(REPLY * n)


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(LineEcho, host, port, reuse_address=True, backlog=4096)
    print(f"ready {port}", flush=True)
    await stop.wait()
    server.close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    args = parser.parse_args()
    if not args.no_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    asyncio.run(main(args.host, args.port))


if __name__ == "__main__":
    cli()
