"""The end of a loop turn: where a turn's work becomes durable, then visible.

Everything that happens in one turn of the event loop (client lines, drained bus
messages) only changes memory. Once per turn, in this order:

1. the turn's new entries go to disk in one write (`disk.Disk.commit`), so that
   nothing is acknowledged or forwarded that a crash of this process could lose;
2. the turn's replies leave (the gateway holds them until the commit), timed
   together for the IAMAT latency histogram;
3. the neighbors get the turn's updates, one message each (`links.Links.flush`);
4. the turn's log record is written (`journal.Journal`).

A lone update still leaves at once (the turn ends right after it), while updates
that arrive together leave together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Turn:
    __slots__ = ("_loop", "_scheduled", "steps")

    def __init__(self, steps: list[Callable[[], None]]) -> None:
        self.steps = steps
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def soon(self) -> None:
        """Something happened this turn: run the steps once it is over."""
        if not self._scheduled:
            self._scheduled = True
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self.end)

    def end(self) -> None:
        self._scheduled = False
        for step in self.steps:
            step()
