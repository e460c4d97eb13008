"""`zherd client`, `zherd iamat`, `zherd whatsat`: pure formatting, then against real servers."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zherd.client import (
    Target,
    TargetError,
    format_coords,
    format_time,
    iamat_line,
    parse_address,
    render,
    reply_end,
    resolve,
    shorthand,
    whatsat_line,
)
from zherd.config import ServerConfig
from zherd.harness import Client, Herd, free_ports, wait_until

UCLA = "+34.068930-118.445127"

# -- pure functions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lat", "lon", "text"),
    [
        (34.06893, -118.445127, "+34.068930-118.445127"),
        (0.0, 0.0, "+0.000000+0.000000"),
        (-90, 180, "-90.000000+180.000000"),
        (47.3769, 8.5417, "+47.376900+8.541700"),
    ],
)
def test_coordinates_are_iso_6709(lat: float, lon: float, text: str) -> None:
    assert format_coords(lat, lon) == text


@pytest.mark.parametrize(
    ("lat", "lon"), [(90.5, 0), (0, -180.01), (float("nan"), 0), (0, float("inf"))]
)
def test_coordinates_out_of_range_are_refused(lat: float, lon: float) -> None:
    with pytest.raises(ValueError, match="latitude"):
        format_coords(lat, lon)


def test_time_has_nine_decimals_from_integer_nanoseconds() -> None:
    assert format_time(1_400_794_645_392_014_450) == "1400794645.392014450"
    assert format_time(5) == "0.000000005"
    assert format_time(-1_500_000_000) == "-1.500000000"


def test_command_lines() -> None:
    assert iamat_line("kiwi", 34.06893, -118.445127, 1_400_794_645_000_000_001) == (
        "IAMAT kiwi +34.068930-118.445127 1400794645.000000001"
    )
    assert whatsat_line("kiwi", 10.0, 5) == "WHATSAT kiwi 10 5"
    assert whatsat_line("kiwi", 2.5, 1) == "WHATSAT kiwi 2.5 1"
    with pytest.raises(ValueError, match="whitespace"):
        iamat_line("two words", 0, 0, 0)
    with pytest.raises(ValueError, match="whitespace"):
        whatsat_line("", 1, 1)


def test_shorthand_iamat_fills_in_coordinates_and_time() -> None:
    assert shorthand("iamat kiwi 34.06893 -118.445127", 7) == f"IAMAT kiwi {UCLA} 0.000000007"
    assert shorthand("IAMAT kiwi +1+1 3", 7) == "IAMAT kiwi +1+1 3"
    assert shorthand("iamat kiwi north south", 7) == "iamat kiwi north south"
    with pytest.raises(ValueError):
        shorthand("iamat kiwi 91 0", 7)


def test_reply_end_frames_each_kind_of_reply() -> None:
    at = b"AT Alford +0.1 kiwi +1+1 1.5\n"
    doc = b'{\n  "results": []\n}\n\n'
    assert reply_end("IAMAT kiwi +1+1 1.5", b"AT Alford") is None
    assert reply_end("IAMAT kiwi +1+1 1.5", at + b"AT next") == len(at)
    assert reply_end("WHATSAT kiwi 10 1", at) is None
    assert reply_end("WHATSAT kiwi 10 1", at + doc[:-1]) is None
    assert reply_end("WHATSAT kiwi 10 1", at + doc + b"AT more\n") == len(at + doc)
    assert reply_end("WHATSAT nobody 10 1", b"? WHATSAT nobody 10 1\n") == 22
    assert reply_end("bogus", b"? bogus\n") == 8


def test_render_is_raw_unless_pretty() -> None:
    reply = 'AT Alford +0.1 kiwi +1+1 1.5\n{"results":[{"name":"Z\\u00fcrich"}]}\n\n'
    assert render(reply, pretty=False) == reply
    pretty = render(reply, pretty=True)
    assert pretty.startswith("AT Alford +0.1 kiwi +1+1 1.5\n{\n")
    assert '"name": "Zürich"' in pretty and pretty.endswith("}\n\n")
    assert json.loads(pretty.split("\n", 1)[1]) == json.loads(reply.split("\n", 1)[1])
    for other in ("AT Alford +0.1 kiwi +1+1 1.5\n", "? bogus\n", "AT x\nnot json\n\n"):
        assert render(other, pretty=True) == other


def test_addresses_and_names() -> None:
    assert parse_address("127.0.0.1:12200") == ("127.0.0.1", 12200)
    assert parse_address("[::1]:7") == ("::1", 7)
    assert parse_address("12200") == ("127.0.0.1", 12200)
    assert parse_address("Alford") is None
    assert parse_address("host:0") is None
    assert parse_address(":80") is None
    servers = {
        "Alford": ServerConfig("Alford", "127.0.0.1", 1000, 1001),
        "Parker": ServerConfig("Parker", "10.0.0.2", 2000, 2001),
    }
    assert resolve(None, servers) == Target("Alford", "127.0.0.1", 1000)
    assert resolve("Parker", servers) == Target("Parker", "10.0.0.2", 2000)
    assert resolve("localhost:9", servers) == Target("", "localhost", 9)
    assert resolve("localhost:9", None) == Target("", "localhost", 9)
    with pytest.raises(TargetError, match="Alford, Parker"):
        resolve("Nobody", servers)
    with pytest.raises(TargetError, match="no server"):
        resolve(None, None)


# -- against real servers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(module_herd) -> Herd:
    """Alford and Parker, neighbors; Alford is the first of the topology."""
    return module_herd(servers=("Alford", "Parker"), links=(("Alford", "Parker"),))


def zherd(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zherd", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_iamat_reports_now_to_the_first_server(pair: Herd) -> None:
    before = time.time()
    done = zherd("iamat", "cli-kiwi", "34.068930", "-118.445127", cwd=pair.root)
    assert done.returncode == 0, done.stderr
    fields = done.stdout.split()
    assert done.stdout.endswith("\n") and len(fields) == 6, done.stdout
    assert fields[:2] == ["AT", "Alford"] and fields[3:5] == ["cli-kiwi", UCLA]
    assert before - 1 <= float(fields[5]) <= time.time() + 1
    assert len(fields[5].split(".")[1]) == 9


def test_whatsat_asks_the_named_server_and_prints_the_reply_raw(pair: Herd) -> None:
    at = zherd("iamat", "cli-fig", "34.068930", "-118.445127", cwd=pair.root).stdout.strip()
    parker = pair.port("Parker")
    wait_until(lambda: pair.client("Parker").ask("WHATSAT cli-fig 10 3").startswith(at), 30)
    done = zherd("whatsat", "cli-fig", "10", "3", "--server", "Parker", cwd=pair.root)
    assert done.returncode == 0, done.stderr
    with Client(parker) as c:
        assert done.stdout == c.ask("WHATSAT cli-fig 10 3")  # piped: exactly as received
    first, body = done.stdout.split("\n", 1)
    assert first == at and body.endswith("\n\n")
    assert len(json.loads(body)["results"]) == 3


def test_an_address_needs_no_topology(pair: Herd, tmp_path: Path) -> None:
    address = f"127.0.0.1:{pair.port('Parker')}"
    done = zherd("iamat", "cli-addr", "1", "2", "--server", address, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("AT Parker "), done.stderr
    done = zherd("whatsat", "cli-addr", "1", "1", "--server", address, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("AT Parker "), done.stderr


def test_a_refusal_exits_1(pair: Herd) -> None:
    done = zherd("whatsat", "cli-nobody", "10", "3", cwd=pair.root)
    assert (done.returncode, done.stdout) == (1, "? WHATSAT cli-nobody 10 3\n")
    done = zherd("whatsat", "cli-nobody", "51", "3", cwd=pair.root)
    assert (done.returncode, done.stdout) == (1, "? WHATSAT cli-nobody 51 3\n")


def test_bad_arguments_are_refused_before_sending(pair: Herd) -> None:
    done = zherd("iamat", "cli-x", "91", "0", cwd=pair.root)
    assert done.returncode == 2 and "LAT" in done.stderr and "[-90, 90]" in done.stderr
    done = zherd("iamat", "cli-x", "0", "east", cwd=pair.root)
    assert done.returncode == 2 and "LON" in done.stderr
    done = zherd("whatsat", "cli-x", "10", "3", "--server", "Nobody", cwd=pair.root)
    assert done.returncode == 2 and "Alford, Parker" in done.stderr, done.stderr


def test_nothing_listening_says_so(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    done = zherd("iamat", "kiwi", "1", "2", "--server", f"127.0.0.1:{port}", cwd=tmp_path)
    assert done.returncode == 2
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_topology_and_no_server_says_how_to_get_one(tmp_path: Path) -> None:
    done = zherd("whatsat", "kiwi", "1", "2", cwd=tmp_path)
    assert done.returncode == 2 and "zherd init" in done.stderr, done.stderr


def test_client_with_piped_commands_prints_each_reply(pair: Herd) -> None:
    commands = (
        f"IAMAT cli-pipe {UCLA} 1400794645.392014450\n"
        "\n"
        "WHATSAT cli-pipe 5 1\n"
        "iamat cli-pipe2 1.5 -2.25\n"
    )
    done = zherd("client", "Parker", cwd=pair.root, stdin=commands)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0].startswith("AT Parker ") and lines[0].endswith(f"{UCLA} 1400794645.392014450")
    assert lines[1] == lines[0]  # the WHATSAT's AT line, then its JSON to a blank line
    at2 = next(line for line in lines[2:] if line.startswith("AT "))
    assert at2.split()[3:5] == ["cli-pipe2", "+1.500000-2.250000"]
    assert json.loads(done.stdout.split("\n", 2)[2].split("\n\n")[0])["status"] == "OK"
    # Any refusal makes the script's status 1.
    done = zherd("client", f"127.0.0.1:{pair.port('Alford')}", cwd=pair.root, stdin="bogus\n")
    assert (done.returncode, done.stdout) == (1, "? bogus\n")


def test_client_on_a_terminal_prompts_and_keeps_history(pair: Herd, tmp_path: Path) -> None:
    history = tmp_path / "history"
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zherd", "client"],
        cwd=pair.root,
        stdin=child,
        stdout=child,
        stderr=child,
        env={**os.environ, "ZHERD_HISTFILE": str(history), "TERM": "dumb"},
    )
    os.close(child)
    seen = b""

    def read_until(marker: bytes) -> bytes:
        nonlocal seen
        deadline = time.monotonic() + 30
        while marker not in seen:
            assert time.monotonic() < deadline, seen
            if select.select([main], [], [], 1)[0]:
                seen += os.read(main, 65536)
        out, _, seen = seen.partition(marker)
        return out

    try:
        read_until(b"Alford> ")
        os.write(main, f"IAMAT cli-tty {UCLA} 1400794645.5\n".encode())
        assert b"AT Alford " in read_until(b"Alford> ")
        os.write(main, b"WHATSAT cli-tty 10 2\n")
        reply = read_until(b"Alford> ").replace(b"\r\n", b"\n").decode()
        assert '"results": [' in reply and reply.rstrip().endswith("}"), reply
        os.write(main, b"help\n")
        assert b"WHATSAT <client-id>" in read_until(b"Alford> ")
        os.write(main, b"\x04")  # Ctrl-D
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    assert history.read_text().splitlines()[-3:] == [
        f"IAMAT cli-tty {UCLA} 1400794645.5",
        "WHATSAT cli-tty 10 2",
        "help",
    ]


def test_a_connection_the_server_dropped_as_idle_is_made_again(herd) -> None:
    """An interactive client left alone past the server's idle timeout just works on."""
    from zherd.client import Connection

    h = herd(servers=("Alford",), links=(), sections={"limits": {"idle_timeout": 0.3}})
    with Connection("127.0.0.1", h.port("Alford"), name="Alford") as conn:
        assert conn.ask(f"IAMAT cli-idle {UCLA} 1.5").startswith("AT Alford ")
        sock = conn.sock

        def closed_by_server() -> bool:
            readable = select.select([sock], [], [], 0)[0]
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""

        wait_until(closed_by_server, timeout=30, what="the server to drop the idle client")
        assert conn.ask("WHATSAT cli-idle 1 1").startswith("AT Alford ")
        assert conn.sock is not sock
