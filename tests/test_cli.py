"""The `zherd` command, run as `python -m zherd ...` in subprocesses on free loopback ports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from console import START, STOP, Console

from zherd.harness import PAPER_LINKS, PAPER_SERVERS, Client, free_ports, topology_toml, wait_until

READY_LINE = "Ctrl-C stops the herd."


def write_topology(
    folder: Path,
    servers=PAPER_SERVERS,
    links=PAPER_LINKS,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    name: str = "topology.toml",
) -> tuple[Path, dict[str, tuple[int, int]]]:
    ports = free_ports(2 * len(servers))
    layout = {n: (ports[2 * i], ports[2 * i + 1]) for i, n in enumerate(servers)}
    base = {"logging": {"dir": "logs"}, "storage": {"dir": "var"}}
    path = folder / name
    path.write_text(topology_toml(layout, links, {**base, **(sections or {})}))
    return path, layout


@pytest.fixture
def zherd(tmp_path: Path, geonames_index: None) -> Iterator[Any]:
    started: list[Console] = []

    def run(*args: str, env: Mapping[str, str] | None = None) -> Console:
        z = Console(
            [sys.executable, "-m", "zherd", *args], tmp_path, env=dict(env) if env else None
        )
        started.append(z)
        return z

    yield run
    for z in started:
        z.kill()


def table_rows(out: str) -> dict[str, tuple[int, str, str]]:
    """The start table: name -> (pid, client address, bus endpoint)."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("server "))
    assert lines[header].split() == ["server", "pid", "clients", "(text)", "neighbors", "(ZeroMQ)"]
    rows = {}
    for line in lines[header + 1 :]:
        if line == READY_LINE or not line.strip():
            break
        name, pid, clients, bus = line.split()
        rows[name] = (int(pid), clients, bus)
    return rows


def answers(port: int, client_id: str) -> str:
    with Client(port, timeout=30) as c:
        reply = c.ask(f"IAMAT {client_id} +34.068930-118.445127 1400794645.392014450")
    assert reply.startswith("AT "), reply
    return reply.rstrip("\n")


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def gone(pid: int) -> bool:
    """No such process any more (a zombie's cmdline is empty, so it counts as gone too)."""
    try:
        return b"zherd" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return True


def knows(port: int, client_id: str) -> str | None:
    with Client(port, timeout=30) as c:
        reply = c.ask(f"WHATSAT {client_id} 1 1")
    return reply.split("\n", 1)[0] if reply.startswith("AT ") else None


# -- zherd start --all / NAMES -------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_start_all_prints_the_table_once_every_server_listens(tmp_path, zherd, sig) -> None:
    config, layout = write_topology(tmp_path)
    z = zherd("start", "--all", "--config", str(config))
    out = z.read_until(re.escape(READY_LINE)).string
    rows = table_rows(out)
    assert set(rows) == set(PAPER_SERVERS)
    for name, (port, bus_port) in layout.items():
        pid, clients, bus = rows[name]
        assert clients == f"127.0.0.1:{port}" and bus == f"tcp://127.0.0.1:{bus_port}"
        assert pid != z.proc.pid and not gone(pid)
    # Listening already when the table is out: no retries here.
    lines = {name: answers(port, f"cli-{name}") for name, (port, _) in layout.items()}
    # ... and the herd floods, across the longest path.
    wait_until(
        lambda: knows(layout["Powell"][0], "cli-Hamilton") == lines["Hamilton"],
        timeout=30,
        what="Hamilton's client at Powell",
    )

    status, _, err = z.finish(sig)
    assert status == 0, err
    assert "Traceback" not in err, err
    for name, (pid, _, _) in rows.items():
        wait_until(lambda pid=pid: gone(pid), timeout=STOP, what=f"{name} (pid {pid}) to exit")
        log = (tmp_path / "logs" / f"{name}.log").read_text()
        assert f"{name} stopped" in log  # a clean shutdown, not a SIGKILL after the grace period
    for port, bus_port in layout.values():
        assert refused(port) and refused(bus_port)


def test_start_names_starts_only_those(tmp_path, zherd) -> None:
    config, layout = write_topology(tmp_path)
    z = zherd("start", "Alford", "Powell", "--config", str(config))
    rows = table_rows(z.read_until(re.escape(READY_LINE)).string)
    assert set(rows) == {"Alford", "Powell"}
    alford = answers(layout["Alford"][0], "names-a")
    wait_until(lambda: knows(layout["Powell"][0], "names-a") == alford, timeout=30)
    for name in ("Bolden", "Hamilton", "Parker"):
        assert refused(layout[name][0]) and refused(layout[name][1]), name
    status, _, err = z.finish(signal.SIGTERM)
    assert status == 0 and "Traceback" not in err, err
    for name, (pid, _, _) in rows.items():
        wait_until(lambda pid=pid: gone(pid), timeout=STOP, what=name)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["Alford.log", "Powell.log"]


def test_a_single_server_accepts_clients_soon_after_exec(tmp_path, zherd) -> None:
    """One name: this process is the server. Polls connect (the bench measures the time)."""
    config, layout = write_topology(tmp_path)
    port = layout["Hamilton"][0]
    z = zherd("start", "Hamilton", "--config", str(config))
    deadline = time.monotonic() + START
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except ConnectionRefusedError:
            assert z.proc.poll() is None, z.finish()
            assert time.monotonic() < deadline, "Hamilton never listened"
            time.sleep(0.005)
    with sock:
        sock.sendall(b"IAMAT solo +1+1 1.5\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            assert chunk, reply
            reply += chunk
    assert reply.startswith(b"AT Hamilton ") and reply.endswith(b" solo +1+1 1.5\n")
    rows = table_rows(z.read_until(re.escape(f"tcp://127.0.0.1:{layout['Hamilton'][1]}")).string)
    assert set(rows) == {"Hamilton"} and rows["Hamilton"][0] == z.proc.pid
    # Its only neighbor (Parker) is not running: shutdown must still be clean.
    status, _, err = z.finish(signal.SIGTERM)
    assert status == 0, err
    assert "Traceback" not in err, err
    assert refused(port)


# -- refusing to start ------------------------------------------------------------------------


def _bad_link(text: str, layout: dict[str, tuple[int, int]]) -> tuple[str, str]:
    return text.replace('["Hamilton", "Parker"]', '["Hamilton", "Nowhere"]'), "'Nowhere'"


def _duplicate_port(text: str, layout: dict[str, tuple[int, int]]) -> tuple[str, str]:
    powell, taken = layout["Powell"][0], layout["Alford"][1]
    return text.replace(f"port = {powell}\n", f"port = {taken}\n"), f"{taken} is already used"


def _unknown_server_key(text: str, layout: dict[str, tuple[int, int]]) -> tuple[str, str]:
    return text + "colour = 1\n", "unknown key 'colour'"


def _unknown_table(text: str, layout: dict[str, tuple[int, int]]) -> tuple[str, str]:
    return text + "\n[gateway]\nport = 1\n", "unknown key 'gateway'"


def _unknown_limit(text: str, layout: dict[str, tuple[int, int]]) -> tuple[str, str]:
    return text.replace("[logging]\n", "[limits]\nmax_lines = 10\n\n[logging]\n"), "'max_lines'"


def _not_toml(text: str, layout: dict[str, tuple[int, int]]) -> tuple[str, str]:
    return text + "[servers.Alford\n", "not valid TOML"


@pytest.mark.parametrize(
    "mutate",
    [_bad_link, _duplicate_port, _unknown_server_key, _unknown_table, _unknown_limit, _not_toml],
)
@pytest.mark.parametrize("how", [["--all"], ["Alford"], ["Alford", "Powell"]])
def test_a_bad_config_exits_non_zero_with_a_clear_message(tmp_path, zherd, mutate, how) -> None:
    config, layout = write_topology(tmp_path)
    text, expected = mutate(config.read_text(), layout)
    assert text != config.read_text()
    config.write_text(text)
    status, _, err = zherd("start", *how, "--config", str(config)).finish()
    assert status != 0
    assert err.startswith(f"zherd: {config}") and expected in err, err
    assert "Traceback" not in err, err
    assert all(refused(port) for port, _ in layout.values())


def test_a_missing_config_file(tmp_path, zherd) -> None:
    missing = tmp_path / "nope.toml"
    status, _, err = zherd("start", "--all", "--config", str(missing)).finish()
    assert status != 0 and err.startswith(f"zherd: {missing}: no such file"), err
    assert f"`zherd init {missing}`" in err, err
    status, _, err = zherd("start", "--all", "--config", "nope.toml").finish()
    assert status != 0 and "nope.toml: no such file" in err, err
    status, _, err = zherd("start", "--all").finish()  # no topology.toml here
    assert status != 0 and "topology.toml: no such file" in err and "`zherd init`" in err, err


def test_unknown_server_name(tmp_path, zherd) -> None:
    config, _ = write_topology(tmp_path)
    status, _, err = zherd("start", "Alford", "Nobody", "--config", str(config)).finish()
    assert status != 0 and "no server named Nobody" in err, err


@pytest.mark.parametrize("which", ["port", "bus_port"])
@pytest.mark.parametrize("how", [["--all"], ["Parker"]], ids=["all", "one"])
def test_a_port_in_use_exits_non_zero_naming_it(tmp_path, zherd, which, how) -> None:
    config, layout = write_topology(tmp_path)
    port = layout["Parker"][0 if which == "port" else 1]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        status, _, err = zherd("start", *how, "--config", str(config)).finish(timeout=START)
    assert status != 0
    assert str(port) in err and "in use" in err.lower(), err
    assert "Traceback" not in err, err
    for name, (p, _) in layout.items():
        if p != port:
            assert refused(p), f"{name} was left running"


@pytest.mark.parametrize("provider", ["google", "google-legacy"])
@pytest.mark.parametrize("how", [["--all"], ["Alford"]], ids=["all", "one"])
def test_google_without_a_key_refuses_to_start(tmp_path, zherd, provider, how) -> None:
    config, layout = write_topology(
        tmp_path, sections={"places": {"provider": provider, "api_key_env": "ZHERD_TEST_KEY"}}
    )
    env = {k: v for k, v in os.environ.items() if k != "ZHERD_TEST_KEY"}
    status, _, err = zherd("start", *how, "--config", str(config), env=env).finish(timeout=START)
    assert status != 0
    assert re.search(rf"provider '{provider}' needs an API key .*ZHERD_TEST_KEY", err), err
    assert "Traceback" not in err, err
    assert all(refused(port) for port, _ in layout.values())


# -- the command itself ----------------------------------------------------------------------


def run_zherd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zherd", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_version_and_a_help_without_the_internal_command(tmp_path) -> None:
    from importlib.metadata import version

    done = run_zherd("--version", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"zherd {version('zherd')}\n")
    done = run_zherd("--help", cwd=tmp_path)
    assert done.returncode == 0
    for command in ("start", "init", "client", "iamat", "whatsat", "logs"):
        assert re.search(rf"^    {command} ", done.stdout, re.M), command
    assert not re.search(r"\bserve\b", done.stdout) and "SUPPRESS" not in done.stdout
    for command in ("start", "init", "client", "iamat", "whatsat", "logs", "serve"):
        done = run_zherd(command, "--help", cwd=tmp_path)
        assert done.returncode == 0 and "--config PATH" in done.stdout, command


def test_init_writes_the_default_topology_and_never_overwrites(tmp_path) -> None:
    from zherd.cli import default_topology_text
    from zherd.config import load

    done = run_zherd("init", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = tmp_path / "topology.toml"
    assert written.read_text() == default_topology_text()
    assert set(load(written).servers) == set(PAPER_SERVERS)
    assert "zherd start --all\n" in done.stdout

    written.write_text("# mine\n")
    done = run_zherd("init", cwd=tmp_path)
    assert done.returncode == 1 and "exists; not overwritten" in done.stderr
    assert written.read_text() == "# mine\n"

    (tmp_path / "elsewhere").mkdir()
    done = run_zherd("init", "elsewhere", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--config elsewhere/topology.toml" in done.stdout
    done = run_zherd("init", "--config", "other.toml", cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / "other.toml").read_text() == default_topology_text()


def test_a_server_names_its_process(tmp_path, zherd) -> None:
    config, layout = write_topology(tmp_path)
    z = zherd("start", "Bolden", "--config", str(config))
    rows = table_rows(z.read_until(re.escape(f"tcp://127.0.0.1:{layout['Bolden'][1]}")).string)
    pid = rows["Bolden"][0]
    assert Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0") == b"zherd: Bolden"
    status, _, err = z.finish(signal.SIGTERM)
    assert status == 0, err
