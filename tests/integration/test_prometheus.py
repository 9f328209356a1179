"""The test ground's Prometheus (Debian's package) finds a real tritonserver pod through the
API server and scrapes its metrics port on the pod network.

The pod is a bare Triton Deployment serving ``add_one`` on the network's node, labelled as
the operator labels its Triton pods (so the relabelling under test is the one the
dashboard test relies on). Prometheus starts only once the ``pod_network`` fixture (and its
blackhole routes) is up. The inferences are bounded: ``REQUESTS`` of them, each with a
timeout, straight to the pod's address.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from testground.binaries import ensure_prometheus
from testground.clusternet import ClusterNetwork
from testground.controlplane import ControlPlane
from testground.network import POD_CIDR
from testground.nodeagent import GPU_TOLERATION
from testground.nodeagent_kube import Kube
from testground.nodeagent_nodes import HOSTNAME_LABEL, POD_NETWORK_TOLERATION
from testground.prometheus import TRITON_JOB, TRITON_POD_LABELS, start_prometheus
from testground.triton import add_one_deployment, add_one_model, infer_add_one
from testground.waiting import wait_for
from tritonresnet.api import names

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.builds("prometheus")]

TIMEOUT = 120.0
REQUESTS = 5
REQUEST_TIMEOUT = 10.0  # seconds, each
INSTANCE = "add-one"


def labelled_deployment(namespace: str, node: str, repository: Path) -> dict[str, Any]:
    """add_one's Triton on the network's node, its pods carrying a TritonResNet's Triton labels."""
    placement = {
        "nodeSelector": {HOSTNAME_LABEL: node},
        "tolerations": [GPU_TOLERATION, POD_NETWORK_TOLERATION],
    }
    deployment = add_one_deployment(namespace, {"hostPath": {"path": str(repository)}}, placement)
    template = deployment["spec"]["template"]["metadata"]
    template["labels"] = template["labels"] | names.selector_labels(INSTANCE, "triton")
    return deployment


def test_promtool_accepts_the_configuration(control_plane: ControlPlane, tmp_path: Path) -> None:
    with start_prometheus(control_plane, tmp_path) as prometheus:
        path = prometheus.workdir / "prometheus.yml"
        assert yaml.safe_load(path.read_text()) == prometheus.config
        promtool = ensure_prometheus().with_name("promtool")
        checked = subprocess.run(
            [str(promtool), "check", "config", str(path)], capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prometheus_discovers_and_scrapes_a_triton_pod(
    control_plane: ControlPlane, pod_network: ClusterNetwork, kube: Kube, tmp_path: Path
) -> None:
    repository = tmp_path / "models"
    add_one_model(repository)
    with control_plane.throwaway_namespace("prom") as namespace:
        deployment = labelled_deployment(namespace, pod_network.node.name, repository)
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(deployment))
        selector = ",".join(f"{k}={v}" for k, v in TRITON_POD_LABELS.items())

        def ready_pod() -> dict[str, Any] | None:
            pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]
            ready = [
                pod
                for pod in pods
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in pod["status"].get("conditions", [])
                )
            ]
            return ready[0] if ready else None

        pod = wait_for(ready_pod, "add_one's Triton pod Ready", TIMEOUT)
        pod_ip = pod["status"]["podIP"]
        assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(POD_CIDR)

        with start_prometheus(control_plane, tmp_path, namespaces=[namespace]) as prometheus:
            (target,) = prometheus.wait_for_targets(TRITON_JOB, count=1, timeout=TIMEOUT)
            assert urllib.parse.urlparse(target["scrapeUrl"]).netloc == f"{pod_ip}:8002"
            assert (
                target["labels"] | {"namespace": namespace, "pod": pod["metadata"]["name"]}
                == target["labels"]
            )
            assert target["labels"]["tritonresnet"] == INSTANCE

            answers = [infer_add_one(f"http://{pod_ip}:8000", 41.0, REQUEST_TIMEOUT) for _ in range(REQUESTS)]
            assert answers == [42.0] * REQUESTS
            query = f'sum(nv_inference_count{{namespace="{namespace}",model="add_one"}})'

            def counted() -> float | None:
                result = prometheus.query(query)
                value = float(result[0]["value"][1]) if result else 0.0
                return value if value >= REQUESTS else None

            assert wait_for(counted, f"{query} >= {REQUESTS}", TIMEOUT, every=1.0) == REQUESTS
            print(f"prometheus ready in {prometheus.startup_seconds:.2f} s")
