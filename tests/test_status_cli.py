"""`zherd status` against real herds: the table, the exit status, --json; and the pure
rules that say what a server's and a link's state is."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

from zherd import config, herdstatus
from zherd.harness import PAPER_LINKS, PAPER_SERVERS, Herd, wait_until
from zherd.herdstatus import DOWN, STARTING, UNKNOWN, UP, duration, link_state, server_state
from zherd.launcher import await_ready, spawn


def zherd_status(herd: Herd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zherd", "status", "--config", str(herd.config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def all_healthy(herd: Herd) -> None:
    """The status endpoint starts just after a server says it accepts clients."""
    topology = config.load(herd.config)
    wait_until(
        lambda: all(p.healthy for p in herdstatus.probe_all(topology).values()),
        what="every /healthz to answer 200",
    )


def rows(table: str) -> dict[str, str]:
    """Table rows by the server they start with."""
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if cells and cells[0] in PAPER_SERVERS:
            out[cells[0]] = line
    return out


# -- a real herd ----------------------------------------------------------------------------------


def test_a_healthy_herd_exits_0_and_lists_every_server(herd) -> None:
    h = herd()
    all_healthy(h)
    done = zherd_status(h)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5/5 servers healthy, 5/5 links up" in done.stdout
    shown = rows(done.stdout)
    assert set(shown) == set(PAPER_SERVERS)
    for name, proc in h.procs.items():
        assert " up " in shown[name]
        assert f" {proc.pid} " in shown[name]


def test_a_killed_server_shows_down_and_the_status_is_not_0(herd) -> None:
    h = herd()
    all_healthy(h)
    h.kill("Hamilton", signal.SIGKILL)
    done = zherd_status(h)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "4/5 servers healthy, 4/5 links up" in done.stdout
    shown = rows(done.stdout)
    assert "down (connection refused)" in shown["Hamilton"]
    assert " up " in shown["Parker"]

    doc = json.loads(zherd_status(h, "--json").stdout)
    assert doc["healthy"] is False
    assert doc["servers"]["Hamilton"]["state"] == DOWN
    assert doc["servers"]["Hamilton"]["status"] is None
    link = next(x for x in doc["links"] if {x["a"], x["b"]} == {"Hamilton", "Parker"})
    assert link["state"] == DOWN


def test_json_is_the_whole_herd(herd) -> None:
    h = herd()
    all_healthy(h)
    done = zherd_status(h, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["healthy"] is True
    assert set(doc["servers"]) == set(PAPER_SERVERS)
    for name, server in doc["servers"].items():
        assert server["state"] == UP
        assert server["healthz"] == 200
        assert server["status"]["name"] == name
        assert server["status"]["pid"] == h.procs[name].pid
    assert {(x["a"], x["b"]) for x in doc["links"]} == {tuple(sorted(x)) for x in PAPER_LINKS}
    assert all(x["state"] == UP for x in doc["links"])


def test_a_server_with_no_status_port_is_unknown_and_not_healthy(tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text(
        "[servers.Solo]\nport = 1\nbus_port = 2\n"  # never started: nothing to ask anyway
    )
    topology = config.load(tmp_path / "t.toml")
    doc = herdstatus.report(topology, herdstatus.probe_all(topology))
    assert doc["healthy"] is False
    assert doc["servers"]["Solo"]["state"] == UNKNOWN
    assert "no status_port" in doc["servers"]["Solo"]["reason"]


def test_missing_topology_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "zherd", "status", "--config", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no such file" in done.stderr


# -- the rules ------------------------------------------------------------------------------------


def test_server_state() -> None:
    assert server_state(False, None) == UNKNOWN
    assert server_state(True, None) == DOWN
    assert server_state(True, {"healthy": False, "health": "loading the store"}) == STARTING
    assert server_state(True, {"healthy": True}) == UP


def test_link_state() -> None:
    assert link_state((UP, UP)) == UP
    assert link_state((UP, DOWN)) == DOWN  # one end not hearing the other is enough
    assert link_state((DOWN, UNKNOWN)) == DOWN
    assert link_state((UP, UNKNOWN)) == UP  # what can be told says up
    assert link_state((UNKNOWN, UNKNOWN)) == UNKNOWN


def test_duration() -> None:
    assert duration(None) == ""
    assert duration(4.2) == "4s"
    assert duration(303) == "5m 03s"
    assert duration(2 * 3600 + 7 * 60) == "2h 07m"
    assert duration(3 * 86400 + 4 * 3600) == "3d 04h"


def test_a_status_port_in_use_leaves_the_server_serving(herd) -> None:
    h = herd(("Ann", "Bo"), (("Ann", "Bo"),), start=False)
    with socket.create_server(("127.0.0.1", h.ports["Ann"][2])):  # bound, never answered
        h.start("Bo")
        ann = spawn(h.config, "Ann", env=h.env, cwd=h.root)  # Herd.start would wait for /status
        h.procs["Ann"] = ann
        await_ready({"Ann": ann})
        with h.client("Ann") as c:
            assert c.ask("IAMAT sq-1 +34.06-118.44 1400794645.5").startswith("AT Ann ")
        wait_until(lambda: "status endpoint: cannot listen" in h.log("Ann"), what="Ann's log")
        assert "/healthz, /status and /metrics are off" in h.log("Ann")
        bo = config.load(h.config).servers["Bo"]
        wait_until(lambda: herdstatus.probe(bo).healthy, what="Bo's /healthz")
        done = zherd_status(h, "--json")
        assert done.returncode == 1
        doc = json.loads(done.stdout)
        assert doc["servers"]["Ann"]["state"] == DOWN
        assert doc["servers"]["Bo"]["state"] == UP
