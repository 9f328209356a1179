"""gpuKinds Auto: the GPU kinds of the fleet -> builds, the version's plans -> Triton's node affinity.

Pure: Nodes are dicts as the API server returns them, read through ``fleet.node_view`` as the
runtime reads them; the builder's results are its JSON contract (no TensorRT runs here: a
result only says which compute capability a plan was built on).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from tritonresnet.api import names
from tritonresnet.controller import fleet
from tritonresnet.controller.reconcile import Observed, Plan, plan
from tritonresnet.controller.runtime import Runtime
from tritonresnet.controller.settings import Settings
from tritonresnet_builder.contract import Result, plan_filename
from unit.worlds import INPUTS, NOW, OUTPUTS, SETTINGS, finished, publish_result, resource, st, step

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def node(
    name: str, product: str = "", cc: str = "", *, taints: list[dict[str, str]] | None = None, **labels: str
) -> dict[str, Any]:
    meta_labels = {"kubernetes.io/hostname": name, **labels}
    if cc:
        major, minor = cc.split(".")
        meta_labels |= {
            fleet.PRODUCT_LABEL: product,
            fleet.COMPUTE_MAJOR_LABEL: major,
            fleet.COMPUTE_MINOR_LABEL: minor,
        }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": meta_labels},
        "spec": {"taints": [GPU_TAINT] if taints is None and cc else (taints or [])},
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": NOW}]},
    }


THREE_KINDS = [
    node("a10g-0", "NVIDIA-A10G", "8.6"),
    node("a10g-1", "NVIDIA-A10G", "8.6"),
    node("t4-0", "Tesla-T4", "7.5"),
    node("l4-0", "NVIDIA-L4", "8.9"),
    node("cpu-0"),
]


def views(nodes: list[dict[str, Any]]) -> tuple[fleet.FleetNode, ...]:
    return tuple(v for v in map(fleet.node_view, nodes) if v is not None)


def auto(targets: list[dict[str, Any]] | None = None, **serving: Any) -> dict[str, Any]:
    cr = resource(fmt="tensorrt", targets=targets)
    cr["spec"]["engine"]["gpuKinds"] = "Auto"
    cr["spec"]["serving"] |= serving
    return cr


def see(
    cr: dict[str, Any], objects: list[dict[str, Any]], pods: list[dict[str, Any]], nodes: Any
) -> Observed:
    children = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    return Observed(
        resource=cr,
        jobs={n: o for (k, n), o in children.items() if k == "Job"},
        pods=pods,
        children=children,
        peers=[cr],
        nodes=views(nodes),
        now=NOW,
    )


def builds(p: Plan) -> dict[str, dict[str, Any]]:
    """The build Jobs a plan applies, by target label."""
    return {
        o["metadata"]["labels"][names.LABEL_TARGET]: o
        for o in p.apply
        if o["kind"] == "Job" and "-build-" in o["metadata"]["name"]
    }


def build_result(key: str, cc: str) -> Result:
    return Result(
        ok=True,
        phase="build",
        engine_key=key,
        format="tensorrt",
        artifact=plan_filename(cc),
        compute_capability=cc,
        tensorrt_version="10.8.0.43",
        inputs=INPUTS,
        outputs=OUTPUTS,
    )


def finish_builds(
    objects: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    jobs: dict[str, dict[str, Any]],
    built_on: dict[str, str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every Job in ``jobs`` succeeded on the node ``built_on[target]`` (a GPU of its capability)."""
    done = {}
    for target, job in jobs.items():
        cc = f"{target[2]}.{target[3]}"
        finished_job, pod = finished(job, build_result(job["metadata"]["labels"][names.LABEL_ENGINE_KEY], cc))
        pod["spec"] = {"nodeName": built_on[target]}
        done[job["metadata"]["name"]] = finished_job
        pods = [*pods, pod]
    objects = [o for o in objects if o["metadata"]["name"] not in done] + list(done.values())
    return objects, pods


def publish(
    cr: dict[str, Any], objects: list[dict[str, Any]], pods: list[dict[str, Any]], p: Plan, version: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    (job,) = [o for o in p.apply if "-publish-" in o["metadata"]["name"]]
    done, pod = finished(job, publish_result(version, st(p)["versionKey"]))
    return [o for o in objects if o["metadata"]["name"] != job["metadata"]["name"]] + [done], [*pods, pod]


def affinity_terms(deployment: dict[str, Any]) -> list[tuple[str, str]]:
    required = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    out = []
    for term in required["nodeSelectorTerms"]:
        values = {e["key"]: e["values"] for e in term["matchExpressions"]}
        out.append((values[fleet.COMPUTE_MAJOR_LABEL][0], values[fleet.COMPUTE_MINOR_LABEL][0]))
    return out


# -- the view of a Node --------------------------------------------------------------------------


def test_node_view_keeps_gpu_nodes_only_and_a_heartbeat_gives_an_equal_view() -> None:
    assert fleet.node_view(node("cpu-0")) is None
    before = node("a10g-0", "NVIDIA-A10G", "8.6")
    after = copy.deepcopy(before)
    after["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-11-25T10:00:10Z"
    assert fleet.node_view(before) == fleet.node_view(after)
    view = fleet.node_view(before)
    assert view is not None and view.compute_capability == "8.6" and view.product == "NVIDIA-A10G"


def test_a_cordoned_node_reads_as_tainted_unschedulable() -> None:
    cordoned = node("a10g-0", "NVIDIA-A10G", "8.6")
    cordoned["spec"]["unschedulable"] = True
    view = fleet.node_view(cordoned)
    assert view is not None
    assert fleet.UNSCHEDULABLE_TAINT in {t["key"] for t in view.taints}


def test_gpu_kinds_group_products_by_capability_among_the_nodes_triton_may_land_on() -> None:
    nodes = [
        node("a10g-0", "NVIDIA-A10G", "8.6", pool="serving"),
        node("a6000-0", "NVIDIA-RTX-A6000", "8.6", pool="serving"),
        node("t4-0", "Tesla-T4", "7.5", pool="batch"),  # not in the serving pool
        node(
            "h100-0",
            "NVIDIA-H100",
            "9.0",
            pool="serving",
            taints=[{"key": "reserved", "effect": "NoSchedule"}],
        ),
    ]
    gpu = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    kinds = fleet.gpu_kinds(views(nodes), {"pool": "serving"}, gpu)
    assert [(k.compute_capability, k.products, k.nodes) for k in kinds] == [
        ("8.6", ("NVIDIA-A10G", "NVIDIA-RTX-A6000"), ("a10g-0", "a6000-0"))
    ]
    # Tolerating the reservation taint admits the H100; sorted by capability.
    tolerant = [*gpu, {"key": "reserved", "operator": "Exists"}]
    kinds = fleet.gpu_kinds(views(nodes), {"pool": "serving"}, tolerant)
    assert [k.compute_capability for k in kinds] == ["8.6", "9.0"]


def test_tolerations_match_taints_as_kubernetes_does() -> None:
    taint = {"key": "k", "value": "v", "effect": "NoSchedule"}
    assert fleet.tolerates([{"key": "k", "operator": "Equal", "value": "v"}], taint)
    assert not fleet.tolerates([{"key": "k", "operator": "Equal", "value": "w"}], taint)
    assert fleet.tolerates([{"key": "k", "operator": "Exists", "effect": "NoSchedule"}], taint)
    assert not fleet.tolerates([{"key": "k", "operator": "Exists", "effect": "NoExecute"}], taint)
    assert fleet.tolerates([{"operator": "Exists"}], taint)
    assert not fleet.tolerates([], taint)


# -- the life of an Auto resource ------------------------------------------------------------------


def test_three_capabilities_give_three_pinned_builds_one_version_and_triton_requires_exactly_those() -> None:
    cr = auto()
    p = plan(see(cr, [], [], THREE_KINDS), SETTINGS)
    jobs = builds(p)
    assert sorted(jobs) == ["sm75", "sm86", "sm89"]
    for target, job in jobs.items():
        selector = job["spec"]["template"]["spec"]["nodeSelector"]
        assert selector == {fleet.COMPUTE_MAJOR_LABEL: target[2], fleet.COMPUTE_MINOR_LABEL: target[3]}
    cr, objects, _, p = _served_version_one(cr, {"sm75": "t4-0", "sm86": "a10g-1", "sm89": "l4-0"})

    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert affinity_terms(deployment) == [("7", "5"), ("8", "6"), ("8", "9")]
    assert deployment["metadata"]["annotations"]["tritonresnet.io/compute-capabilities"] == "7.5,8.6,8.9"
    targets = {t["name"]: t for t in st(p)["targets"]}
    assert {n: (t["computeCapability"], t["node"]) for n, t in targets.items()} == {
        "sm75": ("7.5", "t4-0"),
        "sm86": ("8.6", "a10g-1"),
        "sm89": ("8.9", "l4-0"),
    }
    assert st(p)["published"]["version"] == 1


def _served_version_one(
    cr: dict[str, Any] | None = None, built_on: dict[str, str] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], Plan]:
    """An Auto resource on THREE_KINDS from apply to version 1 deployed (builds on ``built_on``)."""
    cr = cr or auto()
    p = plan(see(cr, [], [], THREE_KINDS), SETTINGS)
    jobs = builds(p)
    cr, objects = step(cr, [], p)
    built_on = built_on or {"sm75": "t4-0", "sm86": "a10g-0", "sm89": "l4-0"}
    objects, pods = finish_builds(objects, [], jobs, built_on)
    p = plan(see(cr, objects, pods, THREE_KINDS), SETTINGS)
    cr, objects = step(cr, objects, p)
    objects, pods = publish(cr, objects, pods, p, version=1)
    p = plan(see(cr, objects, pods, THREE_KINDS), SETTINGS)
    cr, objects = step(cr, objects, p)
    return cr, objects, pods, p


def test_a_new_capability_joining_builds_once_reuses_the_other_plans_and_publishes_version_two() -> None:
    cr, objects, pods, before = _served_version_one()
    keys = {t["name"]: t["engineKey"] for t in st(before)["targets"]}
    joined = [*THREE_KINDS, node("h100-0", "NVIDIA-H100-80GB-HBM3", "9.0")]

    p = plan(see(cr, objects, pods, joined), SETTINGS)
    jobs = builds(p)
    assert sorted(jobs) == ["sm90"], "only the new capability is built"
    after = {t["name"]: t["engineKey"] for t in st(p)["targets"]}
    assert {n: k for n, k in after.items() if n != "sm90"} == keys, "the other plans keep their keys"
    assert st(p)["versionKey"] != st(before)["versionKey"]
    cr, objects = step(cr, objects, p)

    objects, pods = finish_builds(objects, pods, jobs, {"sm90": "h100-0"})
    p = plan(see(cr, objects, pods, joined), SETTINGS)
    cr, objects = step(cr, objects, p)
    objects, pods = publish(cr, objects, pods, p, version=2)
    p = plan(see(cr, objects, pods, joined), SETTINGS)
    (deployment,) = [o for o in p.apply if o["kind"] == "Deployment"]
    assert affinity_terms(deployment) == [("7", "5"), ("8", "6"), ("8", "9"), ("9", "0")]
    assert deployment["metadata"]["annotations"]["tritonresnet.io/model-version"] == "2"


def test_a_capability_leaving_changes_nothing() -> None:
    cr, objects, pods, before = _served_version_one()
    without_l4 = [n for n in THREE_KINDS if n["metadata"]["name"] != "l4-0"]
    p = plan(see(cr, objects, pods, without_l4), SETTINGS)
    assert p.apply == [] and p.delete == []
    assert st(p)["versionKey"] == st(before)["versionKey"]
    assert [t["name"] for t in st(p)["targets"]] == ["sm75", "sm86", "sm89"]


def test_a_capability_without_nodes_is_dropped_when_the_spec_changes() -> None:
    cr, objects, pods, _ = _served_version_one()
    cr = copy.deepcopy(cr)
    cr["spec"]["engine"]["precision"] = "bf16"
    without_l4 = [n for n in THREE_KINDS if n["metadata"]["name"] != "l4-0"]
    p = plan(see(cr, objects, pods, without_l4), SETTINGS)
    assert sorted(builds(p)) == ["sm75", "sm86"], "no build waits for a GPU kind that has gone"


def test_two_products_of_one_capability_share_one_plan_and_status_names_the_node() -> None:
    nodes = [node("a10g-0", "NVIDIA-A10G", "8.6"), node("a6000-0", "NVIDIA-RTX-A6000", "8.6")]
    cr = auto()
    p = plan(see(cr, [], [], nodes), SETTINGS)
    jobs = builds(p)
    assert sorted(jobs) == ["sm86"]
    cr, objects = step(cr, [], p)
    objects, pods = finish_builds(objects, [], jobs, {"sm86": "a6000-0"})
    p = plan(see(cr, objects, pods, nodes), SETTINGS)
    (target,) = st(p)["targets"]
    assert (target["state"], target["node"], target["computeCapability"]) == ("Built", "a6000-0", "8.6")


def test_hand_listed_targets_mix_in_and_a_capability_they_cover_is_not_built_twice() -> None:
    listed = [
        {"name": "t4", "nodeSelector": {fleet.PRODUCT_LABEL: "Tesla-T4"}},  # covers 7.5
        {"name": "a100", "nodeSelector": {fleet.PRODUCT_LABEL: "NVIDIA-A100"}},  # scales from zero: no node
    ]
    p = plan(see(auto(listed), [], [], THREE_KINDS), SETTINGS)
    assert sorted(builds(p)) == ["a100", "sm86", "sm89", "t4"]


def test_the_serving_node_selector_narrows_the_fleet_and_pins_the_builds() -> None:
    nodes = [
        node("a10g-0", "NVIDIA-A10G", "8.6", pool="serving"),
        node("t4-0", "Tesla-T4", "7.5", pool="batch"),
    ]
    p = plan(see(auto(nodeSelector={"pool": "serving"}), [], [], nodes), SETTINGS)
    jobs = builds(p)
    assert sorted(jobs) == ["sm86"]
    assert jobs["sm86"]["spec"]["template"]["spec"]["nodeSelector"]["pool"] == "serving"


def test_no_gpu_node_waits_for_one_and_builds_nothing() -> None:
    p = plan(see(auto(), [], [], [node("cpu-0")]), SETTINGS)
    assert builds(p) == {} and not [o for o in p.apply if o["kind"] == "Job"]
    assert st(p)["phase"] == "Pending"
    ready = next(c for c in st(p)["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "WaitingForNode" and "gpuKinds Auto" in ready["message"]


def test_an_empty_view_of_the_nodes_takes_no_running_build_away() -> None:
    """The first Node events may come after a pass: no kind seen means wait, not delete."""
    cr = auto()
    p = plan(see(cr, [], [], THREE_KINDS), SETTINGS)
    cr, objects = step(cr, [], p)
    p = plan(see(cr, objects, [], []), SETTINGS)
    assert p.delete == [] and p.apply == []
    assert st(p)["phase"] == "Pending"


def test_listed_mode_ignores_the_fleet_and_renders_no_node_affinity() -> None:
    cr = resource(fmt="tensorrt")
    p = plan(see(cr, [], [], THREE_KINDS), SETTINGS)
    assert sorted(builds(p)) == ["default"]


# -- the runtime's one view of the nodes -------------------------------------------------------------


def test_runtime_wakes_auto_resources_only_when_a_nodes_gpu_view_changes() -> None:
    runtime = Runtime(object(), Settings(), warmup_seconds=0.0, wall_clock=lambda: NOW)  # type: ignore[arg-type]
    listed = resource("listed", fmt="tensorrt")
    fleet_cr = auto()
    fleet_cr["metadata"] |= {"name": "fleet", "uid": "uid-fleet"}

    async def drain() -> list[tuple[str, str]]:
        taken = []
        while runtime.pending:
            key = await runtime.queue.get()
            runtime.queue.done(key)
            taken.append(key)
        return sorted(taken)

    async def scenario() -> list[list[tuple[str, str]]]:
        runtime.observe_resource("ADDED", listed)
        runtime.observe_resource("ADDED", fleet_cr)
        await drain()
        woken = []
        gpu = node("a10g-0", "NVIDIA-A10G", "8.6")
        runtime.observe_node("ADDED", gpu)
        woken.append(await drain())
        heartbeat = copy.deepcopy(gpu)
        heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-11-25T10:00:10Z"
        runtime.observe_node("MODIFIED", heartbeat)
        woken.append(await drain())
        runtime.observe_node("ADDED", node("cpu-0"))
        woken.append(await drain())
        runtime.observe_node("DELETED", gpu)
        woken.append(await drain())
        return woken

    woken = asyncio.run(scenario())
    assert woken == [[("vision", "fleet")], [], [], [("vision", "fleet")]]
    assert runtime.fleet_nodes() == ()
    snap = runtime.snapshot(("vision", "listed"))
    assert snap is not None and snap.nodes == ()


# -- hardwareCompatibility AmperePlus: one plan for every GPU of 8.0 and up --------------------------


def ampere_plus(**serving: Any) -> dict[str, Any]:
    cr = auto(**serving)
    cr["spec"]["engine"]["hardwareCompatibility"] = "AmperePlus"
    return cr


def test_ampere_plus_builds_once_for_every_capability_of_8_0_and_up_and_once_per_older_one() -> None:
    p = plan(see(ampere_plus(), [], [], THREE_KINDS), SETTINGS)
    jobs = builds(p)
    assert sorted(jobs) == ["sm75", "sm86"], "8.6 and 8.9 share one build, on the lowest present"
    args = jobs["sm86"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--hardware-compatibility=ampere_plus" in args
    listed = plan(see(auto(), [], [], THREE_KINDS), SETTINGS)
    assert all(
        not a.startswith("--hardware-compatibility")
        for j in builds(listed).values()
        for a in j["spec"]["template"]["spec"]["containers"][0]["args"]
    )


def test_ampere_plus_version_pins_triton_to_8_0_and_up_and_a_newer_kind_joining_rebuilds_nothing() -> None:
    cr, objects, pods, p = _served_version_one(ampere_plus(), {"sm75": "t4-0", "sm86": "a10g-0"})
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    terms = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms[1] == {
        "matchExpressions": [{"key": fleet.COMPUTE_MAJOR_LABEL, "operator": "Gt", "values": ["7"]}]
    }
    assert terms[0] == {
        "matchExpressions": [
            {"key": fleet.COMPUTE_MAJOR_LABEL, "operator": "In", "values": ["7"]},
            {"key": fleet.COMPUTE_MINOR_LABEL, "operator": "In", "values": ["5"]},
        ]
    }
    # A Hopper node joins: its GPU runs the AMPERE_PLUS plan; nothing is built, nothing changes.
    joined = [*THREE_KINDS, node("h100-0", "NVIDIA-H100", "9.0")]
    again = plan(see(cr, objects, pods, joined), SETTINGS)
    assert again.apply == [] and st(again)["versionKey"] == st(p)["versionKey"]
    # An 8.0 joining (lower than the build's 8.6) rebuilds nothing either: the build stays on 8.6.
    lower = plan(see(cr, objects, pods, [*joined, node("a100-0", "NVIDIA-A100", "8.0")]), SETTINGS)
    assert lower.apply == []


def test_hardware_level_is_ampere_plus_only_on_ampere_or_newer_with_standin_tensorrt(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """STAND-IN TensorRT and GPU (testground.standin_tensorrt): the level the builder sets, and
    what it records; a T4 (7.5) gets a plan of its own level instead of a refused build."""
    import sys

    from testground.models import ensure_models
    from testground.standin_tensorrt import tensorrt as standin
    from tritonresnet_builder import cuda_device, tensorrt_engine

    monkeypatch.setitem(sys.modules, "tensorrt", standin)
    onnx = ensure_models().path("resnet18")
    built = {}
    for cc in ("8.6", "7.5"):
        monkeypatch.setattr(cuda_device, "first_device", lambda cc=cc: cuda_device.Device("stand-in", cc))
        out = tmp_path / cc
        out.mkdir()
        request = tensorrt_engine.PlanRequest(
            onnx, out, tmp_path / "cache", "fp16", 8, 4, 1024, hardware_compatibility="ampere_plus"
        )
        built[cc] = tensorrt_engine.build_plan(request)
    assert built["8.6"].hardware_compatibility == "ampere_plus"
    assert b"hardware compatibility AMPERE_PLUS" in built["8.6"].path.read_bytes()[:200]
    assert built["7.5"].hardware_compatibility == "none"
    assert b"hardware compatibility NONE" in built["7.5"].path.read_bytes()[:200]
