"""The operator's work queue against the real API server, where a race makes timing unreliable.

When a namespace is deleted, the namespace controller removes a TritonResNet's
children a moment before the TritonResNet itself; each child's deletion wakes
the resource, which the operator still has in its cache without a
``deletionTimestamp``, and re-applying a child is refused (403,
``NamespaceTerminating``). With one resource the window is milliseconds wide,
so an e2e test would pass by luck; here the window is held open: a ConfigMap
with a finalizer nobody removes keeps the namespace ``Terminating``, and the
cache holds the resource as it was. The refusal is the real API server's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

import pytest
from kubernetes.client.rest import ApiException
from testground.controlplane import ControlPlane
from testground.operator_run import install_crd
from tritonresnet.api import names
from tritonresnet.controller.kube import Kube, namespace_terminating
from tritonresnet.controller.runtime import PassOutcome, Runtime, Snapshot
from tritonresnet.controller.settings import Settings

pytestmark = pytest.mark.cluster

HOLD = "tests.tritonresnet.io/hold"


def terminating_namespace(cp: ControlPlane) -> str:
    """A namespace held in ``Terminating`` by a ConfigMap's finalizer."""
    namespace = f"t-term-{uuid.uuid4().hex[:6]}"
    cp.create_namespace(namespace)
    held = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "hold", "namespace": namespace, "finalizers": [HOLD]},
    }
    cp.kubectl("apply", "-f", "-", input=json.dumps(held))
    cp.delete_namespace(namespace)
    for _ in range(100):
        phase = cp.kubectl("get", "namespace", namespace, "-o", "jsonpath={.status.phase}").stdout
        if phase == "Terminating":
            return namespace
        time.sleep(0.1)
    raise AssertionError(f"namespace {namespace} never became Terminating")


def release(cp: ControlPlane, namespace: str) -> None:
    cp.kubectl(
        "patch", "configmap", "hold", "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":[]}}'
    )


def cached_resource(namespace: str) -> dict[str, object]:
    """The TritonResNet as the operator's cache still holds it: no deletionTimestamp yet."""
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {
            "name": "resnet50",
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "generation": 1,
            "creationTimestamp": "2026-11-29T20:00:00Z",
        },
        "spec": {
            "source": {"uri": "s3://models/resnet50/model.onnx"},
            "model": {"format": "onnx"},
            "repository": {"claimName": "models"},
        },
        "status": {},
    }


def test_api_server_refusal_in_a_terminating_namespace_is_recognised(cluster: ControlPlane) -> None:
    install_crd(cluster)
    namespace = terminating_namespace(cluster)
    try:
        with cluster.api_client() as api:
            runtime = Runtime(Kube(api), Settings())
            key = (namespace, "resnet50")
            runtime.resources[key] = cached_resource(namespace)
            snap = runtime.snapshot(key)
            assert snap is not None
            with pytest.raises(ApiException) as refused:
                runtime.run_pass(snap)
    finally:
        release(cluster, namespace)
    assert refused.value.status == 403
    assert namespace_terminating(refused.value), refused.value.body


def test_worker_stops_reconciling_a_resource_of_a_terminating_namespace_without_retry(
    cluster: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    """One pass, one info line, no traceback and no retry scheduled."""
    install_crd(cluster)
    namespace = terminating_namespace(cluster)
    key = (namespace, "resnet50")
    passes = []

    async def drive(runtime: Runtime) -> None:
        run_pass = runtime.run_pass

        def counted(snap: Snapshot) -> PassOutcome:
            passes.append(snap.key)
            return run_pass(snap)

        runtime.run_pass = counted  # type: ignore[method-assign]
        runtime.start()
        runtime.enqueue(key)
        await asyncio.sleep(7.0)  # past the first retries a failed pass gets (2 s, then 4 s)
        await runtime.stop()

    caplog.set_level(logging.INFO, logger="tritonresnet")
    try:
        with cluster.api_client() as api:
            runtime = Runtime(Kube(api), Settings(), warmup_seconds=0.0)
            runtime.resources[key] = cached_resource(namespace)
            asyncio.run(drive(runtime))
            runtime.passes.shutdown(wait=True)
            runtime.events.shutdown(wait=True)
    finally:
        release(cluster, namespace)
    assert passes == [key]
    assert key not in runtime.pending
    assert any("is being deleted" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records]
