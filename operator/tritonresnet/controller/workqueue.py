"""The runtime's work queue: one entry per key, priorities, and the backoff of a failing key.

The queue
---------
One entry per key. A key is never in two passes at once: an event that
arrives during its pass marks it dirty, and however many arrive it runs once
more afterwards. A resource whose ``metadata.generation`` has not been
reconciled yet goes first, then keys woken by an event or a check, then the
periodic resync. A pass that fails (an exception, or a child the API server
refused) is retried after an exponential, capped, jittered backoff that
resets on the next good pass; events still wake such a key at once (something
changed, so it is worth a try), the resync skips it (its timer is set).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Callable
from typing import Protocol

Key = tuple[str, str]  #: (namespace, name) of a TritonResNet

#: Queue priorities, lowest first.
NEW_GENERATION = 0  #: a spec the operator has not reconciled yet
CHANGED = 1  #: an event (often the operator's own write) or a changed check result
RESYNC = 2  #: nothing announced a change; the periodic safety net

#: Backoff of a failing key: the first retry after about this long, doubling...
BACKOFF_BASE_SECONDS = 2.0
#: ...up to this; longer than a resync, which is the point: a key that fails
#: on every pass should not cost a pass every resync.
BACKOFF_CAP_SECONDS = 120.0
#: Each delay is drawn from (1 - BACKOFF_JITTER, 1] of its step, so keys that
#: failed together (an API server outage) come back spread out.
BACKOFF_JITTER = 0.5


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time for the runtime's timers; tests replace it to step through minutes at once."""

    def now(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...


class LoopClock:
    """The running event loop's monotonic clock and timers."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)


def backoff_delay(failures: int, rng: random.Random) -> float:
    """Seconds before the retry that follows the ``failures``-th failure in a row."""
    step = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** min(failures - 1, 30))
    return step * (1.0 - BACKOFF_JITTER * rng.random())


# -- the queue ----------------------------------------------------------------------------


class WorkQueue:
    """Keys by priority, each queued at most once and run by one worker at a time.

    Loop-confined. A key re-added with a better priority than it is queued with
    moves up (its old heap entry is skipped when popped).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Key]] = []
        self._queued: dict[Key, tuple[int, int]] = {}  # key -> (priority, arrival) of its live entry
        self._running: set[Key] = set()
        self._dirty: dict[Key, int] = {}  # running key -> best priority asked for during its pass
        self._arrivals = itertools.count()
        self._has_work = asyncio.Event()

    def add(self, key: Key, priority: int) -> None:
        if key in self._running:
            self._dirty[key] = min(priority, self._dirty.get(key, priority))
            return
        queued = self._queued.get(key)
        if queued is not None and queued[0] <= priority:
            return
        entry = (priority, next(self._arrivals))
        self._queued[key] = entry
        heapq.heappush(self._heap, (*entry, key))
        self._has_work.set()

    def _pop(self) -> Key | None:
        while self._heap:
            priority, arrival, key = heapq.heappop(self._heap)
            if self._queued.get(key) == (priority, arrival):
                del self._queued[key]
                self._running.add(key)
                return key
        return None

    async def get(self) -> Key:
        """The next key, now counted as running until :meth:`done`."""
        while True:
            key = self._pop()
            if key is not None:
                return key
            # Only cleared with the heap empty, and only the loop adds: no wake-up is lost.
            self._has_work.clear()
            await self._has_work.wait()

    def done(self, key: Key) -> None:
        """The pass of ``key`` ended; a key dirtied meanwhile is queued once more."""
        self._running.discard(key)
        priority = self._dirty.pop(key, None)
        if priority is not None:
            self.add(key, priority)

    @property
    def queued(self) -> frozenset[Key]:
        return frozenset(self._queued)

    @property
    def running(self) -> frozenset[Key]:
        return frozenset(self._running)

    @property
    def busy(self) -> bool:
        return bool(self._queued or self._running)

    def __len__(self) -> int:
        return len(self._queued)
