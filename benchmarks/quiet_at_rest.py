"""Quiet at rest: API writes per minute once every resource is Ready and nothing changes.

N onnx-format TritonResNets (``--count``, default 50; ``--served`` of them,
default 1, with one Triton replica, the rest with ``replicas: 0``) are
created and brought to steady state (all Ready, no operator write for 10 s).
Then nothing is touched for ``--minutes`` (default 3) while the operator keeps
running (its periodic resync included), and the apiserver is asked who wrote:

* the operator's requests, from the audit log (its own user), by verb,
  resource and object: the target is zero writes;
* every client's writes, by user, for context (node heartbeats, leases);
* ``apiserver_request_total`` growth of mutating verbs from all clients.

    .venv/bin/python benchmarks/quiet_at_rest.py [--count 50] [--served 1] [--minutes 3]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _testground import (
    Ground,
    apply_all,
    log,
    phases,
    prepare_namespace,
    request_totals,
    table,
    test_ground,
    trn_manifest,
    verb_resource,
    wait_steady,
)
from testground.audit import WRITE_VERBS, count_by

NAMESPACE = "bench-quiet"


def run(ground: Ground, count: int, served: int, minutes: float, timeout: float) -> str:
    cp = ground.cp
    prepare_namespace(cp, NAMESPACE, ground.s3)
    manifests = [
        trn_manifest(
            NAMESPACE, f"r{i:03d}", f"m{i:03d}", ground.model_uri, ground.s3, replicas=1 if i < served else 0
        )
        for i in range(count)
    ]
    started = time.time()
    apply_all(cp, manifests)
    last_write, trns = wait_steady(ground, NAMESPACE, count, started, timeout)
    if last_write is None:
        return f"not at steady state after {timeout:.0f} s: {dict(phases(trns))}"
    log(f"steady {time.time() - started:.0f} s after apply; now watching for {minutes:g} min")

    before = request_totals(cp.apiserver_metrics())
    window_start = time.time()
    time.sleep(minutes * 60)
    window_end = time.time()
    after = request_totals(cp.apiserver_metrics())
    ground.audit.refresh()

    in_window = [e for e in ground.audit.events if window_start <= e.at <= window_end]
    operator = ground.audit.operator(window_start, window_end)
    operator_writes = [e for e in operator if e.is_write]
    per_minute = 1.0 / minutes
    metric_writes = sum(v for (verb, _), v in (after - before).items() if verb in WRITE_VERBS)

    parts = [
        f"quiet at rest, {datetime.date.today()}: {count} resources ({served} with a Triton replica) "
        f"Ready; {minutes:g} minutes with nothing changing; operator resync every "
        f"{ground.operator.env.get('TRITONRESNET_RESYNC_SECONDS', '?')} s",
        table(
            ["requests at rest", "per minute"],
            [
                ["operator writes (audit log)", f"{len(operator_writes) * per_minute:.1f}"],
                [
                    "operator reads (get/list/watch; a watch counts when it ends)",
                    f"{(len(operator) - len(operator_writes)) * per_minute:.1f}",
                ],
                [
                    "all clients' writes (audit log)",
                    f"{sum(1 for e in in_window if e.is_write) * per_minute:.1f}",
                ],
                [
                    "all clients' writes (apiserver_request_total)",
                    f"{metric_writes * per_minute:.1f}",
                ],
            ],
        ),
    ]
    if operator_writes:
        by_object = Counter(
            f"{e.verb} {e.resource} {e.namespace}/{e.name} -> {e.code}" for e in operator_writes
        )
        parts.append(
            "operator writes at rest (a bug: nothing changed):\n\n"
            + table(["verb resource object -> code", "count"], by_object.most_common(40))
        )
    parts.append(
        "operator requests at rest by verb and resource:\n\n"
        + table(
            ["verb resource", "per minute"],
            [[k, f"{v * per_minute:.1f}"] for k, v in count_by(operator, verb_resource).most_common()],
        )
    )
    others = Counter(f"{e.user}: {e.verb} {e.resource}" for e in in_window if e.is_write and e.user)
    parts.append(
        "every client's writes at rest (context; not the operator's):\n\n"
        + table(
            ["user: verb resource", "per minute"],
            [[k, f"{v * per_minute:.1f}"] for k, v in others.most_common(20)],
        )
    )
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=50, help="resources (default 50)")
    parser.add_argument("--served", type=int, default=1, help="how many run one Triton replica (default 1)")
    parser.add_argument("--minutes", type=float, default=3.0, help="minutes at rest to watch (default 3)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to reach steady state")
    parser.add_argument("--workdir", type=Path, help="keep logs and the audit log here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-quiet-") as tmp:
        with test_ground(args.workdir or Path(tmp)) as ground:
            print(
                run(ground, args.count, min(args.served, args.count), args.minutes, args.timeout), flush=True
            )


if __name__ == "__main__":
    main()
