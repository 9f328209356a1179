"""The operator's decisions as pure functions: spec + what exists -> children + status.

Each test builds the world a step of the lifecycle would leave behind (Jobs,
pods with termination messages, a Deployment) and checks what ``plan`` wants,
with no cluster: the cluster-level behaviour is covered in tests/e2e.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import pytest
from tritonresnet.api import names
from tritonresnet.api import status as c
from tritonresnet.api.status import status_patch
from tritonresnet.controller.children import (
    MODEL_IO_ANNOTATION,
    MODEL_VERSION_ANNOTATION,
    served_from_deployment,
    with_applied_hash,
)
from tritonresnet.controller.observe import EndpointCheck
from tritonresnet.controller.reconcile import plan, with_apply_failures
from tritonresnet_builder.contract import AccuracyTolerance, Failure, ReferenceAnswers, Result, SourceFile
from unit.worlds import (
    NOW,
    SERVICE,
    SETTINGS,
    build_result,
    condition,
    find,
    finished,
    kinds,
    lifecycle_to_ready,
    publish_result,
    resource,
    rolled_out,
    st,
    step,
    world,
)


def test_new_resource_starts_one_build_job_per_target_and_reports_building() -> None:
    p = plan(world(resource()), SETTINGS)
    jobs = [o for o in p.apply if o["kind"] == "Job"]
    assert len(jobs) == 1 and "-build-" in jobs[0]["metadata"]["name"]
    assert st(p)["phase"] == c.BUILDING
    assert condition(p, c.ENGINE_BUILT)["status"] == "False"
    assert condition(p, c.READY)["status"] == "False"
    assert condition(p, c.RECONCILING)["status"] == "True"
    assert all(cond["observedGeneration"] == 1 for cond in st(p)["conditions"])
    assert not any(o["kind"] == "Deployment" for o in p.apply)


def test_tensorrt_with_two_targets_builds_two_jobs_with_distinct_names() -> None:
    targets = [
        {"name": "a10g", "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A10G"}},
        {"name": "t4", "nodeSelector": {"nvidia.com/gpu.product": "Tesla-T4"}},
    ]
    p = plan(world(resource(fmt="tensorrt", targets=targets)), SETTINGS)
    jobs = [o for o in p.apply if o["kind"] == "Job"]
    assert len({j["metadata"]["name"] for j in jobs}) == 2
    assert [t["name"] for t in st(p)["targets"]] == ["a10g", "t4"]


def test_repeated_pass_with_the_same_world_writes_nothing() -> None:
    cr = resource()
    first = plan(world(cr), SETTINGS)
    cr, objects = step(cr, [], first)
    second = plan(world(cr, objects), SETTINGS)
    assert second.apply == []
    assert status_patch(cr["status"], second.status) == {}
    assert second.events == []


def test_job_names_do_not_depend_on_status_so_a_restart_never_duplicates_a_job() -> None:
    cr = resource()
    before = kinds(plan(world(cr), SETTINGS))
    after_restart = kinds(plan(world({**cr, "status": {}}), SETTINGS))
    assert before == after_restart


def test_walk_to_ready_publishes_then_deploys_the_published_version_and_verifies() -> None:
    _, objects, _, p = lifecycle_to_ready()
    assert st(p)["phase"] == c.PHASE_READY
    assert condition(p, c.READY)["status"] == "True"
    assert condition(p, c.STALLED)["status"] == "False"
    assert st(p)["modelVersion"] == 1
    assert st(p)["endpoints"] == ["10.1.0.5:8000"]
    dep = next(o for o in objects if o["kind"] == "Deployment")
    assert dep["metadata"]["annotations"][MODEL_VERSION_ANNOTATION] == "1"
    assert ("Normal", "Verified") in [(t, r) for t, r, _ in p.events]


def test_failed_verification_keeps_ready_false_with_the_endpoint_message() -> None:
    cr, objects, pods, _ = lifecycle_to_ready()
    bad = {"10.1.0.5:8000": EndpointCheck("10.1.0.5:8000", False, "model resnet50 version 1 is not ready")}
    p = plan(world(cr, objects, pods, verification=bad), SETTINGS)
    assert condition(p, c.READY)["status"] == "False"
    assert "not ready" in condition(p, c.READY)["message"]


def _answered(*endpoints: str) -> dict[str, EndpointCheck]:
    return {e: EndpointCheck(e, True, "answered") for e in endpoints}


def test_ready_needs_the_service_to_answer_as_a_client_reaches_it_by_its_dns_name() -> None:
    _, _, _, p = lifecycle_to_ready()
    ready = condition(p, c.READY)
    assert ready["status"] == "True"
    assert ready["message"] == f"1 endpoint(s) and the Service {SERVICE} answered at version 1"
    assert st(p)["endpoints"] == ["10.1.0.5:8000"]  # the pods; the Service is not one of them


def test_a_service_that_does_not_answer_while_every_pod_does_is_ready_false_naming_the_service() -> None:
    cr, objects, pods, _ = lifecycle_to_ready()
    checks = {
        **_answered("10.1.0.5:8000"),
        SERVICE: EndpointCheck(SERVICE, False, "no answer within 20 s"),
    }
    p = plan(world(cr, objects, pods, verification=checks), SETTINGS)
    ready = condition(p, c.READY)
    assert (ready["status"], ready["reason"]) == ("False", c.VERIFICATION_FAILED.name)
    assert ready["message"] == f"Service {SERVICE}: no answer within 20 s"
    assert st(p)["endpoints"] == []


def test_a_failed_pod_is_said_at_once_while_the_service_is_still_being_checked() -> None:
    cr, objects, pods, _ = lifecycle_to_ready()
    bad = {"10.1.0.5:8000": EndpointCheck("10.1.0.5:8000", False, "model resnet50 version 1 is not ready")}
    p = plan(world(cr, objects, pods, verification=bad), SETTINGS)
    assert condition(p, c.READY)["message"] == "10.1.0.5:8000: model resnet50 version 1 is not ready"
    assert p.verify is not None and SERVICE in p.verify.endpoints  # and the Service's check is asked for


def test_with_verify_service_cluster_ip_the_service_is_checked_at_its_cluster_ip() -> None:
    cr, objects, pods, _ = lifecycle_to_ready()
    settings = replace(SETTINGS, verify_service="cluster-ip")
    service = next(o for o in objects if o["kind"] == "Service")
    p = plan(world(cr, objects, pods, verification=_answered("10.1.0.5:8000")), settings)
    assert condition(p, c.READY)["message"] == "waiting for the Service's ClusterIP"
    assigned = copy.deepcopy(service)
    assigned["spec"]["clusterIP"] = "10.96.0.40"
    objects = [o for o in objects if o is not service] + [assigned]
    p = plan(world(cr, objects, pods, verification=_answered("10.1.0.5:8000")), settings)
    assert p.verify is not None and p.verify.endpoints == ("10.1.0.5:8000", "10.96.0.40:8000")
    p = plan(world(cr, objects, pods, verification=_answered("10.1.0.5:8000", "10.96.0.40:8000")), settings)
    assert condition(p, c.READY)["message"] == (
        "1 endpoint(s) and the Service 10.96.0.40:8000 answered at version 1"
    )


def test_with_verify_service_off_the_pods_alone_make_it_ready() -> None:
    cr, objects, pods, _ = lifecycle_to_ready()
    p = plan(
        world(cr, objects, pods, verification=_answered("10.1.0.5:8000")),
        replace(SETTINGS, verify_service="off"),
    )
    ready = condition(p, c.READY)
    assert (ready["status"], ready["message"]) == ("True", "1 endpoint(s) answered at version 1")


def _running_unready(
    cr: dict[str, Any], objects: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The served world with its one Triton pod running but not ready (its probe failing)."""
    dep = next(o for o in objects if o["kind"] == "Deployment")
    waiting = copy.deepcopy(dep)
    waiting["status"] = {**waiting["status"], "readyReplicas": 0, "availableReplicas": 0}
    pod = next(p for p in pods if p["metadata"]["labels"].get(names.LABEL_COMPONENT) == "triton")
    unready = copy.deepcopy(pod)
    unready["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    unready["status"]["containerStatuses"] = [
        {"name": "tritonserver", "ready": False, "state": {"running": {}}}
    ]
    others = [o for o in objects if o is not dep]
    return [*others, waiting], [*(p for p in pods if p is not pod), unready]


def test_a_running_triton_pod_that_is_not_ready_is_asked_why_and_its_load_failure_is_said() -> None:
    """Item 6 of the readiness issue: Triton's reason reaches status while its pod is unready."""
    cr, objects, pods, _ = lifecycle_to_ready()
    objects, pods = _running_unready(cr, objects, pods)
    p = plan(world(cr, objects, pods), SETTINGS)
    assert p.verify is not None and p.verify.endpoints == ("10.1.0.5:8000",)
    assert p.verify.expected.diagnose, "an unready pod is diagnosed, never taken as serving"
    reason = "server is not ready: Triton says version 1 is UNAVAILABLE: unable to load model.plan"
    failed = {
        "10.1.0.5:8000": EndpointCheck("10.1.0.5:8000", False, reason, unavailable=True, diagnostic=True)
    }
    p = plan(world(cr, objects, pods, verification=failed), SETTINGS)
    ready = condition(p, c.READY)
    assert ready["status"] == "False" and ready["reason"] == c.VERIFICATION_FAILED.name
    assert ready["message"] == f"10.1.0.5:8000: {reason}"
    assert p.verify is None, "a known diagnosis is re-checked by the runtime's schedule, not asked again"


def test_a_triton_pod_still_loading_is_a_rollout_under_way_not_a_failure() -> None:
    cr, objects, pods, _ = lifecycle_to_ready()
    objects, pods = _running_unready(cr, objects, pods)
    loading = "model resnet50 version 1 is not ready: Triton says version 1 is LOADING"
    checks = {"10.1.0.5:8000": EndpointCheck("10.1.0.5:8000", False, loading, diagnostic=True)}
    p = plan(world(cr, objects, pods, verification=checks), SETTINGS)
    assert condition(p, c.READY)["status"] == "False"
    assert condition(p, c.READY)["reason"] != c.VERIFICATION_FAILED.name


def test_a_diagnosis_made_while_unready_is_never_taken_for_a_check_of_the_ready_pod() -> None:
    cr, objects, pods, _ = lifecycle_to_ready()
    stale = {"10.1.0.5:8000": EndpointCheck("10.1.0.5:8000", True, "answered", diagnostic=True)}
    p = plan(world(cr, objects, pods, verification=stale), SETTINGS)
    assert condition(p, c.READY)["status"] == "False"
    assert p.verify is not None and not p.verify.expected.diagnose


def test_new_source_builds_version_two_while_version_one_keeps_serving() -> None:
    cr, objects, pods, _ = lifecycle_to_ready()
    changed = {
        **cr,
        "spec": {**cr["spec"], "source": {"uri": "s3://models/resnet50/v2.onnx"}},
        "metadata": {**cr["metadata"], "generation": 2},
    }
    p = plan(world(changed, objects, pods), SETTINGS)
    new_jobs = [o for o in p.apply if o["kind"] == "Job"]
    assert len(new_jobs) == 1
    assert not any(o["kind"] == "Deployment" for o in p.apply), "the served Deployment must not change yet"
    assert st(p)["modelVersion"] == 1
    assert st(p)["phase"] == c.BUILDING
    assert "version 1 keeps serving" in st(p)["message"]


def test_failed_build_leaves_served_version_untouched_and_reports_builder_message() -> None:
    cr, objects, pods, _ = lifecycle_to_ready()
    changed = {
        **cr,
        "spec": {**cr["spec"], "source": {"uri": "s3://models/resnet50/broken.onnx"}},
        "metadata": {**cr["metadata"], "generation": 2},
    }
    p = plan(world(changed, objects, pods), SETTINGS)
    changed, objects = step(changed, objects, p)
    job = next(o for o in p.apply if o["kind"] == "Job")
    failure = Result(
        ok=False,
        phase="build",
        exit_code=3,
        error=Failure(
            "InvalidOnnx", "s3://models/resnet50/broken.onnx is not an ONNX model", "spec.source.uri"
        ),
    )
    failed_job, failed_pod = finished(job, failure, ok=False)
    objects = [o for o in objects if o["metadata"]["name"] != job["metadata"]["name"]] + [failed_job]
    p = plan(world(changed, objects, [*pods, failed_pod]), SETTINGS)
    assert st(p)["phase"] == c.DEGRADED
    assert condition(p, c.ENGINE_BUILT)["reason"] == "BuildFailed"
    assert "is not an ONNX model" in condition(p, c.ENGINE_BUILT)["message"]
    assert condition(p, c.STALLED)["status"] == "True"
    assert st(p)["modelVersion"] == 1
    assert not any(o["kind"] in ("Deployment", "Job") for o in p.apply)
    assert ("Warning", "BuildFailed") in [(t, r) for t, r, _ in p.events]


def test_scale_changes_only_the_deployment_replicas() -> None:
    cr, objects, pods, _ = lifecycle_to_ready()
    scaled = {
        **cr,
        "spec": {**cr["spec"], "serving": {**cr["spec"]["serving"], "replicas": 3}},
        "metadata": {**cr["metadata"], "generation": 2},
    }
    p = plan(world(scaled, objects, pods), SETTINGS)
    assert [o["kind"] for o in p.apply] in (["Deployment"], ["Deployment", "PodDisruptionBudget"])
    dep = next(o for o in p.apply if o["kind"] == "Deployment")
    old = next(o for o in objects if o["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["template"] == old["spec"]["template"]
    assert condition(p, c.READY)["status"] == "False"


def test_restart_with_status_lost_and_jobs_gone_keeps_serving_without_new_jobs() -> None:
    cr, objects, pods, _ = lifecycle_to_ready()
    only_serving = [o for o in objects if o["kind"] != "Job"]
    p = plan(
        world(
            {**cr, "status": {}},
            only_serving,
            [x for x in pods if x["metadata"]["labels"].get(names.LABEL_COMPONENT) == "triton"],
        ),
        SETTINGS,
    )
    assert not any(o["kind"] == "Job" for o in p.apply)
    assert st(p)["modelVersion"] == 1
    assert p.verify is not None  # re-proves the endpoints instead of trusting memory


def test_invalid_spec_is_failed_and_stalled_naming_the_field_and_creates_nothing() -> None:
    cr = resource()
    cr["spec"]["engine"]["maxBatchSize"] = -1
    p = plan(world(cr), SETTINGS)
    assert p.apply == [] and p.delete == []
    assert st(p)["phase"] == c.FAILED
    assert condition(p, c.STALLED)["status"] == "True"
    assert "spec.engine.maxBatchSize" in condition(p, c.READY)["message"]


def test_second_resource_with_the_same_model_on_the_same_volume_is_refused() -> None:
    first = resource("first", created="2026-11-25T08:00:00Z")
    second = resource("second", created="2026-11-25T09:00:00Z")
    p = plan(world(second, peers=[first]), SETTINGS)
    assert p.apply == []
    assert condition(p, c.READY)["reason"] == "ModelNameConflict"
    assert "first" in st(p)["message"]
    assert st(plan(world(first, peers=[second]), SETTINGS))["phase"] == c.BUILDING


def test_unschedulable_builder_pod_is_reported_as_waiting_for_a_node() -> None:
    cr = resource()
    p = plan(world(cr), SETTINGS)
    cr, objects = step(cr, [], p)
    job = next(o for o in objects if o["kind"] == "Job")
    pod = {
        "kind": "Pod",
        "metadata": {"name": "b-1", "labels": {"job-name": job["metadata"]["name"]}},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/5 nodes are available: 5 Insufficient nvidia.com/gpu.",
                }
            ],
        },
    }
    p = plan(world(cr, objects, [pod]), SETTINGS)
    assert st(p)["phase"] == c.PENDING
    assert "Insufficient nvidia.com/gpu" in st(p)["message"]


def test_applied_hash_annotation_makes_unchanged_children_current() -> None:
    p = plan(world(resource()), SETTINGS)
    for obj in p.apply:
        assert obj == with_applied_hash(obj)


@pytest.mark.parametrize("replicas", [0])
def test_scaled_to_zero_is_ready_without_endpoints(replicas: int) -> None:
    cr, objects, _, _ = lifecycle_to_ready()
    zero = {**cr, "spec": {**cr["spec"], "serving": {**cr["spec"]["serving"], "replicas": replicas}}}
    p = plan(world(zero, objects, []), SETTINGS)
    cr2, objects2 = step(zero, objects, p)
    dep = next(o for o in objects2 if o["kind"] == "Deployment")
    objects2 = [o for o in objects2 if o["kind"] != "Deployment"] + [rolled_out(dep, replicas=0)]
    p = plan(world(cr2, objects2, []), SETTINGS)
    assert condition(p, c.READY)["status"] == "True"
    assert st(p)["endpoints"] == []


def _with_spec(cr: dict[str, Any], generation: int, **serving: Any) -> dict[str, Any]:
    return {
        **cr,
        "spec": {**cr["spec"], "serving": {**cr["spec"]["serving"], **serving}},
        "metadata": {**cr["metadata"], "generation": generation},
    }


def _triton_image(obj: dict[str, Any]) -> str:
    return str(obj["spec"]["template"]["spec"]["containers"][0]["image"])


def test_new_release_leaves_the_served_version_on_its_own_release_until_the_new_one_is_published() -> None:
    """Plans load only in the Triton of the release they were built with: the image follows the version."""
    cr, objects, pods, _ = lifecycle_to_ready()
    served = next(o for o in objects if o["kind"] == "Deployment")
    assert "25.01" in _triton_image(served)

    upgraded = _with_spec(cr, 2, release="25.02")
    p = plan(world(upgraded, objects, pods), SETTINGS)
    assert not any(o["kind"] == "Deployment" for o in p.apply), "image switched before the new engines exist"
    assert st(p)["phase"] == c.BUILDING and st(p)["modelVersion"] == 1

    scaled = _with_spec(upgraded, 3, replicas=2)
    p = plan(world(scaled, objects, pods), SETTINGS)
    dep = next(o for o in p.apply if o["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 2, "other serving changes still apply at once"
    assert "25.01" in _triton_image(dep) and "25.02" not in _triton_image(dep)
    assert dep["metadata"]["annotations"]["tritonresnet.io/release"] == "25.01"

    # The new release's engine and version 2 are published: now the image moves, with the version.
    scaled, objects = step(scaled, objects, p)
    build = next(o for o in p.apply if o["kind"] == "Job")
    build, build_pod = finished(build, build_result(build["metadata"]["labels"][names.LABEL_ENGINE_KEY]))
    objects = [o for o in objects if o["metadata"]["name"] != build["metadata"]["name"]] + [build]
    p = plan(world(scaled, objects, [*pods, build_pod]), SETTINGS)
    scaled, objects = step(scaled, objects, p)
    pub = next(o for o in p.apply if o["kind"] == "Job")
    pub, pub_pod = finished(pub, publish_result(2, st(p)["versionKey"]))
    objects = [o for o in objects if o["metadata"]["name"] != pub["metadata"]["name"]] + [pub]
    p = plan(world(scaled, objects, [*pods, build_pod, pub_pod]), SETTINGS)
    dep = next(o for o in p.apply if o["kind"] == "Deployment")
    assert "25.02" in _triton_image(dep)
    assert dep["spec"]["template"]["metadata"]["labels"][names.LABEL_MODEL_VERSION] == "2"


def test_reverted_spec_reports_the_targets_of_the_current_engines_not_the_abandoned_ones() -> None:
    cr, objects, pods, ready = lifecycle_to_ready()
    first = [(t["engineKey"], t["state"]) for t in st(ready)["targets"]]
    upgraded = _with_spec(cr, 2, release="25.02")
    p = plan(world(upgraded, objects, pods), SETTINGS)
    assert [t["engineKey"] for t in st(p)["targets"]] != [k for k, _ in first]
    upgraded, objects = step(upgraded, objects, p)

    reverted = _with_spec(upgraded, 3, release="25.01")
    p = plan(world(reverted, objects, pods), SETTINGS)
    assert [(t["engineKey"], t["state"]) for t in st(p)["targets"]] == first
    assert st(p)["published"]["version"] == 1


def test_refused_child_apply_is_reported_with_the_api_servers_message_and_keeps_other_conditions() -> None:
    cr = resource()
    p = plan(world(cr), SETTINGS)
    refused = ['Service resnet50: 500: failed to allocate a serviceIP for Service "resnet50": range is full']
    typed, events = with_apply_failures(cr, p.status, refused, NOW)
    status = typed.to_dict()
    ready = find(status["conditions"], c.READY)
    stalled = find(status["conditions"], c.STALLED)
    assert ready is not None and stalled is not None
    assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")
    assert "range is full" in ready["message"] and "Service resnet50" in status["message"]
    assert stalled["status"] == "True"
    assert [x["type"] for x in status["conditions"]] == list(c.CONDITION_ORDER)
    assert status["phase"] == c.FAILED
    assert ("Warning", "ApplyFailed") in [(t, r) for t, r, _ in events]
    assert status["versionKey"] == st(p)["versionKey"], "the rest of the planned status is kept"


# -- failures remembered, fixes picked up ----------------------------------------------------


def _failed_build() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], str]:
    """A new resource whose one build failed on the user's input (exit 3): (cr, objects, pods, job name)."""
    cr = resource()
    p = plan(world(cr), SETTINGS)
    cr, objects = step(cr, [], p)
    job = next(o for o in objects if o["kind"] == "Job")
    failure = Result(
        ok=False,
        phase="build",
        exit_code=3,
        error=Failure("AccessDenied", "s3://models/resnet50/model.onnx: access denied", "spec.source"),
    )
    failed_job, failed_pod = finished(job, failure, ok=False)
    objects = [failed_job]
    p = plan(world(cr, objects, [failed_pod]), SETTINGS)
    cr, _ = step(cr, objects, p)
    assert st(p)["targets"][0]["state"] == "Failed"
    return cr, objects, [failed_pod], job["metadata"]["name"]


def _with_source(cr: dict[str, Any], **source: Any) -> dict[str, Any]:
    return {
        **cr,
        "spec": {**cr["spec"], "source": {**cr["spec"]["source"], **source}},
        "metadata": {**cr["metadata"], "generation": cr["metadata"]["generation"] + 1},
    }


def test_failed_build_is_not_run_again_when_its_job_ttl_removes_the_job() -> None:
    cr, _, _, _ = _failed_build()
    p = plan(world(cr, [], []), SETTINGS)  # the Job and its pod are gone (ttlSecondsAfterFinished)
    assert not [o for o in p.apply if o["kind"] == "Job"], "a failure on the user's input was re-run by TTL"
    assert condition(p, c.ENGINE_BUILT)["reason"] == "BuildFailed"
    assert "access denied" in condition(p, c.READY)["message"]
    assert condition(p, c.STALLED)["status"] == "True"
    assert plan(world({**cr, "status": st(p)}, [], []), SETTINGS).apply == [], "and on every pass after"


def test_credentials_fix_after_the_ttl_runs_the_build_again() -> None:
    cr, _, _, job_name = _failed_build()
    fixed = _with_source(cr, credentialsSecret="s3-creds")
    p = plan(world(fixed, [], []), SETTINGS)
    (job,) = [o for o in p.apply if o["kind"] == "Job"]
    assert job["metadata"]["name"] == job_name  # the same engine, so the same name
    env = {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "AWS_ACCESS_KEY_ID" in env
    assert st(p)["targets"][0]["state"] == "Pending"


def test_credentials_fix_while_the_failed_job_exists_deletes_it_then_builds_again() -> None:
    cr, objects, pods, job_name = _failed_build()
    fixed = _with_source(cr, credentialsSecret="s3-creds")
    p = plan(world(fixed, objects, pods), SETTINGS)
    assert p.delete == [("batch/v1", "Job", job_name)]
    assert not [o for o in p.apply if o["kind"] == "Job"], "a Job's template cannot be changed in place"
    fixed, _ = step(fixed, objects, p)
    p = plan(world(fixed, [], []), SETTINGS)  # its deletion arrives
    assert [o["metadata"]["name"] for o in p.apply if o["kind"] == "Job"] == [job_name]


def test_retry_annotation_runs_a_failed_build_again_and_only_once_per_value() -> None:
    cr, _, _, job_name = _failed_build()
    retried = {**cr, "metadata": {**cr["metadata"], "annotations": {"tritonresnet.io/retry": "1"}}}
    p = plan(world(retried, [], []), SETTINGS)
    (job,) = [o for o in p.apply if o["kind"] == "Job"]
    assert job["metadata"]["name"] == job_name
    assert job["metadata"]["annotations"]["tritonresnet.io/retry"] == "1"
    # The same value again (a resync) after the rerun failed too: remembered, not run a third time.
    retried, _ = step(retried, [], p)
    again = Result(ok=False, phase="build", exit_code=3, error=Failure("AccessDenied", "still denied", ""))
    failed_job, failed_pod = finished(job, again, ok=False)
    p = plan(world(retried, [failed_job], [failed_pod]), SETTINGS)
    retried, _ = step(retried, [failed_job], p)
    assert not [o for o in plan(world(retried, [], []), SETTINGS).apply if o["kind"] == "Job"]


# -- drift --------------------------------------------------------------------------------


def _served_child(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind)


@pytest.mark.parametrize(
    ("kind", "edit"),
    [
        ("Service", lambda o: o["spec"].update(selector={"app": "shop"})),
        ("Service", lambda o: o["spec"]["selector"].update(x="y")),  # selects no pod any more
        ("Service", lambda o: o["spec"]["ports"][0].update(port=9999)),
        ("Deployment", lambda o: o["spec"]["template"]["spec"]["containers"][0].update(image="evil:latest")),
        ("Deployment", lambda o: o["spec"]["template"]["spec"]["containers"][0]["args"].append("--x")),
        ("Deployment", lambda o: o["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")),
        ("Deployment", lambda o: o["spec"]["template"]["spec"]["volumes"].pop()),
        ("PodDisruptionBudget", lambda o: o["spec"].update(maxUnavailable=0)),
    ],
)
def test_a_child_edited_by_hand_in_a_field_we_set_is_applied_again(kind: str, edit: Any) -> None:
    cr, objects, pods, _ = lifecycle_to_ready()
    child = copy.deepcopy(_served_child(objects, kind))
    edit(child)
    edited = [o for o in objects if o["kind"] != kind] + [child]
    p = plan(world(cr, edited, pods, verification={}), SETTINGS)
    restored = [o for o in p.apply if o["kind"] == kind]
    assert len(restored) == 1 and restored[0]["spec"] == _served_child(objects, kind)["spec"]


def test_server_defaults_and_canonical_quantities_are_not_drift() -> None:
    cr, objects, pods, ready = lifecycle_to_ready()
    live = copy.deepcopy(objects)
    dep = _served_child(live, "Deployment")
    main = dep["spec"]["template"]["spec"]["containers"][0]
    main["terminationMessagePath"] = "/dev/termination-log"  # a default the API server adds
    main["readinessProbe"]["httpGet"]["scheme"] = "HTTP"
    main["resources"] = {"limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "500m"}}
    _served_child(live, "Service")["spec"]["clusterIP"] = "10.0.0.7"
    ok = _answered(*st(ready)["endpoints"], SERVICE)
    p = plan(world(cr, live, pods, verification=ok), SETTINGS)
    assert p.apply == []


# -- names that are someone else's --------------------------------------------------------


def test_a_cached_child_owned_by_someone_else_is_never_written_nor_deleted_and_is_named() -> None:
    cr, objects, pods, _ = lifecycle_to_ready()
    svc = copy.deepcopy(_served_child(objects, "Service"))
    svc["metadata"]["ownerReferences"] = [
        {"kind": "Shop", "name": "shop", "uid": "other", "controller": True}
    ]
    svc["spec"]["selector"] = {"app": "shop"}
    p = plan(world(cr, [o for o in objects if o["kind"] != "Service"] + [svc], pods), SETTINGS)
    assert not [o for o in p.apply if o["kind"] == "Service"]
    ready = condition(p, c.READY)
    assert (ready["status"], ready["reason"]) == ("False", "NameConflict")
    assert "Service resnet50 exists and is not this TritonResNet's" in ready["message"]
    assert condition(p, c.STALLED)["status"] == "True"
    assert ("Warning", "NameConflict") in [(t, r) for t, r, _ in p.events]


def test_an_obsolete_job_that_is_not_ours_is_not_deleted() -> None:
    cr = resource()
    p = plan(world(cr), SETTINGS)
    cr, objects = step(cr, [], p)
    job = copy.deepcopy(next(o for o in objects if o["kind"] == "Job"))
    job["metadata"]["name"] = "resnet50-build-0000000000"  # an older spec's name, running
    ours = plan(world(cr, [*objects, job]), SETTINGS)
    assert ("batch/v1", "Job", "resnet50-build-0000000000") in ours.delete
    job["metadata"]["ownerReferences"] = []
    theirs = plan(world(cr, [*objects, job]), SETTINGS)
    assert ("batch/v1", "Job", "resnet50-build-0000000000") not in theirs.delete


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("CreateContainerConfigError", 'secret "s3-creds" not found'),
        ("ErrImagePull", "pull access denied for registry.example/tritonresnet-builder"),
        ("ImagePullBackOff", 'Back-off pulling image "registry.example/tritonresnet-builder:25.01"'),
    ],
)
def test_a_build_pod_that_cannot_start_is_reported_with_its_pod_reason_and_the_kubelets_words(
    reason: str, message: str
) -> None:
    cr = resource()
    p = plan(world(cr), SETTINGS)
    cr, objects = step(cr, [], p)
    job = next(o for o in objects if o["kind"] == "Job")
    pod = {
        "kind": "Pod",
        "metadata": {"name": "resnet50-build-x-7f", "labels": {"job-name": job["metadata"]["name"]}},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {"name": "builder", "state": {"waiting": {"reason": reason, "message": message}}}
            ],
        },
    }
    p = plan(world(cr, objects, [pod]), SETTINGS)
    ready = condition(p, c.READY)
    assert (ready["status"], ready["reason"]) == ("False", "PodStuck")
    assert f"resnet50-build-x-7f: {reason}: {message}" in ready["message"]
    assert condition(p, c.STALLED)["status"] == "True"
    assert st(p)["targets"][0]["state"] == "Stuck"
    assert ("Warning", "PodStuck") in [(t, r) for t, r, _ in p.events]


def test_verification_expects_the_served_versions_batching_not_the_new_specs() -> None:
    cr, objects, pods, _ = lifecycle_to_ready()
    unbatched = {
        **cr,
        "spec": {**cr["spec"], "engine": {"maxBatchSize": 0}},
        "metadata": {**cr["metadata"], "generation": 2},
    }
    p = plan(world(unbatched, objects, pods), SETTINGS)  # version 1 (batched) keeps serving
    assert p.verify is not None and p.verify.expected.version == 1
    assert p.verify.expected.batched is True


def test_empty_maps_and_false_the_api_server_leaves_out_are_no_drift() -> None:
    cr, objects, pods, ready = lifecycle_to_ready()
    live = copy.deepcopy(objects)
    dep = _served_child(live, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {}  # rendered empty, stored without it
    del pod["nodeSelector"]
    ok = _answered(*st(ready)["endpoints"], SERVICE)
    assert plan(world(cr, live, pods, verification=ok), SETTINGS).apply == []
    pod["nodeSelector"] = {"pool": "other"}
    assert [o["kind"] for o in plan(world(cr, live, pods, verification=ok), SETTINGS).apply] == ["Deployment"]


def test_status_reports_the_bytes_the_repository_uses_and_keeps_them_when_the_publish_job_goes() -> None:
    cr, objects, pods, ready = lifecycle_to_ready()
    assert st(ready)["published"]["repositoryBytes"] == 48_000_000
    no_jobs = [o for o in objects if o["kind"] != "Job"]
    triton = [x for x in pods if x["metadata"]["labels"].get(names.LABEL_COMPONENT) == "triton"]
    ok = _answered(*st(ready)["endpoints"], SERVICE)
    later = plan(world(cr, no_jobs, triton, verification=ok), SETTINGS)
    assert st(later)["published"]["repositoryBytes"] == 48_000_000


def test_every_fetched_file_and_its_digest_reach_status_and_a_second_pass_writes_nothing() -> None:
    """The builder's source_files (the model, then its external data) become the target's
    sourceFiles; read back from status they give the same status, so nothing is written at rest."""
    files = (
        SourceFile("model.onnx", "a" * 64, 1_200),
        SourceFile("model.onnx.data", "b" * 64, 46_000_000),
    )
    first = plan(world(resource()), SETTINGS)
    job = next(o for o in first.apply if o["kind"] == "Job")
    key = job["metadata"]["labels"][names.LABEL_ENGINE_KEY]
    built = replace(build_result(key), source_sha256="a" * 64, source_files=files)
    cr, objects, pods, p = lifecycle_to_ready(build=built)
    (target,) = st(p)["targets"]
    assert target["sourceSha256"] == "a" * 64
    assert target["sourceFiles"] == [
        {"name": "model.onnx", "sha256": "a" * 64, "bytes": 1_200},
        {"name": "model.onnx.data", "sha256": "b" * 64, "bytes": 46_000_000},
    ]
    answered = _answered("10.1.0.5:8000", SERVICE)
    again = plan(world(cr, objects, pods, verification=answered), SETTINGS)
    assert again.apply == []
    assert status_patch(cr["status"], again.status) == {}


def test_a_build_that_reports_no_files_has_no_source_files_in_status() -> None:
    """A builder from before the field (or a result without room for the list) reports none:
    status leaves the field out instead of listing nothing."""
    _, _, _, p = lifecycle_to_ready()
    (target,) = st(p)["targets"]
    assert "sourceFiles" not in target


# -- the accuracy gate at verification (format onnx) ---------------------------------------

REFERENCE = ReferenceAnswers(
    seed=7, samples=2, top5=((1, 2, 3, 4, 5), (9, 8, 7, 6, 5)), values=((0.5,) * 5, (0.25,) * 5)
)


def _with_accuracy(cr: dict[str, Any]) -> dict[str, Any]:
    cr = copy.deepcopy(cr)
    cr["spec"]["engine"]["accuracy"] = {"minTop5AgreementPercent": 90, "maxAbsDifference": 0.05}
    return cr


def test_an_onnx_versions_reference_answers_and_the_tolerance_reach_the_endpoint_check() -> None:
    cr, objects, pods, _ = lifecycle_to_ready(_with_accuracy(resource()), reference=REFERENCE)
    p = plan(world(cr, objects, pods), SETTINGS)
    assert p.verify is not None
    assert p.verify.expected.reference == REFERENCE
    assert p.verify.expected.tolerance == AccuracyTolerance(90, 0.05)


def test_the_reference_answers_survive_in_the_deployments_annotation_across_a_restart() -> None:
    """A restarted operator: no status, the Jobs gone (their TTL); only the Deployment remembers."""
    cr, objects, pods, _ = lifecycle_to_ready(reference=REFERENCE)
    dep = next(o for o in objects if o["kind"] == "Deployment")
    assert json.loads(dep["metadata"]["annotations"][MODEL_IO_ANNOTATION])["reference"]["seed"] == 7
    served = served_from_deployment(dep, "25.01")
    assert served is not None and served.reference == REFERENCE
    jobless = [o for o in objects if o["kind"] != "Job"]
    triton = [p for p in pods if p["metadata"]["labels"].get(names.LABEL_COMPONENT) == "triton"]
    p = plan(world({**cr, "status": {}}, jobless, triton), SETTINGS)
    assert p.verify is not None and p.verify.expected.reference == REFERENCE


def test_a_version_without_reference_answers_keeps_the_annotation_it_had() -> None:
    """Versions published before the field (and tensorrt ones) have no reference: none is written."""
    _, objects, _, _ = lifecycle_to_ready()
    dep = next(o for o in objects if o["kind"] == "Deployment")
    assert "reference" not in json.loads(dep["metadata"]["annotations"][MODEL_IO_ANNOTATION])
    served = served_from_deployment(dep, "25.01")
    assert served is not None and served.reference is None


def test_an_endpoint_outside_the_accuracy_tolerance_is_ready_false_with_accuracy_check_failed() -> None:
    cr, objects, pods, _ = lifecycle_to_ready(reference=REFERENCE)
    words = "the served model and onnxruntime disagree on 8 fixed inputs: top-5 agreement 0.0% (...)"
    off = {
        "10.1.0.5:8000": EndpointCheck(
            "10.1.0.5:8000", False, words, accuracy=True, tolerance=AccuracyTolerance()
        )
    }
    p = plan(world(cr, objects, pods, verification=off), SETTINGS)
    ready = condition(p, c.READY)
    assert ready["status"] == "False" and ready["reason"] == c.ACCURACY_CHECK_FAILED.name
    assert ready["message"] == f"10.1.0.5:8000: {words}"
    assert condition(p, c.STALLED)["status"] == "True"
    assert ("Warning", c.ACCURACY_CHECK_FAILED.name) in [(t, r) for t, r, _ in p.events]


def test_an_accuracy_failure_beside_another_failure_is_a_verification_failure() -> None:
    """The reason names what a user must look at first: an endpoint that does not answer at all."""
    cr, objects, pods, _ = lifecycle_to_ready(ips=("10.1.0.5", "10.1.0.6"), reference=REFERENCE)
    checks = {
        "10.1.0.5:8000": EndpointCheck(
            "10.1.0.5:8000", False, "top-5 agreement 0.0%", accuracy=True, tolerance=AccuracyTolerance()
        ),
        "10.1.0.6:8000": EndpointCheck("10.1.0.6:8000", False, "server is not live"),
    }
    p = plan(world(cr, objects, pods, verification=checks), SETTINGS)
    assert condition(p, c.READY)["reason"] == c.VERIFICATION_FAILED.name


def test_a_widened_tolerance_asks_for_a_new_check_of_an_endpoint_that_failed_the_gate() -> None:
    """An onnx version's key does not cover spec.engine.accuracy: the version stays, so the check
    made under the old tolerance must not (the runtime starts over for the new Expected)."""
    cr, objects, pods, _ = lifecycle_to_ready(reference=REFERENCE)
    off = {
        "10.1.0.5:8000": EndpointCheck(
            "10.1.0.5:8000", False, "top-5 agreement 50.0%", accuracy=True, tolerance=AccuracyTolerance()
        )
    }
    p = plan(world(_with_accuracy(cr), objects, pods, verification=off), SETTINGS)
    assert p.verify is not None and p.verify.endpoints == ("10.1.0.5:8000", SERVICE)
    assert p.verify.expected.tolerance == AccuracyTolerance(90, 0.05)
