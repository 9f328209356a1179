"""Endpoint checks: which Triton endpoints to check, when, on which threads, and what they found.

Endpoint checks
---------------
``plan`` asks for endpoints to be checked (``Plan.verify``); the pass does
not wait for them, and writes no status (the status would only say what this
process has not checked yet). The runtime runs checks on a small pool of
their own, so a slow Triton never holds a reconcile worker, and gives each a
deadline; the answer, or the deadline, wakes the resource.
Results are kept per (endpoint, model version) with their time. The first
check of an endpoint at a version is the full one (with a smoke inference);
while it stays good it is re-checked every ``Settings.verify_interval_seconds``
without the inference, and after a failure it is checked in full again every
10 s. A result that differs from the last one wakes the resource, so a model
that stops answering turns the resource not Ready within one interval plus
one deadline. Which checks a resource still needs is learnt from ``plan``
itself: the runtime records the endpoints a pass looked up in
``Observed.verification`` and forgets, and stops re-checking, the others.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from tritonresnet.controller.observe import EndpointCheck, Expected
from tritonresnet.controller.reconcile import VerifyRequest
from tritonresnet.controller.workqueue import Clock, Key, Timer

CheckId = tuple[str, int]  #: (endpoint, model version)

#: Threads for endpoint checks. Each check waits on a Triton that is busy
#: serving, so a few are enough; they are apart from the reconcile workers so
#: that a hung endpoint delays other checks, never a reconcile pass.
VERIFIERS = 4
#: A failed endpoint check is retried after this long.
CHECK_RETRY_SECONDS = 10.0


class CheckEndpoint(Protocol):
    """``verify.check_endpoint``: one blocking check of one endpoint."""

    def __call__(self, endpoint: str, expected: Expected, timeout: float, smoke: bool) -> EndpointCheck: ...


@dataclass(eq=False)
class _Check:
    """One (endpoint, version) the runtime keeps checking, and its latest result."""

    endpoint: str
    expected: Expected
    keys: set[Key] = field(default_factory=set)  #: resources that use this result
    result: EndpointCheck | None = None
    checked_at: float | None = None
    queued: bool = False  #: waiting for a verify thread
    running: bool = False  #: a verify thread is on it
    late: bool = False  #: the running check passed its deadline (its answer will not count)
    again: bool = False  #: asked for again while a late check still held its thread
    attempt: int = 0  #: which dispatch's answer counts
    timer: Timer | None = None  #: next re-check or retry
    deadline: Timer | None = None
    dropped: bool = False


class EndpointChecks:
    """The table of endpoint checks and their scheduling; loop-confined but for the checks themselves."""

    def __init__(
        self,
        check: CheckEndpoint,
        clock: Clock,
        on_change: Callable[[Key], None],
        *,
        timeout: float,
        interval: float,
        retry: float = CHECK_RETRY_SECONDS,
        threads: int = VERIFIERS,
        on_result: Callable[[EndpointCheck], None] | None = None,
    ) -> None:
        self.check = check
        self.on_result = on_result  #: every result as it arrives (the operator's metrics)
        self.clock = clock
        self.on_change = on_change
        self.timeout = timeout
        self.interval = interval
        self.retry = retry
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="verify")
        self._checks: dict[CheckId, _Check] = {}
        self._by_key: dict[Key, set[CheckId]] = {}
        # First checks and retries of failures go before re-checks of good endpoints:
        # a new rollout waits on them, a healthy one does not.
        self._urgent: deque[_Check] = deque()
        self._routine: deque[_Check] = deque()
        self._busy = 0  # verify threads in use, late ones included

    def known(self, key: Key) -> dict[int, dict[str, EndpointCheck]]:
        """The results a pass of ``key`` may use: version -> endpoint -> latest check."""
        known: dict[int, dict[str, EndpointCheck]] = {}
        for check_id in self._by_key.get(key, ()):
            entry = self._checks[check_id]
            if entry.result is not None:
                known.setdefault(check_id[1], {})[entry.endpoint] = entry.result
        return known

    def update(self, key: Key, in_use: frozenset[CheckId], request: VerifyRequest | None) -> None:
        """After a pass of ``key``: check what it asked for, keep what it used, forget the rest."""
        wanted = {check_id for check_id in in_use if check_id in self._checks}
        if request is not None:
            for endpoint in request.endpoints:
                check_id = (endpoint, request.expected.version)
                entry = self._checks.get(check_id)
                if entry is not None and entry.expected != request.expected:
                    # Same endpoint and version number, another model or signature: start over.
                    self._drop(entry)
                    entry = None
                if entry is None:
                    entry = self._checks[check_id] = _Check(endpoint, request.expected)
                wanted.add(check_id)
                if entry.result is None:
                    self._want(entry)
        for check_id in self._by_key.get(key, set()) - wanted:
            entry = self._checks[check_id]
            entry.keys.discard(key)
            if not entry.keys:
                self._drop(entry)
        for check_id in wanted:
            self._checks[check_id].keys.add(key)
        if wanted:
            self._by_key[key] = wanted
        else:
            self._by_key.pop(key, None)

    def forget(self, key: Key) -> None:
        for check_id in self._by_key.pop(key, set()):
            entry = self._checks[check_id]
            entry.keys.discard(key)
            if not entry.keys:
                self._drop(entry)

    @property
    def busy(self) -> bool:
        """A check is running or waiting for a thread."""
        return bool(self._busy or any(not e.dropped for e in (*self._urgent, *self._routine)))

    def close(self) -> None:
        for entry in list(self._checks.values()):
            self._drop(entry)
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- scheduling

    def _drop(self, entry: _Check) -> None:
        entry.dropped = True
        for timer in (entry.timer, entry.deadline):
            if timer is not None:
                timer.cancel()
        entry.timer = entry.deadline = None
        check_id = (entry.endpoint, entry.expected.version)
        if self._checks.get(check_id) is entry:
            del self._checks[check_id]
        for key in entry.keys:
            ids = self._by_key.get(key)
            if ids is not None:
                ids.discard(check_id)
                if not ids:
                    del self._by_key[key]
        entry.keys.clear()

    def _want(self, entry: _Check) -> None:
        """Check ``entry`` as soon as a thread is free (once, however often asked)."""
        if entry.dropped or entry.queued:
            return
        if entry.running:
            # A check in time will answer; a late one holds its thread, so wait for it to return
            # rather than pile a second thread onto an endpoint that does not answer.
            entry.again = entry.late
            return
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.queued = True
        good = entry.result is not None and entry.result.ok
        (self._routine if good else self._urgent).append(entry)
        self._dispatch()

    def _dispatch(self) -> None:
        while self._busy < self.threads and (self._urgent or self._routine):
            entry = (self._urgent or self._routine).popleft()
            entry.queued = False
            if not entry.dropped:
                self._launch(entry)

    def _launch(self, entry: _Check) -> None:
        # Full (with the smoke inference) unless the last answer was good: the first check
        # of an endpoint at a version, and the first after any failure, prove inference works.
        smoke = not (entry.result is not None and entry.result.ok)
        entry.attempt += 1
        attempt = entry.attempt
        entry.running, entry.late = True, False
        self._busy += 1
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self.pool, self.check, entry.endpoint, entry.expected, self.timeout, smoke
        )
        # There is a free thread (see _dispatch), so the deadline counts from the real start.
        entry.deadline = self.clock.call_later(self.timeout, lambda: self._expired(entry, attempt))
        future.add_done_callback(lambda done: self._returned(entry, attempt, done))

    def _expired(self, entry: _Check, attempt: int) -> None:
        entry.deadline = None
        if entry.dropped or not entry.running or attempt != entry.attempt:
            return
        entry.late = True
        self._deliver(entry, EndpointCheck(entry.endpoint, False, f"no answer within {self.timeout:g} s"))

    def _returned(self, entry: _Check, attempt: int, done: asyncio.Future[EndpointCheck]) -> None:
        self._busy -= 1
        entry.running = False
        if entry.deadline is not None:
            entry.deadline.cancel()
            entry.deadline = None
        late, again = entry.late, entry.again
        entry.late = entry.again = False
        if done.cancelled():
            return  # the pool was shut down
        if not entry.dropped and attempt == entry.attempt:
            if not late:
                exc = done.exception()
                if exc is None:
                    result = done.result()
                else:  # a bug in the check, or an error it does not expect: a failed check all the same
                    result = EndpointCheck(entry.endpoint, False, f"{type(exc).__name__}: {exc}"[:300])
                self._deliver(entry, result)
            elif again:
                self._want(entry)
        self._dispatch()

    def _deliver(self, entry: _Check, result: EndpointCheck) -> None:
        if self.on_result is not None:
            self.on_result(result)
        previous = entry.result
        entry.result, entry.checked_at = result, self.clock.now()
        if entry.timer is not None:
            entry.timer.cancel()
        delay = self.interval if result.ok else self.retry
        entry.timer = self.clock.call_later(delay, lambda: self._due(entry))
        if previous is None or (previous.ok, previous.message) != (result.ok, result.message):
            for key in sorted(entry.keys):
                self.on_change(key)

    def _due(self, entry: _Check) -> None:
        entry.timer = None
        self._want(entry)


class Consulted(Mapping[str, EndpointCheck]):
    """``Observed.verification`` that remembers which endpoints ``plan`` looked up.

    Those are the endpoints the resource is verified on; the runtime keeps
    re-checking them and forgets checks of endpoints ``plan`` no longer asks
    about (a replaced pod, a scale-down, a rollout under way).
    """

    def __init__(self, checks: Mapping[str, EndpointCheck]) -> None:
        self._checks = checks
        self.asked: set[str] = set()
        self.listed = False  #: plan iterated the mapping: count every endpoint as used

    def __getitem__(self, endpoint: str) -> EndpointCheck:
        self.asked.add(endpoint)
        return self._checks[endpoint]

    def __contains__(self, endpoint: object) -> bool:
        if isinstance(endpoint, str):
            self.asked.add(endpoint)
        return endpoint in self._checks

    def __iter__(self) -> Iterator[str]:
        self.listed = True
        return iter(self._checks)

    def __len__(self) -> int:
        return len(self._checks)

    def used(self) -> set[str]:
        return set(self._checks) if self.listed else self.asked & set(self._checks)
