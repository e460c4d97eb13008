"""The `zherd` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import zmq

from zherd import config
from zherd.launcher import READY, LaunchError, supervise, table
from zherd.places import api_key


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zherd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start servers of the herd, one process each")
    start.add_argument("names", nargs="*", metavar="NAME", help="servers to start")
    start.add_argument("--all", action="store_true", help="start every server of the topology")
    _common(start)

    serve = commands.add_parser("serve", help="run one server in this process (used by start)")
    serve.add_argument("name", metavar="NAME")
    _common(serve)

    args = parser.parse_args(argv)
    try:
        topology = config.load(args.config)
        api_key(topology.places)  # a missing key stops us before any server starts
        if args.command == "serve":
            return _serve(topology, args.name, not args.no_storage, announce=False)
        names = list(topology.servers) if args.all else args.names
        if not names or (args.all and args.names):
            parser.error("name the servers to start, or use --all (not both)")
        unknown = [n for n in names if n not in topology.servers]
        if unknown:
            raise config.ConfigError(f"{args.config}: no server named {', '.join(unknown)}")
        if len(names) == 1:  # this process is the server: its pid is the one to kill
            return _serve(topology, names[0], not args.no_storage, announce=True)
        return supervise(topology, names, not args.no_storage)
    except (config.ConfigError, LaunchError) as e:
        print(f"zherd: {e}", file=sys.stderr)
        return 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="topology.toml", help="topology file (default: ./topology.toml)"
    )
    parser.add_argument("--no-storage", action="store_true", help="keep locations in memory only")


def _serve(topology: config.Topology, name: str, storage: bool, *, announce: bool) -> int:
    from zherd.disk import StorageError
    from zherd.node import serve  # heavy imports only for a process that serves

    def ready() -> None:
        server = topology.servers[name]
        if announce:
            print(table([server], {}), flush=True)
        else:
            print(f"{READY} {name} {server.port} {server.bus_port}", flush=True)

    try:
        serve(topology, name, storage=storage, ready=ready)
    except StorageError as e:
        raise LaunchError(f"{name}: {e}") from None
    except OSError as e:
        raise LaunchError(f"{name}: cannot listen for clients: {e.strerror or e}") from None
    except zmq.ZMQError as e:
        raise LaunchError(f"{name}: cannot bind the bus port: {e}") from None
    return 0
