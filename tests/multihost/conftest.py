"""The paper's herd on five namespaces, shared by the tests of this package.

Skipped, with the reason, where namespaces cannot be made (not root, no `ip`).
Namespaces, links and server processes are removed afterwards, even when a test
fails; each test restores any link it cut before the next one runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from multihost.netns import Hosts, Network, unavailable
from zherd.harness import PAPER_LINKS, PAPER_SERVERS


@pytest.fixture(scope="package")
def hosts(tmp_path_factory: pytest.TempPathFactory, geonames_index: None) -> Iterator[Hosts]:
    why = unavailable()
    if why:
        pytest.skip(f"multihost: {why}")
    net = Network(PAPER_SERVERS, PAPER_LINKS)
    herd: Hosts | None = None
    try:
        net.create()
        herd = Hosts(Path(tmp_path_factory.mktemp("multihost")), net)
        herd.start()
        yield herd
    finally:
        statuses = herd.stop() if herd is not None else {}
        net.destroy()
    crashed = {name: status for name, status in statuses.items() if status != 0}
    assert not crashed, f"servers did not exit cleanly: {crashed}"


@pytest.fixture
def net(hosts: Hosts) -> Iterator[Network]:
    """The network of `hosts`, every link up again after the test."""
    try:
        yield hosts.net
    finally:
        hosts.net.restore_all()
