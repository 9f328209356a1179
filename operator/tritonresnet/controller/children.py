"""What the operator keeps on its children's metadata, written and read in one place.

* The applied hash: a content hash of the rendered object, so a pass that
  renders what was last applied sends nothing, unless someone changed a field
  we set by hand (:func:`drifted`): then it is applied again and put back.
* The served version: the Triton Deployment remembers which model version it
  pins (number, version key, tensors, the release its plans were built
  for, and an onnx version's reference answers for the accuracy gate), so
  a restarted operator with no status knows what serves. It is written by
  :func:`served_annotations` (called from ``render``) and read back by
  :func:`served_from_deployment` (called from ``observe``).

Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tritonresnet_builder.contract import ReferenceAnswers, Tensor, reference_from_dict

from tritonresnet.api.names import digest

APPLIED_HASH = "tritonresnet.io/applied-hash"
MODEL_VERSION_ANNOTATION = "tritonresnet.io/model-version"
VERSION_KEY_ANNOTATION = "tritonresnet.io/version-key"
MODEL_IO_ANNOTATION = "tritonresnet.io/model-io"
#: On a TritonResNet, set by a user: a new value re-runs builds that failed (their Job carries it).
RETRY_ANNOTATION = "tritonresnet.io/retry"
# The NGC release the served version was built for: its plans only load in
# that release's Triton, so the image follows the version, not the spec.
RELEASE_ANNOTATION = "tritonresnet.io/release"
#: The compute capabilities the served version has plans for (gpuKinds Auto): Triton's node
#: affinity follows the version, so it is remembered with it.
COMPUTE_CAPABILITIES_ANNOTATION = "tritonresnet.io/compute-capabilities"


# -- the applied hash ---------------------------------------------------------------------


def applied_hash(obj: Mapping[str, Any]) -> str:
    """Content hash of a rendered object, ignoring the hash annotation itself."""
    meta = dict(obj.get("metadata", {}))
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != APPLIED_HASH}
    meta["annotations"] = annotations
    return digest({**obj, "metadata": meta})[:20]


def with_applied_hash(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = dict(obj.get("metadata", {}))
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED_HASH: applied_hash(obj)}
    return {**obj, "metadata": meta}


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """``obj`` is the child of the resource with ``uid`` (its controller owner reference says so)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return any(r.get("uid") == uid and r.get("controller") for r in refs if isinstance(r, Mapping))


def applied_hash_of(existing: Mapping[str, Any]) -> str | None:
    """The hash an existing child was applied with; None for one we did not apply."""
    have = ((existing.get("metadata") or {}).get("annotations") or {}).get(APPLIED_HASH)
    return str(have) if have else None


def is_current(desired: Mapping[str, Any], existing: Mapping[str, Any] | None) -> bool:
    """True when ``existing`` was applied from exactly ``desired`` and still holds what we set:
    nothing to send."""
    return (
        existing is not None
        and applied_hash_of(existing) == applied_hash(desired)
        and not drifted(desired, existing)
    )


# -- the served version -------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """A published model version, as the Triton Deployment pins it."""

    version: int
    version_key: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    release: str  #: the NGC release its plans were built for: the Triton image to run it
    #: Published with max_batch_size > 0: requests (and Triton's metadata) carry a batch dimension.
    #: A property of the version, not the spec: a spec switching to 0 still serves a batched version.
    batched: bool = True
    #: The compute capabilities of its plans, when Triton is pinned to them (gpuKinds Auto).
    compute_capabilities: tuple[str, ...] = ()
    #: A ``format: onnx`` version's onnxruntime answers (its publish result's), for the accuracy
    #: gate at verification; kept with the inputs and outputs so a restarted operator has them.
    reference: ReferenceAnswers | None = None


def tensor_dicts(tensors: Sequence[Tensor]) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]


def _tensors(items: Any) -> tuple[Tensor, ...]:
    return tuple(Tensor(t["name"], t["datatype"], tuple(t["shape"])) for t in items or ())


def served_annotations(served: Served) -> dict[str, str]:
    # Only when there are some, so Deployments of other modes keep the annotations they had.
    capabilities = (
        {COMPUTE_CAPABILITIES_ANNOTATION: ",".join(served.compute_capabilities)}
        if served.compute_capabilities
        else {}
    )
    return capabilities | {
        MODEL_VERSION_ANNOTATION: str(served.version),
        VERSION_KEY_ANNOTATION: served.version_key,
        RELEASE_ANNOTATION: served.release,
        MODEL_IO_ANNOTATION: json.dumps(
            {
                "inputs": tensor_dicts(served.inputs),
                "outputs": tensor_dicts(served.outputs),
                "batched": served.batched,
            }
            # Only when there is one: other versions' Deployments keep the annotation they had.
            | ({"reference": asdict(served.reference)} if served.reference is not None else {}),
            sort_keys=True,
            separators=(",", ":"),
        ),
    }


def served_from_deployment(deployment: Mapping[str, Any] | None, default_release: str) -> Served | None:
    """What the Deployment serves; ``default_release`` for a Deployment written before the release
    annotation existed. None when there is no Deployment or its annotations are not ours."""
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
            str(ann.get(RELEASE_ANNOTATION) or default_release),
            bool(io.get("batched", True)),  # versions served before the field were all batched
            tuple(c for c in str(ann.get(COMPUTE_CAPABILITIES_ANNOTATION) or "").split(",") if c),
            reference_from_dict(io.get("reference")),
        )
    except (KeyError, ValueError, TypeError):
        return None


# -- drift: what someone changed by hand in a field we set ---------------------------------

# Per kind, the fields whose values we set and keep: compared with what is live on every pass.
# Not everything we render: the API server rewrites quantities into canonical form ("2000" ->
# "2k") and defaults fields inside these, so each is compared as "what we set is still there"
# (a subset), and fields that only the API server or another controller writes are left alone.
# Jobs and claims are left out: their specs are immutable.
_KEPT: Mapping[str, tuple[tuple[str, ...], ...]] = {
    "Service": (("spec", "selector"), ("spec", "ports"), ("spec", "type")),
    "Deployment": (
        ("spec", "selector"),
        ("spec", "strategy"),
        ("spec", "template", "metadata", "labels"),
        ("spec", "template", "spec", "containers"),
        ("spec", "template", "spec", "volumes"),
        ("spec", "template", "spec", "nodeSelector"),
        ("spec", "template", "spec", "tolerations"),
        ("spec", "template", "spec", "affinity"),
        ("spec", "template", "spec", "securityContext"),
        ("spec", "template", "spec", "terminationGracePeriodSeconds"),
    ),
    "PodDisruptionBudget": (("spec", "selector"), ("spec", "maxUnavailable")),
    "HorizontalPodAutoscaler": (("spec", "scaleTargetRef"), ("spec", "minReplicas"), ("spec", "maxReplicas")),
    # Who may reach Triton: a rule someone adds or widens opens the pods to more clients.
    "NetworkPolicy": (("spec", "podSelector"), ("spec", "policyTypes"), ("spec", "ingress")),
}
_ABSENT = object()
# Maps we set whole, where a key someone adds changes what the object does (a Service selector
# with an extra key selects no pod, a nodeSelector with one moves pods): compared exactly.
_WHOLE: frozenset[tuple[str, ...]] = frozenset(
    {
        ("spec", "selector"),
        ("spec", "selector", "matchLabels"),
        ("spec", "template", "spec", "nodeSelector"),
        # A NetworkPolicy's podSelector with a key added applies to no Triton pod at all.
        ("spec", "podSelector"),
    }
)


def _get(obj: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            return _ABSENT
        obj = obj[key]
    return obj


#: Values the API server leaves out when it stores an object (``omitempty``): rendered, they are
#: absent from what it returns, which is no drift.
_OMITTED: tuple[Any, ...] = ({}, [], None, False)


def _kept(want: Any, have: Any) -> bool:
    """``want`` is still in ``have``: equal scalars, maps whose keys we set are kept, lists item by item."""
    if have is _ABSENT or have is None:
        return any(want == empty and type(want) is type(empty) for empty in _OMITTED)
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(_kept(v, have.get(k, _ABSENT)) for k, v in want.items())
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(_kept(w, h) for w, h in zip(want, have, strict=True))
        )
    return bool(want == have)


def drifted(desired: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """The fields we set that a live child no longer has as rendered (dotted paths)."""
    out = []
    for path in _KEPT.get(str(desired.get("kind")), ()):
        want = _get(desired, path)
        if path[-1] == "containers" and isinstance(want, list):
            # Quantities come back canonical ("0.5" -> "500m"): resources would always look changed.
            want = [{k: v for k, v in c.items() if k != "resources"} for c in want]
        have = _get(live, path)
        if path in _WHOLE and isinstance(want, Mapping):
            # Only the selector's own labels: a Deployment's and a PDB's sit in matchLabels.
            whole = (have if isinstance(have, Mapping) else None) or {}
            if dict(want) != dict(whole):
                out.append(".".join(path))
            continue
        if want is not _ABSENT and not _kept(want, have):
            out.append(".".join(path))
    return out
