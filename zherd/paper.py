"""The herd of the Twisted Places paper, written once: `default_topology.toml`.

The file ships inside the package (the root `topology.toml` of a clone is a link to
it); the names and links here are read from it, so they can never disagree.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

DEFAULT_TOPOLOGY = Path(__file__).with_name("default_topology.toml")

_PAPER = tomllib.loads(DEFAULT_TOPOLOGY.read_text())
PAPER_SERVERS: tuple[str, ...] = tuple(_PAPER["servers"])
PAPER_LINKS: tuple[tuple[str, str], ...] = tuple((a, b) for a, b in _PAPER["links"])
