"""The Helm chart and the kustomize manifests: linted, rendered, and applied to the real apiserver.

What the README tells users to run is what runs here: ``helm install`` into
the test apiserver, and ``kubectl apply --server-side -k manifests/overlays/sample``.
RBAC is then checked as the chart's ServiceAccount sees it (``kubectl auth
can-i`` with that account's token, not admin). Each test uses its own release
name and namespaces and removes what it made (never the CRD: other tests of
the session use it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testground.chart import (
    MANIFESTS_DIR,
    helm_install,
    helm_lint,
    helm_uninstall,
    of_kind,
    operator_service_account,
    render_chart,
    render_kustomize,
    to_yaml,
)
from testground.controlplane import ControlPlane
from testground.operator_run import install_crd

TRN = "tritonresnets.tritonresnet.io"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["vision", "audio"]},
    "peering": {"replicas": 2},
    "everything": {
        "watchNamespaces": ["vision"],
        "replicas": 3,
        "imagePullSecrets": [{"name": "pull"}],
        "operator": {
            "builderRegistry": "registry.internal/ml",
            "defaultRelease": "24.12",
            "logFormat": "plain",
        },
        "podAnnotations": {"prometheus.io/scrape": "true"},
        "nodeSelector": {"role": "system"},
        "tolerations": [{"key": "system", "operator": "Exists"}],
    },
    "monitoring": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}, "interval": "30s"}},
        "triton": {"podMonitor": {"enabled": True, "labels": {"release": "kps"}, "interval": "15s"}},
        "grafana": {"dashboard": {"enabled": True}},
    },
}


@pytest.mark.parametrize("values", list(VALUE_SETS.values()), ids=list(VALUE_SETS))
def test_helm_lint_passes(values: dict[str, Any]) -> None:
    output = helm_lint(values)
    assert "0 chart(s) failed" in output


@pytest.mark.parametrize("values", list(VALUE_SETS.values()), ids=list(VALUE_SETS))
def test_helm_template_renders_the_operator(values: dict[str, Any]) -> None:
    objects = render_chart(values)
    kinds = {obj["kind"] for obj in objects}
    assert {"CustomResourceDefinition", "ServiceAccount", "Deployment", "ClusterRole"} <= kinds
    assert TRN in {crd["metadata"]["name"] for crd in of_kind(objects, "CustomResourceDefinition")}


def test_helm_lint_fails_on_values_the_schema_refuses() -> None:
    with pytest.raises(RuntimeError, match="replicas"):
        helm_lint({"replicas": "two"})


def can_i(cp: ControlPlane, kubeconfig: Path, verb: str, resource: str, *scope: str) -> bool:
    result = cp.kubectl("auth", "can-i", verb, resource, *scope, kubeconfig=kubeconfig, check=False)
    return result.stdout.strip() == "yes"


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
def crd_installed(control_plane: ControlPlane) -> ControlPlane:
    install_crd(control_plane)
    return control_plane


@pytest.mark.cluster
def test_helm_install_cluster_wide_grants_the_service_account_least_privilege(
    crd_installed: ControlPlane, unique: str
) -> None:
    cp = crd_installed
    namespace, release = f"trn-helm-{unique}", f"trn-{unique}"
    output = helm_install(cp.kubeconfig, {}, namespace=namespace, release=release)
    try:
        # NOTES.txt tells the user what to apply next.
        assert "kubectl -n vision get trn" in output and "create secret generic" in output
        rendered = render_chart({}, namespace=namespace, release=release)
        sa_namespace, sa_name = operator_service_account(rendered)
        assert sa_namespace == namespace
        cp.kubectl("get", "deployment", "-n", namespace, f"{release}-tritonresnet-operator")
        kubeconfig = cp.service_account_kubeconfig(namespace, sa_name)
        anywhere = ("--all-namespaces",)
        assert can_i(cp, kubeconfig, "list", TRN, *anywhere)
        assert can_i(cp, kubeconfig, "watch", TRN, *anywhere)
        assert can_i(cp, kubeconfig, "patch", TRN, "--subresource=status", "-n", "vision")
        assert not can_i(cp, kubeconfig, "update", TRN, "--subresource=status", "-n", "vision")
        assert can_i(cp, kubeconfig, "create", "jobs.batch", "-n", "vision")
        assert can_i(cp, kubeconfig, "patch", "deployments.apps", "-n", "vision")
        assert can_i(cp, kubeconfig, "create", "horizontalpodautoscalers.autoscaling", "-n", "vision")
        assert can_i(cp, kubeconfig, "list", "pods", *anywhere)
        assert can_i(cp, kubeconfig, "create", "events", "-n", "vision")
        # What it must never do: read Secrets, write a TritonResNet's spec or metadata, run pods itself.
        assert not can_i(cp, kubeconfig, "get", "secrets", "-n", "vision")
        assert not can_i(cp, kubeconfig, "list", "secrets", *anywhere)
        assert not can_i(cp, kubeconfig, "update", TRN, "-n", "vision")
        assert not can_i(cp, kubeconfig, "patch", TRN, "-n", "vision")
        assert not can_i(cp, kubeconfig, "delete", TRN, "-n", "vision")
        assert not can_i(cp, kubeconfig, "create", "pods", "-n", "vision")
        assert not can_i(cp, kubeconfig, "update", "jobs.batch", "-n", "vision")
        assert not can_i(cp, kubeconfig, "create", "clusterrolebindings.rbac.authorization.k8s.io")
        assert not can_i(cp, kubeconfig, "list", "clusterkopfpeerings.kopf.dev")  # one replica: no peering
    finally:
        helm_uninstall(cp.kubeconfig, namespace=namespace, release=release)
        cp.delete_namespace(namespace)


@pytest.mark.cluster
def test_helm_install_namespaced_grants_only_the_listed_namespaces(
    crd_installed: ControlPlane, unique: str
) -> None:
    cp = crd_installed
    namespace, release = f"trn-helm-{unique}", f"trn-ns-{unique}"
    with cp.throwaway_namespace("watched") as watched, cp.throwaway_namespace("other") as other:
        values = {"watchNamespaces": [watched], "replicas": 2}
        try:
            helm_install(cp.kubeconfig, values, namespace=namespace, release=release)
            _, sa_name = operator_service_account(render_chart(values, namespace=namespace, release=release))
            kubeconfig = cp.service_account_kubeconfig(namespace, sa_name)
            assert can_i(cp, kubeconfig, "list", TRN, "-n", watched)
            assert can_i(cp, kubeconfig, "create", "jobs.batch", "-n", watched)
            assert can_i(cp, kubeconfig, "patch", "kopfpeerings.kopf.dev", "-n", watched)
            assert not can_i(cp, kubeconfig, "list", TRN, "-n", other)
            assert not can_i(cp, kubeconfig, "list", TRN, "--all-namespaces")
            assert not can_i(cp, kubeconfig, "create", "jobs.batch", "-n", other)
            assert not can_i(cp, kubeconfig, "get", "secrets", "-n", watched)
            # The peering object kopf needs exists in the watched namespace.
            cp.kubectl("get", "kopfpeerings.kopf.dev", "tritonresnet-operator", "-n", watched)
        finally:
            helm_uninstall(cp.kubeconfig, namespace=namespace, release=release)
            cp.delete_namespace(namespace)  # made by helm install --create-namespace


def apply_in_order(cp: ControlPlane, objects: list[dict[str, Any]]) -> None:
    """CRDs first, then (once their kinds are served) everything else, as Argo CD and Flux do."""
    crds = of_kind(objects, "CustomResourceDefinition")
    cp.kubectl("apply", "--server-side", "-f", "-", input=to_yaml(crds))
    for crd in crds:
        cp.kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s")
    rest = [obj for obj in objects if obj["kind"] != "CustomResourceDefinition"]
    cp.kubectl("apply", "--server-side", "-f", "-", input=to_yaml(rest))


@pytest.fixture
def sample_overlay(crd_installed: ControlPlane) -> Iterator[list[dict[str, Any]]]:
    cp = crd_installed
    objects = render_kustomize(MANIFESTS_DIR / "overlays" / "sample")
    apply_in_order(cp, objects)
    try:
        yield objects
    finally:
        # Everything but the CRD, which the rest of the session shares.
        rest = [obj for obj in objects if obj["kind"] != "CustomResourceDefinition"]
        cp.kubectl(
            "delete", "--ignore-not-found", "--wait=false", "-f", "-", input=to_yaml(rest), check=False
        )


@pytest.mark.cluster
def test_kustomize_sample_overlay_applies_and_its_service_account_is_least_privileged(
    crd_installed: ControlPlane, sample_overlay: list[dict[str, Any]]
) -> None:
    cp = crd_installed
    (deployment,) = of_kind(sample_overlay, "Deployment")
    assert deployment["metadata"]["namespace"] == "tritonresnet-system"
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TRITONRESNET_DEFAULT_RELEASE"] == "25.01"
    (resource,) = of_kind(sample_overlay, "TritonResNet")
    stored = cp.kubectl(
        "get",
        "trn",
        resource["metadata"]["name"],
        "-n",
        resource["metadata"]["namespace"],
        "-o",
        "jsonpath={.spec.engine.maxBatchSize}",
    ).stdout
    assert stored == "8"
    namespace, name = operator_service_account(sample_overlay)
    kubeconfig = cp.service_account_kubeconfig(namespace, name)
    assert can_i(cp, kubeconfig, "list", TRN, "--all-namespaces")
    assert can_i(cp, kubeconfig, "create", "jobs.batch", "-n", "vision")
    assert can_i(cp, kubeconfig, "list", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can_i(cp, kubeconfig, "get", "secrets", "-n", "vision")
    assert not can_i(cp, kubeconfig, "update", TRN, "-n", "vision")


# -- monitoring: prometheus-operator's CRDs validate the chart's monitors ---------------------


@pytest.mark.cluster
def test_chart_monitors_are_accepted_by_prometheus_operators_crds(control_plane: ControlPlane) -> None:
    """prometheus-operator's own ServiceMonitor and PodMonitor CRDs (from its Go module; no
    prometheus-operator runs) validate the monitors, Service and dashboard ConfigMap the chart
    renders with monitoring on; a monitor their schema refuses is refused."""
    from testground.prometheus import install_monitor_crds

    cp = control_plane
    assert install_monitor_crds(cp) == [
        "servicemonitors.monitoring.coreos.com",
        "podmonitors.monitoring.coreos.com",
    ]
    with cp.throwaway_namespace("monitors") as namespace:
        rendered = render_chart(VALUE_SETS["monitoring"], namespace=namespace, include_crds=False)
        kinds = ("ServiceMonitor", "PodMonitor", "Service", "ConfigMap")
        objects = [obj for kind in kinds for obj in of_kind(rendered, kind)]
        assert sorted({obj["kind"] for obj in objects}) == sorted(kinds)
        cp.kubectl("apply", "--server-side", "-f", "-", input=to_yaml(objects))
        for obj in objects:
            kind, name = obj["kind"].lower(), obj["metadata"]["name"]
            cp.kubectl(
                "get", f"{kind}.monitoring.coreos.com" if "monitor" in kind else kind, name, "-n", namespace
            )

        (pod_monitor,) = of_kind(objects, "PodMonitor")
        for endpoint, complaint in (
            ({"port": 8002}, "podMetricsEndpoints[0].port: expected string"),
            ({"port": "metrics", "interval": "soon"}, "podMetricsEndpoints[0].interval"),
        ):
            bad = {**pod_monitor, "metadata": {"name": "bad", "namespace": namespace}}
            bad["spec"] = {**pod_monitor["spec"], "podMetricsEndpoints": [endpoint]}
            refused = cp.kubectl("apply", "--server-side", "-f", "-", input=to_yaml([bad]), check=False)
            assert refused.returncode != 0 and complaint in refused.stderr, refused.stderr
