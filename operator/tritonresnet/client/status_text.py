"""What the operator knows about one TritonResNet, in words (``tritonresnet status``).

A pure function of the resource as the API returns it (a dict), so it is
tested without a cluster. It reads the status through the operator's own
type (``tritonresnet.api.status``), so it can only show fields the operator
writes, and prints only what is there: a resource the operator has not seen
yet says so instead of showing empty fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from tritonresnet.api.status import PHASE_MEANING, StatusCondition, TensorStatus, TritonResNetStatus

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


def _header(trn: Mapping[str, Any], status: TritonResNetStatus) -> list[str]:
    meta = trn.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "?")
    title = f"TritonResNet {namespace}/{name}" if namespace else f"TritonResNet {name}"
    generation = meta.get("generation")
    lines = [title]
    if generation is not None and status.phase and status.observed_generation < int(generation):
        lines.append(
            f"{_INDENT}(the operator has seen generation {status.observed_generation} of the spec, "
            f"not yet the latest, {generation})"
        )
    return lines


def _phase(status: TritonResNetStatus) -> list[str]:
    if not status.phase:
        return [_field("Phase", "unknown: the operator has not reported on this resource yet")]
    meaning = PHASE_MEANING.get(status.phase, "")
    lines = [_field("Phase", status.phase + (f" ({meaning})" if meaning else ""))]
    if status.message:
        lines.append(_field("Message", status.message))
    return lines


def _model(status: TritonResNetStatus) -> list[str]:
    lines = []
    serving, published = status.model_version, status.published
    if serving is not None:
        lines.append(_field("Model", f"version {serving} is being served"))
    else:
        lines.append(_field("Model", "no version is being served yet"))
    if published is not None and published.version != serving:
        lines.append(_field("Published", f"version {published.version} (not serving yet)"))
    keys = [("version", status.version_key), ("serving", status.serving_version_key)]
    shown = ", ".join(f"{label} {value}" for label, value in keys if value)
    if shown:
        lines.append(_field("Keys", shown))
    if published is not None:
        tensors = [*_tensors("input", published.inputs), *_tensors("output", published.outputs)]
        lines += [_field("Tensors" if i == 0 else "", t) for i, t in enumerate(tensors)]
    return lines


def _tensors(kind: str, tensors: Sequence[TensorStatus]) -> list[str]:
    return [f"{kind} {t.name} {t.datatype} {'x'.join(map(str, t.shape))}".rstrip() for t in tensors]


def _replicas(status: TritonResNetStatus) -> list[str]:
    if status.replicas is None and status.ready_replicas is None:
        return []
    return [_field("Replicas", f"{status.ready_replicas or 0} of {status.replicas or 0} ready")]


def _endpoints(status: TritonResNetStatus) -> list[str]:
    if not status.endpoints:
        return [_field("Endpoints", "none verified yet")] if status.phase else []
    return [_field("Endpoints", ", ".join(status.endpoints))]


def _targets(status: TritonResNetStatus) -> list[str]:
    if not status.targets:
        return []
    lines = ["Targets:"]
    for target in status.targets:
        lines.append(f"{_INDENT}{target.name or '?'}: {target.state or 'unknown'}")
        details = []
        if target.node_selector:
            details.append("nodes " + ",".join(f"{k}={v}" for k, v in sorted(target.node_selector.items())))
        if target.compute_capability:
            details.append(f"compute capability {target.compute_capability}")
        if target.node:
            details.append(f"built on {target.node}")
        if target.tensorrt_version:
            details.append(f"TensorRT {target.tensorrt_version}")
        if target.engine_key:
            details.append(f"engine key {target.engine_key}")
        if target.job:
            details.append(f"Job {target.job}")
        if target.artifact:
            size = f" ({_size(target.artifact_bytes)})" if target.artifact_bytes else ""
            details.append(f"artifact {target.artifact}{size}")
        # What was fetched, each file with the digest a pin would name.
        details += [
            f"fetched {f.name} ({_size(f.bytes)}) sha256 {f.sha256}" for f in target.source_files or ()
        ]
        lines += [f"{_INDENT * 2}{d}" for d in details]
        if target.message:
            lines.append(f"{_INDENT * 2}{target.message}")
    return lines


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _conditions(conditions: Sequence[StatusCondition], now: datetime) -> list[str]:
    if not conditions:
        return []
    lines = ["Conditions:"]
    for cond in conditions:
        head = f"{cond.type or '?'} is {cond.status}"
        if cond.reason:
            head += f" ({cond.reason})"
        if cond.last_transition_time:
            head += f", since {age(cond.last_transition_time, now)}"
        lines.append(f"{_INDENT}{head}")
        if cond.message:
            lines.append(f"{_INDENT * 2}{cond.message}")
    return lines


def describe(trn: Mapping[str, Any], now: datetime | None = None) -> str:
    """Render one TritonResNet's status for people; ``now`` is for tests (default: the current time)."""
    status = TritonResNetStatus.from_dict(trn.get("status"))
    moment = now or datetime.now(timezone.utc)
    lines = [
        *_header(trn, status),
        *_phase(status),
        *(_model(status) if status.phase else []),
        *_replicas(status),
        *_endpoints(status),
        *_targets(status),
        *_conditions(status.conditions, moment),
    ]
    return "\n".join(lines) + "\n"
