"""The controller runtime: the watch cache, and the passes it hands to the work queue's workers.

Who touches what
----------------
Everything mutable here (the cache, the queue, the table of endpoint checks,
the timers) belongs to the event loop. kopf's watch handlers are coroutines on
that loop, and the worker pools report back through callbacks on it, so no
lock is needed and no thread ever iterates a dict another one is changing.

A reconcile pass runs on a worker thread, because it waits on the API server.
Before the hand-off the loop builds a :class:`Snapshot` of what the pass may
read: its own copy of the resource's children, the namespace's resources as a
tuple (shared by every pass until that namespace changes) and the endpoint
checks known so far. Cached objects are replaced on every event and never
modified in place, so a snapshot can share them. The pass returns what it did
(:class:`PassOutcome`); the loop folds that back into the cache.

The queue and its backoff live in ``workqueue.py``, the scheduling of
endpoint checks in ``verification.py``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from kubernetes.client.rest import ApiException

from tritonresnet.api import names
from tritonresnet.api.status import status_patch
from tritonresnet.controller import fleet
from tritonresnet.controller.children import owned_by
from tritonresnet.controller.decide import model_name_as_written
from tritonresnet.controller.kube import api_error_message, namespace_terminating, now_rfc3339
from tritonresnet.controller.metrics import Metrics
from tritonresnet.controller.reconcile import (
    EndpointCheck,
    Observed,
    Plan,
    VerifyRequest,
    with_apply_failures,
)
from tritonresnet.controller.reconcile import plan as reconcile_plan
from tritonresnet.controller.render import CREATE_ONLY_KINDS
from tritonresnet.controller.report import conflict
from tritonresnet.controller.settings import Settings
from tritonresnet.controller.verification import VERIFIERS, CheckEndpoint, CheckId, Consulted, EndpointChecks
from tritonresnet.controller.verify import check_endpoint
from tritonresnet.controller.workqueue import (
    CHANGED,
    NEW_GENERATION,
    RESYNC,
    Clock,
    Key,
    LoopClock,
    Timer,
    WorkQueue,
    backoff_delay,
)

log = logging.getLogger("tritonresnet")

ChildKey = tuple[str, str]  #: (kind, name) of a child
Group = tuple[str, str]  #: (namespace, model name as written): the resources that may conflict

#: Seconds before the first pass, so that the first listing of every watched
#: kind fills the cache: a restarted operator sees its Jobs before it plans.
CACHE_WARMUP_SECONDS = 2.0


class KubeWriter(Protocol):
    """What a pass needs from the API; ``kube.Kube`` in the operator, a recorder in tests."""

    def apply(self, obj: Mapping[str, Any]) -> Any: ...

    def create(self, obj: Mapping[str, Any]) -> Any: ...

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None: ...

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...

    def post_event(self, resource: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...


PlanFunction = Callable[[Observed, Settings], Plan]


def cached(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the cache keeps of an object: all but ``managedFields``, which no decision reads
    and which is the largest part of most objects (a third of the operator's memory at 500
    resources would otherwise be field-manager bookkeeping)."""
    obj = dict(body)
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    obj["metadata"] = meta
    return obj


def _key(body: Mapping[str, Any]) -> Key:
    return body["metadata"].get("namespace", ""), body["metadata"]["name"]


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- passes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What one pass may read; built on the event loop, read on a worker thread."""

    key: Key
    resource: Mapping[str, Any]
    children: Mapping[ChildKey, Mapping[str, Any]]  #: a copy of this resource's children
    #: The namespace's TritonResNets with this one's model name as written (this one included).
    peers: Sequence[Mapping[str, Any]]
    checks: Mapping[int, Mapping[str, EndpointCheck]]  #: version -> endpoint -> latest check
    nodes: Sequence[fleet.FleetNode] = ()  #: the cluster's GPU nodes, for gpuKinds Auto (shared)


@dataclass(frozen=True)
class PassOutcome:
    """What a pass did, for the event loop to fold into the cache."""

    applied: tuple[dict[str, Any], ...] = ()  #: the API server's copy of each applied child
    status_patch: Mapping[str, Any] = field(default_factory=dict)  #: what was written, empty if nothing
    refused: tuple[str, ...] = ()  #: children the API server refused, with its reasons
    verify: VerifyRequest | None = None  #: endpoints plan wants checked
    in_use: frozenset[CheckId] = frozenset()  #: the checks plan used (or asked for)


class Runtime:
    """The operator's in-memory view (rebuilt from the watches on every start) and its work queue."""

    def __init__(
        self,
        kube: KubeWriter,
        settings: Settings,
        *,
        plan: PlanFunction = reconcile_plan,
        check: CheckEndpoint = check_endpoint,
        clock: Clock | None = None,
        workers: int | None = None,
        verifiers: int = VERIFIERS,
        warmup_seconds: float = CACHE_WARMUP_SECONDS,
        rng: random.Random | None = None,
        wall_clock: Callable[[], str] = now_rfc3339,
        metrics: Metrics | None = None,
    ) -> None:
        self.kube = kube
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.plan = plan
        self.clock: Clock = clock or LoopClock()
        self.workers = workers or settings.workers
        self.warmup_seconds = warmup_seconds
        self.rng = rng or random.Random()
        self.wall_clock = wall_clock

        # The cache. Objects in it are replaced, never modified (snapshots share them).
        self.resources: dict[Key, Mapping[str, Any]] = {}
        # Peers by (namespace, model name as written): the only resources a pass compares
        # itself with (decide.find_conflict). Per namespace, 5,000 resources cost 5,000
        # lookups per pass and a 5,000-tuple rebuilt after every status write.
        self._by_model: dict[Group, dict[str, Mapping[str, Any]]] = {}
        self._group_of: dict[Key, Group] = {}
        self._peers: dict[Group, tuple[Mapping[str, Any], ...]] = {}  # built on demand, dropped on change
        # Children are filed under their instance label, which is the owner's name cut and
        # hashed when long, so a child seen before its owner is still found.
        self.children: dict[tuple[str, str], dict[ChildKey, Mapping[str, Any]]] = {}
        self.by_label: dict[tuple[str, str], str] = {}  # (namespace, label value) -> name
        # One view of the cluster's GPU nodes for every pass (not a list per pass), as a tuple
        # built on demand and dropped when a node's labels or taints change.
        self.nodes: dict[str, fleet.FleetNode] = {}
        self._fleet: tuple[fleet.FleetNode, ...] | None = None

        self.queue = WorkQueue()
        self.checks = EndpointChecks(
            check,
            self.clock,
            self._check_changed,
            timeout=settings.verify_timeout_seconds,
            interval=settings.verify_interval_seconds,
            threads=verifiers,
            on_result=lambda check: self.metrics.verified(check.ok),
        )
        self.metrics.watch(lambda: len(self.queue), lambda: len(self.resources))
        # Passes block on HTTP; they get their own threads, and events (best
        # effort) are posted from another pool, off the reconcile path.
        self.passes = ThreadPoolExecutor(self.workers, thread_name_prefix="reconcile")
        self.events = ThreadPoolExecutor(2, thread_name_prefix="events")

        self.failures: dict[Key, int] = {}  # failed passes in a row
        self.retry_at: dict[Key, float] = {}  # when a failing key runs again
        self._retry_timers: dict[Key, Timer] = {}
        self._open = asyncio.Event()  # set once the warm-up is over
        self._tasks: list[asyncio.Task[None]] = []
        self._resync_timer: Timer | None = None
        self._warmup_timer: Timer | None = None

    # -- lifecycle (on the event loop) ----------------------------------------------------

    def start(self) -> None:
        """Start the workers and the resync; the first passes wait for the warm-up."""
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"tritonresnet-reconcile-{i}")
            for i in range(self.workers)
        ]
        self._resync_timer = self.clock.call_later(self.settings.resync_seconds, self._resync)
        if self.warmup_seconds > 0:
            self._warmup_timer = self.clock.call_later(self.warmup_seconds, self._open.set)
        else:
            self._open.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for timer in (self._resync_timer, self._warmup_timer, *self._retry_timers.values()):
            if timer is not None:
                timer.cancel()
        self._resync_timer = self._warmup_timer = None
        self._retry_timers = {}
        self.checks.close()
        self.passes.shutdown(wait=False, cancel_futures=True)
        self.events.shutdown(wait=False, cancel_futures=True)

    @property
    def pending(self) -> frozenset[Key]:
        """Keys waiting for a worker."""
        return self.queue.queued

    @property
    def quiet(self) -> bool:
        """Nothing queued, no pass and no check under way (timers may be set)."""
        return not self.queue.busy and not self.checks.busy

    # -- the cache (on the event loop) ----------------------------------------------------

    def observe_resource(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        key = _key(body)
        if event_type == "DELETED":
            self._drop_resource(key)
            return
        self._put_resource(key, cached(body))
        self.by_label[(key[0], names.label_value(key[1]))] = key[1]
        self.enqueue(key)

    def observe_child(self, event_type: str | None, kind: str, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        label = (meta.get("labels") or {}).get(names.LABEL_INSTANCE)
        if not label:
            return
        namespace = meta.get("namespace", "")
        owner = (namespace, label)
        entry = (kind, meta["name"])
        if event_type == "DELETED":
            bucket = self.children.get(owner)
            if bucket is not None:
                bucket.pop(entry, None)
                if not bucket:
                    del self.children[owner]
        else:
            self.children.setdefault(owner, {})[entry] = cached(body)
        name = self.by_label.get(owner)
        if name is not None:  # else the owner's own event, still to come, queues it
            self.enqueue((namespace, name))

    def observe_node(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A Node event: wake the gpuKinds Auto resources when the fleet's view of it changed.

        Heartbeats (status only) give the same view and wake nothing, so a large fleet costs
        a comparison per event, not a pass per resource.
        """
        name = str(body["metadata"]["name"])
        view = None if event_type == "DELETED" else fleet.node_view(body)
        if self.nodes.get(name) == view:
            return
        if view is None:
            del self.nodes[name]
        else:
            self.nodes[name] = view
        self._fleet = None
        for key, resource in self.resources.items():
            if fleet.wants_nodes(resource):
                self.enqueue(key)

    def fleet_nodes(self) -> tuple[fleet.FleetNode, ...]:
        if self._fleet is None:
            self._fleet = tuple(self.nodes[name] for name in sorted(self.nodes))
        return self._fleet

    def _put_resource(self, key: Key, obj: Mapping[str, Any]) -> None:
        self.resources[key] = obj
        group = (key[0], model_name_as_written(obj))
        if self._group_of.get(key, group) != group:
            self._leave_group(key)
        self._group_of[key] = group
        self._by_model.setdefault(group, {})[key[1]] = obj
        self._peers.pop(group, None)

    def _leave_group(self, key: Key) -> None:
        group = self._group_of.pop(key, None)
        if group is None:
            return
        peers = self._by_model.get(group)
        if peers is not None:
            peers.pop(key[1], None)
            if not peers:
                del self._by_model[group]
        self._peers.pop(group, None)

    def _drop_resource(self, key: Key) -> None:
        namespace, name = key
        self.resources.pop(key, None)
        self._leave_group(key)
        label = (namespace, names.label_value(name))
        if self.by_label.get(label) == name:
            del self.by_label[label]
        self._clear_failures(key)
        self.checks.forget(key)

    def snapshot(self, key: Key) -> Snapshot | None:
        """What a pass of ``key`` reads; None when there is nothing to reconcile."""
        resource = self.resources.get(key)
        if resource is None or resource["metadata"].get("deletionTimestamp"):
            return None  # owner references let the garbage collector remove the children
        namespace, name = key
        group = self._group_of.get(key) or (namespace, model_name_as_written(resource))
        peers = self._peers.get(group)
        if peers is None:
            peers = self._peers[group] = tuple(self._by_model.get(group, {}).values())
        children = self.children.get((namespace, names.label_value(name)), {})
        known = self.checks.known(key)
        return Snapshot(
            key,
            resource,
            MappingProxyType(dict(children)),
            peers,
            MappingProxyType({v: MappingProxyType(c) for v, c in known.items()}),
            self.fleet_nodes() if fleet.wants_nodes(resource) else (),
        )

    # -- the queue (on the event loop) ----------------------------------------------------

    def enqueue(self, key: Key, cause: int = CHANGED) -> None:
        self.queue.add(key, self._priority(key, cause))

    def _priority(self, key: Key, cause: int) -> int:
        resource = self.resources.get(key) or {}
        seen = (resource.get("status") or {}).get("observedGeneration")
        if seen != (resource.get("metadata") or {}).get("generation"):
            return NEW_GENERATION
        return cause

    def _check_changed(self, key: Key) -> None:
        if key in self.resources:
            self.enqueue(key)

    def _resync(self) -> None:
        """Level-triggered safety net: revisit everything now and then."""
        self._resync_timer = self.clock.call_later(self.settings.resync_seconds, self._resync)
        for key in self.resources:
            if key not in self._retry_timers:  # a failing key keeps to its backoff
                self.enqueue(key, RESYNC)

    def _failed(self, key: Key) -> float:
        """Count a failed pass of ``key`` and set its retry; returns the delay."""
        failures = self.failures[key] = self.failures.get(key, 0) + 1
        delay = backoff_delay(failures, self.rng)
        timer = self._retry_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._retry_timers[key] = self.clock.call_later(delay, lambda: self._retry(key))
        self.retry_at[key] = self.clock.now() + delay
        return delay

    def _retry(self, key: Key) -> None:
        self._retry_timers.pop(key, None)
        self.retry_at.pop(key, None)
        if key in self.resources:
            self.enqueue(key)

    def _clear_failures(self, key: Key) -> None:
        self.failures.pop(key, None)
        self.retry_at.pop(key, None)
        timer = self._retry_timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def _worker(self) -> None:
        await self._open.wait()
        while True:
            key = await self.queue.get()
            try:
                await self._process(key)
            finally:
                self.queue.done(key)

    async def _process(self, key: Key) -> None:
        snap = self.snapshot(key)
        if snap is None:
            self._clear_failures(key)
            return
        started = time.perf_counter()
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(self.passes, self.run_pass, snap)
            self.metrics.pass_done("refused" if outcome.refused else "ok", time.perf_counter() - started)
            self.finish_pass(snap, outcome)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next pass starts from the cluster again
            self.metrics.pass_done("error", time.perf_counter() - started)
            self.metrics.api_error(exc)
            if namespace_terminating(exc):
                # Its children's deletions wake the resource until its own deletion arrives.
                log.info("namespace %s is being deleted; not reconciling %s", *key)
                self._clear_failures(key)
                return
            delay = self._failed(key)
            log.error(
                "reconcile of %s/%s failed (%d in a row); retrying in %.1f s",
                *key,
                self.failures[key],
                delay,
                exc_info=exc,
            )

    def finish_pass(self, snap: Snapshot, outcome: PassOutcome) -> None:
        """Fold a pass's writes into the cache (on the event loop)."""
        key = snap.key
        namespace, name = key
        if outcome.applied:
            bucket = self.children.setdefault((namespace, names.label_value(name)), {})
            for obj in outcome.applied:
                entry = (obj["kind"], obj["metadata"]["name"])
                # Keep the API server's answer, so the next pass does not apply the child again
                # before its watch event arrives; unless a watch event already replaced what the
                # pass saw: that one may be newer, and the key is dirty anyway.
                if bucket.get(entry) is snap.children.get(entry):
                    bucket[entry] = obj
        if outcome.status_patch:
            current = self.resources.get(key)
            if current is snap.resource:
                merged = {**(current.get("status") or {}), **outcome.status_patch}
                status = {k: v for k, v in merged.items() if v is not None}
                self._put_resource(key, {**current, "status": status})
        self.checks.update(key, outcome.in_use, outcome.verify)
        if outcome.refused:
            delay = self._failed(key)
            log.warning(
                "reconcile of %s/%s: the API server refused %s; retrying in %.1f s",
                *key,
                "; ".join(outcome.refused),
                delay,
            )
        else:
            self._clear_failures(key)

    # -- one pass (on a worker thread) ----------------------------------------------------

    def _observed(self, snap: Snapshot, verification: Mapping[str, EndpointCheck]) -> Observed:
        children = snap.children
        return Observed(
            resource=snap.resource,
            jobs={n: o for (k, n), o in children.items() if k == "Job"},
            pods=[o for (k, _), o in children.items() if k == "Pod"],
            children={k: o for k, o in children.items() if k[0] != "Pod"},
            peers=snap.peers,
            verification=verification,
            nodes=snap.nodes,
            now=self.wall_clock(),
        )

    def _plan(self, snap: Snapshot) -> tuple[Plan, frozenset[CheckId]]:
        """``plan`` with the checks of the right version, and the checks it used or asked for."""
        # plan verifies at the version the Deployment serves, which the last status recorded;
        # when the plan says otherwise, plan once more with that version's checks (pure, rare).
        version = _int((snap.resource.get("status") or {}).get("modelVersion")) or 0
        consulted = Consulted(snap.checks.get(version, {}))
        result = self.plan(self._observed(snap, consulted), self.settings)
        if result.verify is not None:
            other: int | None = result.verify.expected.version
            again = other != version and other in snap.checks
        else:
            other = result.status.model_version
            again = other is not None and other != version and bool(consulted.used())
        if again and other is not None:
            version = other
            consulted = Consulted(snap.checks.get(version, {}))
            result = self.plan(self._observed(snap, consulted), self.settings)
        if result.verify is not None:
            want = result.verify.expected.version
            return result, frozenset((e, want) for e in result.verify.endpoints)
        return result, frozenset((e, version) for e in consulted.used())

    def run_pass(self, snap: Snapshot) -> PassOutcome:
        """One pass for one resource: plan, then apply, delete, write the status, post events."""
        namespace, name = snap.key
        resource = snap.resource
        result, in_use = self._plan(snap)
        applied: list[dict[str, Any]] = []
        refused: list[str] = []
        rendered: Sequence[Mapping[str, Any]] = result.apply
        conflicts: list[str] = []
        uid = str(resource["metadata"].get("uid") or "")
        for obj in rendered:
            kind, child = obj["kind"], obj["metadata"]["name"]
            try:
                answer = self._write(obj, (kind, child) in snap.children, uid)
            except ApiException as exc:
                if namespace_terminating(exc):
                    raise
                self.metrics.api_error(exc)
                # Keep going: one refused child must not hide the others or the status.
                refused.append(f"{kind} {child}: {api_error_message(exc)}")
                continue
            if answer is None:
                conflicts.append(conflict(kind, child))
                if kind == "PersistentVolumeClaim":
                    break  # every child after the claim would mount someone else's volume
                continue
            applied.append(cached(answer if isinstance(answer, Mapping) else obj))
        for api_version, kind, child in result.delete:
            self.kube.delete(api_version, kind, namespace, child)
        if result.verify is not None and not refused and not conflicts:
            # A status that says "verifying" describes what this process has not checked yet,
            # not the cluster: after a restart it would turn every served resource not Ready
            # until its checks come back. The checks wake the key when they answer (within
            # their deadline), and that pass writes the status they decide.
            return PassOutcome(tuple(applied), {}, (), result.verify, in_use)
        status, events = result.status, list(result.events)
        if refused or conflicts:
            status, events = with_apply_failures(resource, status, refused, self.wall_clock(), conflicts)
        patch = status_patch(resource.get("status") or {}, status)
        if patch:
            self.kube.patch_status(namespace, name, patch)
        for type_, reason, message in events:
            self.metrics.event(reason)
            try:
                self.events.submit(self.kube.post_event, resource, type_, reason, message)
            except RuntimeError:  # the pool is shut down: the operator is stopping
                break
        return PassOutcome(tuple(applied), patch, (*refused, *conflicts), result.verify, in_use)

    def _write(self, obj: Mapping[str, Any], seen: bool, uid: str) -> Any:
        """Apply a child the cache holds; create one it does not. None: the name is someone else's.

        A create answered 409 means an object of that name exists that the cache
        did not hold: ours if the watch is only behind (then it is applied), else
        someone else's, which is left exactly as it is.
        """
        if seen:
            return self.kube.apply(obj)
        try:
            return self.kube.create(obj)
        except ApiException as exc:
            if exc.status != 409:
                raise
        if obj["kind"] in CREATE_ONLY_KINDS:
            # Never read back (the operator may not read Secrets). Its name is a digest of its
            # content that only the operator can compute, so the one of that name is this one.
            return obj
        meta = obj["metadata"]
        live = self.kube.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        if live is not None and owned_by(live, uid):
            return self.kube.apply(obj)
        return None
