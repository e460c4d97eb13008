"""WHATSAT through Google Places, for users with an API key.

Two providers share one client: `google` asks Places API (New) searchNearby and
converts its answer; `google-legacy` asks the legacy Nearby Search, whose JSON
is already what clients get. Every failure (Google's refusals, HTTP errors,
garbage, a dead network, a timeout) is an answer in the legacy error shape plus
one warning, never an exception: a WHATSAT always gets a reply. The API key is
scrubbed from both, since aiohttp's own error texts quote the URL with `key=`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from loguru import logger

from zherd.config import ConfigError, PlacesConfig
from zherd.places import PlacesProvider
from zherd.places.cache import AnswerCache
from zherd.places.legacy import (
    FIELD_MASK,
    SUCCESS,
    UNKNOWN_ERROR,
    error_reply,
    from_legacy,
    from_new_places,
    is_success,
    message_from_http,
    status_from_http,
)

NEW_API_PATH = "/v1/places:searchNearby"
LEGACY_PATH = "/maps/api/place/nearbysearch/json"
MAX_RESULTS = 20  # searchNearby's maxResultCount limit, and the legacy page size

Key = tuple[float, float, float, int]


def make_google_provider(
    config: PlacesConfig, key: str, *, clock: Callable[[], float] = time.monotonic
) -> PlacesProvider:
    """The provider for `config.provider`; `clock` (monotonic seconds) drives the cache."""
    if config.provider == "google":
        return NewPlacesProvider(config, key, clock=clock)
    if config.provider == "google-legacy":
        return LegacyPlacesProvider(config, key, clock=clock)
    raise ConfigError(f"[places] provider {config.provider!r} is not a Google provider")


class GoogleProvider:
    """What both APIs share: session, in-flight bound, cache, failure answers."""

    api = "Google Places"

    def __init__(
        self, config: PlacesConfig, key: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._key = key
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._cache: AnswerCache[Key, dict[str, Any]] = AnswerCache(
            config.cache_ttl, config.cache_size, clock
        )

    async def start(self) -> None:
        """Only builds the session: connecting waits for the first WHATSAT."""
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self._config.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        await self._cache.drain()

    async def nearby(self, lat: float, lon: float, radius_km: float, count: int) -> dict[str, Any]:
        answer = await self._cache.get(
            (lat, lon, radius_km, count),
            lambda: self._ask(lat, lon, radius_km, count),
            is_success,
        )
        # A copy: the cached answer is shared by every caller and must stay as Google sent it.
        return copy.deepcopy(answer)

    async def _ask(self, lat: float, lon: float, radius_km: float, count: int) -> dict[str, Any]:
        """One request to Google; whatever goes wrong becomes an answer and one warning."""
        detail = ""
        try:
            async with self._slots:
                reply = await self._request(lat, lon, radius_km, count)
        except TimeoutError:
            reply = error_reply(
                UNKNOWN_ERROR,
                f"{self.api} did not answer within {float(self._config.timeout)} s",
            )
        except aiohttp.ClientError as e:
            reply = error_reply(
                UNKNOWN_ERROR, f"{self.api} could not be reached ({type(e).__name__})"
            )
            detail = str(e)
        except Exception as e:  # a bug must still leave the client with an answer
            reply = error_reply(UNKNOWN_ERROR, f"{self.api} request failed ({type(e).__name__})")
            detail = str(e)
        if is_success(reply):
            return reply
        reply["error_message"] = self._scrub(str(reply.get("error_message", "")))
        logger.warning(
            "places: {} for {},{} within {} km: {}{}",
            reply["status"],
            lat,
            lon,
            radius_km,
            reply["error_message"],
            f" [{self._scrub(detail)}]" if detail else "",
        )
        return reply

    async def _request(
        self, lat: float, lon: float, radius_km: float, count: int
    ) -> dict[str, Any]:
        raise NotImplementedError

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise aiohttp.ClientConnectionError("the places provider is not started")
        return self._session

    def _http_error(self, status: int, reason: str, body: Any) -> dict[str, Any]:
        return error_reply(status_from_http(status, body), message_from_http(status, reason, body))

    def _not_json(self) -> dict[str, Any]:
        return error_reply(
            UNKNOWN_ERROR, f"{self.api} answered HTTP 200 with a body that is not JSON"
        )

    def _scrub(self, text: str) -> str:
        text = _KEY_PARAM.sub(r"\1<redacted>", text)
        return text.replace(self._key, "<redacted>") if self._key else text


class NewPlacesProvider(GoogleProvider):
    """Places API (New): POST searchNearby, the answer converted to the legacy shape."""

    async def _request(
        self, lat: float, lon: float, radius_km: float, count: int
    ) -> dict[str, Any]:
        body = {
            "locationRestriction": {
                "circle": {
                    "center": {"latitude": lat, "longitude": lon},
                    "radius": metres(radius_km),
                }
            },
            "maxResultCount": max(1, min(count, MAX_RESULTS)),
        }
        headers = {
            "Content-Type": "application/json",
            "X-Goog-Api-Key": self._key,
            "X-Goog-FieldMask": FIELD_MASK,
        }
        url = self._config.base_url + NEW_API_PATH
        async with self._client().post(url, data=json.dumps(body), headers=headers) as resp:
            raw = await resp.read()
            status, reason = resp.status, resp.reason or ""
        parsed = _json(raw)
        if status != 200:
            return self._http_error(status, reason, parsed)
        if parsed is _NOT_JSON:
            return self._not_json()
        return from_new_places(parsed, count)


class LegacyPlacesProvider(GoogleProvider):
    """Nearby Search (Legacy): GET nearbysearch/json, the answer passed through."""

    api = "Google Places (legacy)"

    async def _request(
        self, lat: float, lon: float, radius_km: float, count: int
    ) -> dict[str, Any]:
        params = {
            "location": f"{decimal(lat)},{decimal(lon)}",
            "radius": decimal(metres(radius_km)),
            "key": self._key,
        }
        url = self._config.base_url + LEGACY_PATH
        async with self._client().get(url, params=params) as resp:
            raw = await resp.read()
            status, reason = resp.status, resp.reason or ""
        parsed = _json(raw)
        if status != 200:
            # Google's own refusal, if the body is one; else what the HTTP status says.
            legacy = from_legacy(parsed, count)
            if legacy["status"] in SUCCESS or legacy["status"] == UNKNOWN_ERROR:
                return self._http_error(status, reason, parsed)
            return legacy
        if parsed is _NOT_JSON:
            return self._not_json()
        return from_legacy(parsed, count)


def metres(radius_km: float) -> float:
    """Kilometres to metres, to the millimetre: 1.1 km is 1100.0 m, not 1100.0000000000002."""
    return round(radius_km * 1000, 3)


def decimal(x: float) -> str:
    """A plain decimal for a query string: no exponent, no trailing zeros (1e-05 -> 0.00001)."""
    return f"{x:.8f}".rstrip("0").rstrip(".")


_NOT_JSON = object()
_KEY_PARAM = re.compile(r"([?&;]key=)[^&;#\s'\"]*", re.IGNORECASE)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return _NOT_JSON
