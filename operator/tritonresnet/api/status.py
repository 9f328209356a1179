"""Status conditions and phases of a TritonResNet.

Conditions follow the Kubernetes API conventions (``type``, ``status``,
``reason``, ``message``, ``observedGeneration``, ``lastTransitionTime``) and
the kstatus conventions that Flux and Argo CD read: ``Ready`` summarises,
``Reconciling`` is true while the operator works towards the spec, ``Stalled``
is true when it cannot get there without a change by a human.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]

#: The model answers at the requested version on every ready endpoint.
READY = "Ready"
#: The operator is still working towards the spec (kstatus).
RECONCILING = "Reconciling"
#: The operator cannot make progress until the spec or the cluster changes (kstatus).
STALLED = "Stalled"
#: Every target's engine for the current spec is built and published.
ENGINE_BUILT = "EngineBuilt"
#: The Triton Deployment has its replicas available.
AVAILABLE = "Available"

CONDITION_ORDER = (READY, RECONCILING, STALLED, ENGINE_BUILT, AVAILABLE)

# Phases, in the order a healthy resource walks through them.
PENDING = "Pending"
BUILDING = "Building"
DEPLOYING = "Deploying"
PHASE_READY = "Ready"
DEGRADED = "Degraded"
FAILED = "Failed"


@dataclass(frozen=True)
class Condition:
    type: str
    status: Status
    reason: str
    message: str = ""


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    current: Sequence[Condition],
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Render conditions for status, keeping ``lastTransitionTime`` unless the status flipped.

    Keeping the old timestamp when nothing changed is what makes a second
    reconcile produce byte-identical status, so nothing is written at rest.
    """
    before = {c.get("type"): c for c in previous or ()}
    out = []
    for cond in sorted(current, key=lambda c: CONDITION_ORDER.index(c.type)):
        old = before.get(cond.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == cond.status else None
        out.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message,
                "observedGeneration": generation,
                "lastTransitionTime": since or now,
            }
        )
    return out


def find(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == type_), None)
