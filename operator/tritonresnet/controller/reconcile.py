"""Pure reconcile: a TritonResNet and what exists in the cluster -> what should exist.

:func:`plan` is a pure function of its inputs (no I/O, no clock: ``now`` is
passed in), so every decision of the operator is unit-tested without a
cluster. The kopf layer (``handlers.py``) gathers :class:`Observed`, calls
:func:`plan`, and carries out the returned :class:`Plan`.

State lives in the cluster, never only in the operator's memory:

* which engines exist: the build Jobs' results (pod termination messages),
  remembered in ``status.targets`` once read;
* which version is published for the current spec: the publish Job's result,
  remembered in ``status.published``; publishing again is idempotent;
* which version serves: the Triton Deployment's labels and annotations.

So a restart at any point recomputes the same names and the same decisions,
and a repeated event never duplicates a Job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tritonresnet_builder.contract import ContractError, Result, Tensor, parse_result

from tritonresnet.api import names
from tritonresnet.api import status as c
from tritonresnet.api.spec import SpecError, TritonResNetSpec, parse_spec
from tritonresnet.api.status import Condition
from tritonresnet.controller import render
from tritonresnet.controller.kube import is_current, with_applied_hash
from tritonresnet.controller.settings import Settings
from tritonresnet.controller.verify import EndpointCheck, Expected

TRITON_HTTP_PORT = 8000

# What the Triton Deployment serves, kept on the Deployment itself so the
# cluster (not the operator's memory or status) remembers it.
MODEL_VERSION_ANNOTATION = "tritonresnet.io/model-version"
VERSION_KEY_ANNOTATION = "tritonresnet.io/version-key"
MODEL_IO_ANNOTATION = "tritonresnet.io/model-io"
# The NGC release the served version was built for: its plans only load in
# that release's Triton, so the image follows the version, not the spec.
RELEASE_ANNOTATION = "tritonresnet.io/release"

# Container waiting reasons that mean a pod will not start without a change.
_STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "ImageNotKnownToTestGround",
    }
)

# Condition reasons reported as Warning events.
_WARNING_REASONS = frozenset(
    {
        "InvalidSpec",
        "ModelNameConflict",
        "BuildFailed",
        "PublishFailed",
        "RolloutStuck",
        "VerificationFailed",
        "ApplyFailed",
    }
)


@dataclass(frozen=True)
class Observed:
    """What exists, as cached from the watches."""

    resource: Mapping[str, Any]  #: the TritonResNet
    jobs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  #: this resource's Jobs by name
    pods: Sequence[Mapping[str, Any]] = ()  #: this resource's pods (Job pods and Triton pods)
    children: Mapping[tuple[str, str], Mapping[str, Any]] = field(
        default_factory=dict
    )  #: (kind, name) -> object
    peers: Sequence[Mapping[str, Any]] = ()  #: other TritonResNets in the namespace
    verification: Mapping[str, EndpointCheck] = field(default_factory=dict)  #: endpoint -> last check
    now: str = "1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class VerifyRequest:
    endpoints: tuple[str, ...]
    expected: Expected


@dataclass(frozen=True)
class Plan:
    apply: list[dict[str, Any]]  #: rendered children that differ from what exists (hash annotated)
    delete: list[tuple[str, str, str]]  #: (apiVersion, kind, name)
    status: dict[str, Any]  #: the complete status to write (written only if it differs)
    events: list[tuple[str, str, str]]  #: (type, reason, message)
    verify: VerifyRequest | None = None


@dataclass(frozen=True)
class Served:
    """The version the Triton Deployment pins, read back from its metadata."""

    version: int
    version_key: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    release: str = ""  #: empty: the current spec's release


# -- reading what exists ------------------------------------------------------------------


def _tensors(items: Any) -> tuple[Tensor, ...]:
    return tuple(Tensor(t["name"], t["datatype"], tuple(t["shape"])) for t in items or ())


def _tensor_dicts(tensors: Sequence[Tensor]) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]


def served_from_deployment(deployment: Mapping[str, Any] | None) -> Served | None:
    if not deployment:
        return None
    ann = (deployment.get("metadata") or {}).get("annotations") or {}
    try:
        io = json.loads(ann[MODEL_IO_ANNOTATION])
        return Served(
            int(ann[MODEL_VERSION_ANNOTATION]),
            ann[VERSION_KEY_ANNOTATION],
            _tensors(io["inputs"]),
            _tensors(io["outputs"]),
            str(ann.get(RELEASE_ANNOTATION) or ""),
        )
    except (KeyError, ValueError, TypeError):
        return None


def _condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    return c.find((obj.get("status") or {}).get("conditions"), type_)


def _job_pods(job_name: str, pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get("job-name") == job_name]


def _unschedulable(pods: Sequence[Mapping[str, Any]]) -> str:
    """The scheduler's message when a pod waits for a node (e.g. no free GPU yet)."""
    for pod in pods:
        cond = _condition(pod, "PodScheduled")
        if cond and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return str(cond.get("message") or "no node fits")
    return ""


@dataclass(frozen=True)
class JobOutcome:
    state: str  #: Pending | Running | Unschedulable | Succeeded | Failed
    result: Result | None = None
    message: str = ""


def job_outcome(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> JobOutcome:
    """Classify a builder Job and read its result from the pods' termination messages."""
    name = job["metadata"]["name"]
    mine = _job_pods(name, pods)
    result, message = None, ""
    for pod in sorted(mine, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
        for cs in (pod.get("status") or {}).get("containerStatuses") or ():
            term = (cs.get("state") or {}).get("terminated")
            if term and term.get("message"):
                try:
                    result = parse_result(term["message"])
                except ContractError as exc:
                    message = str(exc)
    if _condition(job, "Complete") and _condition(job, "Complete").get("status") == "True":  # type: ignore[union-attr]
        if result and result.ok:
            return JobOutcome("Succeeded", result)
        return JobOutcome("Failed", result, message or "builder finished without a result")
    failed = _condition(job, "Failed")
    if failed and failed.get("status") == "True":
        if result and result.error:
            message = result.error.message
        return JobOutcome("Failed", result, message or str(failed.get("message") or failed.get("reason")))
    waiting = _unschedulable(mine)
    if waiting:
        return JobOutcome("Unschedulable", None, waiting)
    running = any((p.get("status") or {}).get("phase") == "Running" for p in mine)
    return JobOutcome("Running" if running else "Pending")


# -- the plan ------------------------------------------------------------------------------


@dataclass
class _Progress:
    """Accumulates what the plan decides, so each step stays a few lines."""

    children: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str, str]] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)


def repository_identity(spec: TritonResNetSpec, cr_name: str) -> tuple[str, str]:
    """The volume (and folder in it) a resource publishes into."""
    return render.claim_name(cr_name, spec), spec.repository.sub_path


def find_conflict(
    resource: Mapping[str, Any], spec: TritonResNetSpec, peers: Sequence[Mapping[str, Any]]
) -> str:
    """Name of an older TritonResNet serving the same model name from the same volume."""
    me = resource["metadata"]
    mine = (repository_identity(spec, me["name"]), spec.model.name)
    older = []
    for peer in peers:
        pm = peer["metadata"]
        if pm["name"] == me["name"] or _model_name(peer) != spec.model.name:
            continue  # cheap test first: every pass looks at every peer in the namespace
        try:
            pspec = parse_spec(peer)
        except SpecError:
            continue
        if (repository_identity(pspec, pm["name"]), pspec.model.name) != mine:
            continue
        if (pm.get("creationTimestamp") or "", pm["name"]) < (me.get("creationTimestamp") or "", me["name"]):
            older.append(pm["name"])
    return sorted(older)[0] if older else ""


def _model_name(resource: Mapping[str, Any]) -> str:
    """spec.model.name as written, else metadata.name (its default), without parsing the spec."""
    model = (resource.get("spec") or {}).get("model") or {}
    return str(model.get("name") or resource["metadata"]["name"]) if isinstance(model, Mapping) else ""


def _failed_status(resource: Mapping[str, Any], reason: str, message: str, now: str) -> dict[str, Any]:
    old = resource.get("status") or {}
    gen = int(resource["metadata"].get("generation") or 0)
    conds = [
        Condition(c.READY, "False", reason, message),
        Condition(c.RECONCILING, "False", reason, ""),
        Condition(c.STALLED, "True", reason, message),
    ]
    status = {
        k: v
        for k, v in old.items()
        if k in ("modelVersion", "servingVersionKey", "replicas", "readyReplicas", "selector", "endpoints")
    }
    status.update(
        observedGeneration=gen,
        phase=c.FAILED,
        message=message,
        conditions=c.merge_conditions(old.get("conditions"), conds, gen, now),
    )
    return status


def _events(
    old_conditions: Sequence[Mapping[str, Any]] | None, new_conditions: Sequence[Mapping[str, Any]]
) -> list[tuple[str, str, str]]:
    """One event per transition a human should notice (Ready, EngineBuilt, Available, Stalled)."""
    events = []
    for new in new_conditions:
        if new["type"] == c.RECONCILING:
            continue
        old = c.find(old_conditions, new["type"])
        if old and (old.get("status"), old.get("reason")) == (new["status"], new["reason"]):
            continue
        if not old and new["status"] != "True" and new["type"] != c.ENGINE_BUILT:
            continue  # the first "not yet" is not news
        kind = "Warning" if new["reason"] in _WARNING_REASONS else "Normal"
        events.append((kind, new["reason"], new["message"] or f"{new['type']} is {new['status']}"))
    return events


def plan(observed: Observed, settings: Settings) -> Plan:
    """Everything the operator should do for one TritonResNet, given what exists."""
    resource = observed.resource
    meta = resource["metadata"]
    old_status = resource.get("status") or {}
    try:
        spec = parse_spec(resource)
    except SpecError as exc:
        return _refused(resource, "InvalidSpec", str(exc), observed.now)
    conflict = find_conflict(resource, spec, observed.peers)
    if conflict:
        message = (
            f"model {spec.model.name!r} on this repository is already served by "
            f"TritonResNet {conflict!r}; choose another spec.model.name or repository"
        )
        return _refused(resource, "ModelNameConflict", message, observed.now)

    progress = _Progress()
    pvc = render.models_pvc(meta, spec)
    if pvc is not None:
        progress.children.append(pvc)
    deployment = observed.children.get(("Deployment", names.deployment_name(meta["name"])))
    served = served_from_deployment(deployment)
    engines = _engines(observed, spec, settings, served, progress)
    # The published version if there is one, else keep what serves, with the
    # release it was built for (a new release's image waits for its engines).
    deploy = engines.published or served
    if deploy is not None and not deploy.release:
        deploy = replace(deploy, release=render.release(spec, settings))
    rollout = _serving(observed, spec, settings, deploy, deployment, progress)
    verification = _verification(observed, spec, deploy, rollout)
    status = _status(resource, spec, engines, served, rollout, verification, observed.now)

    apply = [
        with_applied_hash(child)
        for child in progress.children
        if not is_current(child, observed.children.get((child["kind"], child["metadata"]["name"])))
    ]
    events = _events(old_status.get("conditions"), status["conditions"])
    return Plan(apply, progress.delete, status, events, verification.request)


def with_apply_failures(
    resource: Mapping[str, Any], done: Plan, failures: Sequence[str], now: str
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """The status and events to write when the API server refused some of ``done.apply``.

    What was applied stays applied and the rest is retried; meanwhile the user
    sees why in ``Ready``/``Stalled`` (reason ``ApplyFailed``) instead of a
    status that silently stops moving.
    """
    old = resource.get("status") or {}
    gen = int(resource["metadata"].get("generation") or 0)
    message = "the API server refused " + "; ".join(failures)
    conds = [
        Condition(c.READY, "False", "ApplyFailed", message),
        Condition(c.RECONCILING, "False", "ApplyFailed", ""),
        Condition(c.STALLED, "True", "ApplyFailed", message),
    ]
    planned = done.status.get("conditions") or []
    replaced = {cond.type for cond in conds}
    kept = [
        Condition(x["type"], x["status"], x["reason"], x["message"])
        for x in planned
        if x["type"] not in replaced
    ]
    status = dict(done.status)
    status.update(
        phase=c.DEGRADED if status.get("servingVersions") else c.FAILED,
        message=message,
        conditions=c.merge_conditions(planned, conds + kept, gen, now),
    )
    return status, _events(old.get("conditions"), status["conditions"])


def _refused(resource: Mapping[str, Any], reason: str, message: str, now: str) -> Plan:
    failed = _failed_status(resource, reason, message, now)
    return Plan(
        [], [], failed, _events((resource.get("status") or {}).get("conditions"), failed["conditions"])
    )


@dataclass(frozen=True)
class _Engines:
    """Where the builds and the publish for the current spec stand."""

    version_key: str
    target_count: int
    targets: list[dict[str, Any]]
    published: Served | None
    failure: str = ""
    waiting_for_node: str = ""


def _engines(
    observed: Observed, spec: TritonResNetSpec, settings: Settings, served: Served | None, progress: _Progress
) -> _Engines:
    """Build Jobs per target, then the publish Job; obsolete unfinished Jobs go."""
    name = observed.resource["metadata"]["name"]
    old_status = observed.resource.get("status") or {}
    targets = spec.build_targets()
    release = spec.release_or(settings.default_release)
    engine_keys = {t.name: names.engine_key(spec, t, release) for t in targets}
    version_key = names.version_key(spec, sorted(engine_keys.values()))

    # An older spec's unfinished builds would only burn GPUs.
    current = {names.build_job_name(name, k) for k in engine_keys.values()}
    current.add(names.publish_job_name(name, version_key))
    for job_name, job in observed.jobs.items():
        if job_name not in current and not _finished(job):
            progress.delete.append(("batch/v1", "Job", job_name))

    published = _published(old_status, version_key, served)
    if published is not None:
        built = _published_targets(name, old_status, targets, engine_keys)
        return _Engines(version_key, len(targets), built, published)
    target_status, failure, waiting, all_built = _builds(
        observed, spec, settings, targets, engine_keys, progress
    )
    if all_built and not failure:
        published, failure, waiting = _publish(
            observed, spec, settings, sorted(engine_keys.values()), version_key, served, progress
        )
    return _Engines(version_key, len(targets), target_status, published, failure, waiting)


def _serving(
    observed: Observed,
    spec: TritonResNetSpec,
    settings: Settings,
    deploy: Served | None,
    deployment: Mapping[str, Any] | None,
    progress: _Progress,
) -> _Rollout:
    """The Deployment, its Service and PDB once a version exists; the HPA when asked for.

    Nothing to serve, nothing to apply: a new resource's first pass is one Job
    and one status write, which is what keeps apply -> Job short when many
    resources arrive at once.
    """
    resource = observed.resource
    meta = resource["metadata"]
    rollout = _Rollout()
    if deploy is not None:
        desired = _deployment(resource, spec, settings, deploy)
        progress.children += [desired, render.service(meta), render.pod_disruption_budget(meta)]
        rollout = _rollout(observed, deployment, desired, deploy, spec)
    hpa = render.hpa(meta, spec)
    hpa_name = names.hpa_name(meta["name"])
    if hpa is not None:
        progress.children.append(hpa)
    elif ("HorizontalPodAutoscaler", hpa_name) in observed.children:
        progress.delete.append(("autoscaling/v2", "HorizontalPodAutoscaler", hpa_name))
    return rollout


@dataclass(frozen=True)
class _Verification:
    verified: bool = False
    message: str = ""
    request: VerifyRequest | None = None
    failed: bool = False  #: checks ran and at least one endpoint failed


def _verification(
    observed: Observed, spec: TritonResNetSpec, deploy: Served | None, rollout: _Rollout
) -> _Verification:
    """Every ready endpoint checked at the deployed version, or a request to check them."""
    if deploy is None or not rollout.complete:
        return _Verification()
    if not rollout.endpoints:
        if spec.serving.replicas == 0:
            return _Verification(True, "scaled to zero")
        return _Verification(False, "no ready endpoints yet")
    checks = [observed.verification.get(e) for e in rollout.endpoints]
    if any(ch is None for ch in checks):
        expected = Expected(spec.model.name, deploy.version, deploy.inputs, deploy.outputs)
        return _Verification(
            False, f"verifying {len(checks)} endpoint(s)", VerifyRequest(rollout.endpoints, expected)
        )
    bad = [ch for ch in checks if ch is not None and not ch.ok]
    if bad:
        return _Verification(False, "; ".join(f"{ch.endpoint}: {ch.message}" for ch in bad), failed=True)
    return _Verification(True, f"{len(checks)} endpoint(s) answered at version {deploy.version}")


def _engine_condition(engines: _Engines) -> Condition:
    if engines.published is not None:
        return Condition(
            c.ENGINE_BUILT,
            "True",
            "Published",
            f"version {engines.published.version} published from {engines.target_count} target(s)",
        )
    if engines.failure:
        return Condition(c.ENGINE_BUILT, "False", "BuildFailed", engines.failure)
    if engines.waiting_for_node:
        return Condition(c.ENGINE_BUILT, "False", "WaitingForNode", engines.waiting_for_node)
    return Condition(c.ENGINE_BUILT, "False", "Building", f"building {engines.target_count} target(s)")


def _summary(
    engines: _Engines, served: Served | None, rollout: _Rollout, verification: _Verification, ready: bool
) -> tuple[str, str, str]:
    """(phase, reason, message): the one-line story a human reads first."""
    published = engines.published
    old = [v for v in rollout.serving_versions if published is None or v != published.version]
    keeps_serving = f"; version {', '.join(map(str, old))} keeps serving" if old else ""
    something_serves = bool(rollout.serving_versions) or served is not None
    if ready:
        return c.PHASE_READY, "Verified", verification.message
    if engines.failure:
        return (c.DEGRADED if something_serves else c.FAILED), "BuildFailed", engines.failure + keeps_serving
    if rollout.stuck:
        return (c.DEGRADED if old else c.FAILED), "RolloutStuck", rollout.stuck + keeps_serving
    if verification.failed:
        return c.DEGRADED, "VerificationFailed", verification.message
    if published is None:
        if engines.waiting_for_node:
            return c.PENDING, "WaitingForNode", engines.waiting_for_node + keeps_serving
        return c.BUILDING, "Building", f"building {engines.target_count} target(s)" + keeps_serving
    if rollout.waiting_for_node:
        return c.PENDING, "WaitingForNode", rollout.waiting_for_node
    message = verification.message or rollout.message or f"rolling out version {published.version}"
    return c.DEPLOYING, "Deploying", message


def _status(
    resource: Mapping[str, Any],
    spec: TritonResNetSpec,
    engines: _Engines,
    served: Served | None,
    rollout: _Rollout,
    verification: _Verification,
    now: str,
) -> dict[str, Any]:
    meta = resource["metadata"]
    old_status = resource.get("status") or {}
    gen = int(meta.get("generation") or 0)
    published = engines.published
    ready = (
        published is not None
        and served is not None
        and served.version_key == engines.version_key
        and rollout.complete
        and verification.verified
    )
    phase, reason, message = _summary(engines, served, rollout, verification, ready)
    stalled = reason in ("BuildFailed", "RolloutStuck", "VerificationFailed")
    available = (
        rollout.available
        if served is not None
        else Condition(c.AVAILABLE, "False", "NoVersionYet", "no model version has been published yet")
    )
    conds = [
        Condition(c.READY, "True" if ready else "False", reason, message),
        Condition(c.RECONCILING, "False" if ready or stalled else "True", reason, "" if ready else message),
        Condition(
            c.STALLED,
            "True" if stalled else "False",
            reason if stalled else "Progressing",
            message if stalled else "",
        ),
        _engine_condition(engines),
        available,
    ]
    status: dict[str, Any] = {
        "observedGeneration": gen,
        "phase": phase,
        "message": message,
        "versionKey": engines.version_key,
        "targets": engines.targets,
        "replicas": rollout.replicas,
        "readyReplicas": rollout.ready_replicas,
        "selector": names.selector(meta["name"]),
        "servingVersions": list(rollout.serving_versions),
        "endpoints": list(rollout.endpoints) if verification.verified else [],
        "conditions": c.merge_conditions(old_status.get("conditions"), conds, gen, now),
    }
    if published is not None:
        status["published"] = {
            "versionKey": published.version_key,
            "version": published.version,
            "inputs": _tensor_dicts(published.inputs),
            "outputs": _tensor_dicts(published.outputs),
        }
    if served is not None:
        status["modelVersion"] = served.version
        status["servingVersionKey"] = served.version_key
    return status


def _finished(job: Mapping[str, Any]) -> bool:
    return any((_condition(job, t) or {}).get("status") == "True" for t in ("Complete", "Failed"))


def _published(old_status: Mapping[str, Any], version_key: str, served: Served | None) -> Served | None:
    if served is not None and served.version_key == version_key:
        return served
    pub = old_status.get("published") or {}
    if pub.get("versionKey") == version_key and pub.get("version"):
        return Served(
            int(pub["version"]), version_key, _tensors(pub.get("inputs")), _tensors(pub.get("outputs"))
        )
    return None


def _target_entry(cr_name: str, target: Any, key: str) -> dict[str, Any]:
    return {
        "name": target.name,
        "nodeSelector": dict(target.node_selector),
        "engineKey": key,
        "job": names.build_job_name(cr_name, key),
    }


def _built_entries(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The ``status.targets`` entries already built, by engine key (a build is never read twice)."""
    return {
        t["engineKey"]: t
        for t in status.get("targets") or ()
        if t.get("state") == "Built" and t.get("engineKey")
    }


def _published_targets(
    cr_name: str, old_status: Mapping[str, Any], targets: Sequence[Any], engine_keys: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The targets of a published version: as recorded when they were built, else rebuilt from the keys.

    Recorded entries of other keys (an abandoned spec's builds) are dropped, so
    status.targets always describes the current spec.
    """
    built = _built_entries(old_status)
    out = []
    for target in targets:
        key = engine_keys[target.name]
        if key in built:
            out.append(dict(built[key]))
        else:
            out.append(_target_entry(cr_name, target, key) | {"state": "Built", "message": "published"})
    return out


def _builds(
    observed: Observed,
    spec: TritonResNetSpec,
    settings: Settings,
    targets: Sequence[Any],
    engine_keys: Mapping[str, str],
    progress: _Progress,
) -> tuple[list[dict[str, Any]], str, str, bool]:
    """Per-target build state; creates the missing build Jobs."""
    resource = observed.resource
    name = resource["metadata"]["name"]
    built = _built_entries(resource.get("status") or {})
    out: list[dict[str, Any]] = []
    failures: list[str] = []
    waiting: list[str] = []
    for target in targets:
        key = engine_keys[target.name]
        job_name = names.build_job_name(name, key)
        entry = _target_entry(name, target, key)
        if key in built:
            out.append(dict(built[key]))
            continue
        job = observed.jobs.get(job_name)
        if job is None:
            progress.children.append(render.build_job(resource["metadata"], spec, target, key, settings))
            entry["state"] = "Pending"
        else:
            outcome = job_outcome(job, observed.pods)
            entry["state"] = {"Succeeded": "Built"}.get(outcome.state, outcome.state)
            entry["message"] = outcome.message
            if outcome.state == "Succeeded" and outcome.result is not None:
                r = outcome.result
                entry.update(
                    computeCapability=r.compute_capability,
                    tensorrtVersion=r.tensorrt_version,
                    artifact=r.artifact,
                    artifactBytes=r.artifact_bytes,
                    sourceSha256=r.source_sha256,
                    message=f"built {r.artifact or r.format}",
                )
            elif outcome.state == "Failed":
                failures.append(f"target {target.name}: {outcome.message}")
            elif outcome.state == "Unschedulable":
                waiting.append(f"target {target.name}: waiting for a node: {outcome.message}")
        out.append({k: v for k, v in entry.items() if v not in ("", None)})
    all_built = all(t.get("state") == "Built" for t in out)
    return out, "; ".join(failures), "; ".join(waiting), all_built


def _publish(
    observed: Observed,
    spec: TritonResNetSpec,
    settings: Settings,
    engine_keys: list[str],
    version_key: str,
    served: Served | None,
    progress: _Progress,
) -> tuple[Served | None, str, str]:
    resource = observed.resource
    job_name = names.publish_job_name(resource["metadata"]["name"], version_key)
    job = observed.jobs.get(job_name)
    protect = (served.version,) if served is not None else ()
    if job is None:
        progress.children.append(
            render.publish_job(resource["metadata"], spec, engine_keys, version_key, protect, settings)
        )
        return None, "", ""
    outcome = job_outcome(job, observed.pods)
    if outcome.state == "Succeeded" and outcome.result is not None:
        r = outcome.result
        return Served(r.version, version_key, r.inputs, r.outputs), "", ""
    if outcome.state == "Failed":
        return None, f"publish: {outcome.message}", ""
    if outcome.state == "Unschedulable":
        return None, "", f"publish: waiting for a node: {outcome.message}"
    return None, "", ""


def _deployment(
    resource: Mapping[str, Any], spec: TritonResNetSpec, settings: Settings, deploy: Served
) -> dict[str, Any]:
    """The Triton Deployment, annotated with what it serves so the cluster remembers it."""
    serving = replace(spec, serving=replace(spec.serving, release=deploy.release))
    obj = render.triton_deployment(resource["metadata"], serving, deploy.version, settings)
    meta = dict(obj["metadata"])
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        MODEL_VERSION_ANNOTATION: str(deploy.version),
        VERSION_KEY_ANNOTATION: deploy.version_key,
        RELEASE_ANNOTATION: deploy.release,
        MODEL_IO_ANNOTATION: json.dumps(
            {"inputs": _tensor_dicts(deploy.inputs), "outputs": _tensor_dicts(deploy.outputs)},
            sort_keys=True,
            separators=(",", ":"),
        ),
    }
    return {**obj, "metadata": meta}


_NO_DEPLOYMENT = Condition(c.AVAILABLE, "False", "NoDeployment", "the Triton Deployment does not exist yet")


@dataclass(frozen=True)
class _Rollout:
    complete: bool = False
    available: Condition = _NO_DEPLOYMENT
    replicas: int = 0
    ready_replicas: int = 0
    endpoints: tuple[str, ...] = ()
    stuck: str = ""
    waiting_for_node: str = ""
    message: str = ""
    serving_versions: tuple[int, ...] = ()  #: model versions on ready Triton pods


def _rollout(
    observed: Observed,
    deployment: Mapping[str, Any] | None,
    desired: Mapping[str, Any],
    deploy: Served,
    spec: TritonResNetSpec,
) -> _Rollout:
    if deployment is None:
        return _Rollout()
    st = deployment.get("status") or {}
    replicas, ready = int(st.get("replicas") or 0), int(st.get("readyReplicas") or 0)
    want = int((desired.get("spec") or {}).get("replicas", spec.serving.replicas))
    avail = _condition(deployment, "Available") or {}
    available = Condition(
        c.AVAILABLE,
        "True" if avail.get("status") == "True" else "False",
        str(avail.get("reason") or "Deploying"),
        str(avail.get("message") or ""),
    )
    version_label = str(deploy.version)
    triton = [
        p
        for p in observed.pods
        if (p["metadata"].get("labels") or {}).get(names.LABEL_COMPONENT) == "triton"
        and not p["metadata"].get("deletionTimestamp")
    ]
    new = [
        p
        for p in triton
        if (p["metadata"].get("labels") or {}).get(names.LABEL_MODEL_VERSION) == version_label
    ]
    endpoints = tuple(
        sorted(
            f"{p['status']['podIP']}:{TRITON_HTTP_PORT}"
            for p in new
            if (p.get("status") or {}).get("podIP") and (_condition(p, "Ready") or {}).get("status") == "True"
        )
    )
    stuck = ""
    for pod in new:
        for cs in (pod.get("status") or {}).get("containerStatuses") or ():
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _STUCK_REASONS or int(cs.get("restartCount") or 0) >= 3:
                stuck = (
                    f"Triton pod {pod['metadata']['name']}: {waiting.get('reason') or 'restarting'}: "
                    f"{waiting.get('message') or 'restarted ' + str(cs.get('restartCount')) + ' times'}"
                )
    progressing = _condition(deployment, "Progressing") or {}
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        stuck = stuck or str(progressing.get("message"))
    complete = (
        is_current(desired, deployment)
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
            if (_condition(p, "Ready") or {}).get("status") == "True"
            and str(v := (p["metadata"].get("labels") or {}).get(names.LABEL_MODEL_VERSION, "")).isdigit()
        }
    )
    return _Rollout(
        serving_versions=tuple(serving),
        complete=complete,
        available=available,
        replicas=replicas,
        ready_replicas=ready,
        endpoints=endpoints,
        stuck=stuck,
        waiting_for_node=_unschedulable(new),
        message=f"{len(endpoints)}/{want} replicas ready at version {deploy.version}",
    )
