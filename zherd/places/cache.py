"""Reuse of paid answers: a small TTL + LRU cache with single flight.

A burst of identical WHATSATs (one client asked by many, or a client retrying)
must cost one request to Google, not one each. Written here rather than taken
from cachetools because single flight needs its own bookkeeping anyway and the
whole cache is a dozen lines on top of an OrderedDict.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class AnswerCache(Generic[K, V]):
    """Answers kept for `ttl` seconds (0: not kept), at most `size` of them, least recent out.

    Identical requests already under way share the one fetch whatever the ttl:
    coalescing never serves anything older than the request itself.
    """

    def __init__(self, ttl: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._answers: OrderedDict[K, tuple[float, V]] = OrderedDict()  # key -> (expiry, answer)
        self._in_flight: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._answers)

    async def get(self, key: K, fetch: Callable[[], Awaitable[V]], keep: Callable[[V], bool]) -> V:
        """The cached answer, the one being fetched, or a new fetch; `keep` says what to cache."""
        found = self._lookup(key)
        if found is not None:
            return found[1]
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fill(key, fetch, keep))
            self._in_flight[key] = task
        # Shielded: one waiter giving up (its client hung up) must not cancel the others.
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for the fetches under way, so shutdown leaves no task behind."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def _fill(
        self, key: K, fetch: Callable[[], Awaitable[V]], keep: Callable[[V], bool]
    ) -> V:
        try:
            answer = await fetch()
        finally:
            del self._in_flight[key]
        if self._ttl > 0 and keep(answer):
            self._answers[key] = (self._clock() + self._ttl, answer)
            self._answers.move_to_end(key)
            while len(self._answers) > self._size:
                self._answers.popitem(last=False)
        return answer

    def _lookup(self, key: K) -> tuple[float, V] | None:
        found = self._answers.get(key)
        if found is None:
            return None
        if self._clock() >= found[0]:
            del self._answers[key]
            return None
        self._answers.move_to_end(key)
        return found
