"""Reconcile one TritonResNet in three visible steps: observe, decide, report.

:func:`plan` is a pure function of what the cache holds (no I/O, no clock:
``now`` comes with the observation), so every decision of the operator is
unit-tested without a cluster. The runtime gathers :class:`Observed`, calls
:func:`plan`, and carries out the returned :class:`Plan`: applies
``apply``, deletes ``delete``, writes ``status`` (only where it differs from
what is stored), posts ``events``, and schedules the checks in ``verify``.

* observe (``observe.py``): children -> typed facts (job outcomes, rollout,
  the served version);
* decide (``decide.py``): spec + facts -> the children that should exist and
  the endpoints to check;
* report (``report.py``): decisions -> status and events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tritonresnet.api import status as s
from tritonresnet.api.spec import SpecError, parse_spec
from tritonresnet.api.status import TritonResNetStatus
from tritonresnet.controller import decide, report
from tritonresnet.controller.children import is_current, owned_by, with_applied_hash
from tritonresnet.controller.observe import EndpointCheck, Expected, Observed
from tritonresnet.controller.report import Event, with_apply_failures
from tritonresnet.controller.settings import Settings

__all__ = ["EndpointCheck", "Expected", "Observed", "Plan", "VerifyRequest", "plan", "with_apply_failures"]


@dataclass(frozen=True)
class VerifyRequest:
    endpoints: tuple[str, ...]
    expected: Expected


@dataclass(frozen=True)
class Plan:
    apply: list[dict[str, Any]]  #: rendered children that differ from what exists (hash annotated)
    delete: list[tuple[str, str, str]]  #: (apiVersion, kind, name)
    status: TritonResNetStatus  #: the complete status (written only where it differs)
    events: list[Event]  #: (type, reason, message)
    verify: VerifyRequest | None = None


def plan(observed: Observed, settings: Settings) -> Plan:
    """Everything the operator should do for one TritonResNet, given what exists."""
    resource = observed.resource
    old = TritonResNetStatus.from_dict(resource.get("status"))
    try:
        spec = parse_spec(resource)
    except SpecError as exc:
        return _refused(observed, s.INVALID_SPEC, str(exc))
    conflict = decide.find_conflict(resource, spec, observed.peers)
    if conflict:
        message = (
            f"model {spec.model.name!r} on this repository is already served by "
            f"TritonResNet {conflict!r}; choose another spec.model.name or repository"
        )
        return _refused(observed, s.MODEL_NAME_CONFLICT, message)

    decision = decide.decide(observed, spec, settings)
    status = report.status(resource, decision, observed.now)
    # Ask whose an object is before writing or deleting it: one of that name that is not this
    # resource's (no controller reference to its uid) is never written, adopted or deleted.
    uid = str(resource["metadata"].get("uid") or "")
    apply: list[dict[str, Any]] = []
    conflicts: list[str] = []
    for child in decision.children.desired:
        kind, name = child["kind"], child["metadata"]["name"]
        existing = observed.child(kind, name)
        if existing is not None and not owned_by(existing, uid):
            conflicts.append(report.conflict(kind, name))
            if kind == "PersistentVolumeClaim":
                apply = []  # the claim comes first, and everything else would mount it
                break
        elif not is_current(child, existing):
            apply.append(with_applied_hash(child))
    delete = [
        (api_version, kind, name)
        for api_version, kind, name in decision.children.delete
        if owned_by(observed.child(kind, name) or {}, uid)
    ]
    events = report.events(old.conditions, status.conditions)
    if conflicts:
        status, events = report.with_apply_failures(resource, status, (), observed.now, conflicts)
    request = decision.verification.request
    return Plan(apply, delete, status, events, VerifyRequest(*request) if request is not None else None)


def _refused(observed: Observed, reason: s.Reason, message: str) -> Plan:
    old = TritonResNetStatus.from_dict(observed.resource.get("status"))
    status = report.refused(observed.resource, reason, message, observed.now)
    return Plan([], [], status, report.events(old.conditions, status.conditions))
