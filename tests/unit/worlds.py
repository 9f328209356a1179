"""Worlds for the pure reconcile: the objects each step of a resource's life leaves behind.

Shared by the reconcile tests and the tests of what reads the status it produces
(``tritonresnet status``), so both see the status reconcile really writes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from tritonresnet.api import names
from tritonresnet.controller.observe import EndpointCheck
from tritonresnet.controller.reconcile import Observed, Plan, plan
from tritonresnet.controller.settings import Settings
from tritonresnet_builder.contract import ReferenceAnswers, Result, Tensor

SETTINGS = Settings()
NOW = "2026-11-25T10:00:00Z"
INPUTS = (Tensor("input", "FP32", (3, 224, 224)),)
OUTPUTS = (Tensor("output", "FP32", (1000,)),)
#: resource()'s Service as the operator verifies it by default (Settings.verify_service "dns").
SERVICE = "resnet50.vision.svc:8000"


def resource(
    name: str = "resnet50",
    *,
    uri: str = "s3://models/resnet50/model.onnx",
    fmt: str = "onnx",
    replicas: int = 1,
    generation: int = 1,
    status: dict[str, Any] | None = None,
    created: str = "2026-11-25T09:00:00Z",
    targets: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"uri": uri},
        "model": {"name": "resnet50", "format": fmt},
        "engine": {"maxBatchSize": 8, **({"targets": targets} if targets else {})},
        "serving": {"release": "25.01", "replicas": replicas},
        "repository": {"claimName": "models"},
    }
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {
            "name": name,
            "namespace": "vision",
            "uid": f"uid-{name}",
            "generation": generation,
            "creationTimestamp": created,
        },
        "spec": spec,
        "status": status or {},
    }


def world(
    cr: dict[str, Any],
    objects: list[dict[str, Any]] = (),
    pods: list[dict[str, Any]] = (),  # type: ignore[assignment]
    verification: dict[str, EndpointCheck] | None = None,
    peers: list[dict[str, Any]] = (),
) -> Observed:  # type: ignore[assignment]
    children = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    return Observed(
        resource=cr,
        jobs={n: o for (k, n), o in children.items() if k == "Job"},
        pods=list(pods),
        children=children,
        peers=[cr, *peers],
        verification=verification or {},
        now=NOW,
    )


def kinds(p: Plan) -> list[tuple[str, str]]:
    return sorted((o["kind"], o["metadata"]["name"]) for o in p.apply)


def st(p: Plan) -> dict[str, Any]:
    """The plan's status as the API server stores it."""
    return p.status.to_dict()


def find(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((x for x in conditions if x["type"] == type_), None)


def condition(p: Plan, type_: str) -> dict[str, Any]:
    found = find(st(p)["conditions"], type_)
    assert found is not None, type_
    return dict(found)


def finished(job: dict[str, Any], result: Result, ok: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Job as the Job controller leaves it and its pod with the builder's termination message."""
    job = copy.deepcopy(job)
    job["status"] = {"conditions": [{"type": "Complete" if ok else "Failed", "status": "True"}]}
    pod = {
        "kind": "Pod",
        "metadata": {
            "name": job["metadata"]["name"] + "-x",
            "labels": {"job-name": job["metadata"]["name"]},
            "creationTimestamp": NOW,
        },
        "status": {
            "phase": "Succeeded" if ok else "Failed",
            "containerStatuses": [
                {
                    "name": "builder",
                    "state": {"terminated": {"exitCode": 0 if ok else 3, "message": result.to_json()}},
                }
            ],
        },
    }
    return job, pod


def build_result(key: str) -> Result:
    return Result(
        ok=True,
        phase="build",
        engine_key=key,
        format="onnx",
        artifact="model.onnx",
        inputs=INPUTS,
        outputs=OUTPUTS,
    )


def publish_result(version: int, version_key: str, reference: ReferenceAnswers | None = None) -> Result:
    return Result(
        reference=reference,
        ok=True,
        phase="publish",
        version=version,
        version_key=version_key,
        model_name="resnet50",
        inputs=INPUTS,
        outputs=OUTPUTS,
        repository_bytes=48_000_000,
    )


def rolled_out(deployment: dict[str, Any], replicas: int = 1) -> dict[str, Any]:
    d = copy.deepcopy(deployment)
    d["metadata"]["generation"] = 1
    d["status"] = {
        "observedGeneration": 1,
        "replicas": replicas,
        "readyReplicas": replicas,
        "updatedReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
    }
    return d


def triton_pod(version: int, ip: str, ready: bool = True) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": f"resnet50-triton-{ip}",
            "labels": {names.LABEL_COMPONENT: "triton", names.LABEL_MODEL_VERSION: str(version)},
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def step(
    cr: dict[str, Any], objects: list[dict[str, Any]], p: Plan
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Carry out a plan the way the kopf layer does: apply children, write status."""
    cr = {**cr, "status": st(p)}
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    for obj in p.apply:
        by_name[(obj["kind"], obj["metadata"]["name"])] = obj
    return cr, list(by_name.values())


def lifecycle_to_ready(
    cr: dict[str, Any] | None = None,
    *,
    version: int = 1,
    ips: Sequence[str] = ("10.1.0.5",),
    build: Result | None = None,
    reference: ReferenceAnswers | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], Plan]:
    """Walk one resource from apply to Ready; returns (cr, objects, pods, last plan).

    ``build`` is the builder's result for its one target (default: an onnx build);
    ``reference`` the reference answers its publish reports (an onnx version's);
    ``ips`` the Triton pods' addresses, one per replica.
    """
    cr = cr or resource(replicas=len(ips))
    p = plan(world(cr), SETTINGS)
    cr, objects = step(cr, [], p)
    job = next(o for o in objects if o["kind"] == "Job")
    key = job["metadata"]["labels"][names.LABEL_ENGINE_KEY]
    job, pod = finished(job, build or build_result(key))
    objects = [o for o in objects if o["kind"] != "Job"] + [job]
    p = plan(world(cr, objects, [pod]), SETTINGS)
    cr, objects = step(cr, objects, p)
    pub = next(o for o in objects if o["kind"] == "Job" and "-publish-" in o["metadata"]["name"])
    vkey = st(p)["versionKey"]
    pub, pub_pod = finished(pub, publish_result(version, vkey, reference))
    objects = [o for o in objects if o["metadata"]["name"] != pub["metadata"]["name"]] + [pub]
    pods = [pod, pub_pod]
    p = plan(world(cr, objects, pods), SETTINGS)
    cr, objects = step(cr, objects, p)
    dep = next(o for o in objects if o["kind"] == "Deployment")
    objects = [o for o in objects if o["kind"] != "Deployment"] + [rolled_out(dep, replicas=len(ips))]
    pods = [*pods, *(triton_pod(version, ip) for ip in ips)]
    p = plan(world(cr, objects, pods), SETTINGS)
    # Every pod, and then the Service as a client in the cluster reaches it (by its DNS name).
    meta = cr["metadata"]
    service = f"{names.service_name(meta['name'])}.{meta['namespace']}.svc:8000"
    endpoints = (*sorted(f"{ip}:8000" for ip in ips), service)
    assert p.verify is not None and p.verify.endpoints == endpoints
    ok = {e: EndpointCheck(e, True, "answered") for e in endpoints}
    p = plan(world(cr, objects, pods, verification=ok), SETTINGS)
    cr, objects = step(cr, objects, p)
    return cr, objects, pods, p
