"""topology.toml: which servers exist, where they listen, who may talk to whom.

Loaded once into frozen dataclasses; every mistake is a ConfigError whose message
names the file and the offending key, so `zherd start` can print it and exit.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.server import Limits

PROVIDERS = ("geonames", "google", "google-legacy")
DEFAULT_ENDPOINTS = {
    "google": "https://places.googleapis.com",
    "google-legacy": "https://maps.googleapis.com",
}


class ConfigError(ValueError):
    """A topology that cannot be run; the message is meant for the operator."""


@dataclass(frozen=True)
class ServerConfig:
    name: str
    host: str
    port: int
    bus_port: int

    @property
    def bus_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.bus_port}"


@dataclass(frozen=True)
class PlacesConfig:
    provider: str = "geonames"
    endpoint: str = ""  # empty: the provider's public endpoint
    api_key_env: str = "GOOGLE_PLACES_API_KEY"
    timeout: float = 5.0  # seconds, whole request
    cache_ttl: float = 30.0  # seconds an answer is reused for identical WHATSATs
    cache_size: int = 4096
    max_in_flight: int = 16  # concurrent requests to Google per server
    data_dir: Path | None = None  # where the GeoNames index is cached; None: user cache dir

    @property
    def base_url(self) -> str:
        return (self.endpoint or DEFAULT_ENDPOINTS.get(self.provider, "")).rstrip("/")


@dataclass(frozen=True)
class LoggingConfig:
    dir: Path
    level: str = "INFO"
    rotation: str = "50 MB"
    retention: int = 5  # rotated files kept per server


@dataclass(frozen=True)
class StorageConfig:
    dir: Path | None  # None: in memory only
    flush_interval: float = 0.05  # seconds between batched commits


@dataclass(frozen=True)
class Topology:
    path: Path
    servers: Mapping[str, ServerConfig]
    links: frozenset[frozenset[str]]
    places: PlacesConfig = field(default_factory=PlacesConfig)
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(Path("logs")))
    storage: StorageConfig = field(default_factory=lambda: StorageConfig(None))
    limits: Limits = field(default_factory=Limits)

    def neighbors(self, name: str) -> tuple[str, ...]:
        """Permitted neighbors of a server, sorted for a stable wiring order."""
        return tuple(sorted(n for link in self.links if name in link for n in link if n != name))


def load(path: str | Path) -> Topology:
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(raw, path)


def parse(raw: Mapping[str, Any], path: Path) -> Topology:
    """Validate a decoded topology; relative directories are relative to `path`'s folder."""
    where = str(path)
    base = path.resolve().parent
    _known(raw, {"servers", "links", "places", "logging", "storage", "limits"}, where)
    servers = _servers(raw.get("servers"), where)
    links = _links(raw.get("links", []), servers, where)
    return Topology(
        path=path,
        servers=servers,
        links=links,
        places=_places(_table(raw, "places", where), base, where),
        logging=_logging(_table(raw, "logging", where), base, where),
        storage=_storage(_table(raw, "storage", where), base, where),
        limits=_limits(_table(raw, "limits", where), where),
    )


def _servers(raw: Any, where: str) -> dict[str, ServerConfig]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: [servers] must define at least one server")
    servers: dict[str, ServerConfig] = {}
    ports: dict[tuple[str, int], str] = {}
    for name, spec in raw.items():
        at = f"{where}: [servers.{name}]"
        if not name or any(c.isspace() for c in name):
            raise ConfigError(f"{at}: a server name must be non-empty with no whitespace")
        if not isinstance(spec, dict):
            raise ConfigError(f"{at}: must be a table")
        _known(spec, {"host", "port", "bus_port"}, at)
        host = spec.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            raise ConfigError(f"{at}: host must be a non-empty string")
        server = ServerConfig(name, host, _port(spec, "port", at), _port(spec, "bus_port", at))
        for key, port in (("port", server.port), ("bus_port", server.bus_port)):
            if (host, port) in ports:
                raise ConfigError(f"{at}: {key} {port} is already used by {ports[host, port]}")
            ports[host, port] = f"{name}.{key}"
        servers[name] = server
    return servers


def _port(spec: Mapping[str, Any], key: str, at: str) -> int:
    if key not in spec:
        raise ConfigError(f"{at}: missing {key}")
    port = spec[key]
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ConfigError(f"{at}: {key} must be an integer in 1..65535, not {port!r}")
    return port


def _links(raw: Any, servers: Mapping[str, ServerConfig], where: str) -> frozenset[frozenset[str]]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: links must be a list of [a, b] pairs")
    links = set()
    for link in raw:
        if not (
            isinstance(link, list) and len(link) == 2 and all(isinstance(s, str) for s in link)
        ):
            raise ConfigError(f"{where}: link {link!r} must be a pair of server names")
        for name in link:
            if name not in servers:
                raise ConfigError(f"{where}: link {link!r} names unknown server {name!r}")
        if link[0] == link[1]:
            raise ConfigError(f"{where}: link {link!r} joins a server to itself")
        links.add(frozenset(link))
    return frozenset(links)


def _places(raw: Mapping[str, Any], base: Path, where: str) -> PlacesConfig:
    at = f"{where}: [places]"
    d = PlacesConfig()
    _known(raw, set(d.__dataclass_fields__), at)
    provider = raw.get("provider", d.provider)
    if provider not in PROVIDERS:
        raise ConfigError(f"{at}: provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
    data_dir = raw.get("data_dir")
    return PlacesConfig(
        provider=provider,
        endpoint=_typed(raw, "endpoint", str, d.endpoint, at),
        api_key_env=_typed(raw, "api_key_env", str, d.api_key_env, at),
        timeout=_positive(raw, "timeout", d.timeout, at),
        cache_ttl=_number(raw, "cache_ttl", d.cache_ttl, at, minimum=0),
        cache_size=int(_positive(raw, "cache_size", d.cache_size, at, integer=True)),
        max_in_flight=int(_positive(raw, "max_in_flight", d.max_in_flight, at, integer=True)),
        data_dir=None if data_dir is None else _dir(data_dir, base, f"{at} data_dir"),
    )


def _logging(raw: Mapping[str, Any], base: Path, where: str) -> LoggingConfig:
    at = f"{where}: [logging]"
    _known(raw, {"dir", "level", "rotation", "retention"}, at)
    d = LoggingConfig(Path("logs"))
    return LoggingConfig(
        dir=_dir(raw.get("dir", "logs"), base, f"{at} dir"),
        level=_typed(raw, "level", str, d.level, at).upper(),
        rotation=_typed(raw, "rotation", str, d.rotation, at),
        retention=int(_positive(raw, "retention", d.retention, at, integer=True)),
    )


def _storage(raw: Mapping[str, Any], base: Path, where: str) -> StorageConfig:
    at = f"{where}: [storage]"
    _known(raw, {"dir", "enabled", "flush_interval"}, at)
    enabled = _typed(raw, "enabled", bool, True, at)
    folder = _dir(raw.get("dir", "var"), base, f"{at} dir")
    interval = _positive(raw, "flush_interval", StorageConfig(None).flush_interval, at)
    return StorageConfig(folder if enabled else None, interval)


def _limits(raw: Mapping[str, Any], where: str) -> Limits:
    at = f"{where}: [limits]"
    d = Limits()
    _known(raw, set(d.__dataclass_fields__), at)
    max_line = int(_positive(raw, "max_line", d.max_line, at, integer=True))
    max_id = int(_positive(raw, "max_id", d.max_id, at, integer=True))
    if max_id > max_line:
        raise ConfigError(f"{at}: max_id must be at most max_line ({max_line}), not {max_id}")
    return Limits(
        max_line=max_line,
        idle_timeout=_positive(raw, "idle_timeout", d.idle_timeout, at),
        max_clients=int(_positive(raw, "max_clients", d.max_clients, at, integer=True)),
        max_pending_output=int(
            _positive(raw, "max_pending_output", d.max_pending_output, at, integer=True)
        ),
        max_inflight=int(_positive(raw, "max_inflight", d.max_inflight, at, integer=True)),
        max_future=_positive(raw, "max_future", d.max_future, at),
        max_id=max_id,
    )


def _table(raw: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _known(raw: Mapping[str, Any], allowed: set[str], at: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"{at}: unknown key {unknown[0]!r} (expected one of {', '.join(sorted(allowed))})"
        )


def _typed(raw: Mapping[str, Any], key: str, kind: type, default: Any, at: str) -> Any:
    value = raw.get(key, default)
    if not isinstance(value, kind):
        raise ConfigError(f"{at}: {key} must be a {kind.__name__}, not {value!r}")
    return value


def _number(
    raw: Mapping[str, Any], key: str, default: float, at: str, minimum: float, integer: bool = False
) -> float:
    value = raw.get(key, default)
    kinds = (int,) if integer else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{at}: {key} must be {kind} >= {minimum}, not {value!r}")
    return value


def _positive(
    raw: Mapping[str, Any], key: str, default: float, at: str, integer: bool = False
) -> float:
    value = _number(raw, key, default, at, minimum=0, integer=integer)
    if value == 0:
        raise ConfigError(f"{at}: {key} must be greater than 0")
    return value


def _dir(value: Any, base: Path, at: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{at} must be a non-empty path string")
    return (base / value).resolve()
