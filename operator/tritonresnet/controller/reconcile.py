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

from tritonresnet.api import status as s
from tritonresnet.api.spec import SpecError, parse_spec
from tritonresnet.api.status import TritonResNetStatus
from tritonresnet.controller import decide, report
from tritonresnet.controller.children import is_current, with_applied_hash
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
    apply: list[dict[str, object]]  #: rendered children that differ from what exists (hash annotated)
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
    apply = [
        with_applied_hash(child)
        for child in decision.children.desired
        if not is_current(child, observed.child(child["kind"], child["metadata"]["name"]))
    ]
    request = decision.verification.request
    return Plan(
        apply,
        decision.children.delete,
        status,
        report.events(old.conditions, status.conditions),
        VerifyRequest(*request) if request is not None else None,
    )


def _refused(observed: Observed, reason: s.Reason, message: str) -> Plan:
    old = TritonResNetStatus.from_dict(observed.resource.get("status"))
    status = report.refused(observed.resource, reason, message, observed.now)
    return Plan([], [], status, report.events(old.conditions, status.conditions))
