"""WHATSAT through Google Places, end to end against a strict local fake of both APIs."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from fake_google import DATA, SERVER_ERROR_PAGE, FakeGoogle, Raw
from loguru import logger

from zherd.config import ConfigError, PlacesConfig
from zherd.places import make_provider
from zherd.places.google import (
    GoogleProvider,
    LegacyPlacesProvider,
    NewPlacesProvider,
    decimal,
    make_google_provider,
    metres,
)
from zherd.places.legacy import (
    FIELD_MASK,
    from_legacy,
    from_new_places,
    place_result,
    status_from_http,
    truncate,
)

KEY = "AIzaSyTEST-zherd-secret-key-0123456789ab"
UCLA = (34.068930, -118.445127)
NEW_PLACES = json.loads((DATA / "places_new_ucla.json").read_text())["places"]
LEGACY = json.loads((DATA / "places_legacy_ucla.json").read_text())
BOTH = ("google", "google-legacy")
REFUSALS = ("REQUEST_DENIED", "OVER_QUERY_LIMIT", "INVALID_REQUEST")

Make = Callable[..., Awaitable[GoogleProvider]]


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def log() -> Iterator[list[Any]]:
    """Every log record of the test; afterwards, the key must be in none of them."""
    records: list[Any] = []
    lines: list[str] = []

    def sink(message: Any) -> None:
        records.append(message.record)
        lines.append(str(message))

    sink_id = logger.add(sink, level=0, format="{level} {name}:{function} {message} {extra}")
    yield records
    logger.remove(sink_id)
    assert not [line for line in lines if KEY in line]


def warnings(records: list[Any]) -> list[str]:
    return [r["message"] for r in records if r["level"].name == "WARNING"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeGoogle]:
    async with FakeGoogle(key=KEY) as fake:
        yield fake


@pytest.fixture
async def make(fake: FakeGoogle) -> AsyncIterator[Make]:
    """Started providers pointed at the fake; closed after the test."""
    started: list[GoogleProvider] = []

    async def make(provider: str = "google", key: str = KEY, **settings: Any) -> GoogleProvider:
        clock = settings.pop("clock", None)
        config = PlacesConfig(provider=provider, endpoint=fake.base_url, **settings)
        p = make_google_provider(config, key, **({"clock": clock} if clock else {}))
        assert isinstance(p, GoogleProvider)
        await p.start()
        started.append(p)
        return p

    yield make
    for p in started:
        await p.close()


async def ask(
    p: GoogleProvider,
    lat: float = UCLA[0],
    lon: float = UCLA[1],
    radius_km: float = 10,
    count: int = 5,
) -> dict[str, Any]:
    reply = await p.nearby(lat, lon, radius_km, count)
    assert KEY not in json.dumps(reply)
    assert set(reply) >= {"html_attributions", "results", "status"}
    return reply


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- pure conversion -----------------------------------------------------------------


def test_place_result_converts_every_masked_field() -> None:
    assert place_result(NEW_PLACES[0]) == {
        "business_status": "OPERATIONAL",
        "geometry": {
            "location": {"lat": 34.068921, "lng": -118.4451811},
            "viewport": {
                "northeast": {"lat": 34.075171, "lng": -118.4389311},
                "southwest": {"lat": 34.062671, "lng": -118.4514311},
            },
        },
        "icon_background_color": "#7B9EB0",
        "icon_mask_base_uri": "https://maps.gstatic.com/mapfiles/place_api/icons/v2/school_pinlet",
        "name": "University of California, Los Angeles",
        "place_id": "ChIJZQ9c8IW8woARN0gTXFiTqSU",
        "plus_code": {
            "compound_code": "3H93+HW Westwood, Los Angeles, CA, USA",
            "global_code": "85633H93+HW",
        },
        "rating": 4.6,
        "types": ["university", "school", "point_of_interest", "establishment"],
        "user_ratings_total": 4213,
        "vicinity": "Los Angeles",
    }


def test_place_result_keeps_absent_fields_absent() -> None:
    sparse = {
        "id": "ChIJx",
        "location": {"latitude": 1.5, "longitude": 2},
        "formattedAddress": "1 Main St, Town, Country",
        "priceLevel": "PRICE_LEVEL_UNSPECIFIED",
    }
    assert place_result(sparse) == {
        "geometry": {"location": {"lat": 1.5, "lng": 2}},
        "place_id": "ChIJx",
        "vicinity": "1 Main St, Town, Country",  # no short address: the full one
    }
    assert place_result({"priceLevel": "PRICE_LEVEL_MODERATE"}) == {"price_level": 2}
    assert place_result({"rating": True, "location": {"latitude": "1"}, "types": "bar"}) == {}


def test_new_api_empty_answer_is_zero_results() -> None:
    assert from_new_places({}, 5) == {
        "html_attributions": [],
        "results": [],
        "status": "ZERO_RESULTS",
    }
    assert from_new_places({"places": []}, 5)["status"] == "ZERO_RESULTS"


def test_new_api_answer_is_truncated_and_attributed() -> None:
    attribution = {"provider": "Yelp & co", "providerUri": "https://yelp.example/?a=1&b=2"}
    places = [{**p, "attributions": [attribution]} for p in NEW_PLACES]
    reply = from_new_places({"places": places}, 3)
    assert reply["status"] == "OK"
    names = [r["name"] for r in reply["results"]]
    assert names == ["University of California, Los Angeles", "Royce Hall", "Powell Library"]
    assert reply["html_attributions"] == [
        '<a href="https://yelp.example/?a=1&amp;b=2">Yelp &amp; co</a>'
    ]


@pytest.mark.parametrize("body", [[], "x", {"places": {}}, None])
def test_new_api_answer_of_the_wrong_shape_is_unknown_error(body: Any) -> None:
    assert from_new_places(body, 5)["status"] == "UNKNOWN_ERROR"


@pytest.mark.parametrize(
    ("http", "body", "status"),
    [
        (403, {"error": {"code": 403, "status": "PERMISSION_DENIED"}}, "REQUEST_DENIED"),
        (401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}}, "REQUEST_DENIED"),
        (429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}, "OVER_QUERY_LIMIT"),
        (400, {"error": {"code": 400, "status": "INVALID_ARGUMENT"}}, "INVALID_REQUEST"),
        (
            400,
            {"error": {"status": "INVALID_ARGUMENT", "details": [{"reason": "API_KEY_INVALID"}]}},
            "REQUEST_DENIED",
        ),
        (500, {"error": {"code": 500, "status": "INTERNAL"}}, "UNKNOWN_ERROR"),
        (503, {"error": {"code": 503, "status": "UNAVAILABLE"}}, "UNKNOWN_ERROR"),
        (429, "<html>Too many requests</html>", "OVER_QUERY_LIMIT"),
        (403, None, "REQUEST_DENIED"),
        (502, None, "UNKNOWN_ERROR"),
    ],
)
def test_http_errors_map_to_legacy_statuses(http: int, body: Any, status: str) -> None:
    assert status_from_http(http, body) == status


def test_legacy_answers_pass_through() -> None:
    assert from_legacy(LEGACY, 20) == LEGACY
    assert from_legacy(LEGACY, 2) == {**LEGACY, "results": LEGACY["results"][:2]}
    assert truncate({"results": [1, 2, 3], "status": "OK"}, 5) == {
        "results": [1, 2, 3],
        "status": "OK",
    }
    assert from_legacy({"status": "INVALID_REQUEST", "results": []}, 5) == {
        "html_attributions": [],
        "results": [],
        "status": "INVALID_REQUEST",
        "error_message": "Google Places answered INVALID_REQUEST",
    }
    assert from_legacy({"results": []}, 5)["status"] == "UNKNOWN_ERROR"


def test_units_and_query_numbers() -> None:
    assert metres(1.1) == 1100.0
    assert metres(0.0005) == 0.5
    numbers = (34.06893, -118.445127, 1e-05, 100.0, 1500.0)
    assert [decimal(x) for x in numbers] == ["34.06893", "-118.445127", "0.00001", "100", "1500"]


# -- Places API (New) ----------------------------------------------------------------


async def test_new_api_request_is_exactly_what_google_expects(fake: FakeGoogle, make: Make) -> None:
    p = await make("google")
    reply = await ask(p, *UCLA, 10, 5)
    assert fake.problems == []
    [req] = fake.requests
    assert (req.method, req.path, req.query) == ("POST", "/v1/places:searchNearby", {})
    assert req.headers["X-Goog-Api-Key"] == KEY
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-Goog-FieldMask"] == FIELD_MASK
    assert FIELD_MASK == (
        "places.id,places.displayName,places.formattedAddress,places.shortFormattedAddress,"
        "places.location,places.viewport,places.types,places.rating,places.userRatingCount,"
        "places.priceLevel,places.businessStatus,places.plusCode,places.iconMaskBaseUri,"
        "places.iconBackgroundColor,places.attributions"
    )
    assert req.body == {
        "locationRestriction": {
            "circle": {
                "center": {"latitude": 34.06893, "longitude": -118.445127},
                "radius": 10000.0,
            }
        },
        "maxResultCount": 5,
    }
    assert reply == {
        "html_attributions": [],
        "results": [place_result(place) for place in NEW_PLACES[:5]],
        "status": "OK",
    }
    assert reply["results"][1]["name"] == "Royce Hall"
    assert reply["results"][1]["vicinity"] == "10745 Dickson Plaza, Los Angeles"


@pytest.mark.parametrize(("radius_km", "radius_m"), [(0.5, 500.0), (1.1, 1100.0), (50, 50000.0)])
async def test_new_api_radius_is_in_metres(
    fake: FakeGoogle, make: Make, radius_km: float, radius_m: float
) -> None:
    reply = await ask(await make("google"), *UCLA, radius_km, 20)
    assert fake.requests[0].body["locationRestriction"]["circle"]["radius"] == radius_m
    assert reply["status"] == "OK"
    assert 0 < len(reply["results"]) <= 20


async def test_new_api_nothing_nearby_is_zero_results(fake: FakeGoogle, make: Make) -> None:
    p = await make("google")
    empty = {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}
    assert await ask(p, 0.0, 0.0, 1, 5) == empty
    assert await ask(p, 0.0, 0.0, 1, 5) == empty  # cached: a success
    assert len(fake.requests) == 1


# -- Nearby Search (Legacy) ----------------------------------------------------------


async def test_legacy_request_is_exact_and_answer_passed_through(
    fake: FakeGoogle, make: Make
) -> None:
    p = await make("google-legacy")
    reply = await ask(p, *UCLA, 10, 3)
    assert fake.problems == []
    [req] = fake.requests
    assert (req.method, req.path, req.body) == ("GET", "/maps/api/place/nearbysearch/json", None)
    assert req.query == {"location": "34.06893,-118.445127", "radius": "10000", "key": KEY}
    assert "X-Goog-Api-Key" not in req.headers
    assert reply == {**LEGACY, "results": LEGACY["results"][:3]}


@pytest.mark.parametrize("count", [1, 7, 20])
async def test_legacy_results_are_truncated(fake: FakeGoogle, make: Make, count: int) -> None:
    reply = await ask(await make("google-legacy"), *UCLA, 10, count)
    assert reply["results"] == LEGACY["results"][:count]


async def test_legacy_radius_in_metres_and_zero_results(fake: FakeGoogle, make: Make) -> None:
    p = await make("google-legacy")
    assert (await ask(p, *UCLA, 1.1, 20))["status"] == "OK"
    assert await ask(p, -45.5, 170.25, 0.5, 20) == {
        "html_attributions": [],
        "results": [],
        "status": "ZERO_RESULTS",
    }
    assert [r.query["radius"] for r in fake.requests] == ["1100", "500"]
    assert fake.requests[1].query["location"] == "-45.5,170.25"
    assert fake.problems == []


# -- failures are answers --------------------------------------------------------------


@pytest.mark.parametrize("provider", BOTH)
@pytest.mark.parametrize("status", REFUSALS)
async def test_google_refusals_are_answers(
    fake: FakeGoogle, make: Make, log: list[Any], provider: str, status: str
) -> None:
    p = await make(provider)
    fake.error = status
    reply = await ask(p)
    assert reply["status"] == status
    assert reply["results"] == [] and reply["html_attributions"] == []
    assert isinstance(reply["error_message"], str) and reply["error_message"]
    [warning] = warnings(log)
    assert status in warning
    await ask(p)
    assert len(fake.requests) == 2  # refusals are not cached
    assert fake.problems == []


async def test_new_api_refusal_keeps_googles_words(fake: FakeGoogle, make: Make) -> None:
    fake.error = "OVER_QUERY_LIMIT"
    reply = await ask(await make("google"))
    assert reply["error_message"].startswith(
        "Google Places answered HTTP 429 Too Many Requests: RESOURCE_EXHAUSTED: Quota exceeded"
    )


@pytest.mark.parametrize("provider", BOTH)
async def test_wrong_key_is_request_denied_and_never_shown(
    fake: FakeGoogle, make: Make, log: list[Any], provider: str
) -> None:
    wrong = "AIzaSyWRONG-key-that-google-rejects-99"
    reply = await ask(await make(provider, key=wrong))
    assert reply["status"] == "REQUEST_DENIED"
    assert wrong not in json.dumps(reply)
    assert not [r for r in log if wrong in r["message"]]


@pytest.mark.parametrize("provider", BOTH)
async def test_key_quoted_by_google_is_scrubbed(
    fake: FakeGoogle, make: Make, log: list[Any], provider: str
) -> None:
    body = {
        "error": {"code": 403, "message": f"Key {KEY} is blocked", "status": "PERMISSION_DENIED"}
    }
    if provider == "google-legacy":
        body = {"error_message": f"Key {KEY} is blocked", "results": [], "status": "REQUEST_DENIED"}
    fake.raw = Raw(403, json.dumps(body), "application/json")  # legacy: usually HTTP 200
    reply = await ask(await make(provider))
    assert reply["status"] == "REQUEST_DENIED"
    assert "Key <redacted> is blocked" in reply["error_message"]
    assert len(warnings(log)) == 1


def test_scrub_removes_the_key_from_aiohttp_texts() -> None:
    p = make_google_provider(PlacesConfig(provider="google-legacy"), KEY)
    assert isinstance(p, GoogleProvider)
    text = (
        "Connection timeout to host http://127.0.0.1:1/maps/api/place/nearbysearch/json"
        f"?location=1,2&radius=500&key={KEY}"
    )
    assert p._scrub(text).endswith("&radius=500&key=<redacted>")
    assert p._scrub(f"?key={KEY[:-3]}") == "?key=<redacted>"


@pytest.mark.parametrize("provider", BOTH)
async def test_http_500_is_unknown_error(
    fake: FakeGoogle, make: Make, log: list[Any], provider: str
) -> None:
    fake.raw = Raw(500, SERVER_ERROR_PAGE)
    reply = await ask(await make(provider))
    assert reply["status"] == "UNKNOWN_ERROR"
    assert "HTTP 500 Internal Server Error" in reply["error_message"]
    assert len(warnings(log)) == 1


async def test_new_api_internal_error_is_unknown_error(fake: FakeGoogle, make: Make) -> None:
    fake.error = "UNKNOWN_ERROR"
    reply = await ask(await make("google"))
    assert reply["status"] == "UNKNOWN_ERROR"
    assert "INTERNAL: Internal error encountered." in reply["error_message"]


@pytest.mark.parametrize("provider", BOTH)
@pytest.mark.parametrize(
    "raw",
    [
        Raw(200, "<html><body>Captive portal: please log in</body></html>"),
        Raw(200, '["not", "an", "answer"]', "application/json"),
        Raw(200, '{"truncated": ', "application/json"),
    ],
)
async def test_garbage_is_unknown_error(
    fake: FakeGoogle, make: Make, log: list[Any], provider: str, raw: Raw
) -> None:
    fake.raw = raw
    reply = await ask(await make(provider))
    assert reply["status"] == "UNKNOWN_ERROR"
    assert reply["results"] == []
    assert len(warnings(log)) == 1


@pytest.mark.parametrize("provider", BOTH)
async def test_timeout_is_unknown_error(
    fake: FakeGoogle, make: Make, log: list[Any], provider: str
) -> None:
    fake.delay = 60
    reply = await ask(await make(provider, timeout=0.2))
    assert reply == {
        "html_attributions": [],
        "results": [],
        "status": "UNKNOWN_ERROR",
        "error_message": f"{'Google Places (legacy)' if provider != 'google' else 'Google Places'}"
        " did not answer within 0.2 s",
    }
    assert len(warnings(log)) == 1


@pytest.mark.parametrize("provider", BOTH)
async def test_connection_refused_is_unknown_error(log: list[Any], provider: str) -> None:
    config = PlacesConfig(provider=provider, endpoint=f"http://127.0.0.1:{closed_port()}")
    p = make_google_provider(config, KEY)
    await p.start()  # no network IO: the port is closed and start still succeeds
    try:
        reply = await ask(p)
    finally:
        await p.close()
    assert reply["status"] == "UNKNOWN_ERROR"
    assert "could not be reached (ClientConnectorError)" in reply["error_message"]
    [warning] = warnings(log)
    assert "Cannot connect to host 127.0.0.1" in warning


async def test_not_started_is_an_answer() -> None:
    p = make_google_provider(PlacesConfig(provider="google"), KEY)
    assert (await ask(p))["status"] == "UNKNOWN_ERROR"


async def test_close_during_a_request_leaves_an_answer(fake: FakeGoogle, make: Make) -> None:
    p = await make("google", timeout=2)
    fake.block()
    pending = asyncio.ensure_future(ask(p))
    await fake.wait_for_requests(1)
    await p.close()
    reply = await pending
    assert reply["status"] == "UNKNOWN_ERROR"
    fake.unblock()


# -- cache and single flight ---------------------------------------------------------


@pytest.mark.parametrize("provider", BOTH)
async def test_identical_requests_are_served_from_cache(
    fake: FakeGoogle, make: Make, provider: str
) -> None:
    p = await make(provider)
    first = await ask(p)
    first["results"].clear()  # callers may mutate their copy
    second = await ask(p)
    assert len(second["results"]) == 5
    assert len(fake.requests) == 1
    await ask(p, count=6)
    await ask(p, radius_km=9)
    await ask(p, lat=34.07)
    assert len(fake.requests) == 4


async def test_cache_expires_after_ttl(fake: FakeGoogle, make: Make) -> None:
    now = [1000.0]
    p = await make("google", cache_ttl=30, clock=lambda: now[0])
    await ask(p)
    now[0] += 29.9
    await ask(p)
    assert len(fake.requests) == 1
    now[0] += 0.1
    await ask(p)
    assert len(fake.requests) == 2


async def test_ttl_zero_disables_the_cache(fake: FakeGoogle, make: Make) -> None:
    p = await make("google-legacy", cache_ttl=0)
    await ask(p)
    await ask(p)
    assert len(fake.requests) == 2


async def test_errors_are_not_cached(fake: FakeGoogle, make: Make) -> None:
    p = await make("google")
    fake.error = "OVER_QUERY_LIMIT"
    assert (await ask(p))["status"] == "OVER_QUERY_LIMIT"
    fake.error = None
    assert (await ask(p))["status"] == "OK"
    assert (await ask(p))["status"] == "OK"
    assert len(fake.requests) == 2


async def test_cache_is_bounded_least_recent_out(fake: FakeGoogle, make: Make) -> None:
    p = await make("google", cache_size=2)
    for count in (1, 2, 3, 1, 3):
        await ask(p, count=count)
    # 1, 2, 3 fetched; 1 was evicted by 3 and fetched again; 3 was still there.
    assert [r.body["maxResultCount"] for r in fake.requests] == [1, 2, 3, 1]


@pytest.mark.parametrize(("provider", "ttl"), [("google", 30), ("google-legacy", 0)])
async def test_single_flight(fake: FakeGoogle, make: Make, provider: str, ttl: float) -> None:
    p = await make(provider, cache_ttl=ttl)
    fake.block()
    burst = asyncio.gather(*(ask(p) for _ in range(50)))
    await fake.wait_for_requests(1)
    fake.unblock()
    replies = await burst
    assert len(fake.requests) == 1
    assert all(r == replies[0] for r in replies) and replies[0]["status"] == "OK"


async def test_single_flight_survives_a_waiter_that_gives_up(fake: FakeGoogle, make: Make) -> None:
    p = await make("google")
    fake.block()
    quitter = asyncio.ensure_future(ask(p))
    stayer = asyncio.ensure_future(ask(p))
    await fake.wait_for_requests(1)
    quitter.cancel()
    fake.unblock()
    assert (await stayer)["status"] == "OK"
    assert quitter.cancelled()
    assert len(fake.requests) == 1


@pytest.mark.parametrize("provider", BOTH)
async def test_in_flight_requests_are_bounded(fake: FakeGoogle, make: Make, provider: str) -> None:
    p = await make(provider, max_in_flight=3)
    fake.block()
    burst = asyncio.gather(*(ask(p, count=n) for n in range(1, 11)))
    await fake.wait_for_requests(3)
    await asyncio.sleep(0.05)  # room for a fourth request to arrive, if the bound were broken
    assert len(fake.requests) == 3
    fake.unblock()
    replies = await burst
    assert [len(r["results"]) for r in replies] == list(range(1, 11))
    assert len(fake.requests) == 10
    assert fake.peak_in_flight == 3


# -- wiring --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "kind"), [("google", NewPlacesProvider), ("google-legacy", LegacyPlacesProvider)]
)
def test_make_provider_needs_a_key(provider: str, kind: type) -> None:
    config = PlacesConfig(provider=provider, api_key_env="ZHERD_TEST_PLACES_KEY")
    with pytest.raises(ConfigError, match="ZHERD_TEST_PLACES_KEY"):
        make_provider(config, {})
    with pytest.raises(ConfigError):
        make_provider(config, {"ZHERD_TEST_PLACES_KEY": ""})
    assert isinstance(make_provider(config, {"ZHERD_TEST_PLACES_KEY": KEY}), kind)


def test_make_google_provider_refuses_other_providers() -> None:
    with pytest.raises(ConfigError, match="geonames"):
        make_google_provider(PlacesConfig(provider="geonames"), KEY)


def test_fake_in_a_thread_serves_sync_callers() -> None:
    async def one(base_url: str) -> dict[str, Any]:
        config = replace(PlacesConfig(provider="google"), endpoint=base_url)
        p = make_google_provider(config, KEY)
        await p.start()
        try:
            return await p.nearby(*UCLA, 1, 3)
        finally:
            await p.close()

    with FakeGoogle.in_thread(key=KEY) as fake:
        fake.block()
        fake.unblock()
        reply = asyncio.run(one(fake.base_url))
        assert len(fake.requests) == 1 and fake.problems == []
    assert reply["status"] == "OK" and len(reply["results"]) == 3
