"""Places near a point, in the Google Places legacy Nearby Search shape.

Places never flood between servers; each server asks its own provider. The
provider is chosen by `[places] provider` in topology.toml.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol

from zherd.config import ConfigError, PlacesConfig


class PlacesProvider(Protocol):
    """What a node needs from a places source.

    `start` must return quickly (a server accepts clients within 0.5 s of exec):
    slow set-up runs in the background and `nearby` waits for it.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def nearby(self, lat: float, lon: float, radius_km: float, count: int) -> dict[str, Any]:
        """Legacy-shaped JSON object: html_attributions, results (at most `count`), status."""
        ...


def make_provider(config: PlacesConfig, environ: Mapping[str, str] | None = None) -> PlacesProvider:
    """Build the configured provider; a Google provider without a key is a ConfigError."""
    key = api_key(config, environ)
    if key is None:
        from zherd.places.geonames import GeoNamesProvider

        return GeoNamesProvider(config.data_dir)
    from zherd.places.google import make_google_provider

    return make_google_provider(config, key)


def api_key(config: PlacesConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The key a Google provider needs (None for the offline one); checked before any start."""
    if config.provider == "geonames":
        return None
    key = (os.environ if environ is None else environ).get(config.api_key_env, "")
    if not key:
        raise ConfigError(
            f"[places] provider {config.provider!r} needs an API key in the environment "
            f'variable {config.api_key_env} (set it, or use provider = "geonames")'
        )
    return key
