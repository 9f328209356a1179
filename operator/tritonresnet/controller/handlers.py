"""kopf wiring: watches feed a cache, a small work queue runs the pure reconcile.

Only raw-event handlers (``kopf.on.event``) are used. They keep no state on
the objects: kopf writes no annotations, no finalizers and no progress into a
TritonResNet, so Git stays the only owner of ``spec`` and ``metadata`` and
GitOps tools see no drift. The cluster is the state: every pass recomputes
the plan from the cached objects (see ``reconcile.py``), and a periodic
resync catches what no event announces. A pass that changes nothing writes
nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tritonresnet.api import names
from tritonresnet.controller.kube import Kube, api_error_message, namespace_terminating, now_rfc3339
from tritonresnet.controller.reconcile import Observed, plan, with_apply_failures
from tritonresnet.controller.settings import Settings
from tritonresnet.controller.verify import EndpointCheck, check_endpoints

log = logging.getLogger("tritonresnet")

Key = tuple[str, str]  # (namespace, name)

# Kinds the operator owns, watched so the cache knows what exists.
CHILD_RESOURCES: tuple[tuple[str, str, str, str], ...] = (
    ("batch", "v1", "jobs", "Job"),
    ("", "v1", "pods", "Pod"),
    ("apps", "v1", "deployments", "Deployment"),
    ("", "v1", "services", "Service"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
)
_MANAGED = {names.LABEL_MANAGED_BY: names.MANAGER}
#: Reconcile workers; each pass is mostly waiting on the API server, so
#: more workers than cores shorten the queue when many resources change at once.
WORKERS = 8

# A pass whose child apply was refused is retried after this long.
_APPLY_RETRY_SECONDS = 15.0

# Seconds the workers wait after start-up before the first pass.
CACHE_WARMUP_SECONDS = 2.0

# A failed endpoint check is retried after this long; a good one is kept
# until the endpoint or the version changes.
_FAILED_CHECK_TTL = 10.0


def _key(body: Mapping[str, Any]) -> Key:
    return body["metadata"].get("namespace", ""), body["metadata"]["name"]


def cached(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the cache keeps of an object: all but ``managedFields``, which no decision reads
    and which is the largest part of most objects (a third of the operator's memory at 500
    resources would otherwise be field-manager bookkeeping)."""
    obj = dict(body)
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    obj["metadata"] = meta
    return obj


class Runtime:
    """The operator's in-memory view (rebuilt from the watches on every start) and its work queue."""

    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings
        self.resources: dict[Key, dict[str, Any]] = {}
        self.by_label: dict[Key, str] = {}
        # (namespace, owner name) -> {(kind, name): object}
        self.children: dict[Key, dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
        self.checks: dict[Key, dict[tuple[str, int], tuple[EndpointCheck, float]]] = defaultdict(dict)
        # (priority, arrival, key): a resource whose spec was never reconciled goes
        # before the re-passes that the operator's own writes trigger.
        self.queue: asyncio.PriorityQueue[tuple[int, int, Key]] = asyncio.PriorityQueue()
        self.arrivals = itertools.count()
        # Reconcile passes block on HTTP; they get their own threads, and events
        # (best effort) are posted from another pool, off the reconcile path.
        self.passes = ThreadPoolExecutor(WORKERS, thread_name_prefix="reconcile")
        self.events = ThreadPoolExecutor(2, thread_name_prefix="events")
        self.pending: set[Key] = set()
        self.running: set[Key] = set()
        self.dirty: set[Key] = set()

    # -- cache --------------------------------------------------------------------------

    def observe_resource(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        key = _key(body)
        if event_type == "DELETED":
            self.resources.pop(key, None)
            self.checks.pop(key, None)
            return
        self.resources[key] = cached(body)
        self.by_label[(key[0], names.label_value(key[1]))] = key[1]
        self.enqueue(key)

    def observe_child(self, event_type: str | None, kind: str, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        label = (meta.get("labels") or {}).get(names.LABEL_INSTANCE)
        if not label:
            return
        namespace = meta.get("namespace", "")
        # The instance label is the resource's name, cut and hashed when long.
        key = (namespace, self.by_label.get((namespace, label), label))
        entry = (kind, meta["name"])
        if event_type == "DELETED":
            self.children[key].pop(entry, None)
        else:
            self.children[key][entry] = cached(body)
        self.enqueue(key)

    # -- queue --------------------------------------------------------------------------

    def enqueue(self, key: Key) -> None:
        if key in self.running:
            self.dirty.add(key)
        elif key not in self.pending:
            self.pending.add(key)
            self.queue.put_nowait((self._priority(key), next(self.arrivals), key))

    def _priority(self, key: Key) -> int:
        resource = self.resources.get(key) or {}
        seen = (resource.get("status") or {}).get("observedGeneration")
        return 0 if seen != (resource.get("metadata") or {}).get("generation") else 1

    def enqueue_later(self, key: Key, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.enqueue, key)

    async def worker(self) -> None:
        # Let the first listing of every watched kind fill the cache before the
        # first pass, so a restarted operator sees its Jobs before it plans.
        await asyncio.sleep(CACHE_WARMUP_SECONDS)
        loop = asyncio.get_running_loop()
        while True:
            _, _, key = await self.queue.get()
            self.pending.discard(key)
            self.running.add(key)
            try:
                retry = await loop.run_in_executor(self.passes, self.reconcile, key)
            except Exception as exc:  # a failed pass is retried; the next one starts from the cluster again
                if namespace_terminating(exc):
                    # Its children's deletions wake the resource until its own deletion arrives.
                    log.info("namespace %s is being deleted; not reconciling %s", key[0], key[1])
                    retry = None
                else:
                    log.exception("reconcile of %s/%s failed; retrying in 5 s", *key)
                    retry = 5.0
            finally:
                self.running.discard(key)
            if key in self.dirty:
                self.dirty.discard(key)
                self.enqueue(key)
            elif retry:
                self.enqueue_later(key, retry)

    async def resync(self) -> None:
        """Level-triggered safety net: revisit everything now and then."""
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            for key in list(self.resources):
                self.enqueue(key)

    # -- one pass -----------------------------------------------------------------------

    def observed(self, key: Key, verification: Mapping[str, EndpointCheck]) -> Observed:
        children = self.children.get(key, {})
        return Observed(
            resource=self.resources[key],
            jobs={n: o for (k, n), o in children.items() if k == "Job"},
            pods=[o for (k, _), o in children.items() if k == "Pod"],
            children={k: o for k, o in children.items() if k[0] != "Pod"},
            peers=[o for (ns, _), o in self.resources.items() if ns == key[0]],
            verification=verification,
            now=now_rfc3339(),
        )

    def _known_checks(self, key: Key, version: int) -> dict[str, EndpointCheck]:
        now = time.monotonic()
        return {
            ep: check
            for (ep, v), (check, at) in self.checks[key].items()
            if v == version and (check.ok or now - at < _FAILED_CHECK_TTL)
        }

    def reconcile(self, key: Key) -> float | None:
        """One pass for one resource; returns seconds until it should run again, if any."""
        resource = self.resources.get(key)
        if resource is None or resource["metadata"].get("deletionTimestamp"):
            return None  # owner references let the garbage collector remove the children
        version = int((resource.get("status") or {}).get("modelVersion") or 0)
        result = plan(self.observed(key, self._known_checks(key, version)), self.settings)
        if result.verify is not None:
            expected = result.verify.expected
            checks = check_endpoints(result.verify.endpoints, expected, self.settings.verify_timeout_seconds)
            now = time.monotonic()
            for check in checks:
                self.checks[key][(check.endpoint, expected.version)] = (check, now)
            known = {ch.endpoint: ch for ch in checks}
            result = plan(replace(self.observed(key, known)), self.settings)

        refused = []
        for obj in result.apply:
            try:
                applied = self.kube.apply(obj)
            except ApiException as exc:
                if namespace_terminating(exc):
                    raise
                # Keep going: one refused child must not hide the others or the status.
                refused.append(f"{obj['kind']} {obj['metadata']['name']}: {api_error_message(exc)}")
                continue
            self.children[key][(obj["kind"], obj["metadata"]["name"])] = cached(applied)
        for api_version, kind, name in result.delete:
            self.kube.delete(api_version, kind, key[0], name)
        status, events = result.status, result.events
        if refused:
            status, events = with_apply_failures(resource, result, refused, now_rfc3339())
            log.warning("reconcile of %s/%s: %s", *key, status["message"])
        self._write_status(key, resource, status)
        for type_, reason, message in events:
            self.events.submit(self.kube.post_event, resource, type_, reason, message)

        if refused:
            return _APPLY_RETRY_SECONDS
        ready = status.get("phase") == "Ready"
        failed_checks = any(not ch.ok for ch, _ in self.checks[key].values())
        return _FAILED_CHECK_TTL if (not ready and failed_checks) else None

    def _write_status(self, key: Key, resource: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        patch = status_patch(resource.get("status") or {}, status)
        if patch:
            self.kube.patch_status(key[0], key[1], patch)
            cached = self.resources.get(key)
            if cached is not None:
                merged = {**(cached.get("status") or {}), **patch}
                cached["status"] = {k: v for k, v in merged.items() if v is not None}


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning ``old`` into ``new``; empty when they already agree."""
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


# -- kopf handlers -----------------------------------------------------------------------


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # We post our own events (with reasons a human can grep) and keep no
    # kopf state on the objects; a stalled watch is restarted after a minute.
    settings.posting.enabled = False
    # One line per watch event ("Handler 'watch-pods' succeeded") drowns what matters.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    options = Settings.from_env(os.environ)
    runtime = Runtime(Kube(_api_client()), options)
    memo["runtime"] = runtime
    memo["tasks"] = [asyncio.create_task(runtime.worker()) for _ in range(WORKERS)]
    memo["tasks"].append(asyncio.create_task(runtime.resync()))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.get("tasks", ()):
        task.cancel()
    runtime = memo.get("runtime")
    if runtime is not None:
        runtime.passes.shutdown(wait=False, cancel_futures=True)
        runtime.events.shutdown(wait=False, cancel_futures=True)


# The event handlers are coroutines on purpose: kopf runs a plain function in a
# thread, where touching the asyncio work queue is not safe (a waiting worker
# may not wake up), and each event would pay a thread hop.
@kopf.on.event(names.GROUP, names.VERSION, names.PLURAL)
async def resource_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo["runtime"].observe_resource(event.get("type"), body)


def _register_child_watches(resources: Sequence[tuple[str, str, str, str]]) -> None:
    for group, version, plural, kind in resources:

        async def child_event(
            event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, kind: str = kind, **_: Any
        ) -> None:
            memo["runtime"].observe_child(event.get("type"), kind, body)

        kopf.on.event(group, version, plural, labels=_MANAGED, id=f"watch-{plural}")(child_event)


_register_child_watches(CHILD_RESOURCES)


def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config()


def run(
    namespaces: Sequence[str] | None = None,
    standalone: bool = True,
    peering: str | None = None,
    liveness_endpoint: str | None = None,
    log_format: str = "plain",
    verbose: bool = False,
) -> None:
    """Run the operator until interrupted (the CLI's ``tritonresnet operator``)."""
    kopf.configure(
        verbose=verbose, log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.PLAIN
    )
    asyncio.run(
        kopf.operator(
            standalone=standalone if peering is None else False,
            peering_name=peering,
            namespaces=list(namespaces or ()),
            clusterwide=not namespaces,
            liveness_endpoint=liveness_endpoint,
        )
    )
