"""topology.toml: which servers exist, where they listen, who may talk to whom.

Loaded once into frozen dataclasses; every mistake is a ConfigError whose message
names the file and the offending key, so `zherd start` can print it and exit.
"""

from __future__ import annotations

import ipaddress
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
    host: str  # where neighbors and clients reach it
    port: int
    bus_port: int
    bind: str = ""  # where it listens (0.0.0.0 behind NAT); empty: host
    status_port: int | None = None  # HTTP /status and /metrics, if served

    def __post_init__(self) -> None:
        if not self.bind:
            object.__setattr__(self, "bind", self.host)

    @property
    def bus_endpoint(self) -> str:
        """Where neighbors connect."""
        return endpoint(self.host, self.bus_port)

    @property
    def bus_bind(self) -> str:
        """Where the bus listens."""
        return endpoint(self.bind, self.bus_port)


def endpoint(host: str, port: int) -> str:
    """A ZeroMQ TCP endpoint; an IPv6 literal goes in brackets."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


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


FSYNC = ("always", "everysec", "no")


@dataclass(frozen=True)
class StorageConfig:
    dir: Path | None  # None: in memory only
    fsync: str = "everysec"  # when the log is forced to the device: see README, Storage


@dataclass(frozen=True)
class SecurityConfig:
    curve: bool = True  # false: neighbors are recognised by the name they claim, in clear text
    keys_dir: Path = Path("keys")  # one CURVE key pair per server (`zherd keys`)


@dataclass(frozen=True)
class DashboardConfig:
    """The live herd page `zherd start` serves (`zherd.dashboard`)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 12290  # 0: any free port (the address is printed at start)


@dataclass(frozen=True)
class Topology:
    path: Path
    servers: Mapping[str, ServerConfig]
    links: frozenset[frozenset[str]]
    places: PlacesConfig = field(default_factory=PlacesConfig)
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(Path("logs")))
    storage: StorageConfig = field(default_factory=lambda: StorageConfig(None))
    limits: Limits = field(default_factory=Limits)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)

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
    base = path.absolute().parent  # a symlinked topology: its own folder, not the target's
    known = {"servers", "links", "places", "logging", "storage", "limits", "security", "dashboard"}
    _known(raw, known, where)
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
        security=_security(_table(raw, "security", where), base, where),
        dashboard=_dashboard(_table(raw, "dashboard", where), where),
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
        _known(spec, {"host", "bind", "port", "bus_port", "status_port"}, at)
        host = _address(spec, "host", "127.0.0.1", at)
        status = _port(spec, "status_port", at) if "status_port" in spec else None
        server = ServerConfig(
            name,
            host,
            _port(spec, "port", at),
            _port(spec, "bus_port", at),
            bind=_address(spec, "bind", host, at),
            status_port=status,
        )
        used = (("port", server.port), ("bus_port", server.bus_port), ("status_port", status))
        for key, port in used:
            if port is None:
                continue
            if (host, port) in ports:
                raise ConfigError(f"{at}: {key} {port} is already used by {ports[host, port]}")
            ports[host, port] = f"{name}.{key}"
        servers[name] = server
    return servers


def _address(spec: Mapping[str, Any], key: str, default: str, at: str) -> str:
    """A host name or an IP address (an IPv6 one with or without brackets)."""
    value = spec.get(key, default)
    if not isinstance(value, str) or not value.strip("[]") or any(c.isspace() for c in value):
        raise ConfigError(f"{at}: {key} must be a non-empty string")
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    if ":" in value and not is_ipv6(value):
        raise ConfigError(f"{at}: {key} {value!r} is neither a host name nor an IP address")
    return value


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
        rotation=_rotation(_typed(raw, "rotation", str, d.rotation, at), at),
        retention=int(_positive(raw, "retention", d.retention, at, integer=True)),
    )


def _storage(raw: Mapping[str, Any], base: Path, where: str) -> StorageConfig:
    at = f"{where}: [storage]"
    _known(raw, {"dir", "enabled", "fsync"}, at)
    enabled = _typed(raw, "enabled", bool, True, at)
    folder = _dir(raw.get("dir", "var"), base, f"{at} dir")
    fsync = _typed(raw, "fsync", str, StorageConfig(None).fsync, at)
    if fsync not in FSYNC:
        raise ConfigError(f"{at}: fsync must be one of {', '.join(FSYNC)}, not {fsync!r}")
    return StorageConfig(folder if enabled else None, fsync)


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


def _security(raw: Mapping[str, Any], base: Path, where: str) -> SecurityConfig:
    at = f"{where}: [security]"
    _known(raw, {"curve", "keys_dir"}, at)
    return SecurityConfig(
        curve=_typed(raw, "curve", bool, True, at),
        keys_dir=_dir(raw.get("keys_dir", "keys"), base, f"{at} keys_dir"),
    )


def _dashboard(raw: Mapping[str, Any], where: str) -> DashboardConfig:
    at = f"{where}: [dashboard]"
    d = DashboardConfig()
    _known(raw, {"enabled", "host", "port"}, at)
    port = raw.get("port", d.port)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"{at}: port must be an integer in 0..65535 (0: any free), not {port!r}")
    host = _typed(raw, "host", str, d.host, at)
    if not host:
        raise ConfigError(f"{at}: host must be a non-empty string")
    return DashboardConfig(_typed(raw, "enabled", bool, d.enabled, at), host, port)


def _rotation(text: str, at: str) -> str:
    from zherd.logfile import size

    try:
        size(text)
    except ValueError as e:
        raise ConfigError(f"{at}: rotation: {e}") from None
    return text


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
