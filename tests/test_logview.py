"""`zherd logs`: parsing, filtering and merging on synthetic files, following files as they
grow and rotate, the command itself, and a real herd's logs."""

from __future__ import annotations

import io
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from zherd.harness import PAPER_LINKS, PAPER_SERVERS, topology_toml, wait_until
from zherd.logview import (
    PREFIX,
    Entry,
    Filter,
    Tail,
    entries,
    follow,
    history,
    log_files,
    merge,
    parse_since,
    stamp_of,
)

NOW = datetime(2026, 12, 2, 7, 40, 1, 123456, tzinfo=UTC)


def line(at: datetime, server: str, message: str, level: str = "INFO") -> str:
    """A log line in the format every server writes (CONTRACTS: LOG LINE FORMAT)."""
    return f"{stamp_of(at)} | {server} | {level:<7} | {message}\n"


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


# -- pure ----------------------------------------------------------------------------------------


def test_the_prefix_of_the_contract_format() -> None:
    text = "2026-12-02T07:40:01.123456Z | Alford | INFO    | client 127.0.0.1:5555 <- IAMAT kiwi"
    m = PREFIX.match(text)
    assert m is not None and m.groups() == ("2026-12-02T07:40:01.123456Z", "Alford")
    assert text[m.end() :] == "client 127.0.0.1:5555 <- IAMAT kiwi"
    assert line(NOW, "Alford", "x", "WARNING") == (
        "2026-12-02T07:40:01.123456Z | Alford | WARNING | x\n"
    )
    for other in ("2026-12-02 07:40:01.123456 | INFO    | old format", "    AT Alford", ""):
        assert PREFIX.match(other) is None


def test_entries_keep_unstamped_lines_with_the_line_before() -> None:
    lines = [
        "Traceback (most recent call last):\n",
        line(at(0), "Alford", "one"),
        line(at(1), "Alford", "two"),
        "  File x, line 1\n",
        "ValueError: no\n",
        line(at(2), "Alford", "three"),
    ]
    got = list(entries(lines, "Alford", stamp="2026-01-01T00:00:00.000000Z"))
    assert [e.stamp for e in got] == [
        "2026-01-01T00:00:00.000000Z",
        stamp_of(at(0)),
        stamp_of(at(1)),
        stamp_of(at(2)),
    ]
    assert got[2].text == "".join(lines[2:5])
    assert got[2].message == "two\n  File x, line 1\nValueError: no\n"
    assert got[3] == Entry(stamp_of(at(2)), "Alford", "three\n", lines[5])
    assert list(entries([], "Alford")) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - timedelta(seconds=30)),
        ("10m", NOW - timedelta(minutes=10)),
        ("2h", NOW - timedelta(hours=2)),
        ("1d", NOW - timedelta(days=1)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("2026-12-02T07:00:00Z", datetime(2026, 12, 2, 7, tzinfo=UTC)),
        ("2026-12-02T07:00:00", datetime(2026, 12, 2, 7, tzinfo=UTC)),  # UTC, like the log
        ("2026-12-02 09:00:00+02:00", datetime(2026, 12, 2, 7, tzinfo=UTC)),
        ("2026-12-02T07:40:01.5Z", datetime(2026, 12, 2, 7, 40, 1, 500000, tzinfo=UTC)),
        ("2026-12-02", datetime(2026, 12, 2, tzinfo=UTC)),
    ],
)
def test_since_takes_iso_times_and_ages(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == stamp_of(expected)


@pytest.mark.parametrize("text", ["", "10", "m", "10 minutes", "-5m", "yesterday", "12/02/2026"])
def test_since_refuses_anything_else_saying_what_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match=r"ISO time .* or an age"):
        parse_since(text, NOW)


def test_filter_by_time_client_token_and_text() -> None:
    def entry(seconds: float, message: str) -> Entry:
        text = line(at(seconds), "Alford", message)
        return next(entries([text], "Alford"))

    iamat = entry(0, "client 127.0.0.1:5555 <- IAMAT kiwi +34.06-118.44 1400794645.39")
    flood = entry(1, "bus <- Parker:   AT Alford +0.2 kiwi +34.06-118.44 1400794645.39")
    other = entry(2, "client 127.0.0.1:5555 <- IAMAT kiwi2 +34.06-118.44 1400794645.39")
    quiet = entry(3, "neighbor Parker up (epoch 1f3a)")
    every = [iamat, flood, other, quiet]
    assert [e for e in every if Filter()(e)] == every
    assert [e for e in every if Filter(client="kiwi")(e)] == [iamat, flood]
    assert [e for e in every if Filter(client="Alford")(e)] == [flood]  # not the prefix's name
    assert [e for e in every if Filter(grep="Parker")(e)] == [flood, quiet]
    assert [e for e in every if Filter(grep="| Alford |")(e)] == every  # the whole line
    assert [e for e in every if Filter(since=stamp_of(at(1)))(e)] == [flood, other, quiet]
    assert [e for e in every if Filter(stamp_of(at(1)), "kiwi", "AT")(e)] == [flood]


def test_merge_interleaves_by_time_and_keeps_ties_in_stream_order() -> None:
    a = list(entries([line(at(0), "A", "a0"), line(at(2), "A", "a2")], "A"))
    b = list(entries([line(at(1), "B", "b1"), line(at(2), "B", "b2")], "B"))
    assert [e.message for e in merge([a, b])] == ["a0\n", "b1\n", "a2\n", "b2\n"]
    assert [e.message for e in merge([b, a])] == ["a0\n", "b1\n", "b2\n", "a2\n"]


def test_log_files_are_a_servers_rotated_files_then_its_current_one(tmp_path: Path) -> None:
    names = [
        "Alford.log",
        "Alford.2026-12-02_07-40-01_123456.log",
        "Alford.2026-12-01_23-00-00_000001.log",
        "Alford.2026-12-01_23-00-00_000001.2.log",  # loguru's counter for a same-time rename
        "Al.log",
        "Alford.B.log",  # the current file of a server named "Alford.B"
        "Alford.2026-12-02_07-40-01_123456.log.gz",
        "Parker.log",
    ]
    for name in names:
        (tmp_path / name).write_text("")
    assert [p.name for p in log_files(tmp_path, "Alford")] == [
        "Alford.2026-12-01_23-00-00_000001.2.log",
        "Alford.2026-12-01_23-00-00_000001.log",
        "Alford.2026-12-02_07-40-01_123456.log",
        "Alford.log",
    ]
    assert [p.name for p in log_files(tmp_path, "Alford.B")] == ["Alford.B.log"]
    assert log_files(tmp_path, "Nobody") == []
    assert log_files(tmp_path / "missing", "Alford") == []


# -- files ---------------------------------------------------------------------------------------


def write(path: Path, *lines: str) -> None:
    with path.open("a") as f:
        f.write("".join(lines))


def test_history_merges_every_file_of_every_server_in_time_order(tmp_path: Path) -> None:
    write(tmp_path / "Alford.2026-12-02_07-00-00_000000.log", line(at(0), "Alford", "a0 kiwi"))
    write(tmp_path / "Alford.log", line(at(3), "Alford", "a3"), line(at(5), "Alford", "a5 kiwi"))
    write(tmp_path / "Parker.log", line(at(1), "Parker", "p1 kiwi"), line(at(4), "Parker", "p4"))
    write(tmp_path / "Powell.log", line(at(2), "Powell", "w2"))
    merged, tails = history(tmp_path, ["Alford", "Parker", "Powell", "Bolden"], Filter())
    assert [e.message.strip() for e in merged] == [
        "a0 kiwi",
        "p1 kiwi",
        "w2",
        "a3",
        "p4",
        "a5 kiwi",
    ]
    assert set(tails) == {"Alford", "Parker", "Powell", "Bolden"}
    merged, _ = history(
        tmp_path, ["Alford", "Parker"], Filter(since=stamp_of(at(1)), client="kiwi")
    )
    assert [e.message.strip() for e in merged] == ["p1 kiwi", "a5 kiwi"]


def test_a_tail_reads_what_is_appended_and_holds_an_unended_line(tmp_path: Path) -> None:
    path = tmp_path / "Alford.log"
    tail = Tail(path)
    assert list(tail.lines()) == []  # not there yet
    write(path, line(at(0), "Alford", "one"), line(at(1), "Alford", "tw"))
    with path.open("r+") as f:  # the second line is still being written
        f.seek(0, os.SEEK_END)
        f.seek(f.tell() - 1)
        f.truncate()
    assert [e.message for e in tail.entries("Alford")] == ["one\n"]
    write(path, "o\n")
    assert [e.message for e in tail.entries("Alford")] == ["two\n"]
    write(path, "an unstamped line\n")
    got = tail.entries("Alford")  # belongs with the last entry: same stamp
    assert [(e.stamp, e.message) for e in got] == [(stamp_of(at(1)), "an unstamped line\n")]
    write(path, "cut")
    assert list(tail.lines(final=True)) == ["cut\n"]
    tail.close()


def test_a_tail_loses_nothing_across_rotation(tmp_path: Path) -> None:
    path = tmp_path / "Alford.log"
    write(path, line(at(0), "Alford", "before"))
    tail = Tail(path)
    assert [e.message for e in tail.entries("Alford")] == ["before\n"]
    write(path, line(at(1), "Alford", "last words of the old file"))
    path.rename(tmp_path / "Alford.2026-12-02_07-40-01_123456.log")
    assert [e.message for e in tail.entries("Alford")] == ["last words of the old file\n"]
    write(path, line(at(2), "Alford", "first of the new file"))
    assert [e.message for e in tail.entries("Alford")] == ["first of the new file\n"]
    path.write_text("")  # truncated in place (loguru does not; an operator might)
    assert tail.entries("Alford") == []
    write(path, line(at(3), "Alford", "rewritten"))
    assert [e.message for e in tail.entries("Alford")] == ["rewritten\n"]
    tail.close()


def test_a_tail_reads_at_most_about_its_limit_per_read(tmp_path: Path) -> None:
    path = tmp_path / "Alford.log"
    many = [line(at(i), "Alford", f"n{i}") for i in range(5000)]
    write(path, *many)
    tail = Tail(path)
    first = tail.entries("Alford", limit=1 << 16)
    assert 0 < len(first) < 5000
    rest = tail.entries("Alford")
    assert [e.text for e in first + rest] == many
    tail.close()


def test_follow_prints_new_lines_until_stopped(tmp_path: Path) -> None:
    write(tmp_path / "Alford.log", line(at(0), "Alford", "old"))
    merged, tails = history(tmp_path, ["Alford", "Parker"], Filter(grep="new"), final=False)
    assert list(merged) == []
    out = io.StringIO()
    stop = threading.Event()
    thread = threading.Thread(
        target=follow, args=(tails, Filter(grep="new"), out), kwargs={"stop": stop.is_set}
    )
    thread.start()
    try:
        write(tmp_path / "Parker.log", line(at(1), "Parker", "new from a file that just appeared"))
        write(tmp_path / "Alford.log", line(at(2), "Alford", "new"), line(at(3), "Alford", "no"))
        wait_until(lambda: out.getvalue().count("\n") == 2, what="followed lines")
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert out.getvalue() == (
        line(at(1), "Parker", "new from a file that just appeared") + line(at(2), "Alford", "new")
    )


# -- the command ---------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A topology of the paper's servers (never started) and logs written by hand."""
    ports = {name: (20000 + 2 * i, 20001 + 2 * i) for i, name in enumerate(PAPER_SERVERS)}
    (tmp_path / "topology.toml").write_text(
        topology_toml(ports, PAPER_LINKS, {"logging": {"dir": "logs"}})
    )
    (tmp_path / "logs").mkdir()
    return tmp_path


def zherd_logs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zherd", "logs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_logs_command_filters_and_merges(folder: Path) -> None:
    now = datetime.now(UTC)
    logs = folder / "logs"
    write(logs / "Alford.log", line(now - timedelta(hours=3), "Alford", "up"))
    write(logs / "Alford.log", line(now - timedelta(minutes=5), "Alford", "<- IAMAT kiwi +1+1 1"))
    write(logs / "Parker.log", line(now - timedelta(minutes=20), "Parker", "<- IAMAT fig +1+1 1"))
    write(logs / "Parker.log", line(now - timedelta(minutes=4), "Parker", "bus <- Alford: kiwi"))
    done = zherd_logs(cwd=folder)
    assert done.returncode == 0, done.stderr
    assert [m.split(" | ")[3] for m in done.stdout.splitlines()] == [
        "up",
        "<- IAMAT fig +1+1 1",
        "<- IAMAT kiwi +1+1 1",
        "bus <- Alford: kiwi",
    ]
    done = zherd_logs("--since", "10m", "--client", "kiwi", cwd=folder)
    assert [m.split(" | ")[1] for m in done.stdout.splitlines()] == ["Alford", "Parker"]
    done = zherd_logs("Parker", "--grep", "IAMAT", cwd=folder)
    assert done.stdout.splitlines() == [
        line(now - timedelta(minutes=20), "Parker", "<- IAMAT fig +1+1 1").strip()
    ]
    done = zherd_logs("--since", "5 minutes", cwd=folder)
    assert done.returncode == 2 and "or an age" in done.stderr
    done = zherd_logs("Nobody", cwd=folder)
    assert done.returncode == 2 and "no server named Nobody" in done.stderr
    done = zherd_logs("Hamilton", cwd=folder)
    assert done.returncode == 1 and "no logs of Hamilton" in done.stderr
    assert "Traceback" not in done.stderr


def test_logs_follow_stops_on_ctrl_c(folder: Path) -> None:
    logs = folder / "logs"
    write(logs / "Bolden.log", line(at(0), "Bolden", "history"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "zherd", "logs", "--follow"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen = b""

    def saw(text: str) -> bool:
        nonlocal seen
        while select.select([proc.stdout], [], [], 0.05)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
        return text.encode() in seen

    try:
        wait_until(lambda: saw("history"), timeout=30, what="the history")
        write(logs / "Powell.log", line(datetime.now(UTC), "Powell", "live"))
        wait_until(lambda: saw("| Powell | INFO    | live\n"), timeout=30, what="a new line")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and err == b"", err


# -- a real herd (needs the CONTRACTS.md log line format, which the servers write once the
# lead's new zherd/logs.py is merged; before that, this test fails on the old format) -------


def test_a_real_herds_logs_merge_in_time_order(herd) -> None:
    h = herd()
    with h.client("Powell") as c:
        at_line = c.ask("IAMAT logview-kiwi +34.068930-118.445127 1400794645.392014450").strip()
    wait_until(
        lambda: h.client("Hamilton").ask("WHATSAT logview-kiwi 1 1").startswith(at_line),
        timeout=30,
        what="the flood to reach Hamilton",
    )
    done = zherd_logs("--client", "logview-kiwi", "--config", str(h.config), cwd=h.root)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for text in lines:
        assert PREFIX.match(text), text
    stamps = [text[:27] for text in lines]
    assert stamps == sorted(stamps)
    servers = {text.split(" | ")[1] for text in lines}
    assert {"Powell", "Hamilton"} <= servers, done.stdout
    assert any(re.search(r"<- IAMAT logview-kiwi ", text) for text in lines), done.stdout
    now = time.time()
    first = datetime.strptime(stamps[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(first.timestamp() - now) < 600  # UTC stamps, not local time
