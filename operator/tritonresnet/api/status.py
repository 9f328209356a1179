"""A TritonResNet's status: one typed value, written by the controller, read by ``tritonresnet status``.

Conditions follow the Kubernetes API conventions (``type``, ``status``,
``reason``, ``message``, ``observedGeneration``, ``lastTransitionTime``) and
the kstatus conventions that Flux and Argo CD read: ``Ready`` summarises,
``Reconciling`` is true while the operator works towards the spec, ``Stalled``
is true when it cannot get there without a change by a human.

Every field here has a property of the same name in the CRD's status schema
(``tests/unit/test_status_schema.py`` holds them side by side), and
:meth:`TritonResNetStatus.to_dict` / :meth:`TritonResNetStatus.from_dict` are
the only translation between this type and the JSON the API server stores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

ConditionStatus = Literal["True", "False", "Unknown"]

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

Phase = Literal["Pending", "Building", "Deploying", "Ready", "Degraded", "Failed"]
# Phases, in the order a healthy resource walks through them.
PENDING: Phase = "Pending"
BUILDING: Phase = "Building"
DEPLOYING: Phase = "Deploying"
PHASE_READY: Phase = "Ready"
#: Something still serves; the current spec cannot get there.
DEGRADED: Phase = "Degraded"
FAILED: Phase = "Failed"

#: A sentence per phase for people who do not know the operator's vocabulary.
PHASE_MEANING: Mapping[str, str] = {
    PENDING: "waiting to start: nothing is built yet",
    BUILDING: "building the model for each GPU target",
    DEPLOYING: "rolling out Triton with the new model version",
    PHASE_READY: "serving: every ready endpoint answers at the expected model version",
    DEGRADED: "serving, but not every replica or endpoint is healthy",
    FAILED: "stuck: the operator needs a change to the spec or the cluster to go on",
}


# -- reasons ------------------------------------------------------------------------------

#: What a reason means to kstatus readers: ``ready`` (Ready=True), ``progressing``
#: (Reconciling=True, the operator is working), ``stalled`` (Stalled=True, a human must act).
Meaning = Literal["ready", "progressing", "stalled"]


@dataclass(frozen=True)
class Reason:
    """A condition reason: CamelCase, greppable, and the reason of the event posted with it."""

    name: str
    meaning: Meaning
    #: Posted as a Warning event (else Normal) when a condition changes to it.
    warning: bool = False

    def __str__(self) -> str:
        return self.name


#: Every ready endpoint answered at the served version.
VERIFIED = Reason("Verified", "ready")
#: Build Jobs are running or waiting to start.
BUILDING_REASON = Reason("Building", "progressing")
#: A build, publish or Triton pod waits for a node (no free GPU yet; the cluster autoscaler may add one).
WAITING_FOR_NODE = Reason("WaitingForNode", "progressing")
#: The published version is rolling out or being verified.
DEPLOYING_REASON = Reason("Deploying", "progressing")
#: EngineBuilt=True: every target's engine is built and the version is published.
PUBLISHED = Reason("Published", "ready")
#: Stalled=False.
PROGRESSING = Reason("Progressing", "progressing")
#: Available=False before the first version exists.
NO_VERSION_YET = Reason("NoVersionYet", "progressing")
#: Available=False before the Deployment exists.
NO_DEPLOYMENT = Reason("NoDeployment", "progressing")
#: A build Job failed (the builder's error, or the Job's own failure).
BUILD_FAILED = Reason("BuildFailed", "stalled", warning=True)
#: The publish Job failed: the engines exist, the version could not be assembled.
PUBLISH_FAILED = Reason("PublishFailed", "stalled", warning=True)
#: A build or publish pod will not start without a change (a missing Secret, an image, a crash loop).
POD_STUCK = Reason("PodStuck", "stalled", warning=True)
#: Triton pods of the new version cannot start (image, config, crash loop) or the rollout deadline passed.
ROLLOUT_STUCK = Reason("RolloutStuck", "stalled", warning=True)
#: An endpoint answered, but not as the published version should.
VERIFICATION_FAILED = Reason("VerificationFailed", "stalled", warning=True)
#: A served ``format: onnx`` version answered the fixed inputs outside ``spec.engine.accuracy``
#: of its build's onnxruntime reference (the builder fails a plan with the same reason).
ACCURACY_CHECK_FAILED = Reason("AccuracyCheckFailed", "stalled", warning=True)
#: The spec cannot be acted on; the message names the field.
INVALID_SPEC = Reason("InvalidSpec", "stalled", warning=True)
#: An older TritonResNet serves the same model name from the same repository.
MODEL_NAME_CONFLICT = Reason("ModelNameConflict", "stalled", warning=True)
#: The API server refused a child (quota, admission, a full service range).
APPLY_FAILED = Reason("ApplyFailed", "stalled", warning=True)
#: An object with a child's name exists and is not this resource's: the operator leaves it alone.
NAME_CONFLICT = Reason("NameConflict", "stalled", warning=True)

REASONS: tuple[Reason, ...] = (
    VERIFIED,
    BUILDING_REASON,
    WAITING_FOR_NODE,
    DEPLOYING_REASON,
    PUBLISHED,
    PROGRESSING,
    NO_VERSION_YET,
    NO_DEPLOYMENT,
    BUILD_FAILED,
    PUBLISH_FAILED,
    POD_STUCK,
    ROLLOUT_STUCK,
    VERIFICATION_FAILED,
    ACCURACY_CHECK_FAILED,
    INVALID_SPEC,
    MODEL_NAME_CONFLICT,
    APPLY_FAILED,
    NAME_CONFLICT,
)
_BY_NAME = {r.name: r for r in REASONS}


def reason_named(name: str) -> Reason | None:
    """The reason of that name; None for reasons copied from elsewhere (a Deployment's own)."""
    return _BY_NAME.get(name)


# -- the status value ---------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """A condition as decided; :func:`merge_conditions` adds generation and transition time."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


@dataclass(frozen=True)
class StatusCondition:
    """A condition as stored."""

    type: str
    status: ConditionStatus
    reason: str
    message: str
    observed_generation: int
    last_transition_time: str


@dataclass(frozen=True)
class TensorStatus:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class PublishedStatus:
    """The model version published for the current spec (serving or about to)."""

    version_key: str
    version: int
    inputs: tuple[TensorStatus, ...] = ()
    outputs: tuple[TensorStatus, ...] = ()
    #: Bytes the model repository used once this version was published (each file once).
    repository_bytes: int | None = None


@dataclass(frozen=True)
class SourceFileStatus:
    """One file a build fetched: the model, or one of its external-data files."""

    name: str  #: the model's file name, or an external-data location relative to it
    sha256: str
    bytes: int


TargetState = Literal["Pending", "Running", "Unschedulable", "Stuck", "Built", "Failed"]


@dataclass(frozen=True)
class TargetStatus:
    """One build target of the current spec: where it builds and what came of it."""

    name: str
    engine_key: str
    job: str
    state: str
    node_selector: Mapping[str, str] = field(default_factory=dict)
    compute_capability: str | None = None
    #: The node whose GPU built the plan: with gpuKinds Auto, one of the nodes of that capability.
    node: str | None = None
    tensorrt_version: str | None = None
    artifact: str | None = None
    artifact_bytes: int | None = None
    source_sha256: str | None = None
    #: Every file the build fetched, the model first; None when not reported (too many files
    #: for the builder's result, or a builder from before this field).
    source_files: tuple[SourceFileStatus, ...] | None = None
    message: str | None = None
    #: The applied hash of the build Job that failed: while the Job the spec renders has this hash,
    #: the failure stands (its Job may be gone with its TTL) and the build is not run again.
    job_hash: str | None = None


@dataclass(frozen=True)
class TritonResNetStatus:
    """``status`` of a TritonResNet. ``None`` means the field is not reported (and is removed if it was)."""

    observed_generation: int
    phase: str
    message: str
    conditions: tuple[StatusCondition, ...] = ()
    #: The identity of the version the current spec asks for.
    version_key: str | None = None
    published: PublishedStatus | None = None
    #: The model version the Triton Deployment pins, and its version key.
    model_version: int | None = None
    serving_version_key: str | None = None
    #: Model versions on ready Triton pods (two during a rollout).
    serving_versions: tuple[int, ...] | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    #: The Triton pods' label selector, for the scale subresource.
    selector: str | None = None
    targets: tuple[TargetStatus, ...] | None = None
    #: Triton HTTP endpoints (host:port) verified at the served version.
    endpoints: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in _encode(self).items() if v is not None}

    @classmethod
    def from_dict(cls, status: Mapping[str, Any] | None) -> TritonResNetStatus:
        """Read a stored status; fields of the wrong shape read as not reported (a status is only
        ever a record of what the operator saw, never something to fail on)."""
        s = status or {}
        return cls(
            observed_generation=_int(s.get("observedGeneration")) or 0,
            phase=str(s.get("phase") or ""),
            message=str(s.get("message") or ""),
            conditions=tuple(_condition(c) for c in _list(s.get("conditions")) if isinstance(c, Mapping)),
            version_key=_str(s.get("versionKey")),
            published=_published(s.get("published")),
            model_version=_int(s.get("modelVersion")),
            serving_version_key=_str(s.get("servingVersionKey")),
            serving_versions=_ints(s.get("servingVersions")),
            replicas=_int(s.get("replicas")),
            ready_replicas=_int(s.get("readyReplicas")),
            selector=_str(s.get("selector")),
            targets=_targets(s.get("targets")),
            endpoints=None if s.get("endpoints") is None else tuple(map(str, _list(s.get("endpoints")))),
        )

    def condition(self, type_: str) -> StatusCondition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def built_targets(self) -> dict[str, TargetStatus]:
        """The targets already built, by engine key (a build is never read twice)."""
        return {t.engine_key: t for t in self.targets or () if t.state == "Built" and t.engine_key}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _encode(value: Any) -> Any:
    if isinstance(
        value,
        (TritonResNetStatus, PublishedStatus, TargetStatus, StatusCondition, TensorStatus, SourceFileStatus),
    ):
        out = {camel(f.name): _encode(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, PublishedStatus):
            return {k: v for k, v in out.items() if v is not None}
        if isinstance(value, TargetStatus):
            # Optional details of a target are left out until known, as they always were.
            return {k: v for k, v in out.items() if v not in (None, "")}
        return out
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else ()


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _ints(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    return tuple(i for i in (_int(v) for v in _list(value)) if i is not None)


def _tensors(value: Any) -> tuple[TensorStatus, ...]:
    return tuple(
        TensorStatus(str(t.get("name", "")), str(t.get("datatype", "")), tuple(_ints(t.get("shape")) or ()))
        for t in _list(value)
        if isinstance(t, Mapping)
    )


def _published(value: Any) -> PublishedStatus | None:
    if not isinstance(value, Mapping) or not value.get("versionKey") or not _int(value.get("version")):
        return None
    return PublishedStatus(
        str(value["versionKey"]),
        _int(value["version"]) or 0,
        _tensors(value.get("inputs")),
        _tensors(value.get("outputs")),
        _int(value.get("repositoryBytes")),
    )


def _source_files(value: Any) -> tuple[SourceFileStatus, ...] | None:
    if value is None:
        return None
    return tuple(
        SourceFileStatus(str(f.get("name", "")), str(f.get("sha256", "")), _int(f.get("bytes")) or 0)
        for f in _list(value)
        if isinstance(f, Mapping)
    )


def _targets(value: Any) -> tuple[TargetStatus, ...] | None:
    if value is None:
        return None
    out = []
    for t in _list(value):
        if not isinstance(t, Mapping):
            continue
        selector = t.get("nodeSelector")
        out.append(
            TargetStatus(
                name=str(t.get("name", "")),
                engine_key=str(t.get("engineKey", "")),
                job=str(t.get("job", "")),
                state=str(t.get("state", "")),
                node_selector={str(k): str(v) for k, v in selector.items()}
                if isinstance(selector, Mapping)
                else {},
                compute_capability=_str(t.get("computeCapability")),
                node=_str(t.get("node")),
                tensorrt_version=_str(t.get("tensorrtVersion")),
                artifact=_str(t.get("artifact")),
                artifact_bytes=_int(t.get("artifactBytes")),
                source_sha256=_str(t.get("sourceSha256")),
                source_files=_source_files(t.get("sourceFiles")),
                message=_str(t.get("message")),
                job_hash=_str(t.get("jobHash")),
            )
        )
    return tuple(out)


def _condition_status(value: Any) -> ConditionStatus:
    return "True" if value == "True" else "False" if value == "False" else "Unknown"


def _condition(c: Mapping[str, Any]) -> StatusCondition:
    return StatusCondition(
        type=str(c.get("type", "")),
        status=_condition_status(c.get("status")),
        reason=str(c.get("reason", "")),
        message=str(c.get("message", "")),
        observed_generation=_int(c.get("observedGeneration")) or 0,
        last_transition_time=str(c.get("lastTransitionTime", "")),
    )


# -- conditions and the patch -------------------------------------------------------------


def merge_conditions(
    previous: Sequence[StatusCondition],
    current: Sequence[Condition],
    generation: int,
    now: str,
) -> tuple[StatusCondition, ...]:
    """Stored conditions for ``current``, keeping ``lastTransitionTime`` unless the status flipped.

    Keeping the old timestamp when nothing changed is what makes a second
    reconcile produce byte-identical status, so nothing is written at rest.
    """
    before = {c.type: c for c in previous}
    out = []
    for cond in sorted(current, key=lambda c: CONDITION_ORDER.index(c.type)):
        old = before.get(cond.type)
        since = old.last_transition_time if old and old.status == cond.status else ""
        out.append(
            StatusCondition(cond.type, cond.status, cond.reason, cond.message, generation, since or now)
        )
    return tuple(out)


def status_patch(old: Mapping[str, Any], new: TritonResNetStatus) -> dict[str, Any]:
    """A merge patch turning the stored ``old`` into ``new``; empty when they already agree.

    Lists (conditions, targets) are replaced whole, as a merge patch does.
    """
    wanted = new.to_dict()
    patch: dict[str, Any] = {k: v for k, v in wanted.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in wanted})
    return patch
