"""Nothing acknowledged is lost: an `AT` reply is a promise that the update survives.

Real herds of `zherd serve` processes (`zherd.harness.Herd`) with storage on,
killed by SIGKILL, restarted, their log files damaged or made unwritable. An
update counts as acknowledged only once its `AT` line was read by the client.
Every test is bounded in count and time, and waits on conditions (status polls,
WHATSAT answers), never on the clock.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_faults import (
    CHAIN,
    CHAIN_LINKS,
    converge,
    errors,
    held_on_disk,
    iamat,
    known,
    newest,
    on_disk,
    restored,
    send_all,
    status,
)

from zherd import record
from zherd.disk import Disk, Meta
from zherd.harness import PAPER_SERVERS, Client, Herd, topology_toml, wait_until
from zherd.locations import FROM_CLIENT, pack

# --- every server killed at once -----------------------------------------------------------

PIPE_CHUNK = 50  # IAMATs per pipelined batch
PIPE_MAX = 60_000  # IAMATs per connection at most
PIPE_RATE = 2000.0  # IAMATs per second per connection at most: no server gets far ahead
PIPE_BEFORE_KILL = 500  # acknowledged per server before the kill


class Pipeline(threading.Thread):
    """One connection pipelining IAMATs, each for a new client id (one fix per client, so
    an acknowledged update is exactly the line a server must hold), until the server is
    cut off, `PIPE_MAX` are answered, or `seconds` pass; paced at `PIPE_RATE`. Every AT
    line read is kept."""

    def __init__(self, herd: Herd, server: str, seconds: float = 60.0) -> None:
        super().__init__(daemon=True)
        self.port, self.server, self.seconds = herd.port(server), server, seconds
        self.acked: list[str] = []
        self.error: BaseException | None = None  # anything but the cut of a killed server
        self.cut = False

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            with Client(self.port, timeout=30) as c:
                for start in range(0, PIPE_MAX, PIPE_CHUNK):
                    ahead = t0 + start / PIPE_RATE - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)  # pacing, not waiting for a condition
                    if time.monotonic() > t0 + self.seconds:
                        return
                    ids = range(start, start + PIPE_CHUNK)
                    lines = [iamat(f"all-{self.server}-{i:05d}", i) for i in ids]
                    c.send("".join(line + "\n" for line in lines))
                    for line in lines:
                        reply = c.line().rstrip("\n")
                        if not reply.startswith(f"AT {self.server} "):
                            raise AssertionError(f"{line!r} answered {reply!r}")
                        self.acked.append(reply)
        except OSError:  # ConnectionError included: the server was killed
            self.cut = True
        except BaseException as e:  # reported by the test
            self.error = e


def test_every_server_killed_at_once_under_load_keeps_every_acknowledged_update(
    tmp_path: Path,
) -> None:
    """Five clients pipeline IAMATs to the five servers; once each server has answered
    500, all five get SIGKILL at once. Each server's own storage holds every update it
    acknowledged (an AT leaves only after its turn's write), and after a restart every
    server holds every acknowledged update."""
    with Herd(tmp_path) as herd:
        herd.start()
        pipes = [Pipeline(herd, name) for name in PAPER_SERVERS]
        for pipe in pipes:
            pipe.start()
        try:
            wait_until(
                lambda: all(len(p.acked) >= PIPE_BEFORE_KILL or p.error for p in pipes),
                60,
                what="every server to acknowledge its first updates",
            )
            for name in PAPER_SERVERS:  # every signal first: the kill is one moment
                herd.procs[name].send_signal(signal.SIGKILL)
            for name in PAPER_SERVERS:
                assert herd.kill(name) == -signal.SIGKILL
        finally:
            for pipe in pipes:
                pipe.join(30)
        assert [p.error for p in pipes] == [None] * len(pipes)
        assert all(p.cut for p in pipes), [(p.server, len(p.acked), p.cut) for p in pipes]

        var = tmp_path / "var"
        for pipe in pipes:
            held = held_on_disk(var, pipe.server)
            lost = [line for line in pipe.acked if line not in held]
            assert not lost, (
                f"{pipe.server} acknowledged {len(lost)} of {len(pipe.acked)} updates that "
                f"its storage does not hold; e.g. {lost[:3]}"
            )

        herd.start()
        acked = newest(line for p in pipes for line in p.acked)
        assert len(acked) == sum(len(p.acked) for p in pipes) >= 5 * PIPE_BEFORE_KILL
        converge(herd, PAPER_SERVERS, acked, "every acknowledged update after the kill")


# --- SIGTERM while clients keep connecting ------------------------------------------------------

TERM_CYCLES = 4  # SIGTERM and restart, this many times
TERM_THREADS = 6  # clients connecting over and over
TERM_BATCHES = 3  # batches of 10 IAMATs per connection
TERM_LOAD = 0.5  # seconds of load before each SIGTERM (a schedule, not a condition)


class Reconnecting(threading.Thread):
    """A client that opens connection after connection to one port, sending a few
    pipelined batches of IAMATs (new client ids) on each; every AT read is kept."""

    def __init__(self, port: int, prefix: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.prefix, self.stop = port, prefix, stop
        self.acked: list[str] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set() and n < 100_000:
            try:
                with Client(self.port, timeout=10) as c:
                    for _ in range(TERM_BATCHES):
                        lines = [iamat(f"{self.prefix}-{i}", i) for i in range(n, n + 10)]
                        n += 10
                        c.send("".join(line + "\n" for line in lines))
                        for _ in lines:  # each AT counts once read, even if the rest never come
                            self.acked.append(c.line().rstrip("\n"))
            except OSError:  # the server is stopping or stopped
                self.stop.wait(0.001)  # pacing the reconnects, not waiting for a condition


def test_a_sigterm_while_clients_connect_acknowledges_only_what_it_stored(tmp_path: Path) -> None:
    """Clients open connection after connection, each sending a few pipelined batches,
    while the server is stopped by SIGTERM (four times, restarted in between). Whatever
    it answered AT is in its storage once it has exited: a connection accepted as the
    shutdown began is not served after the storage is closed."""
    with Herd(tmp_path, servers=("A",), links=()) as herd:
        herd.start()
        for cycle in range(TERM_CYCLES):
            stop = threading.Event()
            clients = [
                Reconnecting(herd.port("A"), f"term-{cycle}-{k}", stop) for k in range(TERM_THREADS)
            ]
            for client in clients:
                client.start()
            try:
                stop.wait(TERM_LOAD)  # the load runs a while: a schedule, not a condition
                assert herd.kill("A", signal.SIGTERM) == 0
            finally:
                stop.set()
                for client in clients:
                    client.join(30)
            acked = [line for client in clients for line in client.acked]
            held = held_on_disk(tmp_path / "var", "A")
            lost = [line for line in acked if line not in held]
            assert acked and not lost, f"cycle {cycle}: {len(lost)} of {len(acked)}: {lost[:3]}"
            herd.start("A")


# --- a restart costs what was missed -------------------------------------------------------

RESUME_CLIENTS = 20_000  # known to both servers before B is killed
RESUME_MISSED = 100  # heard at A while B is down


def test_a_restart_from_storage_is_sent_only_what_it_missed(tmp_path: Path) -> None:
    """A and B linked; 20,000 clients at A reach B; SIGKILL B; 100 more at A; B restarts
    from its own storage and its neighbor sends it about the 100 it missed, not the
    20,000: B counts ~100 records in from A, and A serves no full resend."""
    with Herd(tmp_path, servers=("A", "B"), links=(("A", "B"),)) as herd:
        herd.start()
        ids = [f"resume-{i:05d}" for i in range(RESUME_CLIENTS)]
        lines = [iamat(cid, i) for i, cid in enumerate(ids)]
        expected = newest(send_all(herd.port("A"), lines, chunk=500))
        wait_until(
            lambda: status(herd, "B")["clients_known"] == RESUME_CLIENTS,
            60,
            what="B to hold every client",
        )
        var = tmp_path / "var"
        wait_until(lambda: on_disk(var, "B") == RESUME_CLIENTS, 30, what="B to write them all")
        full_before = status(herd, "A")["neighbors"]["B"]["full_resends"]
        assert herd.kill("B", signal.SIGKILL) == -signal.SIGKILL

        missed = newest(
            send_all(
                herd.port("A"),
                [iamat(f"missed-{i:03d}", RESUME_CLIENTS + i) for i in range(RESUME_MISSED)],
            )
        )
        herd.start("B")
        assert restored(herd, "B") == RESUME_CLIENTS, "B restarts from its own storage"
        wait_until(
            lambda: status(herd, "B")["clients_known"] == RESUME_CLIENTS + RESUME_MISSED,
            60,
            what="B to catch up",
        )
        converge(herd, ["B"], missed, "what B missed")
        b_from_a = status(herd, "B")["neighbors"]["A"]
        a_to_b = status(herd, "A")["neighbors"]["B"]
        assert RESUME_MISSED <= b_from_a["records_in"] <= 2 * RESUME_MISSED, b_from_a
        assert a_to_b["full_resends"] == full_before, a_to_b
        # and the link is live again: a few more reach B, and neither end owes the other
        live = newest(
            send_all(
                herd.port("A"), [iamat(f"live-{i}", 2 * RESUME_CLIENTS + i) for i in range(10)]
            )
        )
        converge(herd, ["B"], live, "live updates after the catch-up")
        lags = {"A to B": herd.link("A", "B")["lag"], "B to A": herd.link("B", "A")["lag"]}
        assert lags == {"A to B": 0, "B to A": 0}, lags
        assert missing_any(herd, "B", expected, sample=500) == {}


def missing_any(herd: Herd, name: str, expected: dict[str, str], sample: int) -> dict:
    """A spread sample of `expected` that `name` does not hold exactly: id -> got."""
    ids = list(expected)[:: max(1, len(expected) // sample)]
    got = known(herd.port(name), ids)
    return {cid: got[cid] for cid in ids if got[cid] != expected[cid]}


# --- client ids of tens of kilobytes ----------------------------------------------------------

BIG_IDS = {"20k": 20 * 1024, "60k": 60 * 1024}  # bytes; a line still fits max_line (65536)


def test_big_client_ids_survive_a_restart_and_a_catch_up(tmp_path: Path) -> None:
    """Client ids of 20 KB and 60 KB (`max_id = 65536`): heard at Alford while Hamilton is
    down, they reach Parker; Parker is SIGKILLed and restarts from its storage; Hamilton
    restarts and gets them in Parker's catch-up; a whole-herd restart reads them back
    from every server's own storage. Every server ends holding both, byte for byte."""
    sections = {"limits": {"max_id": 65536}}
    with Herd(tmp_path, servers=CHAIN, links=CHAIN_LINKS, sections=sections) as herd:
        herd.start()
        assert herd.kill("Hamilton", signal.SIGKILL) == -signal.SIGKILL
        ids = {name: name + "-" + "x" * (size - len(name) - 1) for name, size in BIG_IDS.items()}
        lines = [iamat(cid, i) for i, cid in enumerate(ids.values())]
        assert all(len(line) < 65536 for line in lines)
        expected = newest(send_all(herd.port("Alford"), lines, chunk=1))
        converge(herd, ["Parker"], expected, "big ids, live")

        assert herd.kill("Parker", signal.SIGKILL) == -signal.SIGKILL
        herd.start("Parker")
        assert restored(herd, "Parker") == len(ids)
        herd.start("Hamilton")
        converge(herd, ["Parker", "Hamilton"], expected, "big ids, after restart and catch-up")
        assert status(herd, "Hamilton")["neighbors"]["Parker"]["applied"] == len(ids)

        assert set(herd.stop().values()) == {0}
        herd.start()
        for name in CHAIN:
            assert restored(herd, name) == len(ids), name
        converge(herd, CHAIN, expected, "big ids, after a whole-herd restart")


# --- a damaged byte in a stored record --------------------------------------------------------

DAMAGE_CLIENTS = 50


def test_a_damaged_record_is_dropped_reported_and_fetched_again(tmp_path: Path) -> None:
    """One byte of one record in Parker's log changes while Parker is stopped (a digit
    of its coordinates: the record would still pass for a valid one). On restart Parker
    logs the damage at ERROR naming the file, drops that frame (49 of 50 restored),
    never answers the damaged record, and ends holding the true one again, fetched from
    its neighbors, which answer the true one all along."""
    with Herd(tmp_path, servers=CHAIN, links=CHAIN_LINKS) as herd:
        herd.start()
        ids = [f"dmg-{i:02d}" for i in range(DAMAGE_CLIENTS)]
        expected = newest(send_all(herd.port("Alford"), [iamat(c, i) for i, c in enumerate(ids)]))
        converge(herd, CHAIN, expected, "before the damage")
        var = tmp_path / "var"
        wait_until(lambda: on_disk(var, "Parker") == DAMAGE_CLIENTS, 30, what="Parker's writes")
        assert herd.kill("Parker", signal.SIGTERM) == 0

        target = ids[17]
        true_line = expected[target]
        stored = true_line.removeprefix("AT ").encode()
        path = var / "Parker.log"
        data = path.read_bytes()
        assert data.count(stored) == 1
        damaged = bytearray(stored)
        digit = stored.index(b" +34.") + 5  # the latitude's first decimal
        damaged[digit] = ord("7") if damaged[digit] != ord("7") else ord("6")
        damaged_line = "AT " + damaged.decode()
        path.write_bytes(data.replace(stored, bytes(damaged)))

        answers: dict[str, set[str | None]] = {name: set() for name in CHAIN}
        stop = threading.Event()

        def watch() -> None:  # what each server answers for the target while Parker restarts
            while not stop.is_set():
                for name in CHAIN:
                    try:
                        answers[name].add(known(herd.port(name), [target])[target])
                    except OSError:
                        if name != "Parker":
                            raise
                stop.wait(0.02)  # pacing the probe, not waiting for a condition

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        mark = len(herd.log("Parker"))
        try:
            herd.start("Parker")
            assert restored(herd, "Parker") == DAMAGE_CLIENTS - 1
            converge(herd, ["Parker"], expected, "the damaged record fetched again")
        finally:
            stop.set()
            watcher.join(30)
        reported = errors(herd.log("Parker")[mark:])
        assert any(str(path) in line and "checksum" in line for line in reported), reported
        assert answers["Alford"] == answers["Hamilton"] == {true_line}, answers
        assert answers["Parker"] <= {None, true_line}, (answers["Parker"], damaged_line)

        # and the damaged frame is gone for good: the next start reads everything intact
        wait_until(lambda: on_disk(var, "Parker") == DAMAGE_CLIENTS, 30, what="the rewrite")
        assert herd.kill("Parker", signal.SIGTERM) == 0
        mark = len(herd.log("Parker"))
        herd.start("Parker")
        assert restored(herd, "Parker") == DAMAGE_CLIENTS
        assert errors(herd.log("Parker")[mark:]) == []


# --- storage that cannot be written ------------------------------------------------------------


def _write_store(var: Path, name: str, n: int) -> None:
    """A server's storage holding clients c1..cn, as a previous run would have left it."""
    disk = Disk(var, name)
    disk.open()
    for seq in range(1, n + 1):
        line = record.Record("Alford", "+0.000000001", f"c{seq}", "+1-1", "1.5").line
        disk.add(pack(seq, 1_500_000_000, FROM_CLIENT, line))
    disk.add_meta(Meta())
    disk.commit()
    asyncio.run(disk.close())


def test_a_big_store_loads_while_clients_wait_connected(tmp_path: Path) -> None:
    """The server listens before it reads its storage; what clients ask meanwhile is
    answered from the whole store once it is loaded (never `?` from a half-loaded one)."""
    n = 60_000
    _write_store(tmp_path / "var", "A", n)
    with Herd(tmp_path, servers=("A",), links=()) as herd:
        herd.start()  # returns once the server accepts clients
        with herd.client("A") as client:
            assert client.ask(f"WHATSAT c{n} 1 1").startswith(f"AT Alford +0.000000001 c{n} ")
        assert restored(herd, "A") == n
        log = herd.log("A")  # the order of events is the log's to tell
        assert log.index("accepting clients") < log.index(f"{n} locations restored")


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


def _start_alone(
    config: Path, name: str, wrap: list[str] | None = None
) -> subprocess.CompletedProcess:
    """`zherd start NAME` (one server, in this process), as an operator would run it."""
    argv = [sys.executable, "-m", "zherd", "start", name, "--config", str(config)]
    return subprocess.run(
        (wrap or []) + argv, capture_output=True, text=True, timeout=60, cwd=config.parent
    )


@pytest.mark.parametrize("case", ["read-only", "read-only-with-a-log", "not-a-folder"])
def test_unwritable_storage_stops_the_server_with_one_clear_line(tmp_path: Path, case: str) -> None:
    """A storage folder that is read-only (a read-only mount, as root; mode 0555 otherwise),
    or cannot be created (a regular file in its place): `zherd start` says so in one line
    naming the path and exits non-zero, before any ready table."""
    var = tmp_path / "var"
    config = tmp_path / "topology.toml"
    ports = {"A": (1, 2)}  # never bound: the server stops before listening
    config.write_text(
        topology_toml(ports, (), {"storage": {"dir": "var"}, "logging": {"dir": "logs"}})
    )
    wrap: list[str] | None = None
    if case == "not-a-folder":
        var.write_text("a file where the storage folder should be\n")
    else:
        if case == "read-only-with-a-log":
            _write_store(var, "A", 3)
        else:
            var.mkdir()
        if _unshare_works():
            remount = (
                'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
            )
            wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c", remount, "sh"]
            wrap.append(str(var))
        elif os.geteuid() != 0:
            var.chmod(0o555)
        else:
            pytest.skip("as root without mount namespaces no folder is read-only")
    try:
        done = _start_alone(config, "A", wrap)
    finally:
        if var.is_dir():
            var.chmod(0o755)
    assert done.returncode != 0, done
    assert "server" not in done.stdout and "Ctrl-C" not in done.stdout, done.stdout
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(said) == 1, said
    assert str(var) in said[0], said
    why = "a file is in its place" if case == "not-a-folder" else "Read-only|Permission denied"
    assert re.search(why, said[0]), said


def test_healthz_says_503_while_the_store_loads_then_200(tmp_path: Path) -> None:
    """600,000 stored clients take a moment to read back: meanwhile /healthz answers 503
    with its reason (an orchestrator waits), then 200 once clients are answered."""
    import urllib.error
    import urllib.request

    n = 600_000
    herd = Herd(tmp_path, servers=("Solo",), links=())
    disk = Disk(tmp_path / "var", "Solo", "no")
    disk.open()
    for i in range(n):
        line = record.Record(
            "Solo", "+0.000000001", f"h{i:06x}", "+1+1", f"{1_400_000_000 + i}"
        ).line
        disk.add(pack(i + 1, (1_400_000_000 + i) * 1_000_000_000, FROM_CLIENT, line))
    disk.commit()
    asyncio.run(disk.close())
    url = f"http://127.0.0.1:{herd.ports['Solo'][2]}/healthz"
    seen: list[tuple[int, str]] = []

    def health() -> tuple[int, str] | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                answer = (reply.status, reply.read().decode())
        except urllib.error.HTTPError as e:
            answer = (e.code, e.read().decode())
        except OSError:
            return None
        seen.append(answer)
        return answer

    with herd:
        herd.start(timeout=60)  # returns once /status answers: the store may still be loading
        wait_until(lambda: (h := health()) is not None and h[0] == 200, 60, 0.01, "healthy")
        assert seen[0] == (503, "loading the store\n"), seen[:3]
        assert herd.status("Solo")["restored"] == n
