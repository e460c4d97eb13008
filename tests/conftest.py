"""Fixtures for the integration tests: real herds of `zherd serve` processes on loopback.

`herd` (one test) and `module_herd` (shared by a module) are factories: each call
writes a topology on free ports under a temporary folder, starts its servers
(unless told not to) and hands back a `zherd.harness.Herd`. At teardown every
server still running is stopped by pid, and each must exit cleanly (status 0):
a server that crashed under a test, or hung on shutdown, fails it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from zherd.harness import PAPER_LINKS, PAPER_SERVERS, Herd

MakeHerd = Callable[..., Herd]
CHAOS_SLACK = 240.0  # seconds a chaos test may take beyond its schedule (start, converge)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("zherd")
    group.addoption(
        "--chaos-seconds",
        type=float,
        default=60.0,
        help="how long tests/test_chaos.py kills and restarts servers under load (default 60)",
    )
    group.addoption(
        "--chaos-seed",
        type=int,
        default=None,
        help="the chaos schedule's random seed (default: a new one, printed)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A chaos test's timeout follows --chaos-seconds (pytest-timeout reads it before setup)."""
    seconds = config.getoption("--chaos-seconds")
    for item in items:
        if "chaos_seconds" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(seconds + CHAOS_SLACK))


@pytest.fixture
def chaos_seconds(request: pytest.FixtureRequest) -> float:
    """How long a chaos test runs its schedule (`--chaos-seconds`)."""
    return float(request.config.getoption("--chaos-seconds"))


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int | None:
    """The chaos schedule's seed if one was given (`--chaos-seed`)."""
    return request.config.getoption("--chaos-seed")


@pytest.fixture(scope="session")
def geonames_index() -> None:
    """The GeoNames index the servers share, built (once per machine) before any herd starts.

    On a fresh machine the first WHATSAT would otherwise wait seconds for the build,
    under a client's timeout.
    """
    from zherd.places.geoindex import default_data_dir, default_source, open_index

    index, _built = open_index(default_source(), default_data_dir())
    index.close()


def _factory(root: Path) -> tuple[MakeHerd, list[Herd]]:
    herds: list[Herd] = []
    counter = itertools.count()

    def make(
        servers: Sequence[str] = PAPER_SERVERS,
        links: Sequence[tuple[str, str]] = PAPER_LINKS,
        sections: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        start: bool = True,
        storage: bool = True,
    ) -> Herd:
        herd = Herd(root / f"herd{next(counter)}", servers, links, sections, env)
        herds.append(herd)  # registered first: a failed start still gets stopped
        if start:
            herd.start(storage=storage)
        return herd

    return make, herds


def _stop_all(herds: list[Herd]) -> None:
    crashed: dict[str, int] = {}
    for herd in herds:
        already = {name: p.returncode for name, p in herd.procs.items() if p.poll() is not None}
        statuses = herd.stop()
        crashed.update({f"{herd.root.name}/{n}": s for n, s in statuses.items() if s != 0})
        crashed.update({f"{herd.root.name}/{n} (before teardown)": s for n, s in already.items()})
    assert not crashed, f"servers did not exit cleanly: {crashed}"


@pytest.fixture
def herd(tmp_path: Path, geonames_index: None) -> Iterator[MakeHerd]:
    """A factory of herds that live for one test."""
    make, herds = _factory(tmp_path)
    try:
        yield make
    finally:
        _stop_all(herds)


@pytest.fixture(scope="module")
def module_herd(
    tmp_path_factory: pytest.TempPathFactory, geonames_index: None
) -> Iterator[MakeHerd]:
    """A factory of herds shared by the tests of one module (use distinct client ids)."""
    make, herds = _factory(tmp_path_factory.mktemp("herds"))
    try:
        yield make
    finally:
        _stop_all(herds)
