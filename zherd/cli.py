"""The `zherd` command."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import socket
import sys
from collections.abc import Sequence

import zmq

from zherd import config, keys
from zherd.bus import INSECURE
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

    make_keys = commands.add_parser(
        "keys", help="make the CURVE key pair of each server that has none (never overwrites)"
    )
    make_keys.add_argument("names", nargs="*", metavar="NAME", help="only these servers")
    make_keys.add_argument("--show", action="store_true", help="print each server's public key")
    make_keys.add_argument(
        "--config", default="topology.toml", help="topology file (default: ./topology.toml)"
    )

    args = parser.parse_args(argv)
    try:
        topology = config.load(args.config)
        if args.command == "keys":
            return _keys(topology, args.names, show=args.show)
        api_key(topology.places)  # a missing key stops us before any server starts
        if args.command == "serve":
            return _serve(topology, args.name, not args.no_storage, announce=False)
        if args.all and args.names:
            parser.error("name the servers to start, or use --all (not both)")
        names = _here(topology) if args.all else args.names
        if not names:
            parser.error("name the servers to start, or use --all (not both)")
        _known(topology, names)
        _secure(topology, names)
        if len(names) == 1:  # this process is the server: its pid is the one to kill
            return _serve(topology, names[0], not args.no_storage, announce=True)
        return supervise(topology, names, not args.no_storage)
    except (config.ConfigError, LaunchError) as e:
        print(f"zherd: {e}", file=sys.stderr)
        return 2


def _known(topology: config.Topology, names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in topology.servers]
    if unknown:
        raise config.ConfigError(f"{topology.path}: no server named {', '.join(unknown)}")


def _here(topology: config.Topology) -> list[str]:
    """`--all`: the servers whose host (or specific bind address) is this machine."""
    here = [s.name for s in topology.servers.values() if _local(s)]
    elsewhere = [n for n in topology.servers if n not in here]
    if not here:
        raise config.ConfigError(
            f"{topology.path}: no server's host is this machine; name the servers to start"
        )
    if elsewhere:
        print(f"zherd: not starting {', '.join(elsewhere)} (hosted elsewhere)", flush=True)
    return here


def _local(server: config.ServerConfig) -> bool:
    """Whether this machine holds the server's address: binding to it works."""
    candidates = [server.host]
    if server.bind != server.host and not _wildcard(server.bind):
        candidates.append(server.bind)
    for host in candidates:
        try:
            infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
        except OSError:
            continue
        for family, kind, proto, _, address in infos:
            with contextlib.suppress(OSError), socket.socket(family, kind, proto) as s:
                s.bind(address)
                return True
    return False


def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _secure(topology: config.Topology, names: Sequence[str]) -> None:
    """Make the missing keys of the servers to start (and of their neighbors that also
    run on this machine), then check every key they need can be read."""
    if not topology.security.curve:
        print(f"zherd: warning: {INSECURE}", file=sys.stderr)
        return
    folder = topology.security.keys_dir
    wanted = list(names)
    for name in names:
        wanted += [
            n for n in topology.neighbors(name) if n not in wanted and _local(topology.servers[n])
        ]
    created = keys.ensure(folder, wanted)
    if created:
        print(
            f"zherd: made CURVE keys for {', '.join(created)} in {folder} "
            f"(public: NAME{keys.PUBLIC_SUFFIX}, copy them to neighbors' hosts; "
            f"secret: NAME{keys.SECRET_SUFFIX}, never)",
            flush=True,
        )
    for name in names:
        keys.for_server(topology, name)


def _keys(topology: config.Topology, names: Sequence[str], *, show: bool) -> int:
    _known(topology, names)
    folder = topology.security.keys_dir
    names = list(names) or list(topology.servers)
    if show:
        width = max(len(n) for n in names)
        for name in names:
            try:
                key = keys.load_public(folder, name).decode()
            except keys.KeyFileError:
                key = f"(none: {keys.public_path(folder, name)})"
            print(f"{name.ljust(width)}  {key}")
        return 0
    created = keys.ensure(folder, names)
    for name in names:
        public, secret = keys.public_path(folder, name), keys.secret_path(folder, name)
        if name in created:
            print(f"{name}: made {public} and {secret} (mode 0600)")
        else:
            print(f"{name}: has its keys already ({public}); never overwritten")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="topology.toml", help="topology file (default: ./topology.toml)"
    )
    parser.add_argument("--no-storage", action="store_true", help="keep locations in memory only")


def _serve(topology: config.Topology, name: str, storage: bool, *, announce: bool) -> int:
    from zherd.node import serve  # heavy imports only for a process that serves

    def ready() -> None:
        server = topology.servers[name]
        if announce:
            print(table([server], {}), flush=True)
        else:
            print(f"{READY} {name} {server.port} {server.bus_port}", flush=True)

    try:
        serve(topology, name, storage=storage, ready=ready)
    except OSError as e:
        raise LaunchError(f"{name}: cannot listen for clients: {e.strerror or e}") from None
    except zmq.ZMQError as e:
        raise LaunchError(f"{name}: cannot bind the bus port: {e}") from None
    return 0
