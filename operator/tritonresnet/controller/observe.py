"""Observe: the cached objects of one TritonResNet -> typed facts.

The first of reconcile's three steps. Reads Kubernetes objects as the API
returns them (dicts) and says what they mean: how a builder Job ended and
with which result, whether a pod waits for a node or is stuck, how far the
Triton rollout is, which version the Deployment serves. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tritonresnet_builder.contract import (
    AccuracyTolerance,
    ContractError,
    ReferenceAnswers,
    Result,
    Tensor,
    parse_result,
)

from tritonresnet.api import names
from tritonresnet.api.status import AVAILABLE, NO_DEPLOYMENT, Condition
from tritonresnet.controller.fleet import FleetNode
from tritonresnet.controller.render import HTTP_PORT

# Container waiting reasons that mean a pod will not start without a change.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


@dataclass(frozen=True)
class Expected:
    """What a verified endpoint must serve."""

    model: str
    version: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    batched: bool = True  #: max_batch_size > 0: metadata shapes carry a leading batch dim
    #: Headers with the resource's Triton control credential (empty: Triton is not locked
    #: down), for the one check request a locked Triton restricts, its repository index.
    #: Left out of the repr: a logged check never shows the credential.
    control_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: The endpoint's pod is not ready: the check only asks Triton why (no smoke inference),
    #: and its result says why a rollout waits, never that the endpoint serves.
    diagnose: bool = False
    #: A ``format: onnx`` version's onnxruntime answers to the accuracy gate's fixed inputs (its
    #: build's): a full check sends those inputs and holds the answers to ``tolerance``.
    reference: ReferenceAnswers | None = None
    tolerance: AccuracyTolerance = field(default_factory=AccuracyTolerance)  #: ``spec.engine.accuracy``


@dataclass(frozen=True)
class EndpointCheck:
    """What one check of one Triton endpoint found."""

    endpoint: str  #: host:port of Triton's HTTP endpoint
    ok: bool
    message: str
    #: Triton's repository index says the version is UNAVAILABLE (a failed load, an
    #: unload): waiting will not make it serve, unlike a version still LOADING.
    unavailable: bool = False
    diagnostic: bool = False  #: made for an ``Expected`` with ``diagnose``
    #: The endpoint answered, but outside ``spec.engine.accuracy`` of the build's reference.
    accuracy: bool = False
    #: With ``accuracy``: the tolerance it was held to. A spec that changes it (an onnx version's
    #: key does not cover it) makes this check stale: decide asks for a new one.
    tolerance: AccuracyTolerance | None = None


@dataclass(frozen=True)
class Observed:
    """What exists, as cached from the watches: the input of one reconcile pass."""

    resource: Mapping[str, Any]  #: the TritonResNet
    jobs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  #: this resource's Jobs by name
    pods: Sequence[Mapping[str, Any]] = ()  #: this resource's pods (Job pods and Triton pods)
    children: Mapping[tuple[str, str], Mapping[str, Any]] = field(
        default_factory=dict
    )  #: (kind, name) -> object
    #: Other TritonResNets in the namespace (the runtime passes those of the same model name).
    peers: Sequence[Mapping[str, Any]] = ()
    verification: Mapping[str, EndpointCheck] = field(default_factory=dict)  #: endpoint -> last check
    #: The cluster's GPU nodes (``fleet.node_view``), for gpuKinds Auto; shared by every pass.
    nodes: Sequence[FleetNode] = ()
    now: str = "1970-01-01T00:00:00Z"

    def child(self, kind: str, name: str) -> Mapping[str, Any] | None:
        return self.children.get((kind, name))


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    """A Kubernetes object's status condition of that type; empty when it has none."""
    found = next(
        (c for c in (obj.get("status") or {}).get("conditions") or () if c.get("type") == type_), None
    )
    return found or {}


def _running(pod: Mapping[str, Any]) -> bool:
    """Every container of ``pod`` has a process (running), ready or not."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or ()
    return bool(statuses) and all("running" in (cs.get("state") or {}) for cs in statuses)


def _true(obj: Mapping[str, Any], type_: str) -> bool:
    return condition(obj, type_).get("status") == "True"


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


# -- Jobs ---------------------------------------------------------------------------------

JobState = Literal["Pending", "Running", "Unschedulable", "Stuck", "Succeeded", "Failed"]


@dataclass(frozen=True)
class JobOutcome:
    state: JobState
    result: Result | None = None
    message: str = ""
    node: str = ""  #: the node of the pod whose result was read (the GPU that built the plan)


def finished(job: Mapping[str, Any]) -> bool:
    return _true(job, "Complete") or _true(job, "Failed")


def _job_pods(job_name: str, pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [p for p in pods if _labels(p).get("job-name") == job_name]


def unschedulable(pods: Sequence[Mapping[str, Any]]) -> str:
    """The scheduler's message when a pod waits for a node (e.g. no free GPU yet)."""
    for pod in pods:
        cond = condition(pod, "PodScheduled")
        if cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return str(cond.get("message") or "no node fits")
    return ""


def job_outcome(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> JobOutcome:
    """Classify a builder Job and read its result from the pods' termination messages."""
    mine = _job_pods(job["metadata"]["name"], pods)
    result, message, node = None, "", ""
    for pod in sorted(mine, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
        for cs in (pod.get("status") or {}).get("containerStatuses") or ():
            term = (cs.get("state") or {}).get("terminated")
            if term and term.get("message"):
                try:
                    result = parse_result(term["message"])
                    node = str((pod.get("spec") or {}).get("nodeName") or "")
                except ContractError as exc:
                    message = str(exc)
    if _true(job, "Complete"):
        if result and result.ok:
            return JobOutcome("Succeeded", result, node=node)
        return JobOutcome("Failed", result, message or "builder finished without a result")
    if _true(job, "Failed"):
        if result and result.error:
            # The kind first: it is what a user searches the docs for (UnsupportedModel,
            # DigestMismatch...), and the sentence after it names the field or file.
            message = f"{result.error.kind}: {result.error.message}"
        failed = condition(job, "Failed")
        return JobOutcome("Failed", result, message or str(failed.get("message") or failed.get("reason")))
    waiting = unschedulable(mine)
    if waiting:
        return JobOutcome("Unschedulable", None, waiting)
    stuck = stuck_pod(mine, "pod")
    if stuck:
        return JobOutcome("Stuck", None, stuck)
    running = any((p.get("status") or {}).get("phase") == "Running" for p in mine)
    return JobOutcome("Running" if running else "Pending")


# -- the Triton rollout -------------------------------------------------------------------


_NO_DEPLOYMENT = Condition(AVAILABLE, "False", NO_DEPLOYMENT.name, "the Triton Deployment does not exist yet")


@dataclass(frozen=True)
class Rollout:
    """How far the Triton Deployment is with the version it should serve."""

    complete: bool = False
    available: Condition = _NO_DEPLOYMENT
    replicas: int = 0
    ready_replicas: int = 0
    endpoints: tuple[str, ...] = ()
    stuck: str = ""
    waiting_for_node: str = ""
    message: str = ""
    serving_versions: tuple[int, ...] = ()  #: model versions on ready Triton pods
    #: Pods of the version whose Triton runs but is not ready: the ones to ask why.
    unready: tuple[str, ...] = ()


def stuck_pod(pods: Sequence[Mapping[str, Any]], what: str) -> str:
    """``<what> <pod>: <reason>: <the kubelet's message>`` for a pod that will not start without a
    change (a missing Secret, an image that cannot be pulled, a crash loop); empty when none is."""
    stuck = ""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or ():
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS or int(cs.get("restartCount") or 0) >= 3:
                stuck = (
                    f"{what} {pod['metadata']['name']}: {waiting.get('reason') or 'restarting'}: "
                    f"{waiting.get('message') or 'restarted ' + str(cs.get('restartCount')) + ' times'}"
                )
    return stuck


def rollout(
    deployment: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    version: int,
    want: int,
    current: bool,
) -> Rollout:
    """The rollout of model ``version`` to ``want`` replicas; ``current``: the Deployment is as rendered."""
    if deployment is None:
        return Rollout()
    st = deployment.get("status") or {}
    replicas, ready = int(st.get("replicas") or 0), int(st.get("readyReplicas") or 0)
    avail = condition(deployment, "Available")
    available = Condition(
        AVAILABLE,
        "True" if avail.get("status") == "True" else "False",
        str(avail.get("reason") or "Deploying"),
        str(avail.get("message") or ""),
    )
    triton = [
        p
        for p in pods
        if _labels(p).get(names.LABEL_COMPONENT) == "triton" and not p["metadata"].get("deletionTimestamp")
    ]
    new = [p for p in triton if _labels(p).get(names.LABEL_MODEL_VERSION) == str(version)]
    endpoints = tuple(
        sorted(
            f"{p['status']['podIP']}:{HTTP_PORT}"
            for p in new
            if (p.get("status") or {}).get("podIP") and _true(p, "Ready")
        )
    )
    unready = tuple(
        sorted(
            f"{p['status']['podIP']}:{HTTP_PORT}"
            for p in new
            if (p.get("status") or {}).get("podIP") and not _true(p, "Ready") and _running(p)
        )
    )
    stuck = stuck_pod(new, "Triton pod")
    progressing = condition(deployment, "Progressing")
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        stuck = stuck or str(progressing.get("message"))
    complete = (
        current
        and int(st.get("observedGeneration") or 0) >= int(deployment["metadata"].get("generation") or 0)
        and int(st.get("updatedReplicas") or 0) == want
        and replicas == want
        and ready == want
        and int(st.get("availableReplicas") or 0) == want
        and len(endpoints) == want
    )
    serving = sorted(
        {
            int(v)
            for p in triton
            if _true(p, "Ready") and str(v := _labels(p).get(names.LABEL_MODEL_VERSION, "")).isdigit()
        }
    )
    return Rollout(
        serving_versions=tuple(serving),
        unready=unready,
        complete=complete,
        available=available,
        replicas=replicas,
        ready_replicas=ready,
        endpoints=endpoints,
        stuck=stuck,
        waiting_for_node=unschedulable(new),
        message=f"{len(endpoints)}/{want} replicas ready at version {version}",
    )
