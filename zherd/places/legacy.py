"""The legacy Nearby Search JSON shape, which is what WHATSAT clients receive.

Pure functions only: Google's answers in, legacy-shaped dicts out, so every
conversion and every error mapping is tested without a socket.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

OK = "OK"
ZERO_RESULTS = "ZERO_RESULTS"
INVALID_REQUEST = "INVALID_REQUEST"
OVER_QUERY_LIMIT = "OVER_QUERY_LIMIT"
REQUEST_DENIED = "REQUEST_DENIED"
UNKNOWN_ERROR = "UNKNOWN_ERROR"

SUCCESS = frozenset({OK, ZERO_RESULTS})

# Places API (New) fields that `from_new_places` converts, and nothing else: the
# field mask decides both what Google returns and which SKU the request is billed at.
NEW_API_FIELDS = (
    "id",
    "displayName",
    "formattedAddress",
    "shortFormattedAddress",
    "location",
    "viewport",
    "types",
    "rating",
    "userRatingCount",
    "priceLevel",
    "businessStatus",
    "plusCode",
    "iconMaskBaseUri",
    "iconBackgroundColor",
    "attributions",
)
FIELD_MASK = ",".join(f"places.{f}" for f in NEW_API_FIELDS)

# google.rpc.Code names (Places API (New) errors) -> legacy statuses.
_RPC_STATUS = {
    "INVALID_ARGUMENT": INVALID_REQUEST,
    "FAILED_PRECONDITION": INVALID_REQUEST,
    "OUT_OF_RANGE": INVALID_REQUEST,
    "PERMISSION_DENIED": REQUEST_DENIED,
    "UNAUTHENTICATED": REQUEST_DENIED,
    "RESOURCE_EXHAUSTED": OVER_QUERY_LIMIT,
}
# When an error body is not a google.rpc.Status, the HTTP status is all we have.
_HTTP_STATUS = {
    400: INVALID_REQUEST,
    401: REQUEST_DENIED,
    403: REQUEST_DENIED,
    429: OVER_QUERY_LIMIT,
}
_PRICE_LEVELS = {
    "PRICE_LEVEL_FREE": 0,
    "PRICE_LEVEL_INEXPENSIVE": 1,
    "PRICE_LEVEL_MODERATE": 2,
    "PRICE_LEVEL_EXPENSIVE": 3,
    "PRICE_LEVEL_VERY_EXPENSIVE": 4,
}


def error_reply(status: str, message: str) -> dict[str, Any]:
    """A failed search, shaped like Google's own legacy error answers."""
    return {"html_attributions": [], "results": [], "status": status, "error_message": message}


def is_success(reply: Mapping[str, Any]) -> bool:
    return reply.get("status") in SUCCESS


def truncate(reply: dict[str, Any], count: int) -> dict[str, Any]:
    """At most `count` results: the legacy API always sends up to 20."""
    results = reply.get("results")
    if isinstance(results, list) and len(results) > count:
        return {**reply, "results": results[:count]}
    return reply


def from_legacy(body: Any, count: int) -> dict[str, Any]:
    """A legacy API answer (HTTP 200), passed through; errors get the error shape."""
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        return error_reply(UNKNOWN_ERROR, "Google Places answered JSON without a status")
    status = body["status"]
    if status in SUCCESS:
        if not isinstance(body.get("results"), list):
            return error_reply(UNKNOWN_ERROR, "Google Places answered JSON without results")
        return truncate(body, count)
    message = body.get("error_message")
    if not isinstance(message, str) or not message.strip():
        message = f"Google Places answered {status}"
    return error_reply(status, message)


def from_new_places(body: Any, count: int) -> dict[str, Any]:
    """A Places API (New) searchNearby answer (HTTP 200) as a legacy Nearby Search answer.

    Google answers `{}` when nothing is near, which the legacy API called ZERO_RESULTS.
    """
    if not isinstance(body, dict) or not isinstance(body.get("places", []), list):
        return error_reply(UNKNOWN_ERROR, "Google Places answered JSON that is not a place list")
    places = [p for p in body.get("places", []) if isinstance(p, dict)][:count]
    return {
        "html_attributions": _attributions(places),
        "results": [place_result(p) for p in places],
        "status": OK if places else ZERO_RESULTS,
    }


def place_result(place: Mapping[str, Any]) -> dict[str, Any]:
    """One new-API Place as one legacy result; fields Google left out stay out.

    Keys come in Google's legacy order (alphabetical), so replies read like the real thing.
    """
    result: dict[str, Any] = {}
    if isinstance(place.get("businessStatus"), str):
        result["business_status"] = place["businessStatus"]
    geometry: dict[str, Any] = {}
    if (location := _lat_lng(place.get("location"))) is not None:
        geometry["location"] = location
    viewport = place.get("viewport")
    if isinstance(viewport, dict):
        high, low = _lat_lng(viewport.get("high")), _lat_lng(viewport.get("low"))
        if high is not None and low is not None:
            geometry["viewport"] = {"northeast": high, "southwest": low}
    if geometry:
        result["geometry"] = geometry
    if isinstance(place.get("iconBackgroundColor"), str):
        result["icon_background_color"] = place["iconBackgroundColor"]
    if isinstance(place.get("iconMaskBaseUri"), str):
        result["icon_mask_base_uri"] = place["iconMaskBaseUri"]
    name = place.get("displayName")
    if isinstance(name, dict) and isinstance(name.get("text"), str):
        result["name"] = name["text"]
    if isinstance(place.get("id"), str):
        result["place_id"] = place["id"]
    plus = place.get("plusCode")
    if isinstance(plus, dict):
        code = {
            legacy: plus[new]
            for new, legacy in (("compoundCode", "compound_code"), ("globalCode", "global_code"))
            if isinstance(plus.get(new), str)
        }
        if code:
            result["plus_code"] = code
    if place.get("priceLevel") in _PRICE_LEVELS:
        result["price_level"] = _PRICE_LEVELS[place["priceLevel"]]
    if _is_number(place.get("rating")):
        result["rating"] = place["rating"]
    if isinstance(place.get("types"), list):
        result["types"] = [t for t in place["types"] if isinstance(t, str)]
    if _is_number(place.get("userRatingCount")):
        result["user_ratings_total"] = place["userRatingCount"]
    # The legacy vicinity is the short address; the new API calls it shortFormattedAddress.
    vicinity = place.get("shortFormattedAddress", place.get("formattedAddress"))
    if isinstance(vicinity, str):
        result["vicinity"] = vicinity
    return result


def status_from_http(http_status: int, body: Any) -> str:
    """The legacy status for a Places API (New) HTTP error, google.rpc.Status first."""
    rpc = _rpc_error(body)
    if rpc is None:
        return _HTTP_STATUS.get(http_status, UNKNOWN_ERROR)
    # A bad key is INVALID_ARGUMENT to the new API but REQUEST_DENIED to the legacy one.
    reasons = [d.get("reason") for d in rpc.get("details") or [] if isinstance(d, dict)]
    if any(isinstance(r, str) and r.startswith("API_KEY_") for r in reasons):
        return REQUEST_DENIED
    status = rpc.get("status")
    if status in _RPC_STATUS:
        return _RPC_STATUS[status]
    return _HTTP_STATUS.get(http_status, UNKNOWN_ERROR)


def message_from_http(http_status: int, reason: str, body: Any) -> str:
    """Google's own words when the body has them, else the HTTP status line."""
    rpc = _rpc_error(body)
    line = f"HTTP {http_status} {reason}".rstrip()
    if rpc is not None and isinstance(rpc.get("message"), str) and rpc["message"].strip():
        status = rpc.get("status")
        prefix = f"{status}: " if isinstance(status, str) else ""
        return f"Google Places answered {line}: {prefix}{rpc['message'].strip()}"
    return f"Google Places answered {line}"


def _rpc_error(body: Any) -> dict[str, Any] | None:
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _attributions(places: list[dict[str, Any]]) -> list[str]:
    """Per-place data providers (new API) as the legacy top-level HTML list, deduplicated."""
    seen: dict[str, None] = {}
    for place in places:
        for a in place.get("attributions") or []:
            if not isinstance(a, dict) or not isinstance(a.get("provider"), str):
                continue
            name = html.escape(a["provider"])
            uri = a.get("providerUri")
            seen[f'<a href="{html.escape(uri)}">{name}</a>' if isinstance(uri, str) else name] = (
                None
            )
    return list(seen)


def _lat_lng(point: Any) -> dict[str, float] | None:
    if not isinstance(point, dict):
        return None
    lat, lng = point.get("latitude"), point.get("longitude")
    if not (_is_number(lat) and _is_number(lng)):
        return None
    return {"lat": lat, "lng": lng}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
