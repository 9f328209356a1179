"""What the operator's one view of the GPU nodes costs on the event loop (gpuKinds Auto).

In-process, no cluster: the runtime's ``observe_node`` is fed what a kubelet fleet sends
(status heartbeats of every node, then one node of a new GPU kind joining) with many
TritonResNets cached, some in gpuKinds Auto. It prints, per fleet size, the event loop's
time per Node event and how many resources each kind of event woke, and the time of one
pure plan of an Auto resource against the whole fleet (``fleet.gpu_kinds`` + targets).

    .venv/bin/python benchmarks/fleet_nodes.py
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from tritonresnet.api import names  # noqa: E402
from tritonresnet.controller import fleet  # noqa: E402
from tritonresnet.controller.reconcile import Observed, plan  # noqa: E402
from tritonresnet.controller.runtime import Runtime  # noqa: E402
from tritonresnet.controller.settings import Settings  # noqa: E402

KINDS = (("NVIDIA-A10G", "8.6"), ("Tesla-T4", "7.5"), ("NVIDIA-L4", "8.9"), ("NVIDIA-A100", "8.0"))
RESOURCES = 1000
AUTO_SHARE = 4  # every fourth resource is gpuKinds Auto


def node(index: int, product: str, cc: str, beat: int) -> dict[str, Any]:
    major, minor = cc.split(".")
    return {
        "metadata": {
            "name": f"gpu-{index}",
            "labels": {
                "kubernetes.io/hostname": f"gpu-{index}",
                fleet.PRODUCT_LABEL: product,
                fleet.COMPUTE_MAJOR_LABEL: major,
                fleet.COMPUTE_MINOR_LABEL: minor,
            },
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": f"beat-{beat}"}]},
    }


def resource(index: int) -> dict[str, Any]:
    engine: dict[str, Any] = {"gpuKinds": "Auto"} if index % AUTO_SHARE == 0 else {}
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": f"r{index}", "namespace": "bench", "uid": f"u{index}", "generation": 1},
        "spec": {
            "source": {"uri": "s3://models/resnet50/model.onnx"},
            "model": {"format": "tensorrt"},
            "engine": engine,
            "repository": {"claimName": "models"},
        },
        "status": {"observedGeneration": 1},
    }


def drain(runtime: Runtime) -> int:
    woken = len(runtime.queue.queued)
    runtime.queue = type(runtime.queue)()
    return woken


def measure(fleet_size: int) -> tuple[float, int, float, int, float]:
    runtime = Runtime(object(), Settings(), warmup_seconds=0.0)  # type: ignore[arg-type]
    for i in range(RESOURCES):
        runtime.resources[("bench", f"r{i}")] = resource(i)
    nodes = [node(i, *KINDS[i % 3], beat=0) for i in range(fleet_size)]  # three kinds at first
    for body in nodes:
        runtime.observe_node(None, body)
    drain(runtime)

    started = time.perf_counter()
    for body in nodes:
        beat = copy.deepcopy(body)
        beat["status"]["conditions"][0]["lastHeartbeatTime"] = "beat-1"
        runtime.observe_node("MODIFIED", beat)
    heartbeat = (time.perf_counter() - started) / fleet_size
    heartbeat_woken = drain(runtime)

    started = time.perf_counter()
    runtime.observe_node("ADDED", node(fleet_size, *KINDS[3], beat=0))
    joined = time.perf_counter() - started
    joined_woken = drain(runtime)

    auto = resource(0)
    observed = Observed(resource=auto, peers=[auto], nodes=runtime.fleet_nodes())
    started = time.perf_counter()
    result = plan(observed, Settings())
    planned = time.perf_counter() - started
    assert len([o for o in result.apply if o["kind"] == "Job"]) == 4, "one build per capability"
    return heartbeat, heartbeat_woken, joined, joined_woken, planned


def main() -> None:
    print(f"{RESOURCES} TritonResNets cached, {RESOURCES // AUTO_SHARE} of them gpuKinds Auto")
    columns = ("GPU nodes", "per heartbeat event", "resources woken by all heartbeats", "new kind joins")
    print("| " + " | ".join((*columns, "woken", "one Auto plan")) + " |")
    print("|---|---|---|---|---|---|")
    for size in (100, 1000, 5000):
        beat, beat_woken, joined, joined_woken, planned = measure(size)
        print(
            f"| {size} | {beat * 1e6:.1f} µs | {beat_woken} | {joined * 1e3:.2f} ms | {joined_woken} "
            f"| {planned * 1e3:.1f} ms |"
        )


if __name__ == "__main__":
    main()
