"""What the operator knows about one TritonResNet, in words (``tritonresnet status``).

A pure function of the resource as the API returns it (a dict), so it is
tested without a cluster. It reads the status fields of docs/design.md
"Status" and prints only what is there: a resource the operator has not seen
yet says so instead of showing empty fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

#: A sentence per phase for people who do not know the operator's vocabulary.
PHASE_MEANING: Mapping[str, str] = {
    "Pending": "waiting to start: nothing is built yet",
    "Building": "building the model for each GPU target",
    "Deploying": "rolling out Triton with the new model version",
    "Ready": "serving: every ready endpoint answers at the expected model version",
    "Degraded": "serving, but not every replica or endpoint is healthy",
    "Failed": "stuck: the operator needs a change to the spec or the cluster to go on",
}

_INDENT = "  "


def age(timestamp: str, now: datetime) -> str:
    """``"5m ago"`` for an RFC 3339 time, like kubectl's AGE column; the raw text if it does not parse."""
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    seconds = int((now - then).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _field(label: str, value: str) -> str:
    """``Label:     value``; an empty label continues the field above."""
    return f"{label + ':' if label else '':<12}{value}"


def _header(trn: Mapping[str, Any]) -> list[str]:
    meta = trn.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "?")
    title = f"TritonResNet {namespace}/{name}" if namespace else f"TritonResNet {name}"
    status = trn.get("status") or {}
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    lines = [title]
    if generation is not None and observed is not None and int(observed) < int(generation):
        lines.append(
            f"{_INDENT}(the operator has seen generation {observed} of the spec, "
            f"not yet the latest, {generation})"
        )
    return lines


def _phase(status: Mapping[str, Any]) -> list[str]:
    phase = status.get("phase")
    if not phase:
        return [_field("Phase", "unknown: the operator has not reported on this resource yet")]
    meaning = PHASE_MEANING.get(str(phase), "")
    lines = [_field("Phase", f"{phase}" + (f" ({meaning})" if meaning else ""))]
    if status.get("message"):
        lines.append(_field("Message", str(status["message"])))
    return lines


def _model(status: Mapping[str, Any]) -> list[str]:
    lines = []
    serving = status.get("modelVersion")
    published = status.get("published") or {}
    if serving is not None:
        lines.append(_field("Model", f"version {serving} is being served"))
    else:
        lines.append(_field("Model", "no version is being served yet"))
    if published.get("version") is not None and published.get("version") != serving:
        lines.append(_field("Published", f"version {published['version']} (not serving yet)"))
    if status.get("servingVersion"):
        lines.append(_field("Triton", f"release {status['servingVersion']}"))
    keys = [
        (label, status.get(field))
        for label, field in (
            ("engine", "engineKey"),
            ("version", "versionKey"),
            ("serving", "servingVersionKey"),
        )
    ]
    shown = ", ".join(f"{label} {value}" for label, value in keys if value)
    if shown:
        lines.append(_field("Keys", shown))
    tensors = [*_tensors("input", published.get("inputs")), *_tensors("output", published.get("outputs"))]
    lines += [_field("Tensors" if i == 0 else "", t) for i, t in enumerate(tensors)]
    return lines


def _tensors(kind: str, tensors: Any) -> list[str]:
    out = []
    for tensor in tensors or ():
        if isinstance(tensor, Mapping):
            dims = "x".join(str(d) for d in tensor.get("dims") or tensor.get("shape") or ())
            dtype = tensor.get("datatype") or tensor.get("dataType") or ""
            out.append(f"{kind} {tensor.get('name', '?')} {dtype} {dims}".rstrip())
    return out


def _replicas(status: Mapping[str, Any]) -> list[str]:
    if status.get("replicas") is None and status.get("readyReplicas") is None:
        return []
    ready, want = int(status.get("readyReplicas") or 0), int(status.get("replicas") or 0)
    return [_field("Replicas", f"{ready} of {want} ready")]


def _endpoints(status: Mapping[str, Any]) -> list[str]:
    endpoints = [_endpoint(e) for e in status.get("endpoints") or ()]
    if not endpoints:
        return [_field("Endpoints", "none verified yet")] if status.get("phase") else []
    return [_field("Endpoints", ", ".join(endpoints))]


def _endpoint(entry: Any) -> str:
    if isinstance(entry, Mapping):
        fallback = ", ".join(f"{k}={v}" for k, v in entry.items())
        return str(entry.get("address") or entry.get("url") or fallback)
    return str(entry)


def _targets(status: Mapping[str, Any]) -> list[str]:
    targets = list(status.get("targets") or ())
    if not targets:
        return []
    lines = ["Targets:"]
    for target in targets:
        lines.append(f"{_INDENT}{target.get('name', '?')}: {target.get('state', 'unknown')}")
        details = []
        selector = target.get("nodeSelector") or {}
        if selector:
            details.append("nodes " + ",".join(f"{k}={v}" for k, v in sorted(selector.items())))
        if target.get("computeCapability"):
            details.append(f"compute capability {target['computeCapability']}")
        if target.get("tensorrtVersion"):
            details.append(f"TensorRT {target['tensorrtVersion']}")
        if target.get("engineKey"):
            details.append(f"engine key {target['engineKey']}")
        if target.get("job"):
            details.append(f"Job {target['job']}")
        if target.get("artifact"):
            size = target.get("artifactBytes")
            details.append(f"artifact {target['artifact']}" + (f" ({_size(int(size))})" if size else ""))
        lines += [f"{_INDENT * 2}{d}" for d in details]
        if target.get("message"):
            lines.append(f"{_INDENT * 2}{target['message']}")
    return lines


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _conditions(conditions: Sequence[Mapping[str, Any]], now: datetime) -> list[str]:
    if not conditions:
        return []
    lines = ["Conditions:"]
    for cond in conditions:
        since = age(str(cond["lastTransitionTime"]), now) if cond.get("lastTransitionTime") else ""
        head = f"{cond.get('type', '?')} is {cond.get('status', 'Unknown')}"
        if cond.get("reason"):
            head += f" ({cond['reason']})"
        if since:
            head += f", since {since}"
        lines.append(f"{_INDENT}{head}")
        if cond.get("message"):
            lines.append(f"{_INDENT * 2}{cond['message']}")
    return lines


def describe(trn: Mapping[str, Any], now: datetime | None = None) -> str:
    """Render one TritonResNet's status for people; ``now`` is for tests (default: the current time)."""
    status: Mapping[str, Any] = trn.get("status") or {}
    moment = now or datetime.now(timezone.utc)
    lines = [
        *_header(trn),
        *_phase(status),
        *(_model(status) if status else []),
        *_replicas(status),
        *_endpoints(status),
        *_targets(status),
        *_conditions(list(status.get("conditions") or ()), moment),
    ]
    return "\n".join(lines) + "\n"
