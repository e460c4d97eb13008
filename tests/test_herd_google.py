"""WHATSAT through Google Places, across a real herd, against the strict local fake.

Each herd's `[places]` points at a `FakeGoogle` on 127.0.0.1 and the API key is
only in the servers' environment. The key must never reach a client or a log.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fake_google import DATA, LEGACY_PATH, NEW_API_PATH, SERVER_ERROR_PAGE, FakeGoogle, Raw

from zherd.harness import Client, Herd, wait_until
from zherd.places.legacy import place_result

KEY = "AIzaSyHERD-zherd-integration-secret-0123456789"
UCLA = "+34.068930-118.445127"
UCLA_LATLON = (34.068930, -118.445127)
NEW_PLACES = json.loads((DATA / "places_new_ucla.json").read_text())["places"]
LEGACY = json.loads((DATA / "places_legacy_ucla.json").read_text())
STATUSES = ("REQUEST_DENIED", "OVER_QUERY_LIMIT", "INVALID_REQUEST", "UNKNOWN_ERROR")
WAIT = 30.0
LEGACY_TIMEOUT = 1.5  # seconds: [places] timeout of the legacy herd


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


_spots = iter(range(1, 10_000))


def spot() -> str:
    """Coordinates near UCLA that no other test uses (the cache is keyed by position)."""
    return f"+34.06{next(_spots):04d}-118.445127"


def km_between(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0088 * math.asin(math.sqrt(h))


def new_point(p: dict[str, Any]) -> tuple[float, float]:
    return (p["location"]["latitude"], p["location"]["longitude"])


def within(radius_km: float, points: list[Any], where) -> list[Any]:
    return [p for p in points if km_between(UCLA_LATLON, where(p)) <= radius_km]


def camel_keys(value: Any) -> list[str]:
    """Keys in the new API's camelCase anywhere in `value` (a converted answer has none)."""
    if isinstance(value, dict):
        found = [k for k in value if re.search(r"[a-z][A-Z]", k)]
        return found + [k for v in value.values() for k in camel_keys(v)]
    if isinstance(value, list):
        return [k for v in value for k in camel_keys(v)]
    return []


def iamat(herd: Herd, server: str, client_id: str, coords: str) -> str:
    with Client(herd.port(server), timeout=WAIT) as c:
        reply = c.ask(f"IAMAT {client_id} {coords} 1400794645.392014450")
    assert reply.startswith(f"AT {server} "), reply
    return reply.rstrip("\n")


def parse_whatsat(reply: str) -> tuple[str, dict[str, Any]]:
    assert KEY not in reply
    assert reply.endswith("}\n\n"), reply
    at_line, _, body = reply.partition("\n")
    assert "\n\n" not in body[:-2]
    return at_line, json.loads(body)


def whatsat(herd: Herd, server: str, client_id: str, radius, count: int):
    """(AT line, places) of one WHATSAT."""
    with Client(herd.port(server), timeout=WAIT) as c:
        return parse_whatsat(c.ask(f"WHATSAT {client_id} {radius} {count}"))


def whatsat_when_known(herd: Herd, server: str, client_id: str, radius, count: int):
    """The first WHATSAT answered with an AT line (a `?` costs no request to Google)."""

    def ask() -> str | None:
        with Client(herd.port(server), timeout=WAIT) as c:
            reply = c.ask(f"WHATSAT {client_id} {radius} {count}")
        return reply if reply.startswith("AT ") else None

    return parse_whatsat(wait_until(ask, timeout=WAIT, what=f"{client_id} at {server}"))


@pytest.fixture(scope="module")
def fake_new() -> Iterator[FakeGoogle]:
    with FakeGoogle.in_thread(key=KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_legacy() -> Iterator[FakeGoogle]:
    with FakeGoogle.in_thread(key=KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def steady(fake_new: FakeGoogle, fake_legacy: FakeGoogle) -> Iterator[None]:
    """Each test leaves both fakes answering normally."""
    yield
    for fake in (fake_new, fake_legacy):
        fake.error, fake.raw, fake.delay = None, None, 0.0
        fake.unblock()


@pytest.fixture(scope="module")
def herd_new(module_herd, fake_new: FakeGoogle) -> Herd:
    places = {"provider": "google", "endpoint": fake_new.base_url, "timeout": 30.0}
    return module_herd(
        servers=("Alford", "Powell"),
        links=[("Alford", "Powell")],
        sections={"places": {**places, "cache_ttl": 600.0}},
        env={"GOOGLE_PLACES_API_KEY": KEY},
    )


@pytest.fixture(scope="module")
def herd_legacy(module_herd, fake_legacy: FakeGoogle) -> Herd:
    places = {"provider": "google-legacy", "endpoint": fake_legacy.base_url}
    return module_herd(
        servers=("Bolden", "Hamilton"),
        links=[("Bolden", "Hamilton")],
        sections={"places": {**places, "timeout": LEGACY_TIMEOUT, "api_key_env": "ZHERD_KEY"}},
        env={"ZHERD_KEY": KEY},
    )


# -- Places API (New) -------------------------------------------------------------------------


def test_new_api_end_to_end_across_the_herd(herd_new: Herd, fake_new: FakeGoogle) -> None:
    cid = uid("g-new")
    at_line = iamat(herd_new, "Alford", cid, UCLA)
    before = len(fake_new.requests)
    got_at, places = whatsat_when_known(herd_new, "Powell", cid, 10, 3)
    assert got_at == at_line  # Alford heard the IAMAT; Powell asked Google
    assert fake_new.problems == []
    [req] = fake_new.requests[before:]
    assert (req.method, req.path) == ("POST", NEW_API_PATH)
    assert req.headers["X-Goog-Api-Key"] == KEY
    assert req.body == {
        "locationRestriction": {
            "circle": {
                "center": {"latitude": 34.06893, "longitude": -118.445127},
                "radius": 10000.0,
            }
        },
        "maxResultCount": 3,
    }
    expected = within(10, NEW_PLACES, new_point)
    assert len(expected) >= 3
    assert places["status"] == "OK"
    assert places["results"] == [place_result(p) for p in expected[:3]]
    assert [r["name"] for r in places["results"]] == [
        p["displayName"]["text"] for p in expected[:3]
    ]
    assert [r["place_id"] for r in places["results"]] == [p["id"] for p in expected[:3]]
    assert camel_keys(places) == []


@pytest.mark.parametrize(
    ("radius", "count", "metres"),
    [("1.5", 1, 1500.0), ("2.25", 7, 2250.0), ("50", 20, 50000.0), ("0.001", 2, 1.0)],
)
def test_new_api_radius_in_metres_and_results_truncated(
    herd_new: Herd, fake_new: FakeGoogle, radius: str, count: int, metres: float
) -> None:
    cid = uid("g-radius")
    iamat(herd_new, "Alford", cid, UCLA)
    before = len(fake_new.requests)
    at_line, places = whatsat(herd_new, "Alford", cid, radius, count)
    assert at_line.startswith("AT Alford ")
    [req] = fake_new.requests[before:]
    circle = req.body["locationRestriction"]["circle"]
    assert circle["radius"] == metres and req.body["maxResultCount"] == count
    expected = within(float(radius), NEW_PLACES, new_point)[:count]
    assert [r["place_id"] for r in places["results"]] == [p["id"] for p in expected]
    assert places["status"] == ("OK" if expected else "ZERO_RESULTS")
    if radius == "50":
        assert len(NEW_PLACES) > 20 and len(places["results"]) == 20


@pytest.mark.parametrize("status", STATUSES)
def test_new_api_errors_reach_the_client_as_legacy_json(
    herd_new: Herd, fake_new: FakeGoogle, status: str
) -> None:
    cid = uid("g-error")
    at_line = iamat(herd_new, "Alford", cid, spot())
    fake_new.error = status
    got_at, places = whatsat_when_known(herd_new, "Powell", cid, 5, 5)
    assert got_at == at_line
    assert places["status"] == status
    assert (places["results"], places["html_attributions"]) == ([], [])
    assert isinstance(places["error_message"], str) and places["error_message"]
    fake_new.error = None  # errors are not cached: the same question now goes through
    before = len(fake_new.requests)
    got_at, places = whatsat(herd_new, "Powell", cid, 5, 5)
    assert got_at == at_line and places["status"] in ("OK", "ZERO_RESULTS")
    assert len(fake_new.requests) == before + 1


def test_new_api_http_500_page_and_a_quoted_key(herd_new: Herd, fake_new: FakeGoogle) -> None:
    cid = uid("g-raw")
    at_line = iamat(herd_new, "Alford", cid, spot())
    fake_new.raw = Raw(500, SERVER_ERROR_PAGE)
    got_at, places = whatsat(herd_new, "Alford", cid, 3, 3)
    assert got_at == at_line and places["status"] == "UNKNOWN_ERROR"
    quoted = {"code": 403, "message": f"Key {KEY} is blocked", "status": "PERMISSION_DENIED"}
    body = {"error": quoted}
    fake_new.raw = Raw(403, json.dumps(body), "application/json")
    got_at, places = whatsat(herd_new, "Alford", cid, 3, 4)  # (parse_whatsat: no key in it)
    assert got_at == at_line and places["status"] == "REQUEST_DENIED"
    assert "<redacted>" in places["error_message"]


def test_others_are_served_while_google_is_slow(herd_new: Herd, fake_new: FakeGoogle) -> None:
    cid, other = uid("g-slow"), uid("g-other")
    at_line = iamat(herd_new, "Alford", cid, spot())
    iamat(herd_new, "Alford", other, UCLA)
    whatsat(herd_new, "Alford", other, 10, 3)  # now in Alford's cache
    fake_new.block()  # every request to Google now waits until unblock()
    with Client(herd_new.port("Alford"), timeout=WAIT) as slow:
        before = len(fake_new.requests)
        slow.send(f"WHATSAT {cid} 10 3\nIAMAT {cid} {UCLA} 1400794646\n")
        wait_until(lambda: len(fake_new.requests) > before, timeout=WAIT, what="the request")
        # The WHATSAT cannot be answered before unblock(); everything else is, meanwhile.
        with Client(herd_new.port("Alford"), timeout=WAIT) as c:
            assert c.ask(f"IAMAT {uid('g-meanwhile')} +1+1 1").startswith("AT Alford ")
            assert parse_whatsat(c.ask(f"WHATSAT {other} 10 3"))[1]["status"] == "OK"
            assert c.ask("bogus") == "? bogus\n"
        with Client(herd_new.port("Powell"), timeout=WAIT) as c:
            assert c.ask(f"IAMAT {uid('g-meanwhile')} +1+1 1").startswith("AT Powell ")
        slow.sock.setblocking(False)
        try:
            early = slow.sock.recv(1)
        except BlockingIOError:
            early = b""
        slow.sock.setblocking(True)
        slow.sock.settimeout(WAIT)
        assert early == b"", "the WHATSAT was answered while Google was holding it"
        fake_new.unblock()
        got_at, places = parse_whatsat(_whatsat_reply(slow))
        assert got_at == at_line and places["status"] in ("OK", "ZERO_RESULTS")
        after = slow.line()  # the IAMAT behind it, in order
        assert after.startswith("AT Alford ") and after.endswith(" 1400794646\n")


def _whatsat_reply(c: Client) -> str:
    first = c.line()
    return first + c.read_until(b"\n\n").decode()


def test_identical_whatsats_cost_one_request(herd_new: Herd, fake_new: FakeGoogle) -> None:
    coords = spot()
    a, b = uid("g-cache-a"), uid("g-cache-b")
    iamat(herd_new, "Alford", a, coords)
    iamat(herd_new, "Alford", b, coords)  # same place: same question to Google
    before = len(fake_new.requests)
    first = whatsat(herd_new, "Alford", a, 4, 6)[1]
    assert len(fake_new.requests) == before + 1
    for _ in range(3):
        assert whatsat(herd_new, "Alford", a, 4, 6)[1] == first
    assert whatsat(herd_new, "Alford", b, 4, 6)[1] == first
    with Client(herd_new.port("Alford"), timeout=WAIT) as c:  # pipelined, some not yet cached
        c.send(f"WHATSAT {a} 4 6\n" * 3 + f"WHATSAT {a} 4.5 6\n" * 4)
        replies = [parse_whatsat(_whatsat_reply(c))[1] for _ in range(7)]
    assert replies[:3] == [first] * 3 and all(r == replies[3] for r in replies[3:])
    assert len(fake_new.requests) == before + 2  # 4.5 km is another question, asked once
    assert whatsat(herd_new, "Alford", a, 4, 7)[1]["status"] in ("OK", "ZERO_RESULTS")
    assert len(fake_new.requests) == before + 3


# -- Nearby Search (legacy) --------------------------------------------------------------------


def legacy_point(r: dict[str, Any]) -> tuple[float, float]:
    return (r["geometry"]["location"]["lat"], r["geometry"]["location"]["lng"])


@pytest.mark.parametrize("count", [1, 5, 20])
def test_legacy_end_to_end_truncated_to_the_count(
    herd_legacy: Herd, fake_legacy: FakeGoogle, count: int
) -> None:
    cid = uid("g-legacy")
    at_line = iamat(herd_legacy, "Bolden", cid, UCLA)
    before = len(fake_legacy.requests)
    got_at, places = whatsat_when_known(herd_legacy, "Hamilton", cid, 10, count)
    assert got_at == at_line
    assert fake_legacy.problems == []
    [req] = fake_legacy.requests[before:]
    assert (req.method, req.path) == ("GET", LEGACY_PATH)
    assert req.query == {"location": "34.06893,-118.445127", "radius": "10000", "key": KEY}
    expected = within(10, LEGACY["results"], legacy_point)
    assert len(expected) >= count
    assert places["status"] == "OK"
    assert places["results"] == expected[:count]
    assert places["html_attributions"] == LEGACY["html_attributions"]


def test_legacy_radius_in_metres(herd_legacy: Herd, fake_legacy: FakeGoogle) -> None:
    cid = uid("g-legacy-radius")
    iamat(herd_legacy, "Hamilton", cid, UCLA)
    before = len(fake_legacy.requests)
    for radius in ("1.1", "0.5", "50"):
        whatsat(herd_legacy, "Hamilton", cid, radius, 2)
    assert [r.query["radius"] for r in fake_legacy.requests[before:]] == ["1100", "500", "50000"]


@pytest.mark.parametrize("status", STATUSES)
def test_legacy_errors_reach_the_client_as_legacy_json(
    herd_legacy: Herd, fake_legacy: FakeGoogle, status: str
) -> None:
    cid = uid("g-legacy-error")
    at_line = iamat(herd_legacy, "Bolden", cid, spot())
    fake_legacy.error = status
    got_at, places = whatsat_when_known(herd_legacy, "Hamilton", cid, 5, 5)
    assert got_at == at_line
    assert places["status"] == status
    assert (places["results"], places["html_attributions"]) == ([], [])
    assert isinstance(places["error_message"], str) and places["error_message"]


def test_legacy_timeout_while_others_are_answered(
    herd_legacy: Herd, fake_legacy: FakeGoogle
) -> None:
    cid = uid("g-timeout")
    at_line = iamat(herd_legacy, "Bolden", cid, spot())
    fake_legacy.delay = 60.0  # far longer than the herd's [places] timeout
    with Client(herd_legacy.port("Bolden"), timeout=WAIT) as slow:
        before = len(fake_legacy.requests)
        slow.send(f"WHATSAT {cid} 5 5\nIAMAT {cid} {UCLA} 1400794646\n")
        wait_until(lambda: len(fake_legacy.requests) > before, timeout=WAIT, what="the request")
        with Client(herd_legacy.port("Bolden"), timeout=WAIT) as c:
            for i in range(20):
                assert c.ask(f"IAMAT {uid('g-during')} +{i}+{i} 1").startswith("AT Bolden ")
        with Client(herd_legacy.port("Hamilton"), timeout=WAIT) as c:
            assert c.ask(f"IAMAT {uid('g-during')} +1+1 1").startswith("AT Hamilton ")
        got_at, places = parse_whatsat(_whatsat_reply(slow))
        assert got_at == at_line
        assert places["status"] == "UNKNOWN_ERROR" and places["results"] == []
        assert f"did not answer within {LEGACY_TIMEOUT} s" in places["error_message"]
        after = slow.line()
        assert after.startswith("AT Bolden ") and after.endswith(" 1400794646\n")


# -- the key -----------------------------------------------------------------------------------


def test_the_key_is_in_no_log_file(
    herd_new: Herd, herd_legacy: Herd, fake_new: FakeGoogle, fake_legacy: FakeGoogle
) -> None:
    # Google quoting the key back, through both APIs: scrubbed from replies and logs.
    quoted = f"Key {KEY} is blocked"
    fake_new.raw = Raw(
        403,
        json.dumps({"error": {"code": 403, "message": quoted, "status": "PERMISSION_DENIED"}}),
        "application/json",
    )
    fake_legacy.raw = Raw(
        200,
        json.dumps({"error_message": quoted, "results": [], "status": "REQUEST_DENIED"}),
        "application/json",
    )
    for h, server in ((herd_new, "Powell"), (herd_legacy, "Bolden")):
        cid = uid("g-key")
        iamat(h, server, cid, spot())
        places = whatsat(h, server, cid, 7, 7)[1]  # (parse_whatsat: no key in the reply)
        assert places["status"] == "REQUEST_DENIED"
        assert places["error_message"].endswith("Key <redacted> is blocked")
        wait_until(lambda h=h, s=server: "Key <redacted> is blocked" in h.log(s), timeout=WAIT)
    logs = [p for h in (herd_new, herd_legacy) for p in sorted((h.root / "logs").iterdir())]
    assert [p.name for p in logs] == ["Alford.log", "Powell.log", "Bolden.log", "Hamilton.log"]
    for path in logs:
        text = path.read_text(errors="replace")
        assert KEY not in text, path.name
        assert KEY[10:30] not in text, path.name
    for h in (herd_new, herd_legacy):
        assert KEY not in h.config.read_text()
