"""Integration: the paper's herd of five real `zherd serve` processes on loopback.

Replies over TCP exactly as docs/protocol.md writes them, flooding along the longest
path, newest-wins under reordering, a killed server, a herd started in any
order, and the per-server log files.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import signal
import socket
import time
import uuid
from typing import Any

import pytest

from zherd.harness import PAPER_SERVERS, Client, Herd, wait_until

UCLA = "+34.068930-118.445127"
UCLA_LATLON = (34.068930, -118.445127)
AT_LINE = re.compile(r"AT (\S+) ([+-])([0-9]+)\.([0-9]{9}) (\S+) (\S+) (\S+)")
LOG_LINE = re.compile(
    r"20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z \| \S+ \| "
    r"(DEBUG|INFO|SUCCESS|WARNING|ERROR|CRITICAL) *\| "
)
CONVERGE = 20.0  # seconds: generous, for busy machines


# -- helpers -------------------------------------------------------------------------


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def now_s() -> int:
    return time.time_ns() // 1_000_000_000


def skew_ns(at_line: str) -> int:
    m = AT_LINE.fullmatch(at_line)
    assert m, f"not an AT line: {at_line!r}"
    ns = int(m[3]) * 1_000_000_000 + int(m[4])
    return -ns if m[2] == "-" else ns


def reply_to(client: Client, command: str) -> str:
    """The next reply on `client`, for `command` (a WHATSAT's runs to its blank line)."""
    first = client.line()
    if command.split()[:1] == ["WHATSAT"] and first.startswith("AT "):
        return first + client.read_until(b"\n\n").decode()
    return first


def split_whatsat(reply: str) -> tuple[str, dict[str, Any], str]:
    """(AT line, places JSON, JSON text) of a WHATSAT reply, checking its framing."""
    assert reply.endswith("}\n\n"), reply[-50:]
    at_line, _, body = reply.partition("\n")
    text = body[:-2]
    assert "\n\n" not in text
    return at_line, json.loads(text), text


def km_between(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0088 * math.asin(math.sqrt(h))


def check_places(places: dict[str, Any], center: tuple[float, float], radius: float, n: int):
    """Legacy shape, at most `n` results, all within `radius` km, nearest first."""
    assert set(places) >= {"html_attributions", "results", "status"}
    results = places["results"]
    assert len(results) <= n
    assert places["status"] == ("OK" if results else "ZERO_RESULTS")
    distances = []
    for r in results:
        loc = r["geometry"]["location"]
        distances.append(km_between(center, (loc["lat"], loc["lng"])))
        assert isinstance(r["name"], str) and r["name"]
    assert all(d <= radius * 1.001 + 1e-3 for d in distances), distances
    assert all(a <= b + 1e-6 for a, b in itertools.pairwise(distances)), distances


class Holdings:
    """Asks the servers of a herd what they hold for a client (`Herd.holdings`)."""

    def __init__(self, herd: Herd) -> None:
        self.herd = herd

    def at(self, server: str, client_id: str) -> str | None:
        """The AT line `server` holds for `client_id`, or None if it has never heard of it."""
        return self.herd.holdings([client_id], [server])[server][client_id]

    def everywhere(self, client_id: str, at_line: str, servers=PAPER_SERVERS) -> bool:
        views = self.herd.holdings([client_id], servers).values()
        return all(view[client_id] == at_line for view in views)

    def __enter__(self) -> Holdings:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def neighbors(herd: Herd, server: str) -> set[str]:
    return {n for link in herd.links if server in link for n in link} - {server}


def link_is(herd: Herd, server: str, peer: str, state: str) -> None:
    """Wait until `server`'s status says its neighbor `peer` is `state` ("up" or "down")."""

    def now() -> str | None:
        try:
            return herd.link(server, peer)["state"]
        except OSError:  # the status endpoint starts just after the server accepts clients
            return None

    wait_until(lambda: now() == state, timeout=CONVERGE, what=f"{server} to see {peer} {state}")


def iamat(herd: Herd, server: str, client_id: str, coords: str, when: str) -> str:
    """Send one IAMAT to `server`; its AT reply line (without the newline)."""
    with herd.client(server) as c:
        reply = c.ask(f"IAMAT {client_id} {coords} {when}")
    assert reply.startswith(f"AT {server} "), reply
    return reply.rstrip("\n")


@pytest.fixture(scope="module")
def paper(module_herd) -> Herd:
    """The paper's five servers and five links, shared by this module's tests."""
    return module_herd()


# -- replies, exactly ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coords", "frac", "offset"),
    [
        (UCLA, ".392014450", 0),
        ("+34-118", "", 0),
        ("-33.8688197+151.2092955", ".5", -30),
        ("+90-180", ".000000001", -100),
        ("-90.000000+180.000000", ".123456789", 3600),  # in the future: a negative skew
        ("+0.0-0.0", ".000000000", 0),
    ],
)
def test_at_reply_echoes_the_client_and_a_consistent_skew(paper, coords, frac, offset) -> None:
    cid = uid("at")
    seconds = now_s() + offset
    when = f"{seconds}{frac}"
    client_ns = seconds * 1_000_000_000 + (int(frac[1:].ljust(9, "0")) if frac else 0)
    with paper.client("Alford") as c:
        before = time.time_ns()
        reply = c.ask(f"IAMAT {cid} {coords} {when}")
        after = time.time_ns()
    assert reply.endswith("\n") and reply.count("\n") == 1
    at_line = reply[:-1]
    m = AT_LINE.fullmatch(at_line)
    assert m, at_line
    assert (m[1], m[5], m[6], m[7]) == ("Alford", cid, coords, when)
    assert before - client_ns <= skew_ns(at_line) <= after - client_ns
    if offset > 0:
        assert m[2] == "-"


def test_fields_may_be_separated_by_any_whitespace(paper) -> None:
    cid = uid("ws")
    when = f"{now_s()}.000000100"
    with paper.client("Bolden") as c:
        c.send(f" \t IAMAT\t{cid}   +34-118\t \t{when} \t\r\n")
        at_line = c.line().rstrip("\n")
        assert at_line.startswith("AT Bolden ")
        assert at_line.endswith(f" {cid} +34-118 {when}")
        c.send(f"\tWHATSAT  {cid}\t10   3  \n")
        at2, places, _ = split_whatsat(reply_to(c, "WHATSAT"))
    assert at2 == at_line
    check_places(places, (34.0, -118.0), 10, 3)


def test_whatsat_reply_is_the_stored_at_line_then_legacy_json(paper) -> None:
    cid = uid("ws")
    at_line = iamat(paper, "Hamilton", cid, UCLA, f"{now_s()}.392014450")
    with paper.client("Hamilton") as c:
        for radius, count in [(10, 5), (50, 20), (1.5, 1), (0.001, 1), (50, 1), (25.5, 7)]:
            reply = c.ask(f"WHATSAT {cid} {radius} {count}")
            got_at, places, _ = split_whatsat(reply)
            assert got_at == at_line
            check_places(places, UCLA_LATLON, radius, count)
            if radius >= 10:  # Los Angeles has places enough: truncated to exactly the count
                assert len(places["results"]) == count
        # Nothing near the middle of the Pacific: an empty answer in the same shape.
        ocean = uid("ocean")
        iamat(paper, "Hamilton", ocean, "+0.0-150.0", f"{now_s()}")
        _, places, _ = split_whatsat(c.ask(f"WHATSAT {ocean} 50 20"))
        assert (places["results"], places["status"]) == ([], "ZERO_RESULTS")


def test_whatsat_reply_ends_with_exactly_two_newlines(paper) -> None:
    cid = uid("nl")
    when = f"{now_s()}.5"
    with paper.client("Parker") as c:
        c.send(f"IAMAT {cid} {UCLA} {when}\nWHATSAT {cid} 10 2\nIAMAT {cid} {UCLA} {when}\n")
        first = c.line()
        body = c.read_until(b"}\n\n").decode()
        third = c.line()  # the very next byte starts the next reply: no third newline
    assert first.startswith("AT Parker ")
    assert body.startswith(first)
    assert third.startswith("AT Parker ") and third.endswith(f"{cid} {UCLA} {when}\n")


INVALID = [
    "IAMAT {id} 34.068930-118.445127 1400794645.392014450",  # no sign on the latitude
    "IAMAT {id} +34.068930 1400794645",  # no longitude
    "IAMAT {id} +91-118 1400794645",  # latitude out of range
    "IAMAT {id} -90.0000001+0 1400794645",
    "IAMAT {id} +34-180.5 1400794645",  # longitude out of range
    "IAMAT {id} +34+181 1400794645",
    "IAMAT {id} +34.-118 1400794645",
    "IAMAT {id} ++34-118 1400794645",
    "IAMAT {id} +3x4-118 1400794645",
    "IAMAT {id} +34-118 1400794645.1234567890",  # ten decimals
    "IAMAT {id} +34-118 14007946x5",
    "IAMAT {id} +34-118 1e9",
    "IAMAT {id} +34-118 1400794645.",
    "IAMAT {id} +34-118 nan",
    "IAMAT {id} +34-118",  # a field missing
    "IAMAT {id} +34-118 1400794645 extra",  # one too many
    "IAMAT +34-118 1400794645",
    "IAMAT",
    "iamat {id} +34-118 1400794645",  # commands are case-sensitive
    "WHATSAT {known} 0 5",
    "WHATSAT {known} 0.0 5",
    "WHATSAT {known} 51 5",
    "WHATSAT {known} 50.0001 5",
    "WHATSAT {known} -1 5",
    "WHATSAT {known} 10 0",
    "WHATSAT {known} 10 21",
    "WHATSAT {known} 10 -1",
    "WHATSAT {known} 10 5.5",
    "WHATSAT {known} ten 5",
    "WHATSAT {known} 10",
    "WHATSAT {known} 10 5 extra",
    "WHATSAT {known}",
    "WHATSAT nobody-{id} 10 5",  # nobody has heard of this client
    "whatsat {known} 10 5",
    "AT Alford +0.000000001 {id} +34-118 1400794645",  # a reply is not a command
    "HELLO there how are",
    "GET / HTTP/1.1",
    "?",
    "   leading and trailing   ",
    # Blank lines are "anything else" too (docs/protocol.md): answered "? " + the line as received.
    "",
    "   ",
    "\t",
    "\r",
]


def test_every_invalid_line_is_echoed_after_a_question_mark(paper) -> None:
    cid, known = uid("bad"), uid("known")
    iamat(paper, "Powell", known, UCLA, f"{now_s()}")
    lines = [line.format(id=cid, known=known) for line in INVALID]
    with paper.client("Powell") as c:
        for line in lines:  # one at a time ...
            assert c.ask(line) == f"? {line}\n", line
        c.send("".join(f"{line}\n" for line in lines))  # ... and all pipelined in one send
        for line in lines:
            assert c.line() == f"? {line}\n", line
        # None of it was stored: the IAMATs were refused, so nobody knows `cid`.
        assert c.ask(f"WHATSAT {cid} 10 5") == f"? WHATSAT {cid} 10 5\n"


# -- many commands per connection ------------------------------------------------------------


def test_pipelined_mix_is_answered_in_order(paper) -> None:
    a, b, nobody = uid("pipe-a"), uid("pipe-b"), uid("pipe-nobody")
    t = now_s()
    commands = [
        f"IAMAT {a} {UCLA} {t}.1",
        f"WHATSAT {a} 5 2",
        "BOGUS line here",
        f"WHATSAT {nobody} 5 2",
        f"IAMAT {b} +34-118 {t}.2",
        f"WHATSAT {b} 10 1",
        f"WHATSAT {a} 5 0",
        "",
        f"IAMAT {a} +34.1-118.4 {t}.3",  # newer: the WHATSAT after it must see it
        f"WHATSAT {a} 5 1",
        f"IAMAT {a} {UCLA} {t}.0",  # older: answered, but not stored
        f"WHATSAT {a} 5 1",
    ]
    with paper.client("Alford") as c:
        c.send("".join(f"{cmd}\n" for cmd in commands))
        replies = [reply_to(c, cmd) for cmd in commands]
    at_a = replies[0].rstrip("\n")
    assert re.fullmatch(rf"AT Alford [+-]\S+ {a} {re.escape(UCLA)} {t}\.1", at_a)
    assert split_whatsat(replies[1])[0] == at_a
    assert replies[2] == "? BOGUS line here\n"
    assert replies[3] == f"? WHATSAT {nobody} 5 2\n"
    at_b = replies[4].rstrip("\n")
    assert at_b.endswith(f" {b} +34-118 {t}.2")
    assert split_whatsat(replies[5])[0] == at_b
    assert replies[6] == f"? WHATSAT {a} 5 0\n"
    assert replies[7] == "? \n"
    newer = replies[8].rstrip("\n")
    assert newer.endswith(f" {a} +34.1-118.4 {t}.3")
    assert split_whatsat(replies[9])[0] == newer
    assert replies[10].startswith("AT Alford ") and replies[10].endswith(f" {t}.0\n")
    assert split_whatsat(replies[11])[0] == newer


def test_a_burst_of_pipelined_commands_keeps_its_order(paper) -> None:
    cid = uid("burst")
    t = now_s()
    commands = []
    for i in range(150):
        commands += [f"IAMAT {cid} +{i % 90}.5-118 {t}.{i:09d}", f"WHATSAT {cid} 1 1", f"X{i}"]
    with paper.client("Bolden") as c:
        c.send("".join(f"{cmd}\n" for cmd in commands))
        replies = [reply_to(c, cmd) for cmd in commands]
    for i in range(150):
        at_line, whatsat, invalid = replies[3 * i : 3 * i + 3]
        assert at_line.startswith("AT Bolden ")
        assert at_line.endswith(f" {cid} +{i % 90}.5-118 {t}.{i:09d}\n")
        assert split_whatsat(whatsat)[0] == at_line.rstrip("\n")
        assert invalid == f"? X{i}\n"


def half_closed(herd: Herd, server: str, data: str) -> str:
    """Send `data`, half-close, and read everything until the server closes."""
    with herd.client(server) as c:
        c.sock.settimeout(30)
        c.send(data)
        c.sock.shutdown(socket.SHUT_WR)
        return c.read_all().decode()


def test_last_command_without_newline_then_half_close(paper) -> None:
    cid = uid("eof")
    when = f"{now_s()}.000000001"
    out = half_closed(paper, "Parker", f"IAMAT {cid} +34-118 {when}")
    assert re.fullmatch(rf"AT Parker [+-][0-9]+\.[0-9]{{9}} {cid} \+34-118 {when}\n", out), out

    cid = uid("eof2")
    out = half_closed(paper, "Parker", f"IAMAT {cid} {UCLA} {when}\nWHATSAT {cid} 10 3")
    first, _, rest = out.partition("\n")
    assert first.startswith("AT Parker ") and first.endswith(f" {cid} {UCLA} {when}")
    at_line, places, _ = split_whatsat(rest)
    assert at_line == first
    check_places(places, UCLA_LATLON, 10, 3)
    assert len(places["results"]) == 3

    assert half_closed(paper, "Parker", "not a command") == "? not a command\n"
    assert half_closed(paper, "Parker", "") == ""


def test_half_close_after_more_whatsats_than_may_be_in_flight(paper) -> None:
    """Every pipelined WHATSAT is answered before the server closes (queue and held lines)."""
    cid = uid("eof-many")
    at_line = iamat(paper, "Powell", cid, UCLA, f"{now_s()}")
    commands = [f"WHATSAT {cid} {1 + i % 40} {1 + i % 20}" for i in range(80)]
    commands += [f"IAMAT {cid} {UCLA} 1.0", "tail"]
    out = half_closed(paper, "Powell", "".join(f"{cmd}\n" for cmd in commands))
    replies = out.split("\n\n")
    assert replies[-1].startswith("AT Powell ") and replies[-1].endswith(" 1.0\n? tail\n")
    assert len(replies) == 81
    for i, reply in enumerate(replies[:-1]):
        got_at, places, _ = split_whatsat(reply + "\n\n")
        assert got_at == at_line
        check_places(places, UCLA_LATLON, 1 + i % 40, 1 + i % 20)


# -- flooding ----------------------------------------------------------------------------------


def test_update_crosses_the_longest_path(paper) -> None:
    cid = uid("far")
    at_line = iamat(paper, "Hamilton", cid, UCLA, f"{now_s()}.392014450")
    with Holdings(paper) as probe:
        got = wait_until(lambda: probe.at("Powell", cid), timeout=CONVERGE, what="Powell")
        assert got == at_line  # Hamilton's own line, with Hamilton's skew
        with paper.client("Powell") as c:
            reply = c.ask(f"WHATSAT {cid} 10 3")
        assert split_whatsat(reply)[0] == at_line


def test_every_server_learns_every_client(paper) -> None:
    when = f"{now_s()}"
    lines: dict[str, str] = {}
    for i, server in enumerate(PAPER_SERVERS):
        cid = uid(f"all-{server}")
        lines[cid] = iamat(paper, server, cid, f"+{10 + i}-{100 + i}", when)
    with Holdings(paper) as probe:
        wait_until(
            lambda: all(probe.everywhere(cid, line) for cid, line in lines.items()),
            timeout=CONVERGE,
            what="every client at every server",
        )


def test_newer_wins_over_an_older_update_sent_after_it(paper) -> None:
    t = now_s()
    with Holdings(paper) as probe:
        # Racing: the newer at Hamilton, the older at Powell right after, both in flight.
        cid = uid("race")
        with paper.client("Hamilton") as h, paper.client("Powell") as p:
            h.send(f"IAMAT {cid} +10+10 {t + 10}.000000000\n")
            p.send(f"IAMAT {cid} +20+20 {t}.999999999\n")
            newer, older = h.line().rstrip("\n"), p.line().rstrip("\n")
        assert newer.startswith("AT Hamilton ") and older.startswith("AT Powell ")
        wait_until(lambda: probe.everywhere(cid, newer), timeout=CONVERGE, what="newer")

        # Late: the older reaches Powell after the newer is everywhere; nobody takes it.
        cid = uid("late")
        newer = iamat(paper, "Hamilton", cid, "+10+10", f"{t + 10}")
        wait_until(lambda: probe.everywhere(cid, newer), timeout=CONVERGE, what="newer")
        iamat(paper, "Powell", cid, "+20+20", f"{t + 9}.999999999")
        assert probe.at("Powell", cid) == newer
        marker = uid("marker")
        marker_line = iamat(paper, "Powell", marker, "+1+1", f"{t}")
        wait_until(lambda: probe.everywhere(marker, marker_line), timeout=CONVERGE)
        assert all(probe.at(s, cid) == newer for s in PAPER_SERVERS)


def test_a_tie_on_client_time_goes_to_the_greater_origin_name(paper) -> None:
    when = f"{now_s()}.123456789"
    with Holdings(paper) as probe:
        # Both at once: every server settles on Powell's ("Powell" > "Alford").
        cid = uid("tie")
        with paper.client("Alford") as a, paper.client("Powell") as p:
            a.send(f"IAMAT {cid} +1+1 {when}\n")
            p.send(f"IAMAT {cid} +2+2 {when}\n")
            a.line()
            winner = p.line().rstrip("\n")
        wait_until(lambda: probe.everywhere(cid, winner), timeout=CONVERGE, what="tie, racing")

        # Powell's first: Alford's is answered but changes nothing anywhere.
        cid = uid("tie-p")
        winner = iamat(paper, "Powell", cid, "+2+2", when)
        wait_until(lambda: probe.everywhere(cid, winner), timeout=CONVERGE)
        iamat(paper, "Alford", cid, "+1+1", when)
        assert probe.at("Alford", cid) == winner
        marker = uid("marker")
        marker_line = iamat(paper, "Alford", marker, "+1+1", when)
        wait_until(lambda: probe.everywhere(marker, marker_line), timeout=CONVERGE)
        assert all(probe.at(s, cid) == winner for s in PAPER_SERVERS)

        # Alford's first: Powell's then replaces it everywhere.
        cid = uid("tie-a")
        loser = iamat(paper, "Alford", cid, "+1+1", when)
        wait_until(lambda: probe.everywhere(cid, loser), timeout=CONVERGE)
        winner = iamat(paper, "Powell", cid, "+2+2", when)
        wait_until(lambda: probe.everywhere(cid, winner), timeout=CONVERGE, what="tie, later")


# -- logs ----------------------------------------------------------------------------------------


def test_one_log_file_per_server_with_every_client_line(paper) -> None:
    cid = uid("logged")
    at_line = iamat(paper, "Bolden", cid, UCLA, f"{now_s()}.5")
    with paper.client("Bolden") as c:
        whatsat = c.ask(f"WHATSAT {cid} 10 2")
        assert c.ask("log me, I am wrong") == "? log me, I am wrong\n"
    files = sorted(p.name for p in (paper.root / "logs").iterdir())
    assert files == sorted(f"{s}.log" for s in PAPER_SERVERS)
    places = whatsat.split("\n", 1)[1].rstrip("\n")

    def logged() -> bool:
        log = paper.log("Bolden")
        return all(
            text in log
            for text in (
                f"<- IAMAT {cid} {UCLA} ",
                f"-> {at_line}\n",
                f"<- WHATSAT {cid} 10 2\n",
                f"-> places JSON ({len(places)} bytes): {{",  # the JSON as one line
                "<- log me, I am wrong\n",
                "-> ? log me, I am wrong\n",
            )
        )

    wait_until(logged, timeout=CONVERGE, what="Bolden's log")
    assert '"status": "OK"' in whatsat
    for server in PAPER_SERVERS:
        for n in neighbors(paper, server):  # first contact may still be on its way
            link_is(paper, server, n, "up")
        log = paper.log(server)
        assert f"{server} up: clients on 127.0.0.1:{paper.port(server)}" in log
        for n in neighbors(paper, server):  # what the status says, the log said when it happened
            assert re.search(rf"\| {server} \| INFO    \| neighbor {n} up \(epoch [0-9a-f]+\)", log)
        # every line says when, where and how bad, even the lines of a multi-line record
        lines = log.splitlines()
        assert lines, server
        for line in lines:
            assert LOG_LINE.match(line), (server, line)
    # The update flooded: Hamilton logged its record arriving from Parker.
    wait_until(
        lambda: f"| INFO    | bus <- Parker:   {at_line}\n" in paper.log("Hamilton"),
        timeout=CONVERGE,
        what="Hamilton to log the record from Parker",
    )


# -- a killed server, a herd started in any order ---------------------------------------------


def test_a_killed_server_does_not_stop_the_rest(herd) -> None:
    h = herd()
    t = now_s()
    before = uid("before")
    before_line = iamat(h, "Hamilton", before, UCLA, f"{t}")
    with Holdings(h) as probe:
        wait_until(lambda: probe.everywhere(before, before_line), timeout=CONVERGE)
        for server in ("Alford", "Bolden", "Hamilton"):  # a link must exist before it can break
            link_is(h, server, "Parker", "up")

        assert h.kill("Parker", signal.SIGKILL) == -signal.SIGKILL
        rest = ("Alford", "Bolden", "Powell")
        a = uid("after-a")
        a_line = iamat(h, "Alford", a, "+1+1", f"{t}")
        wait_until(lambda: probe.everywhere(a, a_line, rest), timeout=CONVERGE, what="via Powell")
        b = uid("after-b")
        b_line = iamat(h, "Bolden", b, "+2+2", f"{t}")
        wait_until(lambda: probe.everywhere(b, b_line, rest), timeout=CONVERGE)
        # Hamilton is cut off, but still serves its own clients and what it knew.
        assert probe.at("Hamilton", before) == before_line
        h_only = uid("hamilton-only")
        iamat(h, "Hamilton", h_only, "+3+3", f"{t}")
        assert probe.at("Hamilton", a) is None

        # Plenty of request/response traffic still goes through (each reply bounded by
        # the client's timeout, no wall-clock claim).
        with h.client("Powell") as c:
            for i in range(200):
                assert c.ask(f"IAMAT {a}-{i} +4+4 {t}").startswith("AT Powell ")

    for server in ("Alford", "Bolden", "Hamilton"):
        link_is(h, server, "Parker", "down")
    assert h.stop() == {s: 0 for s in ("Alford", "Bolden", "Hamilton", "Powell")}
    for server in ("Alford", "Bolden", "Hamilton", "Powell"):
        log = h.log(server)
        assert f"{server} shutting down" in log and f"{server} stopped" in log
    assert "Parker stopped" not in h.log("Parker")  # SIGKILL: no goodbye


def test_a_herd_started_in_any_order_converges(herd) -> None:
    h = herd(start=False)
    t = now_s()
    h.start("Hamilton")
    a = uid("early-hamilton")
    a_line = iamat(h, "Hamilton", a, "+5+5", f"{t}")
    h.start("Powell")
    b = uid("early-powell")
    b_line = iamat(h, "Powell", b, "+6+6", f"{t}")
    with Holdings(h) as probe:
        h.start("Parker")  # after its neighbor Hamilton learnt `a`
        wait_until(lambda: probe.at("Parker", a) == a_line, timeout=CONVERGE, what="Parker")
        h.start("Alford", "Bolden")  # after every neighbor of theirs
        wait_until(
            lambda: probe.everywhere(a, a_line) and probe.everywhere(b, b_line),
            timeout=CONVERGE,
            what="every server knows both clients",
        )
