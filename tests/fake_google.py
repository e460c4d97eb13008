"""A real HTTP server on 127.0.0.1 standing in for both Google Places APIs.

It is strict on purpose: every request is checked the way Google checks it
(path, method, key, field mask, content type, body shape, ranges), and anything
off gets Google's own error shape back, so a provider that passes here sends
what Google expects. Answers come from recorded-shape fixtures around UCLA
(tests/data/), filtered by distance and by the field mask like the real thing.

Tests steer it through attributes: `error` (a legacy status name, rendered in
each API's own error shape), `raw` (an exact HTTP reply: garbage, a 500 page),
`delay` (seconds before answering), `block()`/`unblock()` (hold every request
until released), and read `requests`, `problems`, `peak_in_flight`.

    async with FakeGoogle(key="k") as fake: ...            # asyncio tests
    with FakeGoogle.in_thread(key="k") as fake: ...         # sync tests, other processes
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

DATA = Path(__file__).parent / "data"
NEW_API_PATH = "/v1/places:searchNearby"
LEGACY_PATH = "/maps/api/place/nearbysearch/json"
DEFAULT_KEY = "AIzaSyFAKE-fake-google-test-key-000000"

# Place fields the fake knows (a subset of the Place resource, enough to be strict).
_PLACE_FIELDS = """
    id name displayName formattedAddress shortFormattedAddress location viewport types
    primaryType primaryTypeDisplayName rating userRatingCount priceLevel businessStatus
    plusCode iconMaskBaseUri iconBackgroundColor attributions nationalPhoneNumber
    internationalPhoneNumber websiteUri googleMapsUri utcOffsetMinutes adrFormatAddress
    addressComponents regularOpeningHours currentOpeningHours photos reviews editorialSummary
"""
PLACE_FIELDS = frozenset(_PLACE_FIELDS.split())
_REQUEST_FIELDS = """
    includedTypes excludedTypes includedPrimaryTypes excludedPrimaryTypes languageCode
    regionCode maxResultCount locationRestriction rankPreference routingParameters
"""
REQUEST_FIELDS = frozenset(_REQUEST_FIELDS.split())
_DECIMAL = r"[-+]?\d+(?:\.\d+)?"
_LOCATION = re.compile(rf"({_DECIMAL}),({_DECIMAL})")
_RADIUS = re.compile(r"\d+(?:\.\d+)?")

# Each API's answer to "refuse this request with <legacy status>".
_RPC = {
    "REQUEST_DENIED": (
        403,
        "PERMISSION_DENIED",
        "Places API (New) has not been used in project 123456789012 before or it is disabled. "
        "Enable it by visiting https://console.developers.google.com/apis/api/"
        "places.googleapis.com/overview?project=123456789012 then retry.",
        "SERVICE_DISABLED",
    ),
    "OVER_QUERY_LIMIT": (
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'SearchNearby requests' and limit 'SearchNearby "
        "requests per minute' of service 'places.googleapis.com' for consumer "
        "'project_number:123456789012'.",
        "RATE_LIMIT_EXCEEDED",
    ),
    "INVALID_REQUEST": (400, "INVALID_ARGUMENT", "Invalid request.", None),
    "UNKNOWN_ERROR": (500, "INTERNAL", "Internal error encountered.", None),
}
_LEGACY_MESSAGE = {
    "REQUEST_DENIED": "This API project is not authorized to use this API.",
    "OVER_QUERY_LIMIT": "You have exceeded your daily request quota for this API. If you did "
    "not set a custom daily request quota, verify your project has an active billing account: "
    "http://g.co/dev/maps-no-account",
    "INVALID_REQUEST": None,
    "UNKNOWN_ERROR": None,
}
_NOT_FOUND_PAGE = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
    "  <title>Error 404 (Not Found)!!1</title>\n"
    "  <p><b>404.</b> <ins>That\u2019s an error.</ins>\n"
    "  <p>The requested URL <code>{path}</code> was not found on this server.  "
    "<ins>That\u2019s all we know.</ins>\n"
)
SERVER_ERROR_PAGE = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
    "  <title>Error 500 (Server Error)!!1</title>\n"
    "  <p><b>500.</b> <ins>That\u2019s an error.</ins>\n"
    "  <p>There was an error. Please try again later.  <ins>That\u2019s all we know.</ins>\n"
)

T = TypeVar("T")


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it (the body decoded when it was JSON)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class Raw:
    """An exact HTTP reply, sent instead of anything Google-shaped."""

    status: int
    body: str
    content_type: str = "text/html"


@dataclass
class FakeGoogle:
    key: str = DEFAULT_KEY
    error: str | None = None  # REQUEST_DENIED, OVER_QUERY_LIMIT, INVALID_REQUEST, UNKNOWN_ERROR
    raw: Raw | None = None
    delay: float = 0.0
    requests: list[Recorded] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why requests were refused
    in_flight: int = 0
    peak_in_flight: int = 0
    base_url: str = ""

    def __post_init__(self) -> None:
        self._places = json.loads((DATA / "places_new_ucla.json").read_text())["places"]
        self._legacy = json.loads((DATA / "places_legacy_ucla.json").read_text())
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open = asyncio.Event()
        self._closing = asyncio.Event()
        self._arrived = asyncio.Event()
        self._open.set()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> FakeGoogle:
        self._loop = asyncio.get_running_loop()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        self._closing.set()
        self._open.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeGoogle:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @classmethod
    @contextlib.contextmanager
    def in_thread(cls, key: str = DEFAULT_KEY) -> Iterator[FakeGoogle]:
        """The fake on its own event loop in a daemon thread, for sync tests."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-google", daemon=True)
        thread.start()
        fake = cls(key=key)
        try:
            asyncio.run_coroutine_threadsafe(fake.start(), loop).result(timeout=10)
            yield fake
        finally:
            asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    # -- steering ------------------------------------------------------------------

    def block(self) -> None:
        """Hold every request (arrived or not) until `unblock`."""
        self._on_loop(self._open.clear)

    def unblock(self) -> None:
        self._on_loop(self._open.set)

    async def wait_for_requests(self, n: int) -> None:
        """Until `n` requests have arrived (asyncio tests, on the fake's own loop)."""
        while len(self.requests) < n:
            self._arrived.clear()
            await self._arrived.wait()

    def _on_loop(self, fn: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None or _running_loop() is loop:
            return fn()

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=10)

    # -- serving -------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_body = await request.read()
        try:
            body: Any = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = raw_body.decode("utf-8", "replace")
        self.requests.append(
            Recorded(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        self._arrived.set()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await self._hold()
            return self._answer(request, body)
        finally:
            self.in_flight -= 1

    async def _hold(self) -> None:
        await _first(self._open.wait(), self._closing.wait())
        if self.delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.delay)

    def _answer(self, request: web.Request, body: Any) -> web.Response:
        if request.path == NEW_API_PATH and request.method == "POST":
            return self._new_api(request, body)
        if request.path == LEGACY_PATH and request.method == "GET":
            return self._legacy_api(request)
        self.problems.append(f"no such endpoint: {request.method} {request.path}")
        return web.Response(
            status=404, text=_NOT_FOUND_PAGE.format(path=request.path), content_type="text/html"
        )

    def _new_api(self, request: web.Request, body: Any) -> web.Response:
        refusal = self._check_new(request, body)
        if refusal is not None:
            return refusal
        if self.raw is not None:
            return _raw(self.raw)
        if self.error is not None:
            return _rpc_error(*_RPC[self.error])
        circle = body["locationRestriction"]["circle"]
        center = (circle["center"]["latitude"], circle["center"]["longitude"])
        masked = {p.removeprefix("places.") for p in request.headers["X-Goog-FieldMask"].split(",")}
        places = [
            {k: v for k, v in p.items() if k in masked}
            for p in self._places
            if _distance_m(center, (p["location"]["latitude"], p["location"]["longitude"]))
            <= circle["radius"]
        ][: body.get("maxResultCount", 20)]
        return web.json_response({"places": places} if places else {})

    def _check_new(self, request: web.Request, body: Any) -> web.Response | None:
        key = request.headers.get("X-Goog-Api-Key")
        if not key:
            return self._refuse_rpc(
                403, "PERMISSION_DENIED", "The request is missing a valid API key.", None
            )
        if key != self.key:
            return self._refuse_rpc(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                "API_KEY_INVALID",
            )
        mask = request.headers.get("X-Goog-FieldMask", "")
        if not mask:
            return self._refuse_rpc(
                400,
                "INVALID_ARGUMENT",
                "FieldMask is a required parameter. See https://cloud.google.com/apis/docs/"
                "system-parameters on how to provide it. As an example, you can set the header "
                "'X-Goog-FieldMask' to value 'places.displayName', 'places.id' to ask for the "
                "display name and the place id of a place.",
                None,
            )
        for path in mask.split(","):
            if not (path.startswith("places.") and path.removeprefix("places.") in PLACE_FIELDS):
                return self._refuse_rpc(
                    400,
                    "INVALID_ARGUMENT",
                    f"Error expanding 'fields' parameter. Cannot find matching fields for path "
                    f"'{path}'.",
                    None,
                )
        if request.content_type != "application/json":
            return self._refuse_rpc(
                400,
                "INVALID_ARGUMENT",
                f"Invalid JSON payload received. Unexpected content type {request.content_type!r}.",
                None,
            )
        problem = _body_problem(body)
        if problem is not None:
            return self._refuse_rpc(400, "INVALID_ARGUMENT", problem, None)
        return None

    def _refuse_rpc(self, code: int, status: str, message: str, reason: str | None) -> web.Response:
        self.problems.append(f"{status}: {message}")
        return _rpc_error(code, status, message, reason)

    def _legacy_api(self, request: web.Request) -> web.Response:
        query = request.query
        if "key" not in query:
            return self._refuse_legacy(
                "REQUEST_DENIED",
                "You must use an API key to authenticate each request to Google Maps Platform "
                "APIs. For additional information, please refer to http://g.co/dev/maps-no-account",
            )
        if query.getall("key") != [self.key]:
            return self._refuse_legacy("REQUEST_DENIED", "The provided API key is invalid. ")
        extra = sorted(set(query) - {"key", "location", "radius"})
        if extra or any(len(query.getall(k)) != 1 for k in query):
            return self._refuse_legacy("INVALID_REQUEST", f"Unexpected parameters: {extra}")
        match = _LOCATION.fullmatch(query.get("location", ""))
        if not match or abs(float(match[1])) > 90 or abs(float(match[2])) > 180:
            return self._refuse_legacy(
                "INVALID_REQUEST", "Invalid request. Invalid 'location' parameter."
            )
        radius = query.get("radius", "")
        if not _RADIUS.fullmatch(radius) or not 0 < float(radius) <= 50_000:
            return self._refuse_legacy(
                "INVALID_REQUEST", "Invalid request. Invalid 'radius' parameter."
            )
        if self.raw is not None:
            return _raw(self.raw)
        if self.error is not None:
            return _legacy_error(self.error, _LEGACY_MESSAGE[self.error])
        center = (float(match[1]), float(match[2]))
        at = [r["geometry"]["location"] for r in self._legacy["results"]]
        results = [
            r
            for r, point in zip(self._legacy["results"], at, strict=True)
            if _distance_m(center, (point["lat"], point["lng"])) <= float(radius)
        ][:20]
        if not results:
            return web.json_response(
                {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}
            )
        reply = {**self._legacy, "results": results}
        if len(results) < 20:
            reply.pop("next_page_token", None)
        return web.json_response(reply)

    def _refuse_legacy(self, status: str, message: str) -> web.Response:
        self.problems.append(f"{status}: {message}")
        return _legacy_error(status, message)


def _body_problem(body: Any) -> str | None:
    """What Google would reject in a searchNearby body, or None."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    for name in body:
        if name not in REQUEST_FIELDS:
            return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
    circle = body.get("locationRestriction", {})
    if (
        not isinstance(circle, dict)
        or set(circle) != {"circle"}
        or not isinstance(circle["circle"], dict)
    ):
        return "Error in searchNearby: locationRestriction must be a circle."
    circle = circle["circle"]
    if set(circle) - {"center", "radius"}:
        return f"Invalid JSON payload received. Unknown fields in circle: {sorted(circle)}."
    center = circle.get("center")
    if not isinstance(center, dict) or set(center) != {"latitude", "longitude"}:
        return "Error in searchNearby: circle.center must have latitude and longitude."
    lat, lng = center["latitude"], center["longitude"]
    if not _number(lat) or not -90 <= lat <= 90:
        return "Error in searchNearby: Latitude must be in the range [-90.0, +90.0]."
    if not _number(lng) or not -180 <= lng <= 180:
        return "Error in searchNearby: Longitude must be in the range [-180.0, +180.0]."
    radius = circle.get("radius")
    if not _number(radius) or not 0 < radius <= 50_000:
        return "Error in searchNearby: radius must be in the range (0.0, 50000.0]."
    count = body.get("maxResultCount", 20)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 20:
        return f"Error in searchNearby: Invalid maxResultCount {count!r}: must be between 1 and 20."
    return None


def _rpc_error(code: int, status: str, message: str, reason: str | None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason is not None:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {
                    "service": "places.googleapis.com",
                    "consumer": "projects/123456789012",
                },
            }
        ]
    return web.json_response({"error": error}, status=code)


def _legacy_error(status: str, message: str | None) -> web.Response:
    reply: dict[str, Any] = {"html_attributions": [], "results": [], "status": status}
    if message is not None:
        reply = {"error_message": message, **reply}
    return web.json_response(reply)


def _raw(raw: Raw) -> web.Response:
    return web.Response(status=raw.status, text=raw.body, content_type=raw.content_type)


def _distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle metres (haversine), enough to decide what is 'nearby'."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _first(*aws: Awaitable[Any]) -> None:
    """Wait until the first of `aws` finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
