"""topology.toml: the default herd loads; every mistake is a ConfigError naming file and key."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from zherd.config import ConfigError, Topology, load, parse

ROOT = Path(__file__).resolve().parent.parent

TWO = """
links = [["A", "B"]]

[servers.A]
port = 13000
bus_port = 13001

[servers.B]
port = 13002
bus_port = 13003
"""


def write(tmp_path: Path, text: str, name: str = "topology.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def servers(**ports: tuple[int, int]) -> dict[str, Any]:
    return {name: {"port": p, "bus_port": b} for name, (p, b) in ports.items()}


def parsed(raw: dict[str, Any], path: Path = Path("/etc/herd/t.toml")) -> Topology:
    return parse(raw, path)


def error(raw: dict[str, Any], path: Path = Path("/etc/herd/t.toml")) -> str:
    with pytest.raises(ConfigError) as info:
        parse(raw, path)
    message = str(info.value)
    assert message.startswith(str(path)), message  # every message names the file
    return message


BASE: dict[str, Any] = {
    "servers": servers(A=(13000, 13001), B=(13002, 13003)),
    "links": [["A", "B"]],
}


def with_(**changes: Any) -> dict[str, Any]:
    raw = {**BASE, **changes}
    return raw


# the default herd


def test_default_topology_is_the_paper_herd() -> None:
    topo = load(ROOT / "topology.toml")
    assert sorted(topo.servers) == ["Alford", "Bolden", "Hamilton", "Parker", "Powell"]
    assert len(topo.links) == 5
    assert topo.links == {
        frozenset(pair)
        for pair in [
            ("Alford", "Parker"),
            ("Alford", "Powell"),
            ("Bolden", "Parker"),
            ("Bolden", "Powell"),
            ("Hamilton", "Parker"),
        ]
    }
    assert topo.neighbors("Alford") == ("Parker", "Powell")
    assert topo.neighbors("Bolden") == ("Parker", "Powell")
    assert topo.neighbors("Hamilton") == ("Parker",)
    assert topo.neighbors("Parker") == ("Alford", "Bolden", "Hamilton")
    assert topo.neighbors("Powell") == ("Alford", "Bolden")


def test_default_topology_ports_are_distinct_and_dirs_sit_next_to_it() -> None:
    topo = load(ROOT / "topology.toml")
    ports = [p for s in topo.servers.values() for p in (s.port, s.bus_port)]
    assert len(set(ports)) == 10
    assert topo.servers["Alford"].port == 12200
    assert topo.servers["Alford"].bus_endpoint == "tcp://127.0.0.1:12201"
    assert topo.places.provider == "geonames"
    assert topo.logging.dir == ROOT / "logs"
    assert topo.storage.dir == ROOT / "var"


# errors


def test_link_to_unknown_server() -> None:
    message = error(with_(links=[["A", "Nowhere"]]))
    assert "Nowhere" in message and "unknown server" in message


def test_duplicate_port() -> None:
    message = error(with_(servers=servers(A=(13000, 13001), B=(13001, 13003))))
    assert "13001" in message and "already used" in message and "A.bus_port" in message


def test_port_equal_to_own_bus_port() -> None:
    message = error(with_(servers=servers(A=(13000, 13000), B=(13002, 13003))))
    assert "13000" in message and "already used" in message


def test_missing_port() -> None:
    raw = with_(servers={"A": {"bus_port": 13001}, "B": {"port": 13002, "bus_port": 13003}})
    message = error(raw)
    assert "[servers.A]" in message and "missing port" in message


def test_missing_bus_port() -> None:
    raw = with_(servers={"A": {"port": 13000}, "B": {"port": 13002, "bus_port": 13003}})
    assert "missing bus_port" in error(raw)


@pytest.mark.parametrize(
    ("raw", "key", "where"),
    [
        ({**BASE, "server": {}}, "server", ""),
        (
            {**BASE, "servers": {**BASE["servers"], "A": {"port": 1, "bus_port": 2, "hots": "x"}}},
            "hots",
            "[servers.A]",
        ),
        ({**BASE, "places": {"provider": "geonames", "api_key": "x"}}, "api_key", "[places]"),
        ({**BASE, "logging": {"dri": "logs"}}, "dri", "[logging]"),
        ({**BASE, "storage": {"path": "var"}}, "path", "[storage]"),
        ({**BASE, "limits": {"max_lines": 5}}, "max_lines", "[limits]"),
    ],
)
def test_unknown_key(raw: dict[str, Any], key: str, where: str) -> None:
    message = error(raw)
    assert f"unknown key {key!r}" in message
    assert where in message


@pytest.mark.parametrize("provider", ["bing", "", "GEONAMES", 3])
def test_bad_provider(provider: Any) -> None:
    message = error(with_(places={"provider": provider}))
    assert "provider" in message and "geonames" in message and repr(provider) in message


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (with_(servers=servers(A=(13000, 13001), B=(0, 13003))), "port must be an integer"),
        (with_(servers=servers(A=(13000, 13001), B=(13002, 65536))), "bus_port must be an integer"),
        (
            with_(
                servers={"A": {"port": "13000", "bus_port": 13001}, "B": {"port": 2, "bus_port": 3}}
            ),
            "port must be an integer",
        ),
        (
            with_(
                servers={"A": {"port": True, "bus_port": 13001}, "B": {"port": 2, "bus_port": 3}}
            ),
            "port must be an integer",
        ),
        (
            with_(servers={"A": {"port": 1.5, "bus_port": 13001}, "B": {"port": 2, "bus_port": 3}}),
            "port must be an integer",
        ),
        (
            with_(
                servers={
                    "A": {"host": 5, "port": 1, "bus_port": 2},
                    "B": {"port": 3, "bus_port": 4},
                }
            ),
            "host must be a non-empty string",
        ),
        (with_(servers={"A": 5, "B": {"port": 3, "bus_port": 4}}), "must be a table"),
        (with_(servers=[]), "at least one server"),
        (with_(servers={}), "at least one server"),
        ({"links": []}, "at least one server"),
        (with_(links={"A": "B"}), "links must be a list"),
        (with_(links=[["A", "B", "A"]]), "must be a pair"),
        (with_(links=["AB"]), "must be a pair"),
        (with_(links=[["A", 1]]), "must be a pair"),
        (with_(links=[["A", "A"]]), "itself"),
        (with_(places="geonames"), "[places] must be a table"),
        (with_(places={"timeout": "5"}), "timeout must be a number"),
        (with_(places={"timeout": 0}), "timeout must be greater than 0"),
        (with_(places={"timeout": -1.0}), "timeout must be a number >= 0"),
        (with_(places={"cache_size": 1.5}), "cache_size must be an integer"),
        (with_(places={"cache_size": True}), "cache_size must be an integer"),
        (with_(places={"endpoint": 5}), "endpoint must be a str"),
        (with_(places={"data_dir": 5}), "data_dir must be a non-empty path string"),
        (with_(logging={"dir": ""}), "dir must be a non-empty path string"),
        (with_(logging={"retention": "5"}), "retention must be an integer"),
        (with_(storage={"enabled": "yes"}), "enabled must be a bool"),
        (with_(storage={"fsync": "sometimes"}), "fsync must be one of always, everysec, no"),
        (with_(logging={"rotation": "often"}), "rotation: not a size"),
        (with_(limits={"max_line": 0}), "max_line must be greater than 0"),
        (with_(limits={"idle_timeout": "1"}), "idle_timeout must be a number"),
    ],
)
def test_wrong_types_and_values(raw: dict[str, Any], words: str) -> None:
    assert words in error(raw)


def test_server_name_with_whitespace() -> None:
    raw = with_(servers={"A B": {"port": 1, "bus_port": 2}}, links=[])
    assert "no whitespace" in error(raw)


# loading files


def test_load_small_topology_with_defaults(tmp_path: Path) -> None:
    topo = load(write(tmp_path, TWO))
    assert topo.servers["A"].host == "127.0.0.1"
    assert topo.neighbors("A") == ("B",)
    assert topo.neighbors("B") == ("A",)
    assert topo.places.provider == "geonames"
    assert topo.storage.dir == tmp_path / "var"
    assert topo.logging.dir == tmp_path / "logs"


def test_relative_dirs_resolve_against_the_files_folder_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "conf" / "herd"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(
        folder,
        TWO
        + """
[logging]
dir = "log/here"
[storage]
dir = "../state"
[places]
data_dir = "cache"
""",
    )
    monkeypatch.chdir(elsewhere)
    topo = load(Path("..") / "conf" / "herd" / "topology.toml")
    assert topo.logging.dir == folder / "log" / "here"
    assert topo.storage.dir == tmp_path / "conf" / "state"
    assert topo.places.data_dir == folder / "cache"


def test_absolute_dirs_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "abs"
    topo = load(write(tmp_path / "x", TWO + f'\n[logging]\ndir = "{target.as_posix()}"\n'))
    assert topo.logging.dir == target


def test_storage_can_be_disabled(tmp_path: Path) -> None:
    topo = load(write(tmp_path, TWO + "\n[storage]\nenabled = false\n"))
    assert topo.storage.dir is None


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="no such file") as info:
        load(path)
    assert str(path) in str(info.value)


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[servers.A\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load(path)
    assert str(path) in str(info.value)


def test_error_from_a_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, TWO.replace('["A", "B"]', '["A", "C"]'))
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(str(path))
    assert "'C'" in str(info.value)


def test_parsed_is_a_frozen_topology() -> None:
    topo = parsed(BASE)
    with pytest.raises(AttributeError):
        topo.servers = {}  # type: ignore[misc]
