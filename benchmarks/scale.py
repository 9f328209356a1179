"""Scale: N TritonResNets from apply to steady state, and what the operator spends on them.

For each count (``--count``, default 10, 100 and 500), on one test ground:
a fresh namespace, a freshly started operator, then N onnx-format
resources with ``replicas: 0`` created at once, all pointing at the same
resnet18 ONNX in S3, each with its own ``spec.model.name`` (they share the
namespace's models volume). Every resource still runs its own build Job
(the builder finds the engine already built after the first) and its own
publish Job: 2N builder pods, each a real Python process on this machine.

Steady state = every resource ``Ready=True`` at its generation and no write
by the operator for 10 s. Measured:

* wall time from the first create to the operator's last write;
* the operator process's CPU seconds (utime+stime from /proc, counted from
  just before the create) and its peak RSS (VmHWM, which includes start-up);
* API requests per resource, counted at the apiserver: the audit log's
  requests by the operator's own user (``apiserver_request_total`` has no
  client label), all and writes only; plus the apiserver's own
  ``apiserver_request_total`` growth from every client, for scale.

    .venv/bin/python benchmarks/scale.py [--count 10 --count 100 ...] [--timeout 1500]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _testground import (
    Ground,
    apply_all,
    log,
    phases,
    prepare_namespace,
    request_totals,
    sample_process,
    table,
    test_ground,
    trn_manifest,
    verb_resource,
    wait_steady,
)
from testground.audit import count_by
from tritonresnet.api import names

DEFAULT_COUNTS = (10, 100, 500)


@dataclass(frozen=True)
class ScaleResult:
    count: int
    ready: int
    steady: bool
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    requests: int
    writes: int
    all_clients_requests: int
    by_verb_resource: Counter[str]
    phases: Counter[str]


def restart_operator(ground: Ground) -> None:
    """A fresh operator process, so CPU and peak RSS belong to this count alone."""
    ground.operator.restart()
    since = time.time()
    deadline = since + 60
    while time.time() < deadline:
        if any(e.verb == "list" and e.resource == names.PLURAL for e in ground.audit.operator(since=since)):
            return
        time.sleep(0.5)
    raise TimeoutError("the operator did not list TritonResNets within 60 s")


def run_one(ground: Ground, count: int, timeout: float) -> ScaleResult:
    namespace = f"bench-scale-{count}"
    prepare_namespace(ground.cp, namespace, ground.s3)
    restart_operator(ground)
    time.sleep(2.0)  # let the fresh operator settle after its initial lists
    manifests = [
        trn_manifest(namespace, f"r{i:04d}", f"m{i:04d}", ground.model_uri, ground.s3) for i in range(count)
    ]
    before_metrics = request_totals(ground.cp.apiserver_metrics())
    before = sample_process(ground.operator_pid)
    started = time.time()
    apply_all(ground.cp, manifests)
    log(f"{count}: created in {time.time() - started:.1f} s")
    last_write, trns = wait_steady(ground, namespace, count, started, timeout)
    after = sample_process(ground.operator_pid)
    after_metrics = request_totals(ground.cp.apiserver_metrics())
    end = last_write if last_write is not None else time.time()
    # Requests in flight from apply to the last write; watches are counted when they end.
    ops = ground.audit.operator(since=started, until=end)
    ready = sum(
        1
        for t in trns
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (t.get("status") or {}).get("conditions") or ()
        )
    )
    return ScaleResult(
        count=count,
        ready=ready,
        steady=last_write is not None,
        wall_seconds=end - started,
        cpu_seconds=after.cpu_seconds - before.cpu_seconds,
        peak_rss_mib=after.peak_rss_bytes / (1 << 20),
        requests=len(ops),
        writes=sum(1 for e in ops if e.is_write),
        all_clients_requests=sum((after_metrics - before_metrics).values()),
        by_verb_resource=count_by(ops, verb_resource),
        phases=phases(trns),
    )


def report(results: list[ScaleResult]) -> str:
    rows = [
        [
            r.count,
            f"{r.ready}/{r.count}" + ("" if r.steady else " (timed out)"),
            f"{r.wall_seconds:.0f}",
            f"{r.cpu_seconds:.1f}",
            f"{r.peak_rss_mib:.0f}",
            f"{r.requests / r.count:.1f}",
            f"{r.writes / r.count:.1f}",
            f"{r.all_clients_requests / r.count:.0f}",
        ]
        for r in results
    ]
    headers = [
        "resources",
        "Ready",
        "apply -> steady s",
        "operator CPU s",
        "operator peak RSS MiB",
        "operator requests / resource",
        "operator writes / resource",
        "all clients' requests / resource",
    ]
    parts = [
        f"scale, {datetime.date.today()}: onnx, replicas 0, created at once; "
        "operator requests from the apiserver audit log",
        table(headers, rows),
    ]
    for r in results:
        detail = ", ".join(
            f"{k} {v / r.count:.2f}" for k, v in r.by_verb_resource.most_common() if v >= r.count / 10
        )
        parts.append(f"{r.count} resources, operator requests per resource by verb and resource: {detail}")
        if not r.steady:
            parts.append(f"{r.count} resources did not reach steady state; phases {dict(r.phases)}")
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--count", type=int, action="append", help="resources (repeatable; default 10 100 500)"
    )
    parser.add_argument(
        "--timeout", type=float, default=1500.0, help="seconds per count to reach steady state"
    )
    parser.add_argument("--workdir", type=Path, help="keep logs and the audit log here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        with test_ground(args.workdir or Path(tmp)) as ground:
            for count in args.count or DEFAULT_COUNTS:
                results.append(run_one(ground, count, args.timeout))
                print(report(results[-1:]), flush=True)
                # Each count starts on a clean cluster (the operator is restarted too).
                ground.cp.delete_namespace(f"bench-scale-{count}", wait=True, timeout=600)
    print("\n" + report(results), flush=True)


if __name__ == "__main__":
    main()
