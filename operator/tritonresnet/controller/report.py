"""Report: decisions -> the TritonResNet's status and the events a human should see.

The third of reconcile's three steps, pure. The status is rebuilt from the
decisions on every pass (nothing is carried over but transition times and
what a refused spec cannot recompute), so a pass that changes nothing
produces the status already stored and nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from tritonresnet.api import names
from tritonresnet.api import status as s
from tritonresnet.api.status import Condition, Reason, StatusCondition, TritonResNetStatus
from tritonresnet.controller.decide import Decision, Engines, Verification, published_status
from tritonresnet.controller.observe import Rollout

Event = tuple[str, str, str]  #: (type, reason, message)


def _generation(resource: Mapping[str, Any]) -> int:
    return int(resource["metadata"].get("generation") or 0)


def _stalled(reason: Reason, message: str) -> list[Condition]:
    return [
        Condition(s.READY, "False", reason.name, message),
        Condition(s.RECONCILING, "False", reason.name, ""),
        Condition(s.STALLED, "True", reason.name, message),
    ]


def events(old: Sequence[StatusCondition], new: Sequence[StatusCondition]) -> list[Event]:
    """One event per transition a human should notice (Ready, EngineBuilt, Available, Stalled)."""
    out = []
    before = {c.type: c for c in old}
    for cond in new:
        if cond.type == s.RECONCILING:
            continue
        prev = before.get(cond.type)
        if prev and (prev.status, prev.reason) == (cond.status, cond.reason):
            continue
        if not prev and cond.status != "True" and cond.type != s.ENGINE_BUILT:
            continue  # the first "not yet" is not news
        reason = s.reason_named(cond.reason)
        kind = "Warning" if reason is not None and reason.warning else "Normal"
        out.append((kind, cond.reason, cond.message or f"{cond.type} is {cond.status}"))
    return out


def refused(resource: Mapping[str, Any], reason: Reason, message: str, now: str) -> TritonResNetStatus:
    """The status of a spec the operator will not act on (invalid, or in conflict with a peer).

    What serves keeps being reported: refusing a new spec does not stop the old version.
    """
    old = TritonResNetStatus.from_dict(resource.get("status"))
    gen = _generation(resource)
    return TritonResNetStatus(
        observed_generation=gen,
        phase=s.FAILED,
        message=message,
        conditions=s.merge_conditions(old.conditions, _stalled(reason, message), gen, now),
        model_version=old.model_version,
        serving_version_key=old.serving_version_key,
        replicas=old.replicas,
        ready_replicas=old.ready_replicas,
        selector=old.selector,
        endpoints=old.endpoints,
    )


def conflict(kind: str, name: str) -> str:
    """What a name conflict is called in status and events: the kind and name, and what to do."""
    return (
        f"{kind} {name} exists and is not this TritonResNet's, so the operator leaves it as it is; "
        f"rename the TritonResNet or remove the {kind}"
    )


def with_apply_failures(
    resource: Mapping[str, Any],
    planned: TritonResNetStatus,
    failures: Sequence[str],
    now: str,
    conflicts: Sequence[str] = (),
) -> tuple[TritonResNetStatus, list[Event]]:
    """The status and events to write when children could not be written.

    ``conflicts`` are children whose name another object already has
    (:func:`conflict`), ``failures`` children the API server refused. What was
    applied stays applied and the rest is retried; meanwhile the user sees why
    in ``Ready``/``Stalled`` (reason ``NameConflict`` or ``ApplyFailed``)
    instead of a status that silently stops moving.
    """
    old = TritonResNetStatus.from_dict(resource.get("status"))
    parts = list(conflicts)
    if failures:
        parts.append("the API server refused " + "; ".join(failures))
    message = "; ".join(parts)
    conds = _stalled(s.NAME_CONFLICT if conflicts else s.APPLY_FAILED, message)
    replaced = {cond.type for cond in conds}
    kept = [
        Condition(x.type, x.status, x.reason, x.message) for x in planned.conditions if x.type not in replaced
    ]
    status = replace(
        planned,
        phase=s.DEGRADED if planned.serving_versions else s.FAILED,
        message=message,
        conditions=s.merge_conditions(planned.conditions, conds + kept, _generation(resource), now),
    )
    return status, events(old.conditions, status.conditions)


def _engine_condition(engines: Engines) -> Condition:
    if engines.published is not None:
        return Condition(
            s.ENGINE_BUILT,
            "True",
            s.PUBLISHED.name,
            f"version {engines.published.version} published from {engines.target_count} target(s)",
        )
    if engines.build_failure:
        return Condition(s.ENGINE_BUILT, "False", s.BUILD_FAILED.name, engines.build_failure)
    if engines.publish_failure:
        return Condition(s.ENGINE_BUILT, "False", s.PUBLISH_FAILED.name, engines.publish_failure)
    if engines.stuck:
        return Condition(s.ENGINE_BUILT, "False", s.POD_STUCK.name, engines.stuck)
    if engines.waiting_for_node:
        return Condition(s.ENGINE_BUILT, "False", s.WAITING_FOR_NODE.name, engines.waiting_for_node)
    return Condition(
        s.ENGINE_BUILT, "False", s.BUILDING_REASON.name, f"building {engines.target_count} target(s)"
    )


def _summary(d: Decision, ready: bool) -> tuple[s.Phase, Reason, str]:
    """(phase, reason, message): the one-line story a human reads first."""
    engines, rolled, verification = d.engines, d.rollout, d.verification
    published = engines.published
    old = [v for v in rolled.serving_versions if published is None or v != published.version]
    keeps_serving = f"; version {', '.join(map(str, old))} keeps serving" if old else ""
    something_serves = bool(rolled.serving_versions) or d.served is not None
    if ready:
        return s.PHASE_READY, s.VERIFIED, verification.message
    if engines.failure:
        reason = s.BUILD_FAILED if engines.build_failure else s.PUBLISH_FAILED
        return (s.DEGRADED if something_serves else s.FAILED), reason, engines.failure + keeps_serving
    if engines.stuck and published is None:
        return (s.DEGRADED if something_serves else s.FAILED), s.POD_STUCK, engines.stuck + keeps_serving
    if rolled.stuck:
        return (s.DEGRADED if old else s.FAILED), s.ROLLOUT_STUCK, rolled.stuck + keeps_serving
    if verification.failed:
        reason = s.ACCURACY_CHECK_FAILED if verification.accuracy else s.VERIFICATION_FAILED
        return s.DEGRADED, reason, verification.message
    if published is None:
        if engines.waiting_for_node:
            return s.PENDING, s.WAITING_FOR_NODE, engines.waiting_for_node + keeps_serving
        building = f"building {engines.target_count} target(s)"
        return s.BUILDING, s.BUILDING_REASON, building + keeps_serving
    if rolled.waiting_for_node:
        return s.PENDING, s.WAITING_FOR_NODE, rolled.waiting_for_node
    message = verification.message or rolled.message or f"rolling out version {published.version}"
    return s.DEPLOYING, s.DEPLOYING_REASON, message


def _is_ready(d: Decision) -> bool:
    published, served = d.engines.published, d.served
    return (
        published is not None
        and served is not None
        and served.version_key == d.engines.version_key
        and d.rollout.complete
        and d.verification.verified
    )


def _available(d: Decision) -> Condition:
    if d.served is None:
        return Condition(
            s.AVAILABLE, "False", s.NO_VERSION_YET.name, "no model version has been published yet"
        )
    return d.rollout.available


def status(resource: Mapping[str, Any], d: Decision, now: str) -> TritonResNetStatus:
    """The whole status for a decided pass."""
    old = TritonResNetStatus.from_dict(resource.get("status"))
    gen = _generation(resource)
    ready = _is_ready(d)
    phase, reason, message = _summary(d, ready)
    stalled = reason.meaning == "stalled"
    conds = [
        Condition(s.READY, "True" if ready else "False", reason.name, message),
        Condition(
            s.RECONCILING, "False" if ready or stalled else "True", reason.name, "" if ready else message
        ),
        Condition(
            s.STALLED,
            "True" if stalled else "False",
            reason.name if stalled else s.PROGRESSING.name,
            message if stalled else "",
        ),
        _engine_condition(d.engines),
        _available(d),
    ]
    rolled: Rollout = d.rollout
    verification: Verification = d.verification
    published = d.engines.published
    return TritonResNetStatus(
        observed_generation=gen,
        phase=phase,
        message=message,
        conditions=s.merge_conditions(old.conditions, conds, gen, now),
        version_key=d.engines.version_key,
        published=published_status(published, d.engines.repository_bytes) if published is not None else None,
        model_version=d.served.version if d.served is not None else None,
        serving_version_key=d.served.version_key if d.served is not None else None,
        serving_versions=rolled.serving_versions,
        replicas=rolled.replicas,
        ready_replicas=rolled.ready_replicas,
        selector=names.selector(resource["metadata"]["name"]),
        targets=d.engines.targets,
        endpoints=rolled.endpoints if verification.verified else (),
    )
