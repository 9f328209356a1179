"""The controller runtime without a cluster: the queue, the cache, the backoff, the checks.

The runtime takes its plan function, its endpoint check and its clock as
parameters, so these tests drive it with a plan that records what each pass
saw, a check that answers as told, a Kube that records writes, and a clock
the test moves: minutes of resyncs, backoffs and re-checks pass in
milliseconds. Passes and checks still run on the runtime's real threads,
so the concurrency is real.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from kubernetes.client.rest import ApiException
from tritonresnet.api import names
from tritonresnet.api.status import TritonResNetStatus
from tritonresnet.controller import verification, workqueue
from tritonresnet.controller.reconcile import (
    EndpointCheck,
    Expected,
    Observed,
    Plan,
    VerifyRequest,
)
from tritonresnet.controller.runtime import Runtime
from tritonresnet.controller.settings import Settings
from tritonresnet.controller.workqueue import (
    BACKOFF_CAP_SECONDS,
    CHANGED,
    NEW_GENERATION,
    RESYNC,
    WorkQueue,
    backoff_delay,
)
from unit.worlds import SERVICE, lifecycle_to_ready
from unit.worlds import resource as world_resource

T = TypeVar("T")
NS = "vision"
NOW = "2026-12-01T10:00:00Z"
INTERVAL = Settings().verify_interval_seconds  #: between re-checks of a good endpoint


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


# -- fakes -------------------------------------------------------------------------------


class FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Timers that fire only when the test moves time on (``advance``), in order."""

    def __init__(self) -> None:
        self.t = 1000.0
        self._timers: list[tuple[float, int, FakeTimer, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer()
        heapq.heappush(self._timers, (self.t + delay, next(self._seq), timer, callback))
        return timer

    def advance(self, seconds: float) -> None:
        until = self.t + seconds
        while self._timers and self._timers[0][0] <= until:
            when, _, timer, callback = heapq.heappop(self._timers)
            self.t = when
            if not timer.cancelled:
                callback()
        self.t = until


class FakeKube:
    """Records the writes (from the worker threads); refuses the kinds in ``refuse``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.applied: list[Mapping[str, Any]] = []
        self.patches: list[tuple[str, str, Mapping[str, Any]]] = []
        self.events: list[tuple[str, str]] = []
        self.refuse: set[str] = set()

    def apply(self, obj: Mapping[str, Any]) -> Any:
        if obj["kind"] in self.refuse:
            exc = ApiException(status=403, reason="Forbidden")
            exc.body = json.dumps({"kind": "Status", "message": f"{obj['kind'].lower()}s exceeded quota"})
            raise exc
        with self.lock:
            self.applied.append(obj)
        meta = {**obj["metadata"], "resourceVersion": "7", "managedFields": [{"manager": "x"}]}
        return {**obj, "metadata": meta}

    def create(self, obj: Mapping[str, Any]) -> Any:
        # The fake holds nothing of anyone else's: every create succeeds, as an apply would.
        return self.apply(obj)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        raise AssertionError("nothing to delete in these tests")

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        with self.lock:
            self.patches.append((namespace, name, dict(status)))

    def post_event(self, resource: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        with self.lock:
            self.events.append((resource["metadata"]["name"], reason))


@dataclass
class Pass:
    key: tuple[str, str]
    n: int  #: spec.n of the resource the pass saw
    thread: str
    verification: dict[str, EndpointCheck]


@dataclass
class FakePlan:
    """A plan that records each pass and asks for the checks of ``spec.endpoints``.

    Ready when every endpoint answered; ``Degraded`` when one did not; a pass of
    a resource named in ``fail`` raises. ``hold`` makes passes of a key wait.
    """

    delay: float = 0.0
    fail: set[str] = field(default_factory=set)
    hold: dict[tuple[str, str], threading.Event] = field(default_factory=dict)
    passes: list[Pass] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: Counter[tuple[str, str]] = field(default_factory=Counter)
    most_at_once: Counter[tuple[str, str]] = field(default_factory=Counter)
    total_active: int = 0
    most_in_total: int = 0

    def __call__(self, observed: Observed, settings: Settings) -> Plan:
        meta = observed.resource["metadata"]
        key = (meta["namespace"], meta["name"])
        with self.lock:
            self.active[key] += 1
            self.total_active += 1
            self.most_at_once[key] = max(self.most_at_once[key], self.active[key])
            self.most_in_total = max(self.most_in_total, self.total_active)
        try:
            held = self.hold.get(key)
            if held is not None:
                assert held.wait(5), "held pass never released"
            if self.delay:
                time.sleep(self.delay)
            spec = observed.resource["spec"]
            endpoints = tuple(spec.get("endpoints", ()))
            version = int(spec.get("version", 1))
            checks = {e: observed.verification.get(e) for e in endpoints}
            with self.lock:
                self.passes.append(
                    Pass(
                        key,
                        int(spec.get("n", 0)),
                        threading.current_thread().name,
                        {e: c for e, c in checks.items() if c is not None},
                    )
                )
            if meta["name"] in self.fail:
                raise RuntimeError("the API server is having a bad day")
            verify = None
            phase = "Ready"
            if any(c is None for c in checks.values()):
                verify = VerifyRequest(endpoints, expected(version))
                phase = "Deploying"
            elif any(c is not None and not c.ok for c in checks.values()):
                phase = "Degraded"
            status = TritonResNetStatus(
                observed_generation=int(meta.get("generation") or 0),
                phase=phase,
                message=phase,
                model_version=version if endpoints else None,
            )
            return Plan([], [], status, [], verify)
        finally:
            with self.lock:
                self.active[key] -= 1
                self.total_active -= 1

    def of(self, name: str) -> list[Pass]:
        with self.lock:
            return [p for p in self.passes if p.key == (NS, name)]


def expected(version: int = 1) -> Expected:
    return Expected("resnet50", version, (), ())


@dataclass
class FakeCheck:
    """Answers ``ok`` (or what ``answers`` says for an endpoint); records each call."""

    answers: dict[str, bool] = field(default_factory=dict)
    hold: threading.Event | None = None
    calls: list[tuple[str, int, bool, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, endpoint: str, expected: Expected, timeout: float, smoke: bool) -> EndpointCheck:
        with self.lock:
            self.calls.append((endpoint, expected.version, smoke, threading.current_thread().name))
        if self.hold is not None:
            self.hold.wait(5)
        ok = self.answers.get(endpoint, True)
        return EndpointCheck(endpoint, ok, "answered" if ok else "model is not ready")

    def made(self) -> list[tuple[str, int, bool]]:
        with self.lock:
            return [c[:3] for c in self.calls]


def resource(
    name: str,
    n: int = 0,
    *,
    generation: int = 1,
    reconciled: bool = True,
    endpoints: tuple[str, ...] = (),
    version: int = 1,
    status: dict[str, Any] | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """A TritonResNet as a watch delivers it; ``reconciled``: its generation is in the status;
    ``model``: spec.model.name (by default none: the model is named after the resource)."""
    if status is None:
        status = {"observedGeneration": generation, "phase": "Ready"} if reconciled else {}
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": name, "namespace": NS, "generation": generation, "uid": f"uid-{name}"},
        "spec": {
            "n": n,
            "endpoints": list(endpoints),
            "version": version,
            **({"model": {"name": model}} if model else {}),
        },
        "status": status,
    }


def make_runtime(
    plan: FakePlan | None = None,
    *,
    kube: FakeKube | None = None,
    check: FakeCheck | None = None,
    clock: FakeClock | None = None,
    workers: int = 8,
    settings: Settings | None = None,
    **kwargs: Any,
) -> Runtime:
    return Runtime(
        kube or FakeKube(),
        settings or Settings(),
        plan=plan or FakePlan(),
        check=check or FakeCheck(),
        clock=clock or FakeClock(),
        workers=workers,
        warmup_seconds=0.0,
        rng=random.Random(7),
        wall_clock=lambda: NOW,
        **kwargs,
    )


def phase(runtime: Runtime, name: str) -> str:
    """The phase in the runtime's cache: what it last wrote, or last saw."""
    return str(runtime.resources[(NS, name)]["status"].get("phase"))


async def settle(runtime: Runtime, timeout: float = 5.0) -> None:
    """Wait until nothing is queued, running or being checked."""
    deadline = time.monotonic() + timeout
    await asyncio.sleep(0)
    while not runtime.quiet:
        assert time.monotonic() < deadline, "the runtime did not settle"
        await asyncio.sleep(0.002)


# -- the queue ---------------------------------------------------------------------------


def test_queue_serves_by_priority_then_arrival_and_moves_a_key_up_but_never_down() -> None:
    async def main() -> list[tuple[str, str]]:
        queue = WorkQueue()
        queue.add(("a", "resync"), RESYNC)
        queue.add(("a", "event"), CHANGED)
        queue.add(("a", "new"), NEW_GENERATION)
        queue.add(("a", "late"), RESYNC)
        queue.add(("a", "late"), NEW_GENERATION)  # moves up
        queue.add(("a", "event"), RESYNC)  # stays where it is
        assert len(queue) == 4
        order = []
        for _ in range(4):
            key = await queue.get()
            order.append(key)
            queue.done(key)
        return order

    assert run(main) == [("a", "new"), ("a", "late"), ("a", "event"), ("a", "resync")]


def test_a_never_reconciled_generation_goes_before_other_passes() -> None:
    plan = FakePlan()
    runtime = make_runtime(plan, workers=1)

    async def main() -> None:
        runtime.observe_resource("ADDED", resource("old-1"))
        runtime.observe_resource("ADDED", resource("old-2"))
        runtime.observe_resource("ADDED", resource("edited", generation=2, status={"observedGeneration": 1}))
        runtime.observe_resource("ADDED", resource("new", reconciled=False))
        runtime.start()
        await settle(runtime)
        await runtime.stop()

    run(main)
    assert [p.key[1] for p in plan.passes] == ["edited", "new", "old-1", "old-2"]


# -- one key, one pass at a time ---------------------------------------------------------


def test_events_during_a_pass_make_exactly_one_more_pass_which_sees_the_last_state() -> None:
    gate = threading.Event()
    plan = FakePlan(hold={(NS, "r"): gate})
    runtime = make_runtime(plan)

    async def main() -> None:
        runtime.start()
        runtime.observe_resource("ADDED", resource("r", 0))
        while (NS, "r") not in runtime.queue.running:
            await asyncio.sleep(0.001)
        for n in range(1, 21):
            runtime.observe_resource("MODIFIED", resource("r", n))
        assert (NS, "r") not in runtime.pending  # dirty, not queued a second time
        plan.hold.clear()
        gate.set()
        await settle(runtime)
        await runtime.stop()

    run(main)
    assert [p.n for p in plan.of("r")] == [0, 20]


def test_a_key_is_never_in_two_passes_at_once_while_workers_run_in_parallel() -> None:
    plan = FakePlan(delay=0.002)
    runtime = make_runtime(plan, workers=8)
    keys = [f"r{i}" for i in range(6)]

    async def main() -> None:
        runtime.start()
        for round_ in range(40):
            for name in keys:
                runtime.observe_resource("MODIFIED", resource(name, round_))
            await asyncio.sleep(0.001)
        await settle(runtime)
        await runtime.stop()

    run(main)
    assert set(plan.most_at_once.values()) == {1}
    assert plan.most_in_total > 1, "the passes never overlapped: the test proves nothing"
    for name in keys:
        assert plan.of(name)[-1].n == 39


def test_a_burst_of_500_events_over_100_keys_reconciles_every_key_at_its_last_state() -> None:
    plan = FakePlan(delay=0.0005)
    kube = FakeKube()
    runtime = make_runtime(plan, kube=kube)
    rng = random.Random(3)
    events = [(f"r{k:03d}", n) for k in range(100) for n in range(5)]
    rng.shuffle(events)
    last: dict[str, int] = {}
    seen: Counter[str] = Counter()

    async def main() -> None:
        runtime.start()
        for i, (name, _) in enumerate(events):
            seen[name] += 1
            last[name] = seen[name]
            runtime.observe_resource("MODIFIED", resource(name, seen[name]))
            if i % 25 == 0:
                await asyncio.sleep(0)  # let workers start while events keep coming
        await settle(runtime)
        await runtime.stop()

    run(main)
    final = {p.key[1]: p.n for p in plan.passes}  # passes are recorded in order, per key
    assert final == last
    assert len(final) == 100
    assert len(plan.passes) <= 500
    assert set(plan.most_at_once.values()) == {1}


# -- failures ----------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    rng = random.Random(11)
    delays = [backoff_delay(n, rng) for n in range(1, 12)]
    steps = [min(BACKOFF_CAP_SECONDS, workqueue.BACKOFF_BASE_SECONDS * 2 ** (n - 1)) for n in range(1, 12)]
    for delay, step in zip(delays, steps, strict=True):
        assert step * (1 - workqueue.BACKOFF_JITTER) <= delay <= step
    assert max(delays) <= BACKOFF_CAP_SECONDS
    assert len({round(d / s, 6) for d, s in zip(delays, steps, strict=True)}) > 1, "no jitter"


def test_a_failing_key_backs_off_while_the_others_are_served_and_resets_on_success() -> None:
    clock = FakeClock()
    plan = FakePlan(fail={"bad"})
    runtime = make_runtime(plan, clock=clock, settings=Settings(resync_seconds=60.0))
    bad = (NS, "bad")
    delays: list[float] = []

    async def main() -> None:
        runtime.start()
        runtime.observe_resource("ADDED", resource("bad"))
        runtime.observe_resource("ADDED", resource("good"))
        await settle(runtime)
        for failures in range(1, 9):
            assert runtime.failures[bad] == failures
            delay = runtime.retry_at[bad] - clock.now()
            delays.append(delay)
            # Another key is served at once while this one waits.
            runtime.observe_resource("MODIFIED", resource("good", failures))
            await settle(runtime)
            assert plan.of("good")[-1].n == failures
            clock.advance(delay)
            await settle(runtime)
        passes = len(plan.of("bad"))
        # The resync leaves a key in backoff alone (it has a timer), and serves the others.
        good_passes = len(plan.of("good"))
        wait = runtime.retry_at[bad] - clock.now()
        assert wait > 60
        clock.advance(60)
        await settle(runtime)
        assert len(plan.of("bad")) == passes
        assert len(plan.of("good")) == good_passes + 1
        # It comes right: the next pass succeeds, the count and the timer go.
        plan.fail.clear()
        clock.advance(wait - 60)
        await settle(runtime)
        assert bad not in runtime.failures and bad not in runtime.retry_at
        await runtime.stop()

    run(main)
    for failures, delay in enumerate(delays, start=1):
        step = min(BACKOFF_CAP_SECONDS, workqueue.BACKOFF_BASE_SECONDS * 2 ** (failures - 1))
        assert step / 2 <= delay <= step, (failures, delay)
    assert delays[-1] > delays[0] * 10
    assert max(delays) <= BACKOFF_CAP_SECONDS


def test_a_refused_child_is_reported_and_retried_with_backoff_while_the_rest_is_applied() -> None:
    """The real plan: a new resource's Job is refused, its PVC is applied, the status says why."""
    kube = FakeKube()
    kube.refuse = {"Job"}
    clock = FakeClock()
    runtime = Runtime(kube, Settings(), clock=clock, warmup_seconds=0.0, wall_clock=lambda: NOW)
    cr = world_resource("resnet50")
    cr["spec"]["repository"] = {"create": {"size": "10Gi"}}
    key = ("vision", "resnet50")

    async def main() -> None:
        runtime.start()
        runtime.observe_resource("ADDED", cr)
        await settle(runtime)
        assert runtime.failures[key] == 1
        kube.refuse.clear()
        clock.advance(runtime.retry_at[key] - clock.now())
        await settle(runtime)
        await runtime.stop()

    run(main)
    kinds = [o["kind"] for o in kube.applied]
    assert kinds[0] == "PersistentVolumeClaim" and "Job" in kinds
    first = kube.patches[0][2]
    ready = next(c for c in first["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ApplyFailed" and "jobs exceeded quota" in ready["message"]
    assert ("resnet50", "ApplyFailed") in kube.events
    assert key not in runtime.failures
    # The operator's metrics saw the refused pass, the quota's 403 and the good pass after it.
    text = runtime.metrics.text().decode()
    assert 'tritonresnet_reconcile_duration_seconds_count{outcome="refused"} 1.0' in text
    assert 'tritonresnet_api_errors_total{code="403"} 1.0' in text
    assert 'tritonresnet_reconcile_duration_seconds_count{outcome="ok"}' in text


def test_a_foreign_object_with_a_childs_name_is_left_alone_and_named_in_status() -> None:
    """The real plan: the cache has no Job of that name, the create is refused with 409 because
    someone else's object has it; nothing of it is written, and the status names it."""

    class Taken(FakeKube):
        def __init__(self) -> None:
            super().__init__()
            self.forced: list[str] = []

        def create(self, obj: Mapping[str, Any]) -> Any:
            if obj["kind"] == "Job":
                raise ApiException(status=409, reason="Conflict")
            return super().create(obj)

        def get(self, api_version: str, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
            return {"kind": kind, "metadata": {"name": name, "namespace": namespace, "ownerReferences": []}}

        def apply(self, obj: Mapping[str, Any]) -> Any:
            self.forced.append(obj["kind"])
            return super().apply(obj)

    kube = Taken()
    runtime = Runtime(kube, Settings(), clock=FakeClock(), warmup_seconds=0.0, wall_clock=lambda: NOW)
    cr = world_resource("resnet50")

    async def main() -> None:
        runtime.start()
        runtime.observe_resource("ADDED", cr)
        await settle(runtime)
        await runtime.stop()

    run(main)
    assert "Job" not in kube.forced, "a forced apply would have taken the object over"
    ready = next(c for c in kube.patches[0][2]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "NameConflict"
    assert (
        ready["message"].startswith("Job resnet50-build-") and "not this TritonResNet's" in ready["message"]
    )
    assert ("resnet50", "NameConflict") in kube.events


# -- the cache ---------------------------------------------------------------------------


def test_a_snapshot_is_a_copy_that_later_events_do_not_change() -> None:
    runtime = make_runtime()
    runtime.observe_resource("ADDED", resource("r"))

    def job(name: str) -> dict[str, Any]:
        return {
            "kind": "Job",
            "metadata": {"name": name, "namespace": NS, "labels": {names.LABEL_INSTANCE: "r"}},
        }

    runtime.observe_child("ADDED", "Job", job("j1"))
    snap = runtime.snapshot((NS, "r"))
    assert snap is not None
    runtime.observe_child("ADDED", "Job", job("j2"))
    runtime.observe_resource("ADDED", resource("s"))
    runtime.observe_resource("MODIFIED", resource("r", 5))
    assert list(snap.children) == [("Job", "j1")]
    assert [p["metadata"]["name"] for p in snap.peers] == ["r"]
    assert snap.resource["spec"]["n"] == 0
    with pytest.raises(TypeError):
        snap.children[("Job", "x")] = {}  # type: ignore[index]
    # Peers are the resources of the same model name, shared between passes until one changes.
    runtime.observe_resource("ADDED", resource("t", model="r"))
    one, two = runtime.snapshot((NS, "r")), runtime.snapshot((NS, "t"))
    assert one is not None and two is not None and one.peers is two.peers
    assert sorted(p["metadata"]["name"] for p in one.peers) == ["r", "t"]
    other = runtime.snapshot((NS, "s"))
    assert other is not None and [p["metadata"]["name"] for p in other.peers] == ["s"]
    # A resource that changes its model name moves to the new name's peers.
    runtime.observe_resource("MODIFIED", resource("t", 1, model="s"))
    moved, left = runtime.snapshot((NS, "s")), runtime.snapshot((NS, "r"))
    assert moved is not None and sorted(p["metadata"]["name"] for p in moved.peers) == ["s", "t"]
    assert left is not None and [p["metadata"]["name"] for p in left.peers] == ["r"]
    runtime.observe_resource("DELETED", resource("t"))
    gone = runtime.snapshot((NS, "s"))
    assert gone is not None and [p["metadata"]["name"] for p in gone.peers] == ["s"]


def test_a_child_seen_before_its_long_named_owner_is_found_and_managed_fields_are_dropped() -> None:
    long_name = "a-resnet-with-a-name-far-longer-than-a-kubernetes-label-value-may-be"
    label = names.label_value(long_name)
    assert label != long_name
    runtime = make_runtime()
    runtime.observe_child(
        "ADDED",
        "Deployment",
        {
            "kind": "Deployment",
            "metadata": {
                "name": "d",
                "namespace": NS,
                "labels": {names.LABEL_INSTANCE: label},
                "managedFields": [{"manager": "kube-controller-manager"}],
            },
        },
    )
    assert not runtime.pending  # no owner yet: nothing to reconcile
    runtime.observe_resource("ADDED", resource(long_name))
    snap = runtime.snapshot((NS, long_name))
    assert snap is not None
    assert "managedFields" not in snap.children[("Deployment", "d")]["metadata"]
    runtime.observe_child(
        "DELETED",
        "Deployment",
        {
            "kind": "Deployment",
            "metadata": {"name": "d", "namespace": NS, "labels": {names.LABEL_INSTANCE: label}},
        },
    )
    snap = runtime.snapshot((NS, long_name))
    assert snap is not None and not snap.children


def test_the_written_status_is_kept_so_the_next_pass_writes_nothing() -> None:
    plan = FakePlan()
    kube = FakeKube()
    runtime = make_runtime(plan, kube=kube)

    async def main() -> None:
        runtime.start()
        runtime.observe_resource("ADDED", resource("r", reconciled=False))
        await settle(runtime)
        runtime.enqueue((NS, "r"))
        await settle(runtime)
        await runtime.stop()

    run(main)
    assert len(plan.of("r")) == 2
    assert [p[2]["phase"] for p in kube.patches] == ["Ready"]


def test_a_deleted_or_deleting_resource_is_not_reconciled() -> None:
    plan = FakePlan()
    runtime = make_runtime(plan)
    deleting = resource("going")
    deleting["metadata"]["deletionTimestamp"] = NOW

    async def main() -> None:
        runtime.start()
        runtime.observe_resource("ADDED", resource("gone"))
        runtime.observe_resource("DELETED", resource("gone"))
        runtime.observe_resource("MODIFIED", deleting)
        await settle(runtime)
        await runtime.stop()

    run(main)
    assert plan.passes == []
    assert (NS, "gone") not in runtime.resources


# -- resync ------------------------------------------------------------------------------


def test_resync_revisits_every_resource_each_period_and_not_in_between() -> None:
    clock = FakeClock()
    plan = FakePlan()
    runtime = make_runtime(plan, clock=clock, settings=Settings(resync_seconds=30.0))

    async def main() -> list[int]:
        runtime.start()
        for i in range(5):
            runtime.observe_resource("ADDED", resource(f"r{i}"))
        await settle(runtime)
        counts = [len(plan.passes)]
        for step in (29.0, 1.0, 29.9, 0.1):
            clock.advance(step)
            await settle(runtime)
            counts.append(len(plan.passes))
        await runtime.stop()
        return counts

    assert run(main) == [5, 5, 10, 10, 15]


# -- endpoint checks ---------------------------------------------------------------------


def test_checks_run_on_their_own_threads_and_the_pass_does_not_wait_for_them() -> None:
    hold = threading.Event()
    check = FakeCheck(hold=hold)
    plan = FakePlan()
    runtime = make_runtime(plan, check=check)
    key = (NS, "r")

    async def main() -> None:
        runtime.start()
        runtime.observe_resource("ADDED", resource("r", endpoints=("10.0.0.1:8000",)))
        deadline = time.monotonic() + 5
        while not (check.calls and len(plan.of("r")) == 1 and key not in runtime.queue.running):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        assert not runtime.quiet  # the check is still out; the pass is done
        hold.set()
        await settle(runtime)
        await runtime.stop()

    run(main)
    passes = plan.of("r")
    assert passes[0].verification == {}
    assert passes[-1].verification == {"10.0.0.1:8000": EndpointCheck("10.0.0.1:8000", True, "answered")}
    assert all(p.thread.startswith("reconcile") for p in passes)
    assert [c[3].startswith("verify") for c in check.calls] == [True]
    assert check.made() == [("10.0.0.1:8000", 1, True)]  # the first check is a full one


def test_a_good_endpoint_is_rechecked_cheaply_and_a_model_that_stops_answering_turns_not_ready() -> None:
    clock = FakeClock()
    check = FakeCheck()
    plan = FakePlan()
    kube = FakeKube()
    quiet = Settings(resync_seconds=3600.0)  # no resync passes in the way
    runtime = make_runtime(plan, check=check, clock=clock, kube=kube, settings=quiet)
    ep = "10.0.0.1:8000"
    interval = INTERVAL

    async def main() -> None:
        runtime.start()
        runtime.observe_resource("ADDED", resource("r", endpoints=(ep,)))
        await settle(runtime)
        assert phase(runtime, "r") == "Ready"
        passes = len(plan.of("r"))
        clock.advance(interval)
        await settle(runtime)
        # Still answering: a cheap re-check, and the same result wakes no pass.
        assert check.made()[-1] == (ep, 1, False)
        assert len(plan.of("r")) == passes
        check.answers[ep] = False
        clock.advance(interval)
        await settle(runtime)
        assert check.made()[-1] == (ep, 1, False)
        assert phase(runtime, "r") == "Degraded"
        # A failed endpoint is checked again, in full, 10 s later; it is back.
        check.answers[ep] = True
        clock.advance(verification.CHECK_RETRY_SECONDS - 0.1)
        await settle(runtime)
        assert len(check.made()) == 3
        clock.advance(0.1)
        await settle(runtime)
        assert check.made()[-1] == (ep, 1, True)
        assert phase(runtime, "r") == "Ready"
        await runtime.stop()

    run(main)
    assert check.made() == [(ep, 1, True), (ep, 1, False), (ep, 1, False), (ep, 1, True)]
    text = runtime.metrics.text().decode()
    assert 'tritonresnet_verifications_total{outcome="ok"} 3.0' in text
    assert 'tritonresnet_verifications_total{outcome="failed"} 1.0' in text


def test_a_check_past_its_deadline_counts_as_failed_and_its_late_answer_is_ignored() -> None:
    clock = FakeClock()
    hold = threading.Event()
    check = FakeCheck(hold=hold)
    plan = FakePlan()
    kube = FakeKube()
    settings = Settings(verify_timeout_seconds=5.0)
    runtime = make_runtime(plan, check=check, clock=clock, kube=kube, settings=settings)
    ep = "10.0.0.1:8000"

    async def main() -> None:
        runtime.start()
        runtime.observe_resource("ADDED", resource("r", endpoints=(ep,)))
        while not check.calls:
            await asyncio.sleep(0.001)
        clock.advance(5.0)  # the deadline: the check is still out
        deadline = time.monotonic() + 5
        while len(plan.of("r")) < 2 or runtime.queue.running or runtime.queue.queued:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        seen = plan.of("r")[-1].verification[ep]
        assert not seen.ok and seen.message == "no answer within 5 s"
        assert phase(runtime, "r") == "Degraded"
        # The retry is due while the stuck thread still holds the endpoint: no second thread.
        clock.advance(verification.CHECK_RETRY_SECONDS)
        await asyncio.sleep(0.01)
        assert len(check.calls) == 1
        hold.set()  # the late answer (ok) does not count; the retry it held back runs now
        await settle(runtime)
        await runtime.stop()

    run(main)
    assert check.made() == [(ep, 1, True), (ep, 1, True)]
    assert phase(runtime, "r") == "Ready"


def test_checks_follow_the_endpoints_and_versions_plan_asks_about() -> None:
    clock = FakeClock()
    check = FakeCheck()
    plan = FakePlan()
    runtime = make_runtime(plan, check=check, clock=clock)
    a, b = "10.0.0.1:8000", "10.0.0.2:8000"

    async def main() -> None:
        runtime.start()
        runtime.observe_resource("ADDED", resource("r", endpoints=(a,)))
        await settle(runtime)
        # The pod is replaced: the new endpoint gets a full check, the old one is forgotten.
        runtime.observe_resource("MODIFIED", resource("r", 1, endpoints=(b,)))
        await settle(runtime)
        # A new version on the same endpoint is a new endpoint as far as checks go.
        runtime.observe_resource("MODIFIED", resource("r", 2, endpoints=(b,), version=2))
        await settle(runtime)
        calls = len(check.calls)
        clock.advance(INTERVAL)
        await settle(runtime)
        assert check.made()[calls:] == [(b, 2, False)]
        # Nothing left to verify (scaled to zero): nothing is re-checked.
        runtime.observe_resource("MODIFIED", resource("r", 3, version=2))
        await settle(runtime)
        calls = len(check.calls)
        clock.advance(10 * INTERVAL)
        await settle(runtime)
        assert len(check.calls) == calls
        await runtime.stop()

    run(main)
    assert check.made()[:3] == [(a, 1, True), (b, 1, True), (b, 2, True)]
    assert plan.of("r")[-1].verification == {}


def test_many_resources_are_verified_by_the_small_pool_first_checks_first() -> None:
    clock = FakeClock()
    check = FakeCheck()
    plan = FakePlan()
    runtime = make_runtime(plan, check=check, clock=clock, verifiers=2)
    by_key: defaultdict[str, int] = defaultdict(int)

    async def main() -> None:
        runtime.start()
        for i in range(30):
            runtime.observe_resource("ADDED", resource(f"r{i}", endpoints=(f"10.0.1.{i}:8000",)))
        await settle(runtime)
        await runtime.stop()

    run(main)
    for c in check.calls:
        by_key[c[0]] += 1
        assert c[3].startswith("verify")
    assert len(by_key) == 30 and set(by_key.values()) == {1}
    assert {p.thread.split("_")[0] for p in plan.passes} == {"reconcile"}
    assert all(plan.of(f"r{i}")[-1].verification for i in range(30))


def test_with_the_real_plan_a_rolled_out_model_is_verified_then_turns_not_ready_when_it_stops_answering() -> (
    None
):
    """What the operator finds after a restart: a served version, nothing checked yet."""
    cr, objects, pods, _ = lifecycle_to_ready()
    clock = FakeClock()
    check = FakeCheck()
    kube = FakeKube()
    settings = Settings(resync_seconds=3600.0)
    runtime = Runtime(kube, settings, check=check, clock=clock, warmup_seconds=0.0, wall_clock=lambda: NOW)
    ep = "10.1.0.5:8000"

    def phase() -> tuple[str, str]:
        status = runtime.resources[("vision", "resnet50")]["status"]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        return status["phase"], ready["reason"]

    async def main() -> None:
        for obj in objects:
            runtime.observe_child("ADDED", obj["kind"], obj)
        for pod in pods:
            labels = {**pod["metadata"]["labels"], names.LABEL_INSTANCE: "resnet50"}
            pod = {**pod, "metadata": {**pod["metadata"], "namespace": "vision", "labels": labels}}
            runtime.observe_child("ADDED", "Pod", pod)
        runtime.observe_resource("ADDED", cr)
        runtime.start()
        await settle(runtime)
        # The pod, and the Service as a client in the cluster reaches it.
        assert sorted(check.made()) == [(ep, 1, True), (SERVICE, 1, True)]
        assert phase() == ("Ready", "Verified")
        check.answers[ep] = False
        clock.advance(INTERVAL)
        await settle(runtime)
        assert (ep, 1, False) in check.made()[-2:]
        assert phase() == ("Degraded", "VerificationFailed")
        await runtime.stop()

    run(main)
    # Nothing to apply: the children are current. The pass that found no check wrote nothing
    # (a restarted operator does not turn served resources not Ready while it checks them).
    assert kube.applied == []
    assert [patch.get("phase") for _, _, patch in kube.patches] == ["Degraded"]
