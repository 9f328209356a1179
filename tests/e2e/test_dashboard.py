"""Every query of the chart's Grafana dashboard gets data from a real Prometheus.

The real operator (serving its metrics) makes a TritonResNet Ready with its Triton pod on
the pod network's node; Prometheus (Debian's package, testground.prometheus) discovers
that pod through the API server and scrapes it and the operator. A client in a pod-like
network namespace sends a bounded load through the Service's ClusterIP (``REQUESTS``
inferences, each with a timeout, the whole client with a deadline); Triton exports its
failure counters (one per reason) at 0 from the start, so the failure query has data
without failures. A second TritonResNet in a
namespace whose ResourceQuota admits no Job makes the API server refuse the operator's
build Job: that is the API-errors panel's data. Then each panel's queries run, with
Grafana's variables substituted, and each must return a series with a finite value.

The GPU panels are left out: tritonserver here runs on CPU and exports no ``nv_gpu_*``
metric, so nothing on this machine can give them data.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from testground.chart import CHART_DIR
from testground.clusternet import ClusterNetwork, ready_endpoints
from testground.models import OnnxModels
from testground.network import in_netns
from testground.nodeagent_kube import Kube
from testground.operator_run import (
    OperatorProcess,
    apply_sample,
    condition,
    is_ready,
    network_placement,
    wait_for_trn,
)
from testground.prometheus import OPERATOR_JOB, TRITON_JOB, start_prometheus
from testground.s3 import S3Server
from testground.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.builds("prometheus")]

DASHBOARD = CHART_DIR / "dashboards" / "tritonresnet.json"
NAME = "classifier"
TIMEOUT = 120.0
REQUESTS = 40
PAUSE = 0.25  # seconds between requests: the load spans several 2 s scrapes
REQUEST_TIMEOUT = 10.0  # seconds, each
CLIENT_DEADLINE = 90.0  # seconds, the whole client
#: Panels nothing on a CPU-only machine can give data, and why.
NO_DATA_HERE = {
    "GPU utilization": "no GPU: a CPU tritonserver exports no nv_gpu_* metric",
    "GPU memory used": "no GPU: a CPU tritonserver exports no nv_gpu_* metric",
}
#: Grafana's built-in variables, as a dashboard over the last 10 minutes would give them.
BUILT_INS = {"__rate_interval": "1m", "__range": "10m", "__interval": "2s"}

#: In the client's namespace: ``count`` inferences of zeros through ``host``, ``pause`` apart.
CLIENT = """
import json, sys, time
import numpy as np
import tritonclient.http as httpclient
host, model, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
pause, timeout = float(sys.argv[4]), float(sys.argv[5])
client = httpclient.InferenceServerClient(f"{host}:8000", connection_timeout=timeout, network_timeout=timeout)
metadata = client.get_model_metadata(model)
source = metadata["inputs"][0]
shape = [1 if int(d) < 0 else int(d) for d in source["shape"]]
tensor = httpclient.InferInput(source["name"], shape, source["datatype"])
tensor.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
shapes = []
for _ in range(count):
    shapes.append(list(client.infer(model, [tensor]).as_numpy(metadata["outputs"][0]["name"]).shape))
    time.sleep(pause)
print(json.dumps({"shapes": shapes}))
"""


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with Grafana's ``$name`` and ``${name}`` variables replaced by ``values``."""

    def value(match: re.Match[str]) -> str:
        return values[match.group(1) or match.group(2)]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def panel_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels if p["type"] != "row" for t in p["targets"]]


def variable_queries() -> dict[str, str]:
    """The dashboard's query variables as PromQL: ``label_values(m, l)`` is ``group by (l) (m)``."""
    queries = {}
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            assert found, variable
            metric, label = found.groups()
            queries[variable["name"]] = f"group by ({label}) ({metric})"
    return queries


def refused_build(operator: OperatorProcess, namespace: str, s3: S3Server, uri: str) -> None:
    """A TritonResNet whose build Job the API server refuses (a quota of no Jobs)."""
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-jobs", "namespace": namespace},
        "spec": {"hard": {"count/jobs.batch": "0"}},
    }
    operator.cp.kubectl("apply", "-f", "-", input=json.dumps(quota))
    apply_sample(operator.cp, namespace, s3, uri, name=NAME, model_name="resnet18")
    wait_for_trn(
        operator.cp,
        namespace,
        NAME,
        lambda t: (condition(t, "Ready") or {}).get("reason") == "ApplyFailed",
        "ApplyFailed",
        timeout=TIMEOUT,
        operator=operator,
    )


def test_every_dashboard_query_gets_data_from_the_real_prometheus(
    operator: OperatorProcess,
    pod_network: ClusterNetwork,
    s3: S3Server,
    onnx_models: OnnxModels,
    kube: Kube,
    tmp_path: Path,
) -> None:
    cp = operator.cp
    with cp.throwaway_namespace("dash") as namespace, cp.throwaway_namespace("dash-quota") as quota_namespace:
        uri = s3.upload(onnx_models.path("resnet18"), f"{namespace}/model.onnx")
        placement = network_placement(pod_network.node.name)
        apply_sample(cp, namespace, s3, uri, name=NAME, model_name="resnet18", serving=placement)
        refused_build(
            operator,
            quota_namespace,
            s3,
            s3.upload(onnx_models.path("resnet18"), f"{quota_namespace}/m.onnx"),
        )
        wait_for_trn(cp, namespace, NAME, is_ready(), "Ready", operator=operator)
        assert wait_for(lambda: ready_endpoints(kube, namespace, NAME), "the Service's endpoint", TIMEOUT)
        cluster_ip = kube.get(f"/api/v1/namespaces/{namespace}/services/{NAME}")["spec"]["clusterIP"]

        with start_prometheus(
            cp, tmp_path, operator_metrics=operator.metrics_address, namespaces=[namespace]
        ) as prometheus:
            prometheus.wait_for_targets(TRITON_JOB, 1, TIMEOUT)
            prometheus.wait_for_targets(OPERATOR_JOB, 1, TIMEOUT)
            with pod_network.client_netns(1, namespace) as client_netns:
                argv = [sys.executable, "-c", CLIENT, cluster_ip, "resnet18"]
                argv += [str(REQUESTS), str(PAUSE), str(REQUEST_TIMEOUT)]
                client = subprocess.run(
                    in_netns(client_netns, argv), capture_output=True, text=True, timeout=CLIENT_DEADLINE
                )
            assert client.returncode == 0, client.stderr
            assert json.loads(client.stdout) == {"shapes": [[1, 1000]] * REQUESTS}

            values = {**BUILT_INS, "namespace": namespace, "tritonresnet": NAME}
            for name, query in variable_queries().items():
                series = prometheus.query(substitute(query, values))
                assert values[name] in {s["metric"].get(name) for s in series}, (name, query, series)

            def has_data(query: str) -> list[dict[str, Any]] | None:
                series = prometheus.query(query)
                return series if any(math.isfinite(float(s["value"][1])) for s in series) else None

            queries = panel_queries()
            assert {title for title, _ in queries} >= set(NO_DATA_HERE)
            empty = []
            for title, expr in queries:
                if title in NO_DATA_HERE:
                    continue
                query = substitute(expr, values)
                try:
                    # Scrapes every 2 s: the last of the load shows within a few.
                    wait_for(lambda: has_data(query), f"data for {title!r}", 20, every=1.0)  # noqa: B023
                except AssertionError:
                    empty.append(f"{title}: {query}")
            assert not empty, "panels without data:\n" + "\n".join(empty)
