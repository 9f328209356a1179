"""Least privilege: the chart grants exactly what the operator was seen to use.

What the operator uses is not written down here: ``tests/e2e/rbac_observed.json``
is what its ServiceAccount asked the kube-apiserver for across the whole e2e
suite (the audit log), plus the rights admission checks inside those requests;
``tests/e2e/test_permissions.py`` proves the file against a live run. These
tests hold the chart (cluster-wide, namespaced, with peering) and the kustomize
base to it, and check what an audit cannot: no wildcards, Roles (not a
ClusterRole) for a namespaced install, peering rules only with peering.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from testground.audit import CLUSTER, Grant, ObservedRbac, grant_of, rbac_grants
from testground.chart import MANIFESTS_DIR, of_kind, render_chart

OBSERVED_FILE = Path(__file__).resolve().parents[1] / "e2e" / "rbac_observed.json"

CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "cluster-wide": {},
    "namespaced": {"watchNamespaces": ["vision", "audio"]},
    "cluster-wide-peering": {"replicas": 2},
    "namespaced-peering": {"replicas": 3, "watchNamespaces": ["vision"]},
}

#: kopf's namespace observer lists and watches namespaces when it serves a list of them
#: (kopf/_core/reactor/observation.py); the e2e suite's operator is cluster-wide, so this
#: is the one grant the audit does not show.
NAMESPACED_ONLY: set[Grant] = {("list", "", "namespaces"), ("watch", "", "namespaces")}
#: kopf peering (replicas > 1): the peering object is listed, watched and patched. No e2e
#: test runs more than one replica, so these too are not from the audit.
PEERING_RESOURCES = {"clusterkopfpeerings", "kopfpeerings"}
#: Kinds without a namespace, which only a ClusterRole can grant (even for a namespaced install).
CLUSTER_KINDS = {"customresourcedefinitions", "namespaces", "nodes"}


def observed() -> ObservedRbac:
    return ObservedRbac.load(OBSERVED_FILE)


def roles(objects: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [*of_kind(objects, "ClusterRole"), *of_kind(objects, "Role")]


def cluster_scoped_grants() -> set[Grant]:
    """The observed requests on cluster-scoped kinds. (A list or watch of a namespaced kind
    across namespaces is cluster scope too, but a namespaced install makes it per namespace.)"""
    return {grant_of(p) for p in observed().requests if p.scope == CLUSTER and p.resource in CLUSTER_KINDS}


def without_peering(grants: set[Grant]) -> set[Grant]:
    return {g for g in grants if g[2] not in PEERING_RESOURCES}


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


def test_observed_file_is_not_empty_and_names_reads_writes_and_admission() -> None:
    seen = observed()
    verbs = {p.verb for p in seen.requests}
    assert {"list", "watch", "create", "patch"} <= verbs, verbs
    assert seen.admission and all(seen.why[p] for p in seen.admission)


def test_chart_default_grants_exactly_what_the_e2e_suite_used() -> None:
    granted = rbac_grants(render_chart({}, include_crds=False))
    wanted = observed().grants
    assert sorted(granted - wanted) == [], "granted, never used in the e2e suite"
    assert sorted(wanted - granted) == [], "used in the e2e suite, not granted"


def test_chart_rbac_has_no_wildcards(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    assert wildcards(roles(objects)) == []


def test_every_configuration_grants_the_observed_set_per_namespace(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """A namespaced install grants the same verbs in each of its namespaces; it adds only
    kopf's namespace observer, and peering only the peering object's rules."""
    name, objects = rendered
    extra = NAMESPACED_ONLY if "namespaced" in name else set()
    assert without_peering(rbac_grants(objects)) == observed().grants | extra
    for role in of_kind(objects, "Role"):
        assert without_peering(rbac_grants([role])) == observed().grants - cluster_scoped_grants()


def test_peering_rules_only_with_peering_and_of_the_matching_scope(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objects = rendered
    peering = {g for g in rbac_grants(objects) if g[2] in PEERING_RESOURCES}
    if "peering" not in name:
        assert peering == set()
        return
    resource = "kopfpeerings" if "namespaced" in name else "clusterkopfpeerings"
    assert {g[2] for g in peering} == {resource}
    assert {g[0] for g in peering} <= {"get", "list", "watch", "patch"}


def test_chart_never_grants_reading_secrets_or_tritonresnet_writes(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    granted = rbac_grants(objects)
    # Secrets: create only (each resource's Triton control credential); never read one back.
    assert {g[0] for g in granted if g[2] == "secrets"} <= {"create"}
    assert not {g for g in granted if g[2] == "configmaps"}
    # GitOps: the operator must never write a TritonResNet's spec or metadata.
    assert not {g for g in granted if g[2] == "tritonresnets" and g[0] not in ("get", "list", "watch")}


def test_namespaced_chart_uses_roles_and_only_read_only_cluster_roles() -> None:
    objects = render_chart(CONFIGURATIONS["namespaced"], include_crds=False)
    role_namespaces = sorted(role["metadata"]["namespace"] for role in of_kind(objects, "Role"))
    assert role_namespaces == ["audio", "vision"]
    binding_namespaces = sorted(b["metadata"]["namespace"] for b in of_kind(objects, "RoleBinding"))
    assert binding_namespaces == ["audio", "vision"]
    cluster_grants = rbac_grants(of_kind(objects, "ClusterRole"))
    assert {verb for verb, _, _ in cluster_grants} <= {"list", "watch"}
    assert {resource for _, _, resource in cluster_grants} == CLUSTER_KINDS


def test_cluster_wide_chart_binds_the_operator_service_account() -> None:
    objects = render_chart({}, include_crds=False, namespace="ops", release="trn")
    (deployment,) = of_kind(objects, "Deployment")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    bindings = of_kind(objects, "ClusterRoleBinding")
    assert bindings
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "ops"}]


def test_kustomize_base_rbac_has_no_wildcards_and_equals_the_charts_default() -> None:
    role_objects = roles(kustomize_base_objects())
    assert wildcards(role_objects) == []
    assert rbac_grants(role_objects) == rbac_grants(render_chart({}, include_crds=False))
