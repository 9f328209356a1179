"""One resource's life after its first version: new version, broken version, scale, delete.

The tests run in file order on one resource (module scope), each step
starting from where the previous one left it, as a user's would:

1. a new source rolls out version 2 while a client keeps sending requests,
   and none of them fails;
2. a broken ONNX leaves version 2 serving, with ``EngineBuilt=False`` and the
   builder's message;
3. ``kubectl scale trn --replicas=3`` reaches three ready, verified replicas;
4. deleting the resource removes every child and leaves the user's volume.

The client stands in for kube-proxy: on the test ground pods have loopback
IPs, which the API server refuses in EndpointSlices, so it follows the ready,
non-terminating Triton pods itself, as endpoints would
(``testground.following_client``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.http as httpclient
from testground.controlplane import ControlPlane
from testground.following_client import FollowingClient
from testground.models import OnnxModels
from testground.nodeagent import NodeAgent
from testground.operator_run import OperatorProcess, apply_sample, condition, get_trn, is_ready, wait_for_trn
from testground.s3 import S3Server
from testground.waiting import WaitTimeout, wait_for
from tritonresnet.api import names

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

NAME = "resnet50"


@pytest.fixture(scope="module")
def ns(cluster: ControlPlane) -> Iterator[str]:
    """One namespace for the whole module: the steps share one resource's life."""
    with cluster.throwaway_namespace("r") as name:
        yield name


@pytest.fixture(scope="module")
def served(operator: OperatorProcess, ns: str, s3: S3Server, onnx_models: OnnxModels) -> dict[str, Any]:
    """Version 1 of the sample, Ready."""
    uri = s3.upload(onnx_models.path("resnet18"), f"{ns}/v1/model.onnx")
    apply_sample(operator.cp, ns, s3, uri, name=NAME)
    return wait_for_trn(operator.cp, ns, NAME, is_ready(), "Ready", operator=operator)


def patch_spec(cp: ControlPlane, ns: str, patch: dict[str, Any]) -> int:
    cp.kubectl("patch", "trn", NAME, "-n", ns, "--type=merge", "-p", json.dumps({"spec": patch}))
    return int(get_trn(cp, ns, NAME)["metadata"]["generation"])


def jobs(cp: ControlPlane, ns: str) -> list[dict[str, Any]]:
    return list(json.loads(cp.kubectl("get", "jobs", "-n", ns, "-o", "json").stdout)["items"])


def test_new_source_rolls_out_version_two_with_no_failed_request(
    operator: OperatorProcess, ns: str, s3: S3Server, onnx_models: OnnxModels, served: dict[str, Any]
) -> None:
    cp = operator.cp
    assert served["status"]["modelVersion"] == 1
    uri = s3.upload(onnx_models.path("resnet18"), f"{ns}/v2/model.onnx")
    with FollowingClient(cp, ns, NAME) as client:
        time.sleep(2)  # traffic on version 1 first
        gen = patch_spec(cp, ns, {"source": {"uri": uri}})
        trn = wait_for_trn(
            cp,
            ns,
            NAME,
            lambda t: is_ready(gen)(t) and t["status"].get("modelVersion") == 2,
            "Ready at version 2",
            operator=operator,
        )
        time.sleep(2)  # and traffic on version 2 after
    assert client.failures == [], client.failures[:5]
    assert client.ok > 20
    assert {"1", "2"} <= client.versions_seen
    assert trn["status"]["phase"] == "Ready"
    assert condition(trn, "Ready")["observedGeneration"] == gen


def test_broken_onnx_keeps_version_two_serving_and_reports_the_builder_message(
    operator: OperatorProcess, ns: str, s3: S3Server, tmp_path: Path
) -> None:
    cp = operator.cp
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"this is not an ONNX model")
    uri = s3.upload(broken, f"{ns}/broken/model.onnx")
    gen = patch_spec(cp, ns, {"source": {"uri": uri}})

    def build_failed(t: dict[str, Any]) -> bool:
        engine = condition(t, "EngineBuilt")
        return engine.get("reason") == "BuildFailed" and engine.get("observedGeneration") == gen

    trn = wait_for_trn(cp, ns, NAME, build_failed, "EngineBuilt=False", timeout=240, operator=operator)
    engine = condition(trn, "EngineBuilt")
    assert engine["status"] == "False"
    assert "onnx" in engine["message"].lower(), engine["message"]
    assert trn["status"]["phase"] == "Degraded"
    assert trn["status"]["modelVersion"] == 2
    assert condition(trn, "Stalled")["status"] == "True"
    assert "version 2 keeps serving" in trn["status"]["message"]
    failed = [j for j in jobs(cp, ns) if "-build-" in j["metadata"]["name"] and j["status"].get("failed")]
    assert len(failed) == 1 and failed[0]["status"]["failed"] == 1, "a bad input must not be retried"
    # Still serving version 2, verified.
    endpoints = trn["status"]["endpoints"]
    assert endpoints
    client = httpclient.InferenceServerClient(endpoints[0])
    assert client.is_model_ready(NAME, "2")
    client.close()


def test_scale_to_three_reaches_three_ready_verified_replicas(
    operator: OperatorProcess, ns: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    cp = operator.cp
    # Back to a good source (version 2's), then scale.
    good = s3.uri(f"{ns}/v2/model.onnx")
    patch_spec(cp, ns, {"source": {"uri": good}})
    cp.kubectl("scale", "trn", NAME, "-n", ns, "--replicas=3")
    trn = wait_for_trn(
        cp,
        ns,
        NAME,
        lambda t: is_ready()(t) and t["status"].get("readyReplicas") == 3,
        "Ready with 3 replicas",
        operator=operator,
    )
    assert trn["spec"]["serving"]["replicas"] == 3
    assert len(trn["status"]["endpoints"]) == 3
    assert trn["status"]["modelVersion"] == 2
    dep = json.loads(cp.kubectl("get", "deploy", names.deployment_name(NAME), "-n", ns, "-o", "json").stdout)
    assert dep["spec"]["replicas"] == 3 and dep["status"]["readyReplicas"] == 3


def test_delete_removes_every_child_and_leaves_the_users_volume(
    operator: OperatorProcess, ns: str, node_agent: NodeAgent
) -> None:
    cp = operator.cp
    volume = node_agent.volume_path(ns, "models")
    before = sorted(p.name for p in (volume / NAME).iterdir())
    cp.kubectl("delete", "trn", NAME, "-n", ns, "--wait=true")
    kinds = "jobs,deployments,replicasets,services,poddisruptionbudgets,horizontalpodautoscalers,pods"
    left: list[str] = []

    def all_gone() -> bool:
        out = cp.kubectl("get", kinds, "-n", ns, "-l", f"{names.LABEL_INSTANCE}={NAME}", "-o", "name").stdout
        left[:] = out.split()
        return not left

    # The assertion below names what is left, which the timeout's message cannot.
    with contextlib.suppress(WaitTimeout):
        wait_for(all_gone, "every child to be deleted", 120, every=1.0)
    assert left == [], left
    pvc = json.loads(cp.kubectl("get", "pvc", "models", "-n", ns, "-o", "json").stdout)
    assert pvc["status"]["phase"] == "Bound"
    assert sorted(p.name for p in (volume / NAME).iterdir()) == before
