"""Least privilege, proven: the operator asked the API for exactly what the Helm chart grants.

The session's operator runs as its own ServiceAccount bound to the chart's
default (cluster-wide) RBAC (``tests/e2e/conftest.py``), and the test ground's
kube-apiserver writes an audit line for each of its requests
(``testground.audit``). This module runs after every other e2e test of the
session (a ``pytest_collection_modifyitems`` hook in conftest.py) and reads
that log:

* every request was granted, and is in ``rbac_observed.json`` (a new need fails
  here until the chart and the file say it);
* when the whole e2e directory ran and passed, every grant of the chart was
  used, and the file is exactly what the run used. On a partial run that half
  is skipped, saying why.

Paths no other e2e test takes come first: reading a child by name after a
create answered 409 and applying it (a child the operator's cache does not
hold), deleting an older spec's unfinished build Job, and the right admission
checks inside every create (``update`` on ``tritonresnets/finalizers``), which
no audit line can show.

``TRITONRESNET_WRITE_RBAC_OBSERVED=1`` with a whole, passing run rewrites
``rbac_observed.json`` from the log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from testground.audit import (
    OPERATOR_ACCOUNT,
    OPERATOR_USER,
    AuditEvent,
    AuditLog,
    ObservedRbac,
    Permission,
    grant_of,
    permissions,
    rbac_grants,
)
from testground.controlplane import ControlPlane
from testground.models import OnnxModels
from testground.operator_run import (
    OperatorProcess,
    is_ready,
    operator_identity_objects,
    wait_for_trn,
)
from testground.s3 import S3Server
from testground.waiting import WaitTimeout, wait_for
from tritonresnet.api import names
from tritonresnet.controller import render

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

OBSERVED_FILE = Path(__file__).with_name("rbac_observed.json")
WRITE_VARIABLE = "TRITONRESNET_WRITE_RBAC_OBSERVED"
FINALIZERS = Permission("update", names.GROUP, f"{names.PLURAL}/finalizers", "namespace")

#: spec.serving for an HPA (min 1, max 3 on CPU; the CRD wants a CPU request for it).
AUTOSCALED_SERVING: dict[str, Any] = {
    "release": "25.01",
    "replicas": 1,
    "resources": {"requests": {"cpu": "100m"}, "limits": {"nvidia.com/gpu": 1}},
    "autoscaling": {
        "minReplicas": 1,
        "maxReplicas": 3,
        "metric": {"type": "cpu", "targetAverageUtilization": 70},
    },
}


def operator_events(cp: ControlPlane, since: float = 0.0) -> list[AuditEvent]:
    return AuditLog(cp.audit_log).by_user(OPERATOR_USER, since=since)


def chart_rules() -> list[dict[str, Any]]:
    """The rules of the chart's main ClusterRole (not its read-only discovery one)."""
    (role,) = (
        o
        for o in operator_identity_objects()
        if o["kind"] == "ClusterRole" and o["metadata"]["name"] == OPERATOR_ACCOUNT
    )
    return list(role["rules"])


# -- the rare paths ------------------------------------------------------------------------


def _resource(namespace: str, name: str, spec: dict[str, Any]) -> str:
    trn = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    return yaml.safe_dump(trn)


def _labels(cp: ControlPlane, namespace: str, resource: str, name: str) -> dict[str, str]:
    found = json.loads(cp.kubectl("get", resource, name, "-n", namespace, "-o", "json").stdout)
    return dict(found["metadata"].get("labels") or {})


def _build_job(cp: ControlPlane, namespace: str, cr: str) -> str | None:
    selector = f"{names.LABEL_INSTANCE}={names.label_value(cr)},{names.LABEL_COMPONENT}=build"
    found = json.loads(cp.kubectl("get", "jobs", "-n", namespace, "-l", selector, "-o", "json").stdout)
    return found["items"][0]["metadata"]["name"] if found["items"] else None


def test_children_the_operators_cache_misses_are_read_by_name_and_applied_again(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    """Children whose ``managed-by`` label was removed while the operator was down are not in
    the cache it starts with (kopf lists every object and keeps those with the label), as if
    its watch were behind. It renders them again, each create answers 409, it reads the
    object by name (``get``), finds its own controller reference and server-side applies it
    (``patch``), which puts the label back. Every kind it creates takes this path here (but
    the control Secret, which it never reads): a served resource's Deployment, Service,
    PodDisruptionBudget, NetworkPolicy and created claim, and the
    build Job and HPA of a resource whose build never starts (its claim does not exist, so
    the pod waits unscheduled and the Job stays unfinished)."""
    cp = operator.cp
    uri = s3.upload(onnx_models.path("resnet18"), f"{namespace}/resnet18/model.onnx")
    secret = s3.credentials_secret(namespace)
    source = {"uri": uri, "endpoint": s3.endpoint, "credentialsSecret": "s3-credentials"}
    served = {
        "source": source,
        "model": {"name": "served", "format": "onnx"},
        "engine": {"maxBatchSize": 4},
        "serving": {"release": "25.01", "replicas": 1, "instanceCount": 1},
        "repository": {"create": {"size": "1Gi"}},
    }
    waiting = {
        "source": source,
        "model": {"name": "waiting", "format": "onnx"},
        "serving": AUTOSCALED_SERVING,
        "repository": {"claimName": "no-such-claim"},
    }
    documents = [
        yaml.safe_dump(secret),
        _resource(namespace, "served", served),
        _resource(namespace, "waiting", waiting),
    ]
    cp.kubectl("apply", "-f", "-", input="---\n".join(documents))
    wait_for_trn(cp, namespace, "served", is_ready(), "Ready", operator=operator)
    job = wait_for(lambda: _build_job(cp, namespace, "waiting"), "the waiting build Job", 120, every=1.0)
    hpa = names.hpa_name("waiting")
    wait_for(
        lambda: cp.kubectl("get", "hpa", hpa, "-n", namespace, check=False).returncode == 0,
        "the waiting resource's HPA",
        120,
        every=1.0,
    )
    children = {
        ("apps", "deployments"): names.deployment_name("served"),
        ("", "services"): names.service_name("served"),
        ("policy", "poddisruptionbudgets"): names.pdb_name("served"),
        ("", "persistentvolumeclaims"): names.pvc_name("served"),
        ("networking.k8s.io", "networkpolicies"): render.network_policy_name("served"),
        ("batch", "jobs"): job,
        ("autoscaling", "horizontalpodautoscalers"): hpa,
    }

    # While it runs, a label removed is only a change its cache ignores (kopf filters by label
    # on the client side): the cached copy, with the label, stays. A start reads everything anew.
    operator.kill(signal.SIGKILL)
    try:
        since = time.time()
        for (group, resource), name in children.items():
            kind = f"{resource}.{group}" if group else resource
            cp.kubectl("label", kind, name, "-n", namespace, f"{names.LABEL_MANAGED_BY}-")
    finally:
        operator.start()

    def verbs_by_child() -> dict[tuple[str, str], list[tuple[str, int]]]:
        seen: dict[tuple[str, str], list[tuple[str, int]]] = {child: [] for child in children}
        for event in operator_events(cp, since):
            child = (event.group, event.resource)
            if child in children and event.namespace == namespace and event.name == children[child]:
                seen[child].append((event.verb, event.code))
        return seen

    def all_found_again() -> dict[tuple[str, str], list[tuple[str, int]]] | None:
        seen = verbs_by_child()
        done = all({("get", 200), ("patch", 200)} <= set(calls) for calls in seen.values())
        return seen if done else None

    try:
        seen = wait_for(all_found_again, "each child read by name and applied again", 180, every=1.0)
    except WaitTimeout as error:
        raise error.with_detail(f"the operator's requests by child: {verbs_by_child()}") from None
    for child, calls in seen.items():
        assert ("create", 409) in calls, (child, calls)  # it was rendered again: the watch lost it
    for (group, resource), name in children.items():
        kind = f"{resource}.{group}" if group else resource
        labels = _labels(cp, namespace, kind, name)
        assert labels.get(names.LABEL_MANAGED_BY) == names.MANAGER, (kind, labels)
    wait_for_trn(cp, namespace, "served", is_ready(), "Ready again", operator=operator)


def test_an_older_specs_unfinished_build_job_is_deleted(
    operator: OperatorProcess, namespace: str, s3: S3Server
) -> None:
    """A build Job of a spec that changed before it finished would only burn a GPU: the
    operator deletes it (``delete`` on Jobs) and creates the new spec's. The build never
    starts here (its claim does not exist), so the old Job is unfinished for sure."""
    cp = operator.cp
    spec = {
        "source": {"uri": s3.uri(f"{namespace}/never/model.onnx"), "endpoint": s3.endpoint},
        "model": {"name": "changed", "format": "onnx"},
        "engine": {"maxBatchSize": 4},
        "repository": {"claimName": "no-such-claim"},
    }
    cp.kubectl("apply", "-f", "-", input=_resource(namespace, "changed", spec))
    old = wait_for(lambda: _build_job(cp, namespace, "changed"), "the first build Job", 120, every=1.0)
    since = time.time()
    # maxBatchSize is part of the engine key, so the build Job of the new spec has another name.
    cp.kubectl(
        "patch",
        "trn",
        "changed",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"engine":{"maxBatchSize":2}}}',
    )
    new = wait_for(
        lambda: (name := _build_job(cp, namespace, "changed")) != old and name,
        "the new spec's build Job instead of the old one",
        120,
        every=1.0,
    )
    assert new != old
    deleted = [
        e
        for e in operator_events(cp, since)
        if (e.verb, e.group, e.resource, e.name) == ("delete", "batch", "jobs", old) and e.code == 200
    ]
    assert deleted, f"the operator did not delete Job {old}"


def _probe_role(namespace: str, rules: list[dict[str, Any]]) -> str:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "probe", "namespace": namespace},
        "rules": rules,
    }
    return yaml.safe_dump(role)


def test_creating_a_child_needs_the_finalizers_grant(crd: ControlPlane, namespace: str) -> None:
    """The operator's children carry ``blockOwnerDeletion``; with the admission plugin
    OwnerReferencesPermissionEnforcement (on in the test ground, as on OpenShift) a create
    of one is refused without ``update`` on ``tritonresnets/finalizers``. An identity with
    the chart's rules but that one is refused the operator's own rendered Service; with the
    chart's rules as they are it is accepted (a server-side dry run: nothing is stored)."""
    cp = crd
    assert ObservedRbac.load(OBSERVED_FILE).admission == {FINALIZERS}, "each admission grant needs a proof"
    rules = chart_rules()
    without = [r for r in rules if FINALIZERS.resource not in r["resources"]]
    assert len(without) == len(rules) - 1, "the finalizers grant is not a rule of its own"
    cp.kubectl("create", "serviceaccount", "probe", "-n", namespace)
    cp.kubectl("apply", "-f", "-", input=_probe_role(namespace, without))
    cp.kubectl(
        "create",
        "rolebinding",
        "probe",
        "-n",
        namespace,
        "--role=probe",
        f"--serviceaccount={namespace}:probe",
    )
    kubeconfig = cp.service_account_kubeconfig(namespace, "probe")
    owner = {"metadata": {"name": "probe", "namespace": namespace, "uid": str(uuid.uuid4())}}
    child = yaml.safe_dump(render.service(owner))
    assert render.owner_reference(owner)["blockOwnerDeletion"] is True

    def create() -> subprocess.CompletedProcess[str]:
        return cp.kubectl(
            "create", "--dry-run=server", "-f", "-", input=child, kubeconfig=kubeconfig, check=False
        )

    refused = create()
    assert refused.returncode != 0 and "blockOwnerDeletion" in refused.stderr, refused.stderr
    cp.kubectl("apply", "-f", "-", input=_probe_role(namespace, rules))
    # RBAC reads Roles from an informer: the new rule takes a moment to count.
    wait_for(lambda: create().returncode == 0, "the create accepted with the chart's rules", 30, every=0.5)


# -- the comparison (last: after every other e2e test of the session) ----------------------


def refused_for_good(events: list[AuditEvent]) -> list[str]:
    """Requests RBAC refused that no later request of the same permission got allowed.

    Right after a (re)start the apiserver serves before its RBAC informers have synced and
    refuses everyone for a moment (test_faults.py restarts it mid-build); the operator's
    retry is then allowed. A refusal the chart is to blame for is never followed by that.
    """
    last_allowed: dict[Permission, float] = {}
    for event in events:
        if event.decision == "allow":
            last_allowed[event.permission] = max(event.at, last_allowed.get(event.permission, 0.0))
    return sorted(
        {
            f"{e.permission} {e.uri}"
            for e in events
            if e.decision == "forbid" and last_allowed.get(e.permission, 0.0) <= e.at
        }
    )


def _used(cp: ControlPlane) -> set[Permission]:
    events = operator_events(cp)
    assert events, f"no request by {OPERATOR_USER} in {cp.audit_log}"
    assert refused_for_good(events) == [], "RBAC refused the operator"
    used = permissions(events)
    assert used, "the operator made no API request the audit log records"
    return used


def test_every_request_of_the_operator_is_granted_by_the_chart_and_known(operator: OperatorProcess) -> None:
    used = _used(operator.cp)
    granted = rbac_grants(operator_identity_objects())
    assert sorted(str(p) for p in used if grant_of(p) not in granted) == [], "used, not granted by the chart"
    observed = ObservedRbac.load(OBSERVED_FILE)
    unknown = sorted(str(p) for p in used - observed.requests)
    if os.environ.get(WRITE_VARIABLE) != "1":
        # When rewriting, the next test writes the file from this run: a stale file is expected.
        assert unknown == [], f"used, not in {OBSERVED_FILE.name}: add to the chart and the file"


def test_every_grant_of_the_chart_was_used_by_the_whole_e2e_suite(
    operator: OperatorProcess, e2e_incomplete: list[str]
) -> None:
    used = _used(operator.cp)
    if e2e_incomplete:
        shown = "; ".join(e2e_incomplete[:5]) + (
            f"; ... {len(e2e_incomplete) - 5} more" if len(e2e_incomplete) > 5 else ""
        )
        pytest.skip(
            "every grant used: only a whole, passing run of tests/e2e can show it "
            f"({len(used)} permissions used here); this session is not one: {shown}"
        )
    observed = ObservedRbac.load(OBSERVED_FILE)
    if os.environ.get(WRITE_VARIABLE) == "1":
        about = json.loads(OBSERVED_FILE.read_text())["about"]
        observed = ObservedRbac(frozenset(used), observed.admission, observed.why)
        observed.dump(OBSERVED_FILE, about)
    granted = rbac_grants(operator_identity_objects())
    unused = sorted(granted - {grant_of(p) for p in used} - {grant_of(p) for p in observed.admission})
    assert unused == [], "granted by the chart, used by no e2e test: remove from the chart"
    assert sorted(str(p) for p in observed.requests - used) == [], f"in {OBSERVED_FILE.name}, not used"
