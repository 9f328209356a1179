"""Least privilege: every verb on every resource the operator is granted is one it uses.

The chart (cluster-wide, namespaced, with peering) and the kustomize base are
rendered, every (apiGroup, resource, verb) their Roles and ClusterRoles grant
is listed, and each one must appear in :data:`USED` below, which says which
part of the operator needs it. A wildcard anywhere fails. A grant in USED that
the chart does not give fails too (the operator would meet ``Forbidden``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
import yaml
from testground.chart import MANIFESTS_DIR, of_kind, render_chart

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)

# Every grant the operator needs, and who needs it. Keep in step with
# helm/tritonresnet-operator/templates/_helpers.tpl and manifests/base/rbac.yaml.
USED: dict[Grant, str] = {
    # kopf.on.event in handlers.py watches TritonResNets (list + watch).
    ("tritonresnet.io", "tritonresnets", "get"): "granted with list (reveals nothing more)",
    ("tritonresnet.io", "tritonresnets", "list"): "handlers.py resource_event (kopf watch)",
    ("tritonresnet.io", "tritonresnets", "watch"): "handlers.py resource_event (kopf watch)",
    # kube.Kube.patch_status: a merge patch on /status, the operator's only write to a TritonResNet.
    ("tritonresnet.io", "tritonresnets/status", "patch"): "kube.py Kube.patch_status",
    # render.owner_reference sets blockOwnerDeletion; OwnerReferencesPermissionEnforcement checks this.
    ("tritonresnet.io", "tritonresnets/finalizers", "update"): "render.py owner_reference",
    # Pods of build Jobs and Triton: termination messages, scheduling reasons, endpoints (reconcile.py).
    ("", "pods", "get"): "granted with list (reveals nothing more)",
    ("", "pods", "list"): "handlers.py CHILD_RESOURCES watch",
    ("", "pods", "watch"): "handlers.py CHILD_RESOURCES watch",
    # Job: render.py renders, handlers.py watches, kube.py writes.
    ("batch", "jobs", "get"): "granted with list (reveals nothing more)",
    ("batch", "jobs", "list"): "handlers.py CHILD_RESOURCES watch",
    ("batch", "jobs", "watch"): "handlers.py CHILD_RESOURCES watch",
    ("batch", "jobs", "create"): "kube.py Kube.apply (SSA creating it)",
    ("batch", "jobs", "patch"): "kube.py Kube.apply (server-side apply)",
    ("batch", "jobs", "delete"): "kube.py Kube.delete (reconcile.py plan deletes)",
    # Deployment: render.py renders, handlers.py watches, kube.py writes.
    ("apps", "deployments", "get"): "granted with list (reveals nothing more)",
    ("apps", "deployments", "list"): "handlers.py CHILD_RESOURCES watch",
    ("apps", "deployments", "watch"): "handlers.py CHILD_RESOURCES watch",
    ("apps", "deployments", "create"): "kube.py Kube.apply (SSA creating it)",
    ("apps", "deployments", "patch"): "kube.py Kube.apply (server-side apply)",
    ("apps", "deployments", "delete"): "kube.py Kube.delete (reconcile.py plan deletes)",
    # Service: render.py renders, handlers.py watches, kube.py writes.
    ("", "services", "get"): "granted with list (reveals nothing more)",
    ("", "services", "list"): "handlers.py CHILD_RESOURCES watch",
    ("", "services", "watch"): "handlers.py CHILD_RESOURCES watch",
    ("", "services", "create"): "kube.py Kube.apply (SSA creating it)",
    ("", "services", "patch"): "kube.py Kube.apply (server-side apply)",
    ("", "services", "delete"): "kube.py Kube.delete (reconcile.py plan deletes)",
    # PersistentVolumeClaim (repository.create): render.py renders, handlers.py watches, kube.py writes.
    ("", "persistentvolumeclaims", "get"): "granted with list (reveals nothing more)",
    ("", "persistentvolumeclaims", "list"): "handlers.py CHILD_RESOURCES watch",
    ("", "persistentvolumeclaims", "watch"): "handlers.py CHILD_RESOURCES watch",
    ("", "persistentvolumeclaims", "create"): "kube.py Kube.apply (SSA creating it)",
    ("", "persistentvolumeclaims", "patch"): "kube.py Kube.apply (server-side apply)",
    ("", "persistentvolumeclaims", "delete"): "kube.py Kube.delete (reconcile.py plan deletes)",
    # PodDisruptionBudget: render.py renders, handlers.py watches, kube.py writes.
    ("policy", "poddisruptionbudgets", "get"): "granted with list (reveals nothing more)",
    ("policy", "poddisruptionbudgets", "list"): "handlers.py CHILD_RESOURCES watch",
    ("policy", "poddisruptionbudgets", "watch"): "handlers.py CHILD_RESOURCES watch",
    ("policy", "poddisruptionbudgets", "create"): "kube.py Kube.apply (SSA creating it)",
    ("policy", "poddisruptionbudgets", "patch"): "kube.py Kube.apply (server-side apply)",
    ("policy", "poddisruptionbudgets", "delete"): "kube.py Kube.delete (reconcile.py plan deletes)",
    # HorizontalPodAutoscaler (serving.autoscaling): render.py renders, handlers.py watches, kube.py writes.
    ("autoscaling", "horizontalpodautoscalers", "get"): "granted with list (reveals nothing more)",
    ("autoscaling", "horizontalpodautoscalers", "list"): "handlers.py CHILD_RESOURCES watch",
    ("autoscaling", "horizontalpodautoscalers", "watch"): "handlers.py CHILD_RESOURCES watch",
    ("autoscaling", "horizontalpodautoscalers", "create"): "kube.py Kube.apply (SSA creating it)",
    ("autoscaling", "horizontalpodautoscalers", "patch"): "kube.py Kube.apply (server-side apply)",
    ("autoscaling", "horizontalpodautoscalers", "delete"): "kube.py Kube.delete (reconcile.py plan deletes)",
    # kube.Kube.post_event (POST core/v1 Events); kopf's own event posting is disabled in handlers.py.
    ("", "events", "create"): "kube.py Kube.post_event",
    # kopf's resource observer: notices the CRD appearing or changing after start-up.
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"): "kopf resource observer",
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"): "kopf resource observer",
}

# Granted only in some configurations.
USED_WHEN_NAMESPACED: dict[Grant, str] = {
    # kopf's namespace observer lists namespaces when it serves a list of them.
    ("", "namespaces", "list"): "kopf namespace observer (--namespace)",
    ("", "namespaces", "watch"): "kopf namespace observer (--namespace)",
}
USED_WHEN_PEERING: dict[Grant, str] = {
    # kopf peering (--peering, replicas > 1): keep-alives in the peering object's status.
    ("kopf.dev", "clusterkopfpeerings", "get"): "kopf peering, cluster-wide",
    ("kopf.dev", "clusterkopfpeerings", "list"): "kopf peering, cluster-wide",
    ("kopf.dev", "clusterkopfpeerings", "watch"): "kopf peering, cluster-wide",
    ("kopf.dev", "clusterkopfpeerings", "patch"): "kopf peering, cluster-wide",
    ("kopf.dev", "kopfpeerings", "get"): "kopf peering, namespaced",
    ("kopf.dev", "kopfpeerings", "list"): "kopf peering, namespaced",
    ("kopf.dev", "kopfpeerings", "watch"): "kopf peering, namespaced",
    ("kopf.dev", "kopfpeerings", "patch"): "kopf peering, namespaced",
}
ALL_KNOWN = {**USED, **USED_WHEN_NAMESPACED, **USED_WHEN_PEERING}

CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "cluster-wide": {},
    "namespaced": {"watchNamespaces": ["vision", "audio"]},
    "cluster-wide-peering": {"replicas": 2},
    "namespaced-peering": {"replicas": 3, "watchNamespaces": ["vision"]},
}


def roles(objects: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [*of_kind(objects, "ClusterRole"), *of_kind(objects, "Role")]


def grants(role_objects: Iterable[Mapping[str, Any]]) -> set[Grant]:
    found: set[Grant] = set()
    for role in role_objects:
        for rule in role.get("rules") or ():
            for group in rule.get("apiGroups", ()):
                for resource in rule.get("resources", ()):
                    for verb in rule.get("verbs", ()):
                        found.add((group, resource, verb))
    return found


def wildcards(role_objects: Iterable[Mapping[str, Any]]) -> list[str]:
    problems = []
    for role in role_objects:
        for rule in role.get("rules") or ():
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                if any("*" in str(value) for value in rule.get(key, ())):
                    problems.append(f"{role['kind']} {role['metadata']['name']}: {key} {rule[key]}")
    return problems


def kustomize_base_objects() -> list[dict[str, Any]]:
    """The base's RBAC file as written (no kustomize needed to read Roles)."""
    return [doc for doc in yaml.safe_load_all((MANIFESTS_DIR / "base" / "rbac.yaml").read_text()) if doc]


@pytest.fixture(scope="module", params=sorted(CONFIGURATIONS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name: str = request.param
    return name, render_chart(CONFIGURATIONS[name], include_crds=False)


def test_chart_rbac_has_no_wildcards(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    assert wildcards(roles(objects)) == []


def test_chart_rbac_grants_only_used_verbs(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    unused = sorted(grants(roles(objects)) - set(ALL_KNOWN))
    assert unused == [], f"{name}: granted but not in USED: {unused}"


def test_chart_rbac_grants_every_used_verb(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    granted = grants(roles(objects))
    needed = set(USED)
    if "namespaced" in name:
        needed |= set(USED_WHEN_NAMESPACED)
    if "peering" in name:
        scope = "kopfpeerings" if "namespaced" in name else "clusterkopfpeerings"
        needed |= {grant for grant in USED_WHEN_PEERING if grant[1] == scope}
    assert sorted(needed - granted) == []


def test_chart_rbac_grants_peering_and_namespaces_only_when_configured(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objects = rendered
    granted = grants(roles(objects))
    assert bool(granted & set(USED_WHEN_PEERING)) == ("peering" in name)
    assert bool(granted & set(USED_WHEN_NAMESPACED)) == ("namespaced" in name)


def test_chart_never_grants_secrets_or_tritonresnet_writes(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    granted = grants(roles(objects))
    assert not {g for g in granted if g[1] in ("secrets", "configmaps")}
    # GitOps: the operator must never write a TritonResNet's spec or metadata.
    assert not {g for g in granted if g[1] == "tritonresnets" and g[2] not in ("get", "list", "watch")}


def test_namespaced_chart_uses_roles_and_only_read_only_cluster_roles() -> None:
    objects = render_chart(CONFIGURATIONS["namespaced"], include_crds=False)
    role_namespaces = sorted(role["metadata"]["namespace"] for role in of_kind(objects, "Role"))
    assert role_namespaces == ["audio", "vision"]
    binding_namespaces = sorted(b["metadata"]["namespace"] for b in of_kind(objects, "RoleBinding"))
    assert binding_namespaces == ["audio", "vision"]
    cluster_grants = grants(of_kind(objects, "ClusterRole"))
    assert {verb for _, _, verb in cluster_grants} <= {"list", "watch"}
    assert {resource for _, resource, _ in cluster_grants} == {"customresourcedefinitions", "namespaces"}


def test_cluster_wide_chart_binds_the_operator_service_account() -> None:
    objects = render_chart({}, include_crds=False, namespace="ops", release="trn")
    (deployment,) = of_kind(objects, "Deployment")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    bindings = of_kind(objects, "ClusterRoleBinding")
    assert bindings
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "ops"}]


def test_kustomize_base_rbac_has_no_wildcards_and_only_used_verbs() -> None:
    role_objects = roles(kustomize_base_objects())
    assert wildcards(role_objects) == []
    assert sorted(grants(role_objects) - set(USED)) == []
    assert sorted(set(USED) - grants(role_objects)) == []


def test_kustomize_base_rbac_equals_the_charts_default() -> None:
    chart = grants(roles(render_chart({}, include_crds=False)))
    assert grants(roles(kustomize_base_objects())) == chart
