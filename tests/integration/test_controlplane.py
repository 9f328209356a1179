"""The test ground's control plane behaves like a real cluster's (no nodes needed).

Everything here goes through the real kube-apiserver and controller-manager;
nothing is mocked. Namespaces come from ``control_plane`` directly because the
``namespace`` fixture also needs the emulated nodes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from testground.binaries import KUBERNETES_VERSION
from testground.controlplane import ControlPlane
from testground.waiting import wait_for

pytestmark = pytest.mark.cluster

CEL_GROUP = "cel.testground.tritonresnet.io"


@pytest.fixture
def own_namespace(control_plane: ControlPlane) -> Iterator[str]:
    with control_plane.throwaway_namespace("cp") as name:
        yield name


def _status_of(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body)
    return body


def test_apiserver_reports_the_pinned_kubernetes_version(control_plane: ControlPlane) -> None:
    with control_plane.api_client() as api:
        assert client.VersionApi(api).get_code().git_version == KUBERNETES_VERSION
    versions = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert versions["serverVersion"]["gitVersion"] == KUBERNETES_VERSION


def _range_crd() -> dict[str, Any]:
    """A CRD whose schema holds a CEL rule: minimum must not exceed maximum."""
    spec_schema = {
        "type": "object",
        "required": ["minimum", "maximum"],
        "properties": {"minimum": {"type": "integer"}, "maximum": {"type": "integer"}},
        "x-kubernetes-validations": [
            {"rule": "self.minimum <= self.maximum", "message": "minimum must not exceed maximum"}
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"ranges.{CEL_GROUP}"},
        "spec": {
            "group": CEL_GROUP,
            "scope": "Namespaced",
            "names": {"plural": "ranges", "singular": "range", "kind": "Range"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec_schema}}},
                }
            ],
        },
    }


def _established(api: Any, name: str) -> bool:
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(name)
    conditions = crd.status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def test_crd_cel_rule_rejects_an_invalid_object(control_plane: ControlPlane, own_namespace: str) -> None:
    crd = _range_crd()
    name = crd["metadata"]["name"]
    with control_plane.api_client() as api:
        client.ApiextensionsV1Api(api).create_custom_resource_definition(crd)
        try:
            wait_for(lambda: _established(api, name), f"CRD {name} to be established", 30)
            objects = client.CustomObjectsApi(api)

            def make(obj_name: str, minimum: int, maximum: int) -> dict[str, Any]:
                body = {
                    "apiVersion": f"{CEL_GROUP}/v1",
                    "kind": "Range",
                    "metadata": {"name": obj_name},
                    "spec": {"minimum": minimum, "maximum": maximum},
                }
                created: dict[str, Any] = objects.create_namespaced_custom_object(
                    CEL_GROUP, "v1", own_namespace, "ranges", body
                )
                return created

            assert make("good", 1, 3)["spec"] == {"minimum": 1, "maximum": 3}
            with pytest.raises(ApiException) as rejected:
                make("bad", 5, 3)
            assert rejected.value.status == 422
            status = _status_of(rejected.value)
            assert status["reason"] == "Invalid"
            assert "minimum must not exceed maximum" in status["message"]
        finally:
            client.ApiextensionsV1Api(api).delete_custom_resource_definition(name)


def _pod_names(api: Any, namespace: str) -> list[str]:
    return [pod.metadata.name for pod in client.CoreV1Api(api).list_namespaced_pod(namespace).items]


def test_rbac_denies_a_service_account_until_a_role_binding_allows_it(
    control_plane: ControlPlane, own_namespace: str
) -> None:
    with control_plane.api_client() as admin:
        core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
        core.create_namespaced_service_account(own_namespace, {"metadata": {"name": "reader"}})
        kubeconfig = control_plane.service_account_kubeconfig(own_namespace, "reader")

        with config.new_client_from_config(config_file=str(kubeconfig)) as reader:
            with pytest.raises(ApiException) as denied:
                _pod_names(reader, own_namespace)
            assert denied.value.status == 403
            status = _status_of(denied.value)
            assert status["reason"] == "Forbidden"
            assert f"system:serviceaccount:{own_namespace}:reader" in status["message"]
            by_kubectl = control_plane.kubectl(
                "get", "pods", "-n", own_namespace, kubeconfig=kubeconfig, check=False
            )
            assert by_kubectl.returncode != 0
            assert "forbidden" in by_kubectl.stderr.lower()

            rbac.create_namespaced_role(
                own_namespace,
                {
                    "metadata": {"name": "pod-reader"},
                    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
                },
            )
            rbac.create_namespaced_role_binding(
                own_namespace,
                {
                    "metadata": {"name": "reader-reads-pods"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": "pod-reader",
                    },
                    "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": own_namespace}],
                },
            )

            def allowed() -> bool:
                try:
                    _pod_names(reader, own_namespace)
                except ApiException as error:
                    if error.status != 403:
                        raise
                    return False  # the authorizer's cache has not seen the binding yet
                return True

            wait_for(allowed, "the RoleBinding to take effect", 30)
            assert _pod_names(reader, own_namespace) == []
            # A Role grants nothing outside its namespace.
            with pytest.raises(ApiException) as elsewhere:
                _pod_names(reader, "default")
            assert elsewhere.value.status == 403


def test_namespaces_are_created_ready_for_pods_and_deleted_with_their_content(
    control_plane: ControlPlane,
) -> None:
    name = f"cp-{uuid.uuid4().hex[:8]}"
    control_plane.create_namespace(name, labels={"purpose": "namespace-test"})
    with control_plane.api_client() as api:
        core = client.CoreV1Api(api)
        namespace = core.read_namespace(name)
        assert namespace.status.phase == "Active"
        assert namespace.metadata.labels["purpose"] == "namespace-test"
        assert core.read_namespaced_service_account("default", name).metadata.name == "default"
        core.create_namespaced_config_map(name, {"metadata": {"name": "payload"}, "data": {"k": "v"}})

        control_plane.delete_namespace(name, wait=True)

        with pytest.raises(ApiException) as gone:
            core.read_namespace(name)
        assert gone.value.status == 404
        # The namespace controller emptied it before the namespace went away.
        leftovers = core.list_config_map_for_all_namespaces(field_selector=f"metadata.namespace={name}")
        assert leftovers.items == []
    control_plane.delete_namespace(name)  # deleting a missing namespace is not an error


def test_a_throwaway_namespace_is_ready_for_pods_and_deleted_on_exit(control_plane: ControlPlane) -> None:
    with control_plane.throwaway_namespace("cp", labels={"purpose": "throwaway"}) as name:
        assert name.startswith("cp-")
        with control_plane.api_client() as api:
            core = client.CoreV1Api(api)
            assert core.read_namespace(name).metadata.labels["purpose"] == "throwaway"
            assert core.read_namespaced_service_account("default", name).metadata.name == "default"
    with control_plane.api_client() as api:
        try:
            leaving = client.CoreV1Api(api).read_namespace(name)
        except ApiException as error:
            assert error.status == 404  # already gone
        else:
            assert leaving.metadata.deletion_timestamp is not None  # deletion asked for, not awaited


def _deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # No node has this label, so the scheduler cannot place the pods
                    # whether or not the session's emulated nodes are up yet.
                    "nodeSelector": {"tests.tritonresnet.io/no-such-node": "true"},
                    "containers": [{"name": "main", "image": "example.invalid/none:1"}],
                },
            },
        },
    }


def test_controllers_and_scheduler_act_when_no_node_fits(
    control_plane: ControlPlane, own_namespace: str
) -> None:
    """Deployment -> ReplicaSet -> Pods, Service -> EndpointSlice, the scheduler
    finding no node that fits, and the garbage collector removing the children."""
    with control_plane.api_client() as api:
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        discovery = client.DiscoveryV1Api(api)
        apps.create_namespaced_deployment(own_namespace, _deployment("web"))
        core.create_namespaced_service(
            own_namespace,
            {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}},
        )

        def pods() -> list[Any]:
            return list(core.list_namespaced_pod(own_namespace, label_selector="app=web").items)

        def unschedulable(pod: Any) -> bool:
            conditions = pod.status.conditions or []
            return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)

        wait_for(
            lambda: len(pods()) == 2 and all(unschedulable(p) for p in pods()),
            "two pods the scheduler cannot place",
            60,
        )
        replica_sets = apps.list_namespaced_replica_set(own_namespace).items
        assert [rs.metadata.owner_references[0].name for rs in replica_sets] == ["web"]
        wait_for(
            lambda: bool(
                discovery.list_namespaced_endpoint_slice(
                    own_namespace, label_selector="kubernetes.io/service-name=web"
                ).items
            ),
            "the Service's EndpointSlice",
            60,
        )

        apps.delete_namespaced_deployment("web", own_namespace, propagation_policy="Background")
        wait_for(
            lambda: not pods() and not apps.list_namespaced_replica_set(own_namespace).items,
            "the garbage collector to delete the ReplicaSet and its pods",
            60,
        )


def test_apiserver_restart_keeps_the_data_and_serves_again(
    control_plane: ControlPlane, own_namespace: str
) -> None:
    with control_plane.api_client() as api:
        client.CoreV1Api(api).create_namespaced_config_map(
            own_namespace, {"metadata": {"name": "survivor"}, "data": {"k": "v"}}
        )
    old_pid = control_plane.pids()["kube-apiserver"]

    control_plane.restart_apiserver()

    assert control_plane.pids()["kube-apiserver"] != old_pid
    with control_plane.api_client() as api:
        assert client.CoreV1Api(api).read_namespaced_config_map("survivor", own_namespace).data == {"k": "v"}
    assert "apiserver_request_total" in control_plane.apiserver_metrics()


def test_every_component_runs_and_has_its_memory_measured(control_plane: ControlPlane) -> None:
    components = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
    assert set(control_plane.pids()) == components
    rss = control_plane.rss_bytes()
    assert set(rss) == components
    assert all(value > 0 for value in rss.values())
