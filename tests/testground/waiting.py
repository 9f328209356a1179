"""The one way the tests and the test ground wait for something to become true.

    value = wait_for(probe, "the build Job", timeout=120)

``probe`` is called until it returns a truthy value, which ``wait_for``
returns. Every falsy value -- ``None``, ``False``, ``0``, ``""``, an empty
list or dict -- means "not yet"; a probe that has something falsy to report
wraps it (``lambda: [x] if ready() else None``). A predicate is a probe
too: it returns ``True``.

An exception raised by the probe is not caught: a probe that can fail while
waiting (the API server restarting) handles that itself, and one that finds
the wait hopeless (a process that exited) raises to stop it at once.

On timeout it raises ``WaitTimeout``, an ``AssertionError``, so that pytest
reports a test that never saw what it waited for as a failure, like any
other assertion, with a message naming what was awaited and for how long.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_EVERY = 0.25  # seconds; often enough for a test, rare enough for two shared cores


class WaitTimeout(AssertionError):
    """``wait_for`` gave up: the probe returned nothing truthy within the timeout."""

    def __init__(self, what: str, timeout: float, attempts: int, detail: str = "") -> None:
        message = f"timed out after {timeout:g} s waiting for {what} ({attempts} tries)"
        super().__init__(f"{message}; {detail}" if detail else message)
        self.what = what
        self.timeout = timeout
        self.attempts = attempts

    def with_detail(self, detail: str) -> WaitTimeout:
        """The same timeout with what the caller knows about it (a status, a log tail) added."""
        return WaitTimeout(self.what, self.timeout, self.attempts, detail)


def wait_for(
    probe: Callable[[], T | None],
    what: str,
    timeout: float,
    every: float = DEFAULT_EVERY,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``probe`` every ``every`` seconds until it returns something truthy; return that.

    The probe runs once at the start and once more at the deadline, so a
    zero timeout is a single check. A sleep never reaches past the deadline,
    and the number of calls is bounded by ``ceil(timeout / every) + 1`` as
    well as by time, so a clock that does not move (a test's fake) cannot
    keep it polling for ever; with a real clock that many calls take at
    least ``timeout``, so the bound never cuts a wait short. Raises
    ``WaitTimeout`` (an ``AssertionError``) naming ``what`` and ``timeout``.
    ``clock`` and ``sleep`` are for tests of this function.
    """
    if timeout < 0 or not every > 0:
        raise ValueError(f"wait_for needs timeout >= 0 and every > 0, got {timeout} and {every}")
    deadline = clock() + timeout
    limit = math.ceil(timeout / every) + 1
    attempts = 0
    while True:
        value = probe()
        attempts += 1
        if value:
            return value
        remaining = deadline - clock()
        if remaining <= 0 or attempts >= limit:
            raise WaitTimeout(what, timeout, attempts)
        sleep(min(every, remaining))
