"""zherd: a herd of location servers (the proxy herd of the Twisted Places paper)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import ipaddress
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zmq

from zherd import config, keys, logview
from zherd.bus import INSECURE
from zherd.client import (
    Connection,
    Target,
    TargetError,
    check_client_id,
    iamat_line,
    interactive,
    needs_topology,
    one_shot,
    resolve,
    whatsat_line,
)
from zherd.launcher import (
    READY,
    LaunchError,
    check_ports,
    prepare_places,
    supervise,
    table,
    where,
)
from zherd.paper import DEFAULT_TOPOLOGY
from zherd.places import api_key

DEFAULT_CONFIG = "topology.toml"
EPILOG = """\
examples:
  zherd init                        write the paper's five-server topology to ./topology.toml
  zherd start --all                 run every server of it (Ctrl-C stops the herd)
  zherd iamat kiwi 34.068930 -118.445127
  zherd whatsat kiwi 10 3 --server Hamilton
  zherd client Parker               an interactive line client (`help` lists commands)
  zherd logs --client kiwi --since 10m
"""


class UsageError(Exception):
    """Arguments that cannot be acted on; the message is for the operator."""


def default_topology_text() -> str:
    """The paper's herd, for `zherd init`: the packaged copy."""
    return DEFAULT_TOPOLOGY.read_text()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (config.ConfigError, LaunchError, TargetError, UsageError) as e:
        print(f"zherd: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `zherd logs | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="zherd",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"zherd {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="PATH",
        help=f"topology file (default: ./{DEFAULT_CONFIG})",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], **kw: str) -> Any:
        sub = commands.add_parser(name, parents=[common], **kw)
        sub.set_defaults(run=run)
        return sub

    start = command("start", _start, help="start servers of the herd, one process each")
    start.add_argument("names", nargs="*", metavar="NAME", help="servers to start")
    start.add_argument("--all", action="store_true", help="start every server of the topology")
    start.add_argument("--no-storage", action="store_true", help="keep locations in memory only")
    start.add_argument(
        "--restart",
        choices=("always", "no"),
        default="always",
        help="restart a server that dies, with backoff (default: always); with one NAME this "
        "process is the server and nothing restarts it",
    )

    init = command("init", _init, help="write the default topology (never overwrites)")
    init.add_argument(
        "path", nargs="?", metavar="PATH", help="file or folder (default: the --config path)"
    )

    client = command("client", _client, help="an interactive line client for one server")
    client.add_argument(
        "target", nargs="?", metavar="NAME|HOST:PORT", help="default: the topology's first server"
    )

    iamat = command("iamat", _iamat, help="report a client's location (time: now); print the AT")
    iamat.add_argument("client_id", type=_client_id, metavar="CLIENT")
    iamat.add_argument("lat", type=_degrees(90), metavar="LAT", help="degrees north, e.g. 34.06893")
    iamat.add_argument("lon", type=_degrees(180), metavar="LON", help="degrees east, e.g. -118.44")
    _server_option(iamat)

    whatsat = command("whatsat", _whatsat, help="a client's last location and places near it")
    whatsat.add_argument("client_id", type=_client_id, metavar="CLIENT")
    whatsat.add_argument("radius", type=float, metavar="RADIUS", help="km, in (0, 50]")
    whatsat.add_argument("count", type=int, metavar="COUNT", help="places, 1 to 20")
    _server_option(whatsat)

    logs = command("logs", _logs, help="the herd's logs, merged in time order")
    logs.add_argument("names", nargs="*", metavar="NAME", help="only these servers")
    logs.add_argument("--client", metavar="ID", help="only lines naming this client id")
    logs.add_argument("--since", metavar="TIME", help="ISO time (UTC unless it says), or 10m, 2h")
    logs.add_argument("--grep", metavar="TEXT", help="only lines containing TEXT")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")

    make_keys = command(
        "keys", _keys, help="make each server's CURVE key pair if it has none (never overwrites)"
    )
    make_keys.add_argument("names", nargs="*", metavar="NAME", help="only these servers")
    make_keys.add_argument("--show", action="store_true", help="print each server's public key")

    status = command("status", _status, help="every server up or down, its clients and links")
    status.add_argument("--json", action="store_true", help="one JSON document instead of a table")

    # What `start` runs in each child. Hidden: a subcommand is listed only if it has a help
    # (before Python 3.13, help=argparse.SUPPRESS still lists it, as "==SUPPRESS==").
    serve = command("serve", _serve_command)
    serve.add_argument("name", metavar="NAME")
    serve.add_argument("--no-storage", action="store_true")
    return top


def _server_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        metavar="NAME|HOST:PORT",
        help="the server to ask (default: the topology's first)",
    )


def _client_id(text: str) -> str:
    try:
        return check_client_id(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _degrees(limit: float) -> Callable[[str], float]:
    def degrees(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not -limit <= value <= limit:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number in [-{limit}, {limit}]")
        return value

    return degrees


def _version() -> str:
    try:
        return importlib.metadata.version("zherd")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def load_topology(path: str) -> config.Topology:
    """The topology, or an error that says how to get one."""
    if not Path(path).exists():
        init = "zherd init" if path == DEFAULT_CONFIG else f"zherd init {path}"
        raise config.ConfigError(
            f"{path}: no such file (the topology names the servers of the herd)\n"
            f"  `{init}` writes the paper's five-server herd there; or give --config PATH"
        )
    return config.load(path)


# -- commands -------------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    path = Path(args.path or args.config)
    if path.is_dir():
        path /= DEFAULT_CONFIG
    text = default_topology_text()
    try:
        with path.open("x") as f:  # never overwrites, even a file made a moment ago
            f.write(text)
    except FileExistsError:
        print(f"zherd: {path} exists; not overwritten", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"zherd: cannot write {path}: {e.strerror or e}", file=sys.stderr)
        return 2
    topology = config.load(path)
    flag = "" if str(path) == DEFAULT_CONFIG else f" --config {path}"
    print(f"wrote {path}: servers {', '.join(topology.servers)}")
    print(f"start them with: zherd start --all{flag}")
    return 0


def _start(args: argparse.Namespace) -> int:
    topology = load_topology(args.config)
    api_key(topology.places)  # a missing key stops us before any server starts
    if args.all == bool(args.names):
        raise UsageError("name the servers to start, or use --all (not both)")
    names = _here(topology) if args.all else args.names
    _known(topology, names)
    _secure(topology, names)
    storage = not args.no_storage
    check_ports([topology.servers[n] for n in names])
    print(where(topology, storage), flush=True)
    prepare_places(topology.places)
    if len(names) == 1:  # this process is the server: its pid is the one to kill
        return _serve(topology, names[0], storage, announce=True)
    return supervise(topology, names, storage, restart=args.restart == "always")


def _status(args: argparse.Namespace) -> int:
    from zherd import herdstatus

    return herdstatus.main(load_topology(args.config), args.json)


def _serve_command(args: argparse.Namespace) -> int:
    topology = config.load(args.config)
    return _serve(topology, args.name, not args.no_storage, announce=False)


def _serve(topology: config.Topology, name: str, storage: bool, *, announce: bool) -> int:
    from setproctitle import setproctitle

    from zherd.disk import StorageError
    from zherd.node import serve  # heavy imports only for a process that serves

    if name not in topology.servers:
        raise config.ConfigError(f"{topology.path}: no server named {name}")
    setproctitle(f"zherd: {name}")  # what ps and top show: which server this process is

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


def _client(args: argparse.Namespace) -> int:
    target = _target(args.config, args.target)
    conn = Connection(target.host, target.port, timeout=60.0, name=target.name)
    if sys.stdin.isatty():
        print(f"connected to {conn.label}; `help` lists commands, Ctrl-D quits")
    with conn:
        return interactive(conn, prompt=f"{target.name or conn.address}> ")


def _target(config_path: str, target: str | None) -> Target:
    """A server of the topology by name (the first by default), or an address without one."""
    needed = needs_topology(target)
    topology = load_topology(config_path) if needed or Path(config_path).exists() else None
    return resolve(target, topology.servers if topology else None)


def _ask(args: argparse.Namespace, command: str) -> int:
    return one_shot(_target(args.config, args.server), command)


def _iamat(args: argparse.Namespace) -> int:
    return _ask(args, iamat_line(args.client_id, args.lat, args.lon, time.time_ns()))


def _whatsat(args: argparse.Namespace) -> int:
    return _ask(args, whatsat_line(args.client_id, args.radius, args.count))


def _logs(args: argparse.Namespace) -> int:
    topology = load_topology(args.config)
    names = args.names or list(topology.servers)
    unknown = [n for n in names if n not in topology.servers]
    if unknown:
        raise UsageError(f"{args.config}: no server named {', '.join(unknown)}")
    try:
        since = logview.parse_since(args.since, datetime.now(UTC)) if args.since else ""
    except ValueError as e:
        raise UsageError(str(e)) from None
    keep = logview.Filter(since, args.client, args.grep)
    log_dir = topology.logging.dir
    if not args.follow and not any(logview.log_files(log_dir, n) for n in names):
        print(f"zherd: no logs of {', '.join(names)} in {log_dir}", file=sys.stderr)
        return 1
    merged, tails = logview.history(log_dir, names, keep, final=not args.follow)
    try:
        for entry in merged:
            sys.stdout.write(entry.text)
        sys.stdout.flush()
        if args.follow:
            logview.follow(tails, keep, sys.stdout)
    except KeyboardInterrupt:  # how --follow ends
        pass
    finally:
        for tail in tails.values():
            tail.close()
    return 0


# -- where servers run, and their keys ------------------------------------------------------


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


def _keys(args: argparse.Namespace) -> int:
    topology = load_topology(args.config)
    names, show = args.names, args.show
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
