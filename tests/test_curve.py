"""The bus trusts keys, not names: real herds, real CURVE keys, real sockets.

Each attack is a raw ZeroMQ DEALER the test drives against a running server's bus
port. "Delivers nothing" is checked after a barrier: the server's log says it refused
the connection (or dropped the message), and a real neighbor's update sent afterwards
arrives, so the forged one would have been applied by then if it ever could.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.auth
from conftest import MakeHerd
from console import Console
from relay import Relay

from zherd import keys
from zherd.config import ConfigError, parse
from zherd.harness import Herd, free_ports, topology_toml, wait_until
from zherd.zap import DOMAIN, Rejections, Verdict, decide

SETTLE = 20.0  # seconds a condition may take on a busy 2-core machine
FORGED = ("victim", "+48.858370+002.294481", "1900000000.0", "B", "+0.000000001")
CHAIN = ("A", "B", "C")
CHAIN_LINKS = (("A", "B"), ("B", "C"))


# --- helpers --------------------------------------------------------------------------------


def updates(*records: tuple[object, ...], epoch: int = 0x5EED, last: int = 1) -> bytes:
    """A wire Updates message (zherd.wire), built by hand as an attacker would."""
    return msgpack.packb((2, epoch, 0, last, records))


def at_line(herd: Herd, name: str, client_id: str) -> str | None:
    with herd.client(name) as c:
        reply = c.ask(f"WHATSAT {client_id} 1 1")
    return reply.split("\n", 1)[0] if reply.startswith("AT ") else None


def iamat(herd: Herd, name: str, client_id: str) -> str:
    with herd.client(name) as c:
        reply = c.ask(f"IAMAT {client_id} +34.068930-118.445127 {time.time():.9f}")
    assert reply.startswith("AT "), reply
    return reply.rstrip("\n")


def flows(herd: Herd, source: str, target: str, timeout: float = SETTLE) -> None:
    """A new client heard at `source` reaches `target` (the herd floods)."""
    client_id = f"flow-{uuid.uuid4().hex[:8]}"
    line = iamat(herd, source, client_id)
    wait_until(
        lambda: at_line(herd, target, client_id) == line,
        timeout,
        interval=0.05,
        what=f"{source}'s update at {target}",
    )


def logged(herd: Herd, name: str, pattern: str, since: int = 0) -> int:
    return len(re.findall(pattern, herd.log(name)[since:]))


def wait_logged(herd: Herd, name: str, pattern: str, since: int = 0) -> None:
    wait_until(
        lambda: logged(herd, name, pattern, since), SETTLE, what=f"{name} to log {pattern!r}"
    )


def bus(herd: Herd, name: str) -> str:
    return f"tcp://{herd.host}:{herd.ports[name][1]}"


@contextlib.contextmanager
def dealer(
    endpoint: str,
    *,
    pair: tuple[bytes, bytes] | None = None,
    server_key: bytes | None = None,
    routing_id: bytes | None = None,
) -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """A raw DEALER (a CURVE client if `pair` is given) and its monitor; closed after."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    if pair is not None:
        sock.curve_publickey, sock.curve_secretkey = pair
        sock.curve_serverkey = server_key
    monitor = sock.get_monitor_socket()
    sock.connect(endpoint)
    try:
        yield sock, monitor
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()


def events(monitor: zmq.Socket, timeout: float = 0.05) -> list[int]:
    """Monitor events that arrived within `timeout` seconds of each other."""
    seen = []
    while monitor.poll(int(timeout * 1000)):
        head, _ = monitor.recv_multipart()
        seen.append(struct.unpack("=H", head[:2])[0])
    return seen


def key_pair(herd: Herd, name: str) -> tuple[bytes, bytes]:
    return keys.load_secret(herd.root / "keys", name)


def public(herd: Herd, name: str) -> bytes:
    return keys.load_public(herd.root / "keys", name)


# --- the attacks ------------------------------------------------------------------------------


def test_a_plain_peer_claiming_a_neighbor_delivers_nothing(herd: MakeHerd) -> None:
    """The issue's attack, exactly: a plain DEALER with routing id B on A's bus port
    sends one Updates holding a forged fix for `victim`. It cannot even connect."""
    h = herd(servers=("A", "B"), links=(("A", "B"),))
    with dealer(bus(h, "A"), routing_id=b"B") as (sock, _):
        sock.send(updates(FORGED))
        # whichever end sees the mechanisms differ first hangs up: either reason is logged
        wait_logged(h, "A", r"bus: refused a connection .*: (not a CURVE client|the handshake)")
    flows(h, "B", "A")  # the barrier: B's real updates do arrive
    assert at_line(h, "A", "victim") is None
    assert at_line(h, "B", "victim") is None


def test_the_key_of_a_server_that_is_no_neighbor_delivers_nothing(herd: MakeHerd) -> None:
    """Hamilton is in the herd, with a valid key, but no neighbor of Alford."""
    h = herd(
        servers=("Alford", "Parker", "Hamilton"),
        links=(("Alford", "Parker"), ("Hamilton", "Parker")),
    )
    forged = ("victim", FORGED[1], FORGED[2], "Hamilton", FORGED[4])
    pair = key_pair(h, "Hamilton")
    with dealer(bus(h, "Alford"), pair=pair, server_key=public(h, "Alford")) as (sock, _):
        sock.send(updates(forged))
        wait_logged(
            h,
            "Alford",
            rf"bus: refused 127\.0\.0\.1 {re.escape(pair[0].decode())}: "
            r"the key of Hamilton, not a neighbor",
        )
    flows(h, "Parker", "Alford")
    assert at_line(h, "Alford", "victim") is None
    assert at_line(h, "Parker", "victim") is None


def test_the_right_server_key_with_an_unknown_client_key_cannot_connect(herd: MakeHerd) -> None:
    h = herd(servers=("A", "B"), links=(("A", "B"),))
    pair = zmq.curve_keypair()
    with dealer(bus(h, "A"), pair=pair, server_key=public(h, "A")) as (sock, monitor):
        sock.send(updates(FORGED))
        wait_logged(
            h, "A", rf"bus: refused 127\.0\.0\.1 {re.escape(pair[0].decode())}: not the key"
        )
        seen = events(monitor, timeout=0.5)
    assert zmq.EVENT_HANDSHAKE_FAILED_AUTH in seen, seen
    assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in seen, seen
    flows(h, "B", "A")
    assert at_line(h, "A", "victim") is None


def test_a_neighbor_claiming_another_neighbors_name_is_dropped(herd: MakeHerd) -> None:
    """Alford's real key (a neighbor of Parker) with routing id Hamilton (another one):
    admitted, as Alford, and every message it sends under Hamilton's name dropped."""
    h = herd(
        servers=("Alford", "Parker", "Hamilton"),
        links=(("Alford", "Parker"), ("Hamilton", "Parker")),
    )
    forged = ("victim", FORGED[1], FORGED[2], "Hamilton", FORGED[4])
    pair = key_pair(h, "Alford")
    endpoint = bus(h, "Parker")
    with dealer(endpoint, pair=pair, server_key=public(h, "Parker"), routing_id=b"Hamilton") as (
        sock,
        _,
    ):
        sock.send(updates(forged))
        wait_logged(h, "Parker", r"bus: dropped a message: neighbor Alford claims to be 'Hamilton'")
    flows(h, "Alford", "Parker")
    flows(h, "Hamilton", "Parker")
    assert at_line(h, "Parker", "victim") is None


def test_a_failed_handshake_and_a_flood_of_them_leave_bounded_log_lines(herd: MakeHerd) -> None:
    """200 plain connections in a row: each counted, at most a burst of lines logged."""
    h = herd(servers=("A", "B"), links=(("A", "B"),))
    started = time.monotonic()
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", h.ports["A"][1]), timeout=5) as s:
            s.sendall(b"\xff" + b"\x00" * 8 + b"\x7f")  # a ZMTP 3 signature,
            s.sendall(b"\x03\x00NULL" + b"\x00" * 16 + b"\x00" + b"\x00" * 31)  # NULL greeting
            with contextlib.suppress(OSError):
                s.recv(64)
    wait_logged(h, "A", r"bus: refused a connection")
    flows(h, "B", "A")
    windows = 1 + int((time.monotonic() - started) / 10)  # the quota: 10 lines a kind a window
    assert h.kill("A", signal.SIGTERM) == 0
    refusals = logged(h, "A", r"bus: refused a connection")
    kinds = len(
        set(re.findall(r"bus: refused a connection \(address not reported\): (.*)", h.log("A")))
    )
    assert 1 <= refusals <= 10 * kinds * windows, (refusals, kinds, windows)
    assert re.search(r"bus: refused in all: \d+ ", h.log("A")), h.log("A")[-2000:]


# --- legitimate traffic -----------------------------------------------------------------------


def test_traffic_flows_catch_up_and_a_restarted_server_is_admitted(herd: MakeHerd) -> None:
    """CURVE on (the default): flooding across the longest path; Parker SIGKILLed while
    Alford hears clients, restarted with the same keys: admitted again, caught up."""
    h = herd()
    assert "[security]" not in h.config.read_text()  # on by default
    flows(h, "Powell", "Hamilton")
    flows(h, "Hamilton", "Powell")
    h.kill("Parker")
    missed = {f"missed-{i}": iamat(h, "Alford", f"missed-{i}") for i in range(20)}
    mark = len(h.log("Parker"))
    h.start("Parker")
    for cid, line in missed.items():
        wait_until(lambda c=cid, ln=line: at_line(h, "Hamilton", c) == ln, SETTLE, what=cid)
    for peer in ("Alford", "Bolden", "Hamilton"):  # each admitted Parker, and Parker them
        wait_logged(h, "Parker", rf"neighbor {peer} up", mark)
    flows(h, "Hamilton", "Alford")
    for name in h.procs:
        assert "bus: refused" not in h.log(name), name
        assert "bus: dropped" not in h.log(name), name


@pytest.mark.parametrize(
    "impostor",
    ["plain routing id A", "A's own keys", "A's own keys claiming routing id A"],
)
def test_a_brief_impostor_does_not_cut_a_link(herd: MakeHerd, impostor: str) -> None:
    """A second connection as A on B's bus port for 0.2 s, saying it is A with a new epoch.
    Before, ROUTER_HANDOVER gave it A's routing id and left A's real connection unread:
    nothing flowed A -> C (via B) for 75 s or more. Now the link carries updates again
    as soon as it leaves."""
    h = herd(servers=CHAIN, links=CHAIN_LINKS)
    flows(h, "A", "C")
    pair = None if impostor.startswith("plain") else key_pair(h, "A")
    rid = b"A" if "routing id" in impostor else None
    server_key = public(h, "B")
    with dealer(bus(h, "B"), pair=pair, server_key=server_key, routing_id=rid) as (sock, mon):
        sock.send(msgpack.packb((3, 0x0DD, 7)))  # a Heartbeat from "another boot" of A
        deadline = time.monotonic() + 0.2
        while (left := deadline - time.monotonic()) > 0:
            events(mon, timeout=left)
    flows(h, "A", "C")
    flows(h, "C", "A")


def test_a_half_open_connection_does_not_hang_the_link(herd: MakeHerd, tmp_path: Path) -> None:
    """A's connection to B runs through a relay that freezes it: bytes vanish, nobody
    resets anything (a host gone without a word). ZeroMQ heartbeats close it and A
    reconnects through the relay; without them A would queue into the void for minutes."""
    relay = Relay()
    h = herd(servers=("A", "B"), links=(("A", "B"),), start=False)
    try:
        ports = dict(h.ports)
        ports["B"] = (ports["B"][0], relay.port)  # A reaches B's bus through the relay
        config_a = h.root / "topology-A.toml"
        sections = {"logging": {"dir": "logs"}, "storage": {"dir": "var"}}
        config_a.write_text(topology_toml(ports, (("A", "B"),), sections))
        relay.start(h.ports["B"][1])
        shared = h.config
        h.config = config_a
        h.start("A")
        h.config = shared
        h.start("B")
        flows(h, "A", "B")
        accepted = relay.accepted
        relay.freeze()  # the current connections go silent; new ones are relayed
        wait_until(lambda: relay.accepted > accepted, SETTLE, what="A to reconnect")
        flows(h, "A", "B")
        assert h.procs["B"].poll() is None
    finally:
        relay.close()


# --- fail closed, IPv6, curve = false -----------------------------------------------------


async def handshake(endpoint: str, pair: tuple[bytes, bytes], server_key: bytes) -> list[int]:
    """The events of a CURVE client's first connection, until it succeeds or fails
    (waiting on the loop, which serves the bus under test)."""
    with dealer(endpoint, pair=pair, server_key=server_key) as (_, monitor):
        seen: list[int] = []
        ends = {zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_DISCONNECTED}
        ends |= {zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL}
        deadline = time.monotonic() + SETTLE
        while not ends & set(seen) and time.monotonic() < deadline:
            seen += events(monitor, timeout=0)
            await asyncio.sleep(0.01)
    return seen


async def test_without_its_zap_handler_a_bus_admits_nobody(tmp_path: Path) -> None:
    """ZAP_ENFORCE_DOMAIN: if the handler is gone, a neighbor with the right keys is
    refused rather than let in unchecked."""
    from zherd.bus import Bus

    for name in ("A", "B"):
        keys.create(tmp_path, name)
    a_pair = keys.load_secret(tmp_path, "A")
    b_pub, b_sec = keys.load_secret(tmp_path, "B")
    port, unused = free_ports(2)
    bus_b = Bus(
        "B",
        f"tcp://127.0.0.1:{port}",
        {"A": f"tcp://127.0.0.1:{unused}"},
        lambda batch, dropped: None,
        keys=keys.BusKeys(b_pub, b_sec, {"A": a_pair[0]}, {}),
    )
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        bus_b.start()
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED in await handshake(endpoint, a_pair, b_pub)
        bus_b.gatekeeper.close()
        seen = await handshake(endpoint, a_pair, b_pub)
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in seen, seen
        assert zmq.EVENT_DISCONNECTED in seen or zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL in seen
    finally:
        bus_b.close()


def test_a_herd_on_ipv6(tmp_path: Path, geonames_index: None) -> None:
    h = Herd(tmp_path, servers=CHAIN, links=CHAIN_LINKS, host="::1")
    try:
        h.start()
        assert 'host = "::1"' in h.config.read_text()
        flows(h, "A", "C")
        flows(h, "C", "A")
    finally:
        assert all(status == 0 for status in h.stop().values())


def test_curve_off_warns_at_every_start_and_still_floods(herd: MakeHerd) -> None:
    h = herd(servers=CHAIN, links=CHAIN_LINKS, sections={"security": {"curve": False}})
    flows(h, "A", "C")
    for name in CHAIN:
        assert "[security] curve = false" in h.log(name), name
    h.kill("B", signal.SIGTERM)
    h.start("B")
    assert h.log("B").count("[security] curve = false") == 2
    flows(h, "C", "A")


def test_curve_off_a_peer_must_still_name_a_neighbor(herd: MakeHerd) -> None:
    """With curve = false a user name is all there is: a non-neighbor's is refused."""
    h = herd(servers=CHAIN, links=CHAIN_LINKS, sections={"security": {"curve": False}})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.plain_username, sock.plain_password = b"C", b"zherd"
    try:
        sock.connect(bus(h, "A"))
        sock.send(updates(FORGED))
        wait_logged(h, "A", r"bus: refused 127\.0\.0\.1 user 'C': user 'C' is not a neighbor")
    finally:
        sock.close(linger=0)
        ctx.term()
    flows(h, "B", "A")
    assert at_line(h, "A", "victim") is None


# --- ZAP decisions and the log quota, pure ------------------------------------------------------


def _request(mechanism: bytes, *credentials: bytes, domain: bytes = DOMAIN) -> list[bytes]:
    return [b"1.0", b"1", domain, b"10.0.0.9", b"", mechanism, *credentials]


def test_zap_decisions() -> None:
    a_pub, _ = zmq.curve_keypair()
    x_pub, _ = zmq.curve_keypair()
    raw_a, raw_x = keys.z85.decode(a_pub), keys.z85.decode(x_pub)
    curve = {"curve_keys": {raw_a: "A"}, "neighbors": frozenset({"A"}), "known": {x_pub: "X"}}
    assert decide(_request(b"CURVE", raw_a), **curve) == Verdict("A")
    assert decide(_request(b"CURVE", raw_x), **curve).kind == "not a neighbor"
    assert decide(_request(b"CURVE", secrets.token_bytes(32)), **curve).kind == "unknown key"
    assert decide(_request(b"PLAIN", b"A", b"zherd"), **curve).kind == "wrong mechanism"
    assert decide(_request(b"NULL"), **curve).kind == "wrong mechanism"
    assert decide(_request(b"CURVE", raw_a, domain=b"x"), **curve).kind == "malformed request"
    assert decide(_request(b"CURVE", b"short"), **curve).kind == "malformed request"
    assert decide([b"1.0"], **curve).kind == "malformed request"
    plain = {"curve_keys": None, "neighbors": frozenset({"A"}), "known": {}}
    assert decide(_request(b"PLAIN", b"A", b"zherd"), **plain) == Verdict("A")
    assert decide(_request(b"PLAIN", b"B", b"zherd"), **plain).kind == "not a neighbor"
    assert decide(_request(b"CURVE", raw_a), **plain).kind == "wrong mechanism"


def test_rejections_are_all_counted_and_logged_within_a_quota() -> None:
    lines: list[str] = []
    now = [0.0]
    reject = Rejections(lines.append, burst=3, window=10.0, clock=lambda: now[0])
    for i in range(1000):
        reject("unknown key", f"line {i}")
    reject("not CURVE", "other kind")
    assert lines == ["line 0", "line 1", "line 2", "other kind"]
    reject.flush()  # the window is still open: nothing yet
    now[0] = 10.0
    reject.flush()
    assert lines[-1] == "bus: 997 more refusals (unknown key) not logged, 1000 in all"
    reject("unknown key", "line again")
    assert lines[-1] == "line again"
    assert reject.counts == {"unknown key": 1001, "not CURVE": 1}


# --- keys on disk and the command line ----------------------------------------------------------


def run_zherd(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zherd", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


ELSEWHERE = "198.51.100.7"  # TEST-NET-2: not this machine; never connected to by a test


def write_config(
    folder: Path, links: tuple[tuple[str, str], ...] = CHAIN_LINKS, **servers: dict
) -> Path:
    names = ("A", "B", "C")
    ports = free_ports(6)
    layout = {n: (ports[2 * i], ports[2 * i + 1]) for i, n in enumerate(names)}
    base = {"logging": {"dir": "logs"}, "storage": {"dir": "var"}}
    path = folder / "topology.toml"
    path.write_text(topology_toml(layout, links, base, servers))
    return path


def test_zherd_keys_makes_pairs_never_overwrites_and_shows(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    made = run_zherd("keys", "--config", str(config), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    folder = tmp_path / "keys"
    for name in CHAIN:
        assert f"{name}: made" in made.stdout
        secret, pub = keys.secret_path(folder, name), keys.public_path(folder, name)
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert stat.S_IMODE(pub.stat().st_mode) & 0o044  # others may read a public key
        assert keys.load_secret(folder, name)[0] == keys.load_public(folder, name)
        # pyzmq reads them as its own
        assert zmq.auth.load_certificate(secret) == keys.load_secret(folder, name)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    again = run_zherd("keys", "--config", str(config), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("never overwritten") == 3, again
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    shown = run_zherd("keys", "--show", "--config", str(config), cwd=tmp_path)
    for name in CHAIN:
        assert re.search(
            rf"^{name}\s+{re.escape(keys.load_public(folder, name).decode())}$", shown.stdout, re.M
        ), shown.stdout


def test_a_public_key_without_its_secret_is_never_replaced(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    folder = tmp_path / "keys"
    keys.create(folder, "B")
    keys.secret_path(folder, "B").unlink()
    kept = keys.public_path(folder, "B").read_bytes()
    out = run_zherd("keys", "--config", str(config), cwd=tmp_path)
    assert out.returncode != 0
    assert out.stderr.startswith(f"zherd: {keys.public_path(folder, 'B')} exists but")
    assert keys.public_path(folder, "B").read_bytes() == kept


def test_zherd_start_makes_missing_keys_and_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    herd = Console(
        [sys.executable, "-m", "zherd", "start", "--all", "--config", str(config)], tmp_path
    )
    try:
        out = herd.read_until(re.escape("Ctrl-C stops the herd.")).string
        assert re.search(r"made CURVE keys for A, B, C in \S+keys", out), out
        assert out.index("made CURVE keys") < out.index("server ")  # before the table
    finally:
        status, _, _ = herd.finish(signal.SIGTERM)
    assert status == 0
    for name in CHAIN:
        assert keys.load_secret(tmp_path / "keys", name)


def copy_public_key(tmp_path: Path, name: str) -> None:
    """`name` runs on another host: its pair is made there, its public key copied here."""
    elsewhere = tmp_path / "elsewhere"
    keys.create(elsewhere, name)
    (tmp_path / "keys").mkdir(exist_ok=True)
    os.link(keys.public_path(elsewhere, name), keys.public_path(tmp_path / "keys", name))


@pytest.mark.parametrize("damage", ["missing", "garbage", "world-readable"])
@pytest.mark.parametrize("how", [["--all"], ["B"]], ids=["all", "one"])
def test_keys_that_cannot_be_read_stop_the_start_naming_the_file(
    tmp_path: Path, damage: str, how: list[str]
) -> None:
    """C runs on another host; B, its neighbor, runs here and needs C's public key (the
    start stops before any server runs, so nothing ever tries to reach C)."""
    config = write_config(tmp_path, C={"host": ELSEWHERE})
    folder = tmp_path / "keys"
    victim = keys.public_path(folder, "C")
    if damage != "missing":
        copy_public_key(tmp_path, "C")
        assert run_zherd("keys", "A", "B", "--config", str(config), cwd=tmp_path).returncode == 0
    if damage == "garbage":
        victim.unlink()
        victim.write_text('curve\n    public-key = "not z85 at all, not 40 chars"\n')
    elif damage == "world-readable":
        victim = keys.secret_path(folder, "B")
        victim.chmod(0o644)
    out = run_zherd("start", *how, "--config", str(config), cwd=tmp_path)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"zherd: {victim}"), out.stderr
    assert "server " not in out.stdout  # no ready table
    assert "Traceback" not in out.stderr


def test_start_all_starts_only_the_servers_hosted_here(tmp_path: Path) -> None:
    """C lives on another host: `--all` here starts A and B and makes only their keys.
    (C is no neighbor of theirs, so no test traffic leaves loopback; tests/multihost runs
    servers that reach each other across hosts.)"""
    config = write_config(tmp_path, links=(("A", "B"),), C={"host": ELSEWHERE})
    herd = Console(
        [sys.executable, "-m", "zherd", "start", "--all", "--config", str(config)], tmp_path
    )
    try:
        out = herd.read_until(re.escape("Ctrl-C stops the herd.")).string
        assert re.search(r"^A\s", out, re.M) and re.search(r"^B\s", out, re.M)
        assert not re.search(r"^C\s", out, re.M), out
        assert "made CURVE keys for A, B " in out
        assert "not starting C (hosted elsewhere)" in out
        assert not keys.secret_path(tmp_path / "keys", "C").exists()
    finally:
        status, _, err = herd.finish(signal.SIGTERM)
    assert status == 0, err


# --- the topology's [security] table, host and bind ---------------------------------------------


def test_security_host_and_bind_in_the_topology(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    raw = {
        "links": [["A", "B"]],
        "security": {"keys_dir": "secrets"},
        "servers": {
            "A": {"port": 1, "bus_port": 2},
            "B": {"host": "[fd00::2]", "bind": "::", "port": 3, "bus_port": 4, "status_port": 5},
        },
    }
    topo = parse(raw, path)
    assert topo.security.curve and topo.security.keys_dir == tmp_path / "secrets"
    a, b = topo.servers["A"], topo.servers["B"]
    assert (a.host, a.bind, a.bus_endpoint, a.status_port) == ("127.0.0.1",) * 2 + (
        "tcp://127.0.0.1:2",
        None,
    )
    assert (b.host, b.bind, b.status_port) == ("fd00::2", "::", 5)
    assert (b.bus_endpoint, b.bus_bind) == ("tcp://[fd00::2]:4", "tcp://[::]:4")
    assert parse({**raw, "security": {"curve": False}}, path).security.curve is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"security": {"curve": "yes"}}, "[security]: curve must be a bool"),
        ({"security": {"keys": "k"}}, "[security]: unknown key 'keys'"),
        ({"security": {"keys_dir": ""}}, "keys_dir must be a non-empty path"),
        ({"servers": {"A": {"port": 1, "bus_port": 2, "bind": 7}}}, "bind must be a non-empty"),
        ({"servers": {"A": {"port": 1, "bus_port": 2, "host": "a:b"}}}, "neither a host name"),
        ({"servers": {"A": {"port": 1, "bus_port": 2, "status_port": 2}}}, "status_port 2 is"),
    ],
)
def test_bad_security_host_or_bind_is_a_clear_error(change: dict, message: str) -> None:
    raw = {"links": [], "servers": {"A": {"port": 1, "bus_port": 2}}, **change}
    with pytest.raises(ConfigError) as info:
        parse(raw, Path("/etc/herd/t.toml"))
    assert str(info.value).startswith("/etc/herd/t.toml") and message in str(info.value)
