"""testground.waiting.wait_for: the one polling primitive of the tests, on a fake clock.

The fake clock moves only when the primitive sleeps (or a probe says it took
time), so every test here is exact about when probes run and how long the
sleeps are, and none of them waits for real.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from testground.waiting import WaitTimeout, wait_for


class FakeClock:
    """A monotonic clock that advances by the sleeps it is asked for, recording each."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.probed_at: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "a sleep of nothing is a busy loop"
        self.sleeps.append(seconds)
        self.now += seconds

    def probe(self, answers: Iterator[object], takes: float = 0.0) -> Callable[[], object]:
        """A probe giving ``answers`` in turn (then None for ever), each call taking ``takes`` s."""

        def call() -> object:
            self.probed_at.append(self.now)
            self.now += takes
            return next(answers, None)

        return call


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_returns_the_first_truthy_value(clock: FakeClock) -> None:
    found = {"name": "web"}
    probe = clock.probe(iter([None, False, 0, "", [], {}, found, "later"]))
    assert wait_for(probe, "the pod", 10, every=0.5, clock=clock, sleep=clock.sleep) is found
    # Every falsy value meant "not yet": seven of them, one sleep after each.
    assert clock.sleeps == [0.5] * 6
    assert len(clock.probed_at) == 7


def test_a_predicate_returns_true(clock: FakeClock) -> None:
    probe = clock.probe(iter([False, True]))
    assert wait_for(probe, "the flag", 10, clock=clock, sleep=clock.sleep) is True


def test_a_ready_value_is_returned_without_sleeping(clock: FakeClock) -> None:
    assert wait_for(lambda: 7, "a number", 10, clock=clock, sleep=clock.sleep) == 7
    assert clock.sleeps == []


def test_times_out_with_a_message_naming_what_and_the_timeout(clock: FakeClock) -> None:
    with pytest.raises(WaitTimeout) as raised:
        wait_for(clock.probe(iter([])), "the build Job", 120, every=5, clock=clock, sleep=clock.sleep)
    message = str(raised.value)
    assert "the build Job" in message and "120 s" in message
    assert (raised.value.what, raised.value.timeout) == ("the build Job", 120)


def test_the_timeout_is_an_assertion_error_so_pytest_reports_a_failure(clock: FakeClock) -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0\.5 s waiting for the HPA"):
        wait_for(lambda: None, "the HPA", 0.5, every=0.25, clock=clock, sleep=clock.sleep)


def test_with_detail_keeps_the_timeout_and_adds_what_the_caller_knows(clock: FakeClock) -> None:
    with pytest.raises(WaitTimeout) as raised:
        wait_for(lambda: None, "resnet50 to become Ready", 1, clock=clock, sleep=clock.sleep)
    detailed = raised.value.with_detail("status: Pending")
    assert isinstance(detailed, AssertionError)
    assert str(detailed).startswith(str(raised.value))
    assert str(detailed).endswith("; status: Pending")
    assert (detailed.what, detailed.timeout, detailed.attempts) == (
        raised.value.what,
        raised.value.timeout,
        raised.value.attempts,
    )


def test_stops_polling_at_the_deadline(clock: FakeClock) -> None:
    start = clock.now
    with pytest.raises(WaitTimeout) as raised:
        wait_for(clock.probe(iter([])), "nothing", 1.0, every=0.3, clock=clock, sleep=clock.sleep)
    # At the start, every 0.3 s, and one last time exactly at the deadline; none after it.
    assert [round(t - start, 6) for t in clock.probed_at] == [0.0, 0.3, 0.6, 0.9, 1.0]
    assert raised.value.attempts == 5
    assert clock.now == pytest.approx(start + 1.0)


def test_never_sleeps_past_the_deadline(clock: FakeClock) -> None:
    start = clock.now
    with pytest.raises(WaitTimeout):
        wait_for(clock.probe(iter([])), "nothing", 1.0, every=0.75, clock=clock, sleep=clock.sleep)
    # The second sleep is cut to what is left of the timeout.
    assert clock.sleeps == pytest.approx([0.75, 0.25])
    assert clock.now - start == pytest.approx(1.0)


def test_slow_probes_overrun_the_deadline_by_at_most_one_interval(clock: FakeClock) -> None:
    """Probes taking time count against the timeout; the wait ends at most one interval
    (plus the last probe's own time) after the deadline."""
    start, every, takes = clock.now, 2.0, 0.7
    with pytest.raises(WaitTimeout):
        wait_for(clock.probe(iter([]), takes=takes), "slow", 5.0, every=every, clock=clock, sleep=clock.sleep)
    assert clock.now - start <= 5.0 + every + takes
    assert all(t - start <= 5.0 + 1e-9 for t in clock.probed_at)  # none after the deadline


def test_a_zero_timeout_is_one_check(clock: FakeClock) -> None:
    with pytest.raises(WaitTimeout) as raised:
        wait_for(clock.probe(iter([])), "once", 0, clock=clock, sleep=clock.sleep)
    assert raised.value.attempts == 1 and clock.sleeps == []
    assert wait_for(lambda: "here", "once", 0, clock=clock, sleep=clock.sleep) == "here"


def test_the_number_of_probes_is_bounded_even_if_the_clock_stands_still() -> None:
    calls: list[None] = []

    def probe() -> None:
        calls.append(None)
        if len(calls) > 100:  # fail, not hang, if the bound is lost
            raise RuntimeError("wait_for kept polling on a frozen clock")

    with pytest.raises(WaitTimeout):
        wait_for(probe, "a frozen clock", 2.0, every=0.5, clock=lambda: 0.0, sleep=lambda s: None)
    assert len(calls) == 5  # ceil(2.0 / 0.5) + 1, as many as a real clock would allow


def test_an_exception_from_the_probe_stops_the_wait(clock: FakeClock) -> None:
    def probe() -> None:
        raise RuntimeError("etcd exited during start-up")

    with pytest.raises(RuntimeError, match="etcd exited"):
        wait_for(probe, "etcd", 60, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []


@pytest.mark.parametrize(("timeout", "every"), [(-1, 0.25), (1, 0), (1, -0.5)])
def test_refuses_a_negative_timeout_or_a_non_positive_interval(timeout: float, every: float) -> None:
    with pytest.raises(ValueError):
        wait_for(lambda: True, "x", timeout, every=every)


def test_on_the_real_clock_it_returns_once_the_value_appears() -> None:
    ready_at = time.monotonic() + 0.05
    started = time.monotonic()
    value = wait_for(lambda: "ready" if time.monotonic() >= ready_at else None, "a real wait", 2, every=0.01)
    assert value == "ready"
    assert time.monotonic() - started < 1.0
