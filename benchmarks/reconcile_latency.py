"""Reconcile latency: how fast the operator reacts at each step of a resource's life.

N onnx-format TritonResNets (``--count``, default 50) are created at once in
one namespace; most have ``replicas: 0`` (no tritonserver), ``--served``
of them (default 2) have one Triton replica. Watches on the namespace record
when each event arrives (local clock), and per resource:

* **apply -> build Job**: TritonResNet ADDED -> its build Job ADDED (operator);
* **build pod Succeeded -> publish Job**: the build pod seen Succeeded -> the
  publish Job ADDED (Job controller marks the Job Complete, then the operator);
* **publish pod Succeeded -> Deployment**: the publish pod seen Succeeded ->
  the Triton Deployment ADDED, pinned to the new version (same two steps; the
  part after ``Job Complete`` is shown separately as the operator's own share);
* **Deployment Available -> Ready**: the Deployment first seen with
  ``Available=True`` -> the TritonResNet first seen with ``Ready=True``
  (for served replicas this includes the tritonclient check of the endpoint);
* **apply -> Ready**: end to end.

    .venv/bin/python benchmarks/reconcile_latency.py [--count 50] [--served 2]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _testground import (
    Ground,
    Recorder,
    Seen,
    apply_all,
    log,
    percentile,
    phases,
    prepare_namespace,
    table,
    test_ground,
    trn_manifest,
    wait_steady,
)
from tritonresnet.api import names

NAMESPACE = "bench-latency"


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _has_condition(obj: Mapping[str, Any], type_: str) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


def _ready(obj: Mapping[str, Any]) -> bool:
    gen = obj["metadata"].get("generation")
    conditions = (obj.get("status") or {}).get("conditions") or ()
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" and c.get("observedGeneration") == gen
        for c in conditions
    )


def first(events: Sequence[Seen], kind: str, match: Callable[[Seen], bool]) -> float | None:
    return next((e.at for e in events if e.kind == kind and match(e)), None)


def steps_of(events: Sequence[Seen], name: str) -> dict[str, float | None]:
    """Local arrival time of each milestone of resource ``name``."""
    label = names.label_value(name)

    def component(e: Seen, which: str) -> bool:
        labels = _labels(e.obj)
        return labels.get(names.LABEL_INSTANCE) == label and labels.get(names.LABEL_COMPONENT) == which

    def pod_done(which: str) -> Callable[[Seen], bool]:
        return lambda e: component(e, which) and (e.obj.get("status") or {}).get("phase") == "Succeeded"

    def job_complete(which: str) -> Callable[[Seen], bool]:
        return lambda e: component(e, which) and _has_condition(e.obj, "Complete")

    deployment = names.deployment_name(name)
    return {
        "applied": first(events, "TritonResNet", lambda e: e.obj["metadata"]["name"] == name),
        "build_job": first(events, "Job", lambda e: component(e, "build")),
        "build_pod_done": first(events, "Pod", pod_done("build")),
        "build_job_complete": first(events, "Job", job_complete("build")),
        "publish_job": first(events, "Job", lambda e: component(e, "publish")),
        "publish_pod_done": first(events, "Pod", pod_done("publish")),
        "publish_job_complete": first(events, "Job", job_complete("publish")),
        "deployment": first(events, "Deployment", lambda e: e.obj["metadata"]["name"] == deployment),
        "available": first(
            events,
            "Deployment",
            lambda e: e.obj["metadata"]["name"] == deployment and _has_condition(e.obj, "Available"),
        ),
        "ready": first(events, "TritonResNet", lambda e: e.obj["metadata"]["name"] == name and _ready(e.obj)),
    }


#: (row label, from milestone, to milestone, who acts in between)
STEPS: tuple[tuple[str, str, str, str], ...] = (
    ("apply -> build Job created", "applied", "build_job", "operator"),
    ("build pod Succeeded -> build Job Complete", "build_pod_done", "build_job_complete", "Job controller"),
    ("build Job Complete -> publish Job created", "build_job_complete", "publish_job", "operator"),
    ("build pod Succeeded -> publish Job created", "build_pod_done", "publish_job", "both"),
    (
        "publish pod Succeeded -> publish Job Complete",
        "publish_pod_done",
        "publish_job_complete",
        "Job controller",
    ),
    ("publish Job Complete -> Deployment created", "publish_job_complete", "deployment", "operator"),
    ("publish pod Succeeded -> Deployment created", "publish_pod_done", "deployment", "both"),
    ("Deployment Available -> Ready=True", "available", "ready", "operator"),
    ("apply -> Ready=True (end to end)", "applied", "ready", "everything"),
)


def durations(per_resource: Mapping[str, Mapping[str, float | None]], start: str, end: str) -> list[float]:
    out = []
    for steps in per_resource.values():
        a, b = steps.get(start), steps.get(end)
        if a is not None and b is not None:
            out.append(max(0.0, b - a))
    return out


def report(per_resource: Mapping[str, Mapping[str, float | None]], label: str) -> str:
    rows = []
    for row, start, end, actor in STEPS:
        values = durations(per_resource, start, end)
        rows.append(
            [
                row,
                actor,
                len(values),
                f"{percentile(values, 50):.2f}",
                f"{percentile(values, 95):.2f}",
                f"{max(values):.2f}" if values else "nan",
            ]
        )
    return f"{label}\n\n" + table(["step", "who acts", "n", "p50 s", "p95 s", "max s"], rows)


def run(ground: Ground, count: int, served: int, timeout: float) -> str:
    cp = ground.cp
    prepare_namespace(cp, NAMESPACE, ground.s3)
    recorder = Recorder(cp, NAMESPACE)
    recorder.start()
    served_names = {f"r{i:03d}" for i in range(served)}
    manifests = [
        trn_manifest(
            NAMESPACE,
            f"r{i:03d}",
            f"m{i:03d}",
            ground.model_uri,
            ground.s3,
            replicas=1 if f"r{i:03d}" in served_names else 0,
        )
        for i in range(count)
    ]
    started = time.time()
    apply_all(cp, manifests)
    log(f"applied {count} resources in {time.time() - started:.1f} s")
    last_write, trns = wait_steady(ground, NAMESPACE, count, started, timeout)
    recorder.stop()
    events = recorder.snapshot()
    if last_write is None:
        log(f"not all Ready after {timeout:.0f} s: {dict(phases(trns))}")
    per = {m["metadata"]["name"]: steps_of(events, m["metadata"]["name"]) for m in manifests}
    zero = {k: v for k, v in per.items() if k not in served_names}
    one = {k: v for k, v in per.items() if k in served_names}
    ready = sum(1 for t in trns if _ready(t))
    parts = [
        f"reconcile latency, {datetime.date.today()}, {count} resources created in one batch "
        f"({count - served} with replicas 0, {served} with 1); {ready}/{count} Ready; "
        f"times are watch-event arrivals on the local clock",
        report(zero, f"replicas 0 ({len(zero)} resources)"),
    ]
    if one:
        parts.append(report(one, f"replicas 1 ({len(one)} resources, real tritonserver, endpoint verified)"))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=50, help="resources created at once (default 50)")
    parser.add_argument("--served", type=int, default=2, help="how many of them run one Triton replica")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all Ready")
    parser.add_argument("--workdir", type=Path, help="keep logs and the audit log here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        with test_ground(args.workdir or Path(tmp)) as ground:
            print(run(ground, args.count, min(args.served, args.count), args.timeout), flush=True)


if __name__ == "__main__":
    main()
