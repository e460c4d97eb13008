"""`zherd start` keeps its herd up: real processes killed by pid, restarted, stopped.

Every wait is for a condition (a line on the console, a port that answers, a pid that is
gone), bounded in time; nothing sleeps a fixed time.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from console import STOP, Console
from loguru import logger

from zherd.harness import PAPER_LINKS, PAPER_SERVERS, Client, free_ports, topology_toml, wait_until
from zherd.launcher import Backoff, describe_exit

READY_LINE = "Ctrl-C stops the herd."

# -- pure ----------------------------------------------------------------------------------------


def test_backoff_doubles_to_a_cap_and_gives_up_on_rapid_deaths() -> None:
    backoff = Backoff()
    delays = [backoff.died(up_for=1.0) for _ in range(11)]
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30, None]


def test_backoff_starts_again_after_a_stable_run() -> None:
    backoff = Backoff(initial=0.5, maximum=30, stable=60, max_rapid=3)
    assert [backoff.died(5), backoff.died(5), backoff.died(5)] == [0.5, 1, 2]
    assert backoff.died(60) == 0.5  # up for a minute: a new series
    assert [backoff.died(1), backoff.died(1), backoff.died(1)] == [1, 2, None]


def test_exit_statuses_read_as_an_operator_says_them() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-15) == "killed by SIGTERM"
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(2) == "exit status 2"
    assert describe_exit(-200) == "killed by signal 200"


# -- a herd of real processes --------------------------------------------------------------------


@pytest.fixture
def run(tmp_path: Path, geonames_index: None) -> Iterator[Any]:
    started: list[Console] = []

    def run(*args: str, code: str | None = None, **popen: Any) -> Console:
        argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "zherd", *args]
        console = Console(argv, tmp_path, **popen)
        started.append(console)
        return console

    yield run
    for console in started:
        console.kill()


def write_topology(
    folder: Path, servers=PAPER_SERVERS, links=PAPER_LINKS, **sections: Mapping[str, Any]
) -> dict[str, tuple[int, int]]:
    ports = free_ports(2 * len(servers))
    layout = {n: (ports[2 * i], ports[2 * i + 1]) for i, n in enumerate(servers)}
    base = {"logging": {"dir": "logs"}, "storage": {"dir": "var"}}
    (folder / "topology.toml").write_text(topology_toml(layout, links, {**base, **sections}))
    return layout


def pids(out: str) -> dict[str, int]:
    """The start table's pid column."""
    return {
        m[1]: int(m[2]) for m in re.finditer(r"^(\w+) +(\d+) +127\.0\.0\.1:\d+ +tcp://", out, re.M)
    }


def answers(port: int, client_id: str) -> str:
    with Client(port, timeout=30) as c:
        return c.ask(f"IAMAT {client_id} +34.068930-118.445127 1400794645.392014450")


def gone(pid: int) -> bool:
    try:
        return b"zherd" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return True


def title(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0")


def test_a_killed_server_is_restarted_and_ctrl_c_stops_the_herd_once(
    tmp_path: Path, run: Any
) -> None:
    layout = write_topology(tmp_path)
    # Its own session, as a shell's job: a terminal's Ctrl-C signals the whole group.
    herd = run("start", "--all", start_new_session=True)
    out = herd.read_until(READY_LINE).string
    assert f"logs     {tmp_path}/logs/<NAME>.log" in out
    assert f"storage  {tmp_path}/var/<NAME>.log (and .snapshot)" in out
    assert "places   offline GeoNames index " in out
    before = pids(out)
    assert set(before) == set(PAPER_SERVERS)
    for name, pid in before.items():
        assert title(pid) == f"zherd: {name}".encode()

    os.kill(before["Parker"], signal.SIGKILL)
    died = rf"^Parker \(pid {before['Parker']}\) died \(killed by SIGKILL\); restarting in 0.5 s$"
    herd.read_until(died)
    back = int(herd.read_until(r"^Parker is back \(pid (\d+)\)$")[1])
    assert back != before["Parker"] and title(back) == b"zherd: Parker"
    assert answers(layout["Parker"][0], "sup-after").startswith("AT Parker ")
    # ... and it is a member of the herd again: its update floods to Hamilton.
    with Client(layout["Hamilton"][0]) as c:
        wait_until(lambda: c.ask("WHATSAT sup-after 1 1").startswith("AT Parker"), timeout=30)

    os.killpg(herd.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    status, out, err = herd.finish()
    assert status == 0, err
    tail = out[out.index("Parker is back") :].splitlines()[1:]
    assert tail == ["stopping the herd (SIGINT) ...", "stopped 5 servers cleanly"], out
    assert "exited" not in out and "Traceback" not in err, err
    for pid in [*before.values(), back]:
        wait_until(lambda pid=pid: gone(pid), timeout=STOP, what=f"pid {pid} to exit")


def test_sigterm_stops_the_herd_with_one_line_and_a_summary(tmp_path: Path, run: Any) -> None:
    write_topology(tmp_path, servers=("Alford", "Parker"), links=(("Alford", "Parker"),))
    herd = run("start", "Alford", "Parker")
    started = pids(herd.read_until(READY_LINE).string)
    status, out, err = herd.finish(signal.SIGTERM)
    assert status == 0, err
    assert out.endswith(
        f"{READY_LINE}\nstopping the herd (SIGTERM) ...\nstopped 2 servers cleanly\n"
    )
    for name in started:
        assert f"{name} stopped" in (tmp_path / "logs" / f"{name}.log").read_text()


def test_restart_no_leaves_a_dead_server_dead_and_the_herd_fails(tmp_path: Path, run: Any) -> None:
    layout = write_topology(tmp_path, servers=("Alford", "Parker"), links=(("Alford", "Parker"),))
    herd = run("start", "--all", "--restart", "no")
    started = pids(herd.read_until(READY_LINE).string)
    os.kill(started["Parker"], signal.SIGKILL)
    herd.read_until(
        rf"^Parker \(pid {started['Parker']}\) died \(killed by SIGKILL\); "
        r"not restarting it \(--restart no\)$"
    )
    assert answers(layout["Alford"][0], "sup-no").startswith("AT Alford ")  # the rest carries on
    status, out, err = herd.finish(signal.SIGTERM)
    assert status == 1, out
    assert out.splitlines()[-1] == (
        "stopped 1 server cleanly; not kept up: Parker died (killed by SIGKILL)"
    )
    assert "Traceback" not in err, err


def test_restart_no_and_every_server_dead_ends_the_herd(tmp_path: Path, run: Any) -> None:
    write_topology(tmp_path, servers=("Alford", "Parker"), links=(("Alford", "Parker"),))
    herd = run("start", "--all", "--restart", "no")
    started = pids(herd.read_until(READY_LINE).string)
    for pid in started.values():
        os.kill(pid, signal.SIGKILL)
    status, out, err = herd.finish()  # no signal: it ends by itself
    assert status == 1 and "Traceback" not in err, out
    assert out.splitlines()[-2:] == [
        "no server of the herd is left running",
        "not kept up: Alford died (killed by SIGKILL), Parker died (killed by SIGKILL)",
    ]


GIVE_UP = """
import sys
from zherd import config, keys, launcher
topology = config.load("topology.toml")
keys.ensure(topology.security.keys_dir, ["Alford", "Parker"])  # as `zherd start` does
quick = lambda: launcher.Backoff(initial=1.0, maximum=2.0, max_rapid=3)
sys.exit(launcher.supervise(topology, ["Alford", "Parker"], True, backoff=quick))
"""


def test_a_server_that_keeps_dying_is_given_up(tmp_path: Path, run: Any) -> None:
    """Parker's port is taken while it is down: each restart dies at once, until the
    supervisor gives up on it (a quick backoff, so the test takes seconds)."""
    layout = write_topology(tmp_path, servers=("Alford", "Parker"), links=(("Alford", "Parker"),))
    herd = run(code=GIVE_UP)
    started = pids(herd.read_until(READY_LINE).string)
    with socket.socket() as squatter:
        os.kill(started["Parker"], signal.SIGKILL)

        def taken() -> bool:
            try:
                squatter.bind(("127.0.0.1", layout["Parker"][0]))
            except OSError:
                return False
            return True

        wait_until(taken, timeout=STOP, interval=0.002, what="Parker's port to be free")
        squatter.listen()
        m = herd.read_until(r"^Parker \(pid \d+\) died \(exit status 2\), 4 times in a row .*$")
        assert m[0].endswith("within 60 s of starting; giving up on it")
    out = herd.out.decode()
    assert re.findall(r"restarting in ([\d.]+) s", out) == ["1", "2", "2"]
    assert answers(layout["Alford"][0], "sup-gave-up").startswith("AT Alford ")
    status, out, err = herd.finish(signal.SIGTERM)
    assert "Parker: cannot listen for clients" in err, err
    assert status == 1
    assert out.splitlines()[-1] == (
        "stopped 1 server cleanly; not kept up: Parker kept dying (exit status 2)"
    )


# -- the places index on a first start ------------------------------------------------------------


def test_a_first_start_builds_the_places_index_saying_so(tmp_path: Path, run: Any) -> None:
    layout = write_topology(
        tmp_path,
        servers=("Alford", "Parker"),
        links=(("Alford", "Parker"),),
        places={"data_dir": "cache"},  # a cold cache of its own
    )
    herd = run("start", "--all")
    out = herd.read_until(READY_LINE).string
    assert re.search(
        r"^places   offline GeoNames index .*/cache/geonames-\w+\.idx\n"
        r"building the offline places index \(first start only\) \.\.\.\n"
        r"\.\.\. done in \d+\.\d s\n(?:page .*\n)?server ",  # then the live page, if it listens
        out,
        re.M,
    ), out
    with Client(layout["Parker"][0]) as c:
        c.ask("IAMAT sup-index +34.068930-118.445127 1400794645.5")
        assert '"status": "OK"' in c.ask("WHATSAT sup-index 10 1")
    status, out, err = herd.finish(signal.SIGTERM)
    assert status == 0, err
    for name in ("Alford", "Parker"):
        log = (tmp_path / "logs" / f"{name}.log").read_text()
        assert "GeoNames index loaded" in log and "waited" not in log, log
    herd = run("start", "--all")  # the second start has it
    assert "building" not in herd.read_until(READY_LINE).string
    assert herd.finish(signal.SIGTERM)[0] == 0


def test_waiting_for_another_build_is_logged_as_a_wait(tmp_path: Path) -> None:
    from zherd.places.geoindex import default_data_dir, exclusive_lock, index_path, open_index
    from zherd.places.geoindex import default_source as source_of

    source = source_of()
    built = index_path(source, default_data_dir())  # the session's (geonames_index fixture)
    if not built.exists():
        pytest.skip("no cached GeoNames index to copy")
    target = index_path(source, tmp_path)
    lock = target.with_name(target.name + ".lock")
    messages: list[str] = []
    sink = logger.add(messages.append, format="{message}", filter="zherd.places")
    opened: list[Any] = []
    try:
        with exclusive_lock(lock):  # held by "another server", building
            opener = threading.Thread(target=lambda: opened.append(open_index(source, tmp_path)))
            opener.start()
            wait_until(lambda: blocked_on(lock), what="the opener to wait for the lock")
            shutil.copyfile(built, target)  # the other's build, done while the opener waits
        opener.join(30)
    finally:
        logger.remove(sink)
    ((index, was_built),) = opened
    index.close()
    assert not was_built
    (message,) = messages
    assert re.fullmatch(
        r"waited \d+\.\d s for the index build of another server; GeoNames index loaded: "
        rf"\d+ places from {re.escape(str(target))} in \d+\.\d ms\n",
        message,
    ), message


def blocked_on(path: Path) -> bool:
    """Someone waits for an flock on `path` (/proc/locks lists waiters as `-> FLOCK`)."""
    inode = os.stat(path).st_ino
    waiter = re.compile(rf"^\d+: -> FLOCK .* [0-9a-f]+:[0-9a-f]+:{inode} ", re.M)
    return waiter.search(Path("/proc/locks").read_text()) is not None


def test_places_that_are_not_geonames_need_no_index(tmp_path: Path) -> None:
    from zherd.config import PlacesConfig
    from zherd.launcher import prepare_places

    said: list[str] = []
    prepare_places(PlacesConfig(provider="google", data_dir=tmp_path), said.append)
    assert said == [] and list(tmp_path.iterdir()) == []
