"""The GPU fleet: Nodes -> the GPU kinds Triton may land on -> one build target per compute capability.

Used with ``spec.engine.gpuKinds: Auto``. A TensorRT plan runs on the compute
capability it was built on, not on one product: an A10G and an RTX A6000 (both
8.6) load the same plan. So kinds are grouped by GPU feature discovery's
``nvidia.com/gpu.compute.major``/``minor`` labels, and a build is pinned with
those labels (plus the serving nodeSelector) to a node of that capability that
Triton may land on.

Pure, no I/O. The runtime keeps one shared view of the cluster's GPU nodes
(:func:`node_view` of every Node event, unchanged heartbeats dropped) and
hands it to every pass that needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tritonresnet_builder.contract import AMPERE_MAJOR

from tritonresnet.api.spec import GPU_KINDS, Target, TritonResNetSpec
from tritonresnet.api.status import TargetStatus

COMPUTE_MAJOR_LABEL = "nvidia.com/gpu.compute.major"
COMPUTE_MINOR_LABEL = "nvidia.com/gpu.compute.minor"
PRODUCT_LABEL = "nvidia.com/gpu.product"
#: Taint effects that keep a pod off a node; PreferNoSchedule only discourages.
_BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
#: In a version's capabilities: an AMPERE_PLUS plan, which runs on every GPU of 8.0 and up.
AMPERE_PLUS = f"{AMPERE_MAJOR}.0+"


@dataclass(frozen=True)
class FleetNode:
    """What the fleet needs of a Node: its labels and the taints that keep pods off it."""

    name: str
    labels: Mapping[str, str]
    taints: tuple[Mapping[str, str], ...] = ()

    @property
    def compute_capability(self) -> str:
        return f"{self.labels[COMPUTE_MAJOR_LABEL]}.{self.labels[COMPUTE_MINOR_LABEL]}"

    @property
    def product(self) -> str:
        return self.labels.get(PRODUCT_LABEL, "")


@dataclass(frozen=True)
class GpuKind:
    """One compute capability among the nodes Triton may land on, and the nodes that have it."""

    compute_capability: str  #: e.g. "8.6"
    products: tuple[str, ...]
    nodes: tuple[str, ...]

    @property
    def major(self) -> str:
        return self.compute_capability.split(".")[0]

    @property
    def minor(self) -> str:
        return self.compute_capability.split(".")[1]


def node_view(node: Mapping[str, Any]) -> FleetNode | None:
    """The fleet's view of a Node; None for a node without GPU feature discovery's compute labels.

    Only labels and blocking taints are kept, so a Node's status heartbeat gives an equal
    view and wakes nothing. ``spec.unschedulable`` (a cordon) is read as the taint the
    node lifecycle controller puts on it, so a pod that tolerates it still counts it.
    """
    meta = node.get("metadata") or {}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    major, minor = labels.get(COMPUTE_MAJOR_LABEL, ""), labels.get(COMPUTE_MINOR_LABEL, "")
    if not (major.isdigit() and minor.isdigit()):
        return None
    spec = node.get("spec") or {}
    taints = [
        {"key": str(t.get("key") or ""), "value": str(t.get("value") or ""), "effect": str(t.get("effect"))}
        for t in spec.get("taints") or ()
        if isinstance(t, Mapping) and t.get("effect") in _BLOCKING_EFFECTS
    ]
    if spec.get("unschedulable") and not any(t["key"] == UNSCHEDULABLE_TAINT for t in taints):
        taints.append({"key": UNSCHEDULABLE_TAINT, "value": "", "effect": "NoSchedule"})
    return FleetNode(
        str(meta.get("name") or ""), labels, tuple(sorted(taints, key=lambda t: sorted(t.items())))
    )


def wants_nodes(resource: Mapping[str, Any]) -> bool:
    """The resource asks for ``gpuKinds: Auto`` (read without parsing: a Node event wakes only these)."""
    engine = (resource.get("spec") or {}).get("engine") or {}
    return isinstance(engine, Mapping) and engine.get("gpuKinds") == GPU_KINDS[1]


# -- who may land where ----------------------------------------------------------------------


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, str]) -> bool:
    """Kubernetes' rule: a toleration matches a taint by key (empty with Exists: every key),
    by value for Equal, and by effect (empty: every effect)."""
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint["effect"]:
            continue
        operator = t.get("operator") or "Equal"
        if not t.get("key"):
            if operator == "Exists":
                return True
            continue
        if t.get("key") != taint["key"]:
            continue
        if operator == "Exists" or str(t.get("value") or "") == taint["value"]:
            return True
    return False


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def may_land_on(
    node: FleetNode, selector: Mapping[str, str], tolerations: Sequence[Mapping[str, Any]]
) -> bool:
    return selects(selector, node.labels) and all(tolerates(tolerations, t) for t in node.taints)


def gpu_kinds(
    nodes: Iterable[FleetNode], selector: Mapping[str, str], tolerations: Sequence[Mapping[str, Any]]
) -> tuple[GpuKind, ...]:
    """The compute capabilities of the nodes a pod with ``selector`` and ``tolerations`` may land on."""
    found: dict[str, list[FleetNode]] = {}
    for node in nodes:
        if may_land_on(node, selector, tolerations):
            found.setdefault(node.compute_capability, []).append(node)
    return tuple(
        GpuKind(
            cc, tuple(sorted({n.product for n in group if n.product})), tuple(sorted(n.name for n in group))
        )
        for cc, group in sorted(found.items(), key=lambda item: _cc_order(item[0]))
    )


def _cc_order(cc: str) -> tuple[int, int]:
    major, _, minor = cc.partition(".")
    return int(major), int(minor or 0)


# -- targets -----------------------------------------------------------------------------------


def target_name(compute_capability: str) -> str:
    """``sm86`` for 8.6: the name CUDA gives the architecture, and a valid target name."""
    return "sm" + compute_capability.replace(".", "")


def kind_target(spec: TritonResNetSpec, compute_capability: str) -> Target:
    """The build of one capability: pinned by its labels to a node of it that Triton may land on."""
    major, _, minor = compute_capability.partition(".")
    selector = dict(spec.serving.node_selector) | {COMPUTE_MAJOR_LABEL: major, COMPUTE_MINOR_LABEL: minor}
    return Target(target_name(compute_capability), selector, spec.serving.tolerations)


def _kind_of(status: TargetStatus) -> str | None:
    """The capability a recorded fleet target was built for, from its nodeSelector."""
    major = status.node_selector.get(COMPUTE_MAJOR_LABEL, "")
    minor = status.node_selector.get(COMPUTE_MINOR_LABEL, "")
    return f"{major}.{minor}" if major.isdigit() and minor.isdigit() else None


def targets(
    spec: TritonResNetSpec,
    kinds: Sequence[GpuKind],
    nodes: Iterable[FleetNode],
    recorded: Sequence[TargetStatus],
    key_of: Callable[[Target], str],
) -> tuple[Target, ...]:
    """The hand-listed targets, then one per capability that none of them already covers.

    A capability whose nodes have all gone keeps its target while its plan is built for
    the current spec (its recorded engine key is the key the spec gives it now): a kind
    leaving changes nothing. For a new spec it would wait for a node that is not there,
    so it is dropped then.
    """
    listed = spec.engine.targets
    all_nodes = tuple(nodes)
    covered = {
        n.compute_capability
        for n in all_nodes
        for t in listed
        if t.node_selector and selects(t.node_selector, n.labels)
    }
    wanted = {k.compute_capability for k in kinds}
    for status in recorded:
        cc = _kind_of(status)
        if cc is not None and status.state == "Built" and status.engine_key == key_of(kind_target(spec, cc)):
            wanted.add(cc)
    names = {t.name for t in listed}
    out = list(listed)
    wanted = _one_for_ampere_plus(spec, wanted - covered, recorded, key_of)
    for cc in sorted(wanted, key=_cc_order):
        target = kind_target(spec, cc)
        if target.name in names:  # a hand-listed target took the name
            target = Target(f"{target.name}-auto", target.node_selector, target.tolerations)
        out.append(target)
    return tuple(out)


def _one_for_ampere_plus(
    spec: TritonResNetSpec,
    wanted: set[str],
    recorded: Sequence[TargetStatus],
    key_of: Callable[[Target], str],
) -> set[str]:
    """With hardwareCompatibility AmperePlus, one build for every capability of 8.0 and up: on the
    one an earlier build of this spec used (so a newer kind joining rebuilds nothing), else on
    the lowest present. Older capabilities keep a build each."""
    if spec.engine.hardware_compatibility != "ampere_plus":
        return wanted
    newer = {cc for cc in wanted if _cc_order(cc)[0] >= AMPERE_MAJOR}
    if len(newer) < 2:
        return wanted
    built = [
        cc
        for status in recorded
        if (cc := _kind_of(status)) in newer and status.engine_key == key_of(kind_target(spec, cc))
    ]
    keep = built[0] if built else min(newer, key=_cc_order)
    return (wanted - newer) | {keep}


def plan_capabilities(spec: TritonResNetSpec, compute_capabilities: Iterable[str]) -> tuple[str, ...]:
    """Where a version's plans run: each plan's capability, or :data:`AMPERE_PLUS` for one built
    with that level (the builder uses it on 8.0 and up only)."""
    ampere_plus = spec.engine.hardware_compatibility == "ampere_plus"
    return tuple(
        sorted(
            {
                AMPERE_PLUS if ampere_plus and _cc_order(cc)[0] >= AMPERE_MAJOR else cc
                for cc in compute_capabilities
            }
        )
    )


def _term(cc: str) -> dict[str, Any]:
    if cc == AMPERE_PLUS:  # compute.major 8 and up (node affinity's Gt compares integers)
        return {
            "matchExpressions": [
                {"key": COMPUTE_MAJOR_LABEL, "operator": "Gt", "values": [str(AMPERE_MAJOR - 1)]}
            ]
        }
    major, _, minor = cc.partition(".")
    return {
        "matchExpressions": [
            {"key": COMPUTE_MAJOR_LABEL, "operator": "In", "values": [major]},
            {"key": COMPUTE_MINOR_LABEL, "operator": "In", "values": [minor]},
        ]
    }


def required_affinity(compute_capabilities: Iterable[str]) -> dict[str, Any]:
    """A node affinity that admits only nodes of these capabilities (terms are ORed)."""
    terms = [_term(cc) for cc in sorted(set(compute_capabilities), key=lambda cc: _cc_order(cc.rstrip("+")))]
    return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
