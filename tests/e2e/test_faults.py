"""Faults and bad inputs, injected on the real test ground while the real operator runs.

Each test breaks one thing for real (SIGKILL of the operator or of a builder
process, S3 refusing or hanging, kube-apiserver restarting, a Triton release
no node can run, a second resource claiming a model, a secret that must not
leak) and asserts what the cluster shows afterwards: the TritonResNet's
status, the Jobs, the files on the model volume, the answers of the Triton
pods. ``tests/README.md`` ("Faults survived") summarises what each one found.

Two faults need a hand inside Kubernetes, given by a MutatingAdmissionPolicy
(a real API-server admission mechanism, no webhook server): one adds the
builder's test hook ``TRITONRESNET_BUILDER_PAUSE_AT`` to the publish pod so
it holds still mid-publish, the other gives Triton pods of release 99.99 an
image the test ground does not know, as a registry without that release would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonresnet
import yaml
from testground.controlplane import ControlPlane
from testground.models import OnnxModels
from testground.nodeagent import UNKNOWN_IMAGE_REASON, NodeAgent
from testground.operator_run import (
    OperatorProcess,
    apply_sample,
    condition,
    get_trn,
    is_ready,
    wait_for_trn,
)
from testground.s3 import S3Server, start_s3
from testground.waiting import wait_for
from tritonresnet.api import names
from tritonresnet.client.classify import classify
from tritonresnet_builder.contract import VERSION_MARKER, pinned_config_name

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

SAMPLE_IMAGE = Path(tritonresnet.__file__).parent / "client" / "data" / "sample.jpg"
NAME = "resnet50"
MODEL = "resnet50"
#: A release the CRD accepts (YY.MM) and no registry has.
MISSING_RELEASE = "99.99"
PAUSE_VARIABLE = "TRITONRESNET_BUILDER_PAUSE_AT"
CONDITION_TYPES = ("Ready", "Reconciling", "Stalled", "EngineBuilt", "Available")


# -- reading the cluster ---------------------------------------------------------------------


def kubectl_json(cp: ControlPlane, *args: str) -> dict[str, Any]:
    return dict(json.loads(cp.kubectl(*args, "-o", "json").stdout))


def items(cp: ControlPlane, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
    args = ["get", kind, "-n", namespace] + (["-l", selector] if selector else [])
    return list(kubectl_json(cp, *args)["items"])


def jobs_of(cp: ControlPlane, namespace: str, cr: str = NAME) -> list[dict[str, Any]]:
    return items(cp, "jobs", namespace, f"{names.LABEL_INSTANCE}={names.label_value(cr)}")


def component_jobs(cp: ControlPlane, namespace: str, component: str) -> list[dict[str, Any]]:
    return [j for j in jobs_of(cp, namespace) if j["metadata"]["labels"][names.LABEL_COMPONENT] == component]


def job_pods(cp: ControlPlane, namespace: str, job: str) -> list[dict[str, Any]]:
    return items(cp, "pods", namespace, f"job-name={job}")


def wait_ready(operator: OperatorProcess, namespace: str, name: str = NAME) -> dict[str, Any]:
    return wait_for_trn(operator.cp, namespace, name, is_ready(), "Ready", operator=operator)


def assert_one_job_per_key(cp: ControlPlane, namespace: str, cr: str = NAME) -> dict[str, dict[str, Any]]:
    """Exactly one build Job per engine key and one publish Job per version key; returns them by component."""
    jobs = jobs_of(cp, namespace, cr)
    by_key: Counter[tuple[str, str]] = Counter()
    for job in jobs:
        labels = job["metadata"]["labels"]
        component = labels[names.LABEL_COMPONENT]
        key = labels[names.LABEL_ENGINE_KEY if component == "build" else names.LABEL_VERSION_KEY]
        by_key[(component, key)] += 1
    assert all(n == 1 for n in by_key.values()), f"duplicate Jobs: {by_key}"
    components = Counter(component for component, _ in by_key)
    assert components == {"build": 1, "publish": 1}, f"Jobs of one spec: {sorted(by_key)}"
    return {job["metadata"]["labels"][names.LABEL_COMPONENT]: job for job in jobs}


def assert_status_complete(trn: dict[str, Any], model_version: int = 1, check_targets: bool = True) -> None:
    """Nothing lost: the status describes the current generation in full."""
    gen = trn["metadata"]["generation"]
    status = trn["status"]
    assert status["observedGeneration"] == gen
    assert status["phase"] == "Ready"
    assert status["modelVersion"] == model_version
    assert status["published"]["version"] == model_version
    assert status["versionKey"] == status["published"]["versionKey"] == status["servingVersionKey"]
    if check_targets:
        assert [t["state"] for t in status["targets"]] == ["Built"]
    for type_ in CONDITION_TYPES:
        cond = condition(trn, type_)
        assert cond, f"condition {type_} missing: {status['conditions']}"
        assert cond["observedGeneration"] == gen and cond["lastTransitionTime"], cond
    assert condition(trn, "EngineBuilt")["status"] == "True"
    assert condition(trn, "Available")["status"] == "True"
    assert condition(trn, "Stalled")["status"] == "False"


def answers(endpoint: str) -> bool:
    """The Triton at ``host:port`` classifies the sample image (top 5 labels)."""
    top = classify([SAMPLE_IMAGE], url=endpoint, model=MODEL, protocol="http")
    return len(top[0]) == 5


# -- faults ------------------------------------------------------------------------------------


@contextlib.contextmanager
def operator_restarted_after(operator: OperatorProcess) -> Iterator[None]:
    """SIGKILL the operator on entry; start it again on exit, also when the block fails."""
    operator.kill(signal.SIGKILL)
    try:
        yield
    finally:
        operator.start()


@contextlib.contextmanager
def s3_paused(s3: S3Server, mode: str) -> Iterator[None]:
    s3.pause(mode)  # type: ignore[arg-type]
    try:
        yield
    finally:
        s3.resume()


def process_groups_with(*args: str) -> list[int]:
    """Process groups of local processes whose argv holds every one of ``args``
    (how a test finds the process the node agent runs for a pod)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            pgid = os.getpgid(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
        if all(arg in argv for arg in args):
            found.append(pgid)
    return sorted(set(found))


def dry_run_pod(cp: ControlPlane, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    """The pod as admission would store it (mutations applied), without creating it."""
    out = cp.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pod)).stdout
    return dict(json.loads(out))


@contextlib.contextmanager
def admission_policy(
    cp: ControlPlane,
    namespace: str,
    name: str,
    match: str,
    mutation: dict[str, Any],
    probe: dict[str, Any],
    took_effect: Callable[[dict[str, Any]], bool],
) -> Iterator[Callable[[], None]]:
    """A MutatingAdmissionPolicy on Pod creation in ``namespace``, active when the block runs.

    ``probe`` is a pod that the policy changes (checked with ``took_effect``
    on a server-side dry run), so the block starts only once the API server
    applies the policy. Yields a function that removes the policy and waits
    until it no longer applies.
    """
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ]
            },
            "matchConditions": [{"name": "selected", "expression": match}],
            "mutations": [mutation],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    probe = {**probe, "metadata": {**probe["metadata"], "namespace": namespace}}
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([policy, binding]))
    removed = False

    def remove() -> None:
        nonlocal removed
        if not removed:
            cp.kubectl("delete", "mutatingadmissionpolicybinding", name, "--ignore-not-found")
            cp.kubectl("delete", "mutatingadmissionpolicy", name, "--ignore-not-found")
            removed = True
            wait_for(lambda: not took_effect(dry_run_pod(cp, namespace, probe)), f"policy {name} gone", 30)

    try:
        wait_for(lambda: took_effect(dry_run_pod(cp, namespace, probe)), f"policy {name} in effect", 30)
        yield remove
    finally:
        remove()


def _probe_pod(labels: dict[str, str], container: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "admission-probe", "labels": labels},
        "spec": {
            "containers": [{"name": container, "image": image, "env": [{"name": "HOME", "value": "/tmp"}]}]
        },
    }


def _env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0].get("env") or ()}


def publish_pause_policy(
    cp: ControlPlane, namespace: str, point: str
) -> contextlib.AbstractContextManager[Callable[[], None]]:
    """Publish pods created in ``namespace`` get the builder's pause hook set to ``point``."""
    is_publish = (
        "has(object.metadata.labels) && "
        f"object.metadata.labels.exists(k, k == '{names.LABEL_COMPONENT}') && "
        f"object.metadata.labels['{names.LABEL_COMPONENT}'] == 'publish'"
    )
    add_env = {
        "patchType": "JSONPatch",
        "jsonPatch": {
            "expression": (
                '[JSONPatch{op: "add", path: "/spec/containers/0/env/-", value: '
                f'Object.spec.containers.env{{name: "{PAUSE_VARIABLE}", value: "{point}"}}}}]'
            )
        },
    }
    probe = _probe_pod(
        {names.LABEL_COMPONENT: "publish"}, "builder", "example.com/tritonresnet-builder:25.01"
    )
    return admission_policy(
        cp,
        namespace,
        f"{namespace}-pause-publish",
        is_publish,
        add_env,
        probe,
        lambda pod: _env_of(pod).get(PAUSE_VARIABLE) == point,
    )


def missing_release_policy(
    cp: ControlPlane, namespace: str
) -> contextlib.AbstractContextManager[Callable[[], None]]:
    """Stands in for a registry without release 99.99: Triton pods asking for it get an
    image no node of the test ground runs (ErrImagePull)."""
    tag = f":{MISSING_RELEASE}-py3"
    wants_missing = f"object.spec.containers.exists(c, c.image.endsWith('{tag}'))"
    rename = {
        "patchType": "ApplyConfiguration",
        "applyConfiguration": {
            "expression": (
                "Object{spec: Object.spec{containers: object.spec.containers.map(c, "
                "Object.spec.containers{name: c.name, image: "
                "c.image.endsWith('" + tag + "') ? "
                "c.image.replace('" + tag + "', '-release-not-in-registry" + tag + "') : c.image})}}"
            )
        },
    }
    probe = _probe_pod({}, "tritonserver", f"nvcr.io/nvidia/tritonserver{tag}")
    return admission_policy(
        cp,
        namespace,
        f"{namespace}-missing-release",
        wants_missing,
        rename,
        probe,
        lambda pod: "release-not-in-registry" in pod["spec"]["containers"][0]["image"],
    )


def upload_model(s3: S3Server, onnx_models: OnnxModels, namespace: str) -> str:
    return s3.upload(onnx_models.path("resnet18"), f"{namespace}/resnet18/model.onnx")


def patch_spec(cp: ControlPlane, namespace: str, patch: dict[str, Any], name: str = NAME) -> None:
    cp.kubectl("patch", "trn", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": patch}))


def apply_resource(
    cp: ControlPlane,
    namespace: str,
    name: str,
    uri: str,
    endpoint: str,
    credentials: dict[str, str],
    secret: str,
) -> None:
    """A Secret named ``secret`` holding ``credentials``, the PVC ``models`` and an onnx TritonResNet."""
    objects = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret, "namespace": namespace},
            "stringData": credentials,
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models", "namespace": namespace},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}}},
        },
        {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "source": {"uri": uri, "endpoint": endpoint, "credentialsSecret": secret},
                "model": {"name": name, "format": "onnx"},
                "engine": {"maxBatchSize": 4},
                "serving": {"release": "25.01", "replicas": 1, "instanceCount": 1},
                "repository": {"claimName": "models"},
            },
        },
    ]
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))


def is_failed(trn: dict[str, Any]) -> bool:
    return (trn.get("status") or {}).get("phase") == "Failed"


@pytest.fixture(scope="module")
def s3_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A second moto server that checks credentials (moto's own switch: after its first
    action, creating the bucket, every request needs a known IAM user)."""
    previous = os.environ.get("INITIAL_NO_AUTH_ACTION_COUNT")
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "1"
    try:
        server_cm = start_s3(tmp_path_factory.mktemp("s3-auth"))
        server = server_cm.__enter__()
    finally:
        if previous is None:
            del os.environ["INITIAL_NO_AUTH_ACTION_COUNT"]
        else:
            os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = previous
    try:
        yield server
    finally:
        server_cm.__exit__(None, None, None)


# -- 1. the operator killed (SIGKILL) ---------------------------------------------------------


def test_operator_killed_during_build_converges_without_duplicate_job(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    """SIGKILL while the build Job runs (its fetch held by a hanging S3): the restarted
    operator adopts the same Job instead of making another."""
    cp = operator.cp
    uri = upload_model(s3, onnx_models, namespace)
    with s3_paused(s3, "hang"):
        apply_sample(cp, namespace, s3, uri)
        build = wait_for(lambda: component_jobs(cp, namespace, "build"), "the build Job", 120)[0]
        with operator_restarted_after(operator):
            running = kubectl_json(cp, "get", "job", build["metadata"]["name"], "-n", namespace)
            assert not (running.get("status") or {}).get("conditions"), "the build finished before the kill"
            time.sleep(2)  # the build goes on without an operator
    trn = wait_ready(operator, namespace)

    assert_status_complete(trn)
    jobs = assert_one_job_per_key(cp, namespace)
    assert jobs["build"]["metadata"]["uid"] == build["metadata"]["uid"], "the build Job was replaced"
    assert len(job_pods(cp, namespace, build["metadata"]["name"])) == 1
    assert answers(trn["status"]["endpoints"][0])


def test_operator_killed_during_rollout_converges_without_second_rollout(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    cp = operator.cp
    apply_sample(cp, namespace, s3, upload_model(s3, onnx_models, namespace))
    deployment_name = names.deployment_name(NAME)

    def deployment() -> dict[str, Any] | None:
        found = items(cp, "deployments", namespace)
        return next((d for d in found if d["metadata"]["name"] == deployment_name), None)

    created = wait_for(deployment, "the Triton Deployment", 300)
    with operator_restarted_after(operator):
        assert condition(get_trn(cp, namespace, NAME), "Ready").get("status") != "True"
        time.sleep(3)  # Triton starts and gets ready while nobody watches
    trn = wait_ready(operator, namespace)

    assert_status_complete(trn)
    assert_one_job_per_key(cp, namespace)
    after = deployment()
    assert after is not None and after["metadata"]["uid"] == created["metadata"]["uid"]
    assert after["metadata"]["generation"] == 1, "the restarted operator changed the Deployment"
    assert len(items(cp, "replicasets", namespace)) == 1
    assert answers(trn["status"]["endpoints"][0])


def test_operator_killed_during_status_updates_loses_no_status(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    """Killed 0.3 s after the apply, then three times right after it was seen writing
    the resource's status: every restart starts from the cluster and loses nothing."""
    cp = operator.cp
    apply_sample(cp, namespace, s3, upload_model(s3, onnx_models, namespace))
    time.sleep(0.3)
    with operator_restarted_after(operator):
        pass
    seen = get_trn(cp, namespace, NAME)["metadata"]["resourceVersion"]
    for _ in range(3):

        def changed(since: str = seen) -> dict[str, Any] | None:
            trn = get_trn(cp, namespace, NAME)
            return trn if trn["metadata"]["resourceVersion"] != since else None

        written = wait_for(changed, "a status write by the restarted operator", 120, every=0.05)
        with operator_restarted_after(operator):
            seen = get_trn(cp, namespace, NAME)["metadata"]["resourceVersion"]
        assert written.get("status"), "a write that is not a status write"
    trn = wait_ready(operator, namespace)

    assert_status_complete(trn)
    assert_one_job_per_key(cp, namespace)
    assert operator.starts >= 5
    assert answers(trn["status"]["endpoints"][0])


# -- 2. the builder killed mid-publish --------------------------------------------------------


@pytest.mark.parametrize("point", ["assembled", "pinned-config"])
def test_builder_killed_mid_publish_shows_no_partial_version_and_publishes_once(
    operator: OperatorProcess,
    node_agent: NodeAgent,
    namespace: str,
    s3: S3Server,
    onnx_models: OnnxModels,
    point: str,
) -> None:
    """The publish pod holds still at ``point`` (its test hook, set by an admission policy
    on the first pod only) and is SIGKILLed there; the Job's retry publishes version 1 once."""
    cp = operator.cp
    with publish_pause_policy(cp, namespace, point) as remove_policy:
        apply_sample(cp, namespace, s3, upload_model(s3, onnx_models, namespace))
        publish = wait_for(lambda: component_jobs(cp, namespace, "publish"), "the publish Job", 300)[0]
        job_name = publish["metadata"]["name"]
        pods = wait_for(lambda: job_pods(cp, namespace, job_name), "the publish pod", 120)
        pod = pods[0]["metadata"]["name"]
        wait_for(
            lambda: f"paused at {point}" in node_agent.pod_log(namespace, pod, "builder"),
            f"the publisher to pause at {point}",
            120,
        )
        remove_policy()  # the retry runs unpaused

    version_key = publish["metadata"]["labels"][names.LABEL_VERSION_KEY]
    groups = process_groups_with("publish", f"--version-key={version_key}")
    assert len(groups) == 1, f"publisher processes: {groups}"
    os.killpg(groups[0], signal.SIGKILL)

    repository = node_agent.volume_path(namespace, "models")
    model_dir = repository / MODEL
    wait_for(lambda: not process_groups_with("publish", f"--version-key={version_key}"), "the kill", 120)
    # What Triton could see right after the kill: no version folder at all.
    assert not model_dir.is_dir() or not [p for p in model_dir.iterdir() if p.name.isdigit()]
    assert list((repository / ".tritonresnet").rglob(f"publish~{MODEL}~*")), "no staging left by the kill"
    pinned = model_dir / "configs" / f"{pinned_config_name(1)}.pbtxt"
    assert pinned.is_file() == (point == "pinned-config"), "killed elsewhere than at the pause point"

    trn = wait_ready(operator, namespace)
    assert_status_complete(trn)
    jobs = assert_one_job_per_key(cp, namespace)
    assert jobs["publish"]["metadata"]["uid"] == publish["metadata"]["uid"]
    job_status = jobs["publish"]["status"]
    assert (job_status.get("failed"), job_status.get("succeeded")) == (1, 1)

    versions = sorted(p.name for p in model_dir.iterdir() if p.name.isdigit())
    assert versions == ["1"]
    marker = json.loads((model_dir / "1" / VERSION_MARKER).read_text())
    assert marker["version_key"] == version_key == trn["status"]["versionKey"]
    assert not list((repository / ".tritonresnet").rglob(f"publish~{MODEL}~*")), (
        "staging of the killed run kept"
    )
    assert answers(trn["status"]["endpoints"][0])


# -- 3. S3 unavailable, S3 saying no --------------------------------------------------------------


def test_s3_refusing_for_a_while_is_retried_then_ready(
    operator: OperatorProcess, node_agent: NodeAgent, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    cp = operator.cp
    uri = upload_model(s3, onnx_models, namespace)
    with s3_paused(s3, "refuse"):
        apply_sample(cp, namespace, s3, uri)
        builds = wait_for(lambda: component_jobs(cp, namespace, "build"), "the build Job", 120)
        build = builds[0]["metadata"]["name"]
        pod = wait_for(lambda: job_pods(cp, namespace, build), "the build pod", 120)[0]["metadata"]["name"]
        wait_for(lambda: "retrying in" in node_agent.pod_log(namespace, pod, "builder"), "a retry", 60)
        time.sleep(12)
        during = get_trn(cp, namespace, NAME)
    trn = wait_ready(operator, namespace)

    # While S3 was down the resource waited (Building), it did not fail.
    assert during["status"]["phase"] in ("Pending", "Building"), during["status"]
    assert condition(during, "Stalled").get("status") != "True"
    log = "".join(
        node_agent.pod_log(namespace, p["metadata"]["name"], "builder")
        for p in job_pods(cp, namespace, build)
    )
    assert log.count("retrying in") >= 2, log[-2000:]
    assert_status_complete(trn)
    jobs = assert_one_job_per_key(cp, namespace)
    assert jobs["build"]["status"].get("succeeded") == 1


@pytest.mark.parametrize("error", ["denied", "missing"])
def test_s3_permanent_error_fails_fast_with_the_reason(
    operator: OperatorProcess,
    namespace: str,
    s3: S3Server,
    s3_auth: S3Server,
    onnx_models: OnnxModels,
    error: str,
) -> None:
    """403 (credentials moto does not know) and 404 (a key nobody uploaded) fail the
    Job on its first pod (podFailurePolicy) and say why, naming the object."""
    cp = operator.cp
    if error == "denied":
        server, uri = s3_auth, s3_auth.uri(f"{namespace}/resnet18/model.onnx")
        credentials = {
            "AWS_ACCESS_KEY_ID": "AKIAFAULTSUNKNOWN",
            "AWS_SECRET_ACCESS_KEY": "not-a-known-secret",
        }
        expected = "access denied"
    else:
        server, uri = s3, s3.uri(f"{namespace}/no/such/model.onnx")
        credentials = {k: v for k, v in s3.env.items() if k.startswith("AWS_")}
        expected = "no/such/model.onnx"
    apply_resource(cp, namespace, NAME, uri, server.endpoint, credentials, "s3-credentials")
    trn = wait_for_trn(cp, namespace, NAME, is_failed, "Failed", timeout=180, operator=operator)

    built = condition(trn, "EngineBuilt")
    assert (built["status"], built["reason"]) == ("False", "BuildFailed")
    assert expected in built["message"].lower() and "model.onnx" in built["message"], built
    assert condition(trn, "Stalled")["status"] == "True"
    assert condition(trn, "Ready")["reason"] == "BuildFailed"
    jobs = jobs_of(cp, namespace)
    assert len(jobs) == 1, "a publish Job after a failed build"
    job = jobs[0]
    assert job["status"].get("failed") == 1 and not job["status"].get("succeeded")
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    time.sleep(5)  # no retry comes later either
    assert len(job_pods(cp, namespace, job["metadata"]["name"])) == 1


# -- 4. kube-apiserver restarted ----------------------------------------------------------------


def test_apiserver_restart_mid_build_operator_reconnects_and_converges(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    cp = operator.cp
    uri = upload_model(s3, onnx_models, namespace)
    assert operator.proc is not None
    pid, starts = operator.proc.pid, operator.starts
    with s3_paused(s3, "hang"):
        apply_sample(cp, namespace, s3, uri)
        wait_for(lambda: jobs_of(cp, namespace), "the build Job", 120)
        cp.restart_apiserver()
    trn = wait_ready(operator, namespace)

    assert operator.proc.poll() is None and (operator.proc.pid, operator.starts) == (pid, starts)
    assert_status_complete(trn)
    assert_one_job_per_key(cp, namespace)
    assert answers(trn["status"]["endpoints"][0])


# -- 5. Triton pods that never become ready -------------------------------------------------------


def test_release_that_never_runs_degrades_keeps_old_version_serving_and_recovers(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    """spec.serving.release set to one no registry has (its Triton pods wait on an image no
    node runs): Degraded with the reason, version 1 keeps answering, and reverting the
    release brings Ready back. The new release's image arrives only with the version built
    for it (plans load only in their own release's Triton), and after the revert the
    status describes the current engines, not the abandoned release's.
    """
    cp = operator.cp
    apply_sample(cp, namespace, s3, upload_model(s3, onnx_models, namespace))
    ready = wait_ready(operator, namespace)
    old_endpoint = ready["status"]["endpoints"][0]

    with missing_release_policy(cp, namespace):
        patch_spec(cp, namespace, {"serving": {"release": MISSING_RELEASE}})
        degraded = wait_for_trn(
            cp,
            namespace,
            NAME,
            lambda t: t["status"].get("phase") == "Degraded" and t["status"]["observedGeneration"] == 2,
            "Degraded",
            timeout=300,
            operator=operator,
        )
        ready_cond = condition(degraded, "Ready")
        assert ready_cond["status"] == "False" and ready_cond["reason"] == "RolloutStuck", ready_cond
        assert UNKNOWN_IMAGE_REASON in ready_cond["message"], ready_cond
        assert condition(degraded, "Stalled")["status"] == "True"
        assert answers(old_endpoint), "version 1 stopped answering"
        triton = items(cp, "pods", namespace, f"{names.LABEL_COMPONENT}=triton")
        by_endpoint = {f"{p['status'].get('podIP')}:8000": p for p in triton}
        assert by_endpoint[old_endpoint]["metadata"]["labels"][names.LABEL_MODEL_VERSION] == "1"
        stuck = [p for p in triton if "release-not-in-registry" in p["spec"]["containers"][0]["image"]]
        assert stuck, "no pod of the new release"
        assert stuck[0]["metadata"]["labels"][names.LABEL_MODEL_VERSION] == "2", (
            "the new release's image must arrive with the version built for it"
        )

        patch_spec(cp, namespace, {"serving": {"release": "25.01"}})
        recovered = wait_ready(operator, namespace)

    assert recovered["metadata"]["generation"] == 3
    assert_status_complete(recovered, check_targets=False)
    assert answers(recovered["status"]["endpoints"][0])
    first_targets = [(t["engineKey"], t["state"]) for t in ready["status"]["targets"]]
    assert [(t["engineKey"], t["state"]) for t in recovered["status"]["targets"]] == first_targets


# -- 6. two resources, one model name, one volume ----------------------------------------------


def test_second_resource_with_same_model_on_same_volume_is_refused_first_keeps_serving(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    cp = operator.cp
    uri = upload_model(s3, onnx_models, namespace)
    apply_sample(cp, namespace, s3, uri, name="first", model_name=MODEL)
    first = wait_ready(operator, namespace, "first")

    apply_sample(cp, namespace, s3, uri, name="second", model_name=MODEL)
    second = wait_for_trn(
        cp,
        namespace,
        "second",
        lambda t: bool(condition(t, "Stalled")),
        "refused",
        timeout=60,
        operator=operator,
    )
    ready = condition(second, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ModelNameConflict")
    assert "'first'" in ready["message"] and MODEL in ready["message"]
    assert condition(second, "Stalled")["status"] == "True"
    assert second["status"]["phase"] == "Failed"
    warnings = [
        e
        for e in items(cp, "events", namespace)
        if e["involvedObject"]["name"] == "second" and e["reason"] == "ModelNameConflict"
    ]
    assert warnings and warnings[0]["type"] == "Warning"

    time.sleep(5)  # a few passes of both
    assert not jobs_of(cp, namespace, "second")
    assert not items(cp, "deployments", namespace, f"{names.LABEL_INSTANCE}=second")
    after = get_trn(cp, namespace, "first")
    assert condition(after, "Ready")["status"] == "True"
    assert condition(after, "Ready")["lastTransitionTime"] == condition(first, "Ready")["lastTransitionTime"]
    assert answers(after["status"]["endpoints"][0])


# -- 7. secrets stay secret -------------------------------------------------------------------------


def test_secret_values_appear_in_no_status_event_or_log(
    operator: OperatorProcess,
    node_agent: NodeAgent,
    namespace: str,
    s3: S3Server,
    s3_auth: S3Server,
    onnx_models: OnnxModels,
) -> None:
    """A whole life (build, publish, serve, a spec change, a denied fetch) with distinctive
    credentials, then every status, event, Job and log is searched for them."""
    cp = operator.cp
    token = uuid.uuid4().hex
    good = {
        "AWS_ACCESS_KEY_ID": f"AKIAGOOD{token[:12].upper()}",
        "AWS_SECRET_ACCESS_KEY": f"goodsecret-{token}",
    }
    bad = {
        "AWS_ACCESS_KEY_ID": f"AKIABAD{token[12:24].upper()}",
        "AWS_SECRET_ACCESS_KEY": f"badsecret-{token}",
    }
    uri = upload_model(s3, onnx_models, namespace)
    apply_resource(cp, namespace, NAME, uri, s3.endpoint, good, "good-credentials")
    wait_ready(operator, namespace)
    patch_spec(cp, namespace, {"serving": {"instanceCount": 1, "replicas": 0}})
    wait_ready(operator, namespace)
    apply_resource(
        cp, namespace, "denied", s3_auth.uri("x/model.onnx"), s3_auth.endpoint, bad, "bad-credentials"
    )
    wait_for_trn(cp, namespace, "denied", is_failed, "Failed", timeout=180, operator=operator)

    texts = {
        "status": cp.kubectl("get", "trn", "-n", namespace, "-o", "yaml").stdout,
        "events": cp.kubectl("get", "events", "-n", namespace, "-o", "yaml").stdout,
        "jobs and pods": cp.kubectl("get", "jobs,pods,deployments", "-n", namespace, "-o", "yaml").stdout,
        "operator log": operator.log_text(),
    }
    pods = items(cp, "pods", namespace)
    assert any(p["metadata"]["labels"].get(names.LABEL_COMPONENT) == "build" for p in pods)
    for pod in pods:
        for container in pod["spec"]["containers"]:
            texts[f"log of {pod['metadata']['name']}"] = node_agent.pod_log(
                namespace, pod["metadata"]["name"], container["name"]
            )
    assert "denied" in texts["status"] and "BuildFailed" in texts["status"]
    for value in (*good.values(), *bad.values()):
        leaks = [where for where, text in texts.items() if value in text]
        assert not leaks, f"{value[:12]}... appears in {leaks}"


# -- 8. the API server refuses a child ------------------------------------------------------------


def test_child_refused_by_a_resource_quota_is_reported_and_applied_once_the_quota_lifts(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    """A ResourceQuota allowing no Service makes the API server refuse the operator's Service:
    the status says so (ApplyFailed, the API server's words) while the build goes on, and
    once the quota is gone the next retry applies it and the resource becomes Ready."""
    cp = operator.cp
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-services", "namespace": namespace},
        "spec": {"hard": {"services": "0"}},
    }
    cp.kubectl("apply", "-f", "-", input=json.dumps(quota))
    apply_sample(cp, namespace, s3, upload_model(s3, onnx_models, namespace))
    refused = wait_for_trn(
        cp,
        namespace,
        NAME,
        lambda t: (condition(t, "Ready") or {}).get("reason") == "ApplyFailed",
        "ApplyFailed",
        timeout=120,
        operator=operator,
    )
    ready = condition(refused, "Ready")
    assert ready["status"] == "False" and "no-services" in ready["message"], ready
    assert f"Service {names.service_name(NAME)}" in ready["message"], ready
    assert condition(refused, "Stalled")["status"] == "True"
    assert refused["status"]["observedGeneration"] == refused["metadata"]["generation"]
    assert component_jobs(cp, namespace, "build"), "the other children must still be applied"
    warnings = [
        e
        for e in items(cp, "events", namespace)
        if e["involvedObject"]["name"] == NAME and e["reason"] == "ApplyFailed"
    ]
    assert warnings and warnings[0]["type"] == "Warning"

    cp.kubectl("delete", "resourcequota", "no-services", "-n", namespace)
    trn = wait_ready(operator, namespace)
    assert_status_complete(trn)
    assert_one_job_per_key(cp, namespace)
    assert items(cp, "services", namespace, f"{names.LABEL_INSTANCE}={names.label_value(NAME)}")


# -- 9. owns only its own, keeps what it owns as declared ------------------------------------------


def _get(cp: ControlPlane, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    found = cp.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return dict(json.loads(found.stdout)) if found.returncode == 0 else None


def _foreign(obj: dict[str, Any]) -> dict[str, Any]:
    """What of a user's object must not change: its spec, labels, annotations and owners."""
    meta = obj["metadata"]
    return {
        "spec": {k: v for k, v in obj.get("spec", {}).items() if k not in ("volumeName",)},
        "labels": meta.get("labels"),
        "annotations": {k: v for k, v in (meta.get("annotations") or {}).items() if "kubernetes.io" not in k},
        "ownerReferences": meta.get("ownerReferences"),
    }


def _has_reason(reason: str) -> Callable[[dict[str, Any]], bool]:
    return lambda trn: condition(trn, "Ready").get("reason") == reason


def test_a_users_service_of_the_same_name_survives_the_resources_life_unchanged(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    cp = operator.cp
    shop = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "shop", "namespace": namespace, "labels": {"app": "shop"}},
        "spec": {"selector": {"app": "shop"}, "ports": [{"name": "web", "port": 80, "targetPort": 8080}]},
    }
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(shop))
    before = _foreign(_get(cp, "service", namespace, "shop") or {})
    apply_sample(cp, namespace, s3, upload_model(s3, onnx_models, namespace), name="shop", model_name="shop")
    trn = wait_for_trn(cp, namespace, "shop", _has_reason("NameConflict"), "NameConflict", operator=operator)

    ready = condition(trn, "Ready")
    assert ready["status"] == "False" and "Service shop" in ready["message"], ready
    assert condition(trn, "Stalled")["status"] == "True"
    events = items(cp, "events", namespace)
    assert any(e["reason"] == "NameConflict" and e["type"] == "Warning" for e in events)
    assert _foreign(_get(cp, "service", namespace, "shop") or {}) == before

    cp.kubectl("delete", "trn", "shop", "-n", namespace, "--wait=true", "--timeout=60s")
    # The garbage collector removes what was the resource's: wait for its Deployment to go.
    wait_for(lambda: _get(cp, "deployment", namespace, "shop-triton") is None, "the Deployment gone", 120)
    after = _get(cp, "service", namespace, "shop")
    assert after is not None and _foreign(after) == before


def test_a_users_claim_with_data_of_the_created_claims_name_is_never_mounted_nor_deleted(
    operator: OperatorProcess, node_agent: NodeAgent, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    cp = operator.cp
    claim = names.pvc_name("shop")
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(pvc))

    def bound_folder() -> Path | None:
        # volume_path raises while the claim is unbound; to wait_for that is "not yet".
        try:
            return node_agent.volume_path(namespace, claim)
        except LookupError:
            return None

    folder = wait_for(bound_folder, "the user's claim bound", 60)
    (folder / "orders.csv").write_text("id,total\n1,42\n")
    before = _foreign(_get(cp, "pvc", namespace, claim) or {})

    uri = upload_model(s3, onnx_models, namespace)
    trn_obj = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": "shop", "namespace": namespace},
        "spec": {
            "source": {"uri": uri, "endpoint": s3.endpoint},
            "model": {"name": "shop", "format": "onnx"},
            "repository": {"create": {"size": "1Gi"}},
        },
    }
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(trn_obj))
    trn = wait_for_trn(cp, namespace, "shop", _has_reason("NameConflict"), "NameConflict", operator=operator)
    assert f"PersistentVolumeClaim {claim}" in condition(trn, "Ready")["message"]
    assert jobs_of(cp, namespace, "shop") == [], "a Job would have mounted the user's volume"

    cp.kubectl("delete", "trn", "shop", "-n", namespace, "--wait=true", "--timeout=60s")
    time.sleep(5)  # the garbage collector's turn: nothing of the user's may go
    after = _get(cp, "pvc", namespace, claim)
    assert after is not None and _foreign(after) == before
    assert (folder / "orders.csv").read_text() == "id,total\n1,42\n"


def test_hand_edits_of_the_service_selector_and_the_triton_image_are_put_back(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    cp = operator.cp
    apply_sample(cp, namespace, s3, upload_model(s3, onnx_models, namespace))
    wait_ready(operator, namespace)
    service, deployment = names.service_name(NAME), names.deployment_name(NAME)
    selector = (_get(cp, "service", namespace, service) or {})["spec"]["selector"]
    image = (_get(cp, "deployment", namespace, deployment) or {})["spec"]["template"]["spec"]["containers"][
        0
    ]["image"]

    edited_at = time.monotonic()
    cp.kubectl(
        "patch", "service", service, "-n", namespace, "--type=merge", "-p", '{"spec":{"selector":{"x":"y"}}}'
    )
    cp.kubectl("set", "image", f"deployment/{deployment}", "-n", namespace, "tritonserver=evil/triton:latest")

    def restored() -> bool:
        svc = _get(cp, "service", namespace, service) or {}
        dep = _get(cp, "deployment", namespace, deployment) or {}
        containers = dep.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}]
        return svc.get("spec", {}).get("selector") == selector and containers[0].get("image") == image

    wait_for(restored, "the selector and image put back", 90)  # within one resync (60 s) and its pass
    took = time.monotonic() - edited_at
    print(f"hand edits reverted after {took:.1f} s")
    wait_ready(operator, namespace)


def test_a_failed_build_is_not_rerun_when_its_job_goes_and_is_rerun_by_a_spec_fix(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    """The object is missing (404, exit 3). The failed Job is deleted as its TTL would delete it
    (the operator's TTL is an hour here): no new build. Then the object is uploaded and the
    resource switches credentialsSecret (a field outside the engine key): the build runs again."""
    cp = operator.cp
    key = f"{namespace}/later/model.onnx"
    credentials = {k: v for k, v in s3.env.items() if k.startswith("AWS_")}
    apply_resource(cp, namespace, NAME, s3.uri(key), s3.endpoint, credentials, "s3-credentials")
    wait_for_trn(cp, namespace, NAME, is_failed, "Failed", timeout=180, operator=operator)
    (failed,) = jobs_of(cp, namespace)
    cp.kubectl("delete", "job", failed["metadata"]["name"], "-n", namespace, "--wait=true")

    time.sleep(20)  # several passes (the deletion is an event) and no new Job
    assert jobs_of(cp, namespace) == [], "the failed build ran again when its Job went"
    trn = get_trn(cp, namespace, NAME)
    assert condition(trn, "EngineBuilt")["reason"] == "BuildFailed", trn["status"]
    assert condition(trn, "Stalled")["status"] == "True"

    s3.upload(onnx_models.path("resnet18"), key)
    fixed = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s3-credentials-2", "namespace": namespace},
        "stringData": credentials,
    }
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(fixed))
    patch = '{"spec":{"source":{"credentialsSecret":"s3-credentials-2"}}}'
    cp.kubectl("patch", "trn", NAME, "-n", namespace, "--type=merge", "-p", patch)
    trn = wait_ready(operator, namespace)
    builds = component_jobs(cp, namespace, "build")
    assert len(builds) == 1 and builds[0]["metadata"]["name"] == failed["metadata"]["name"]
    assert trn["status"]["modelVersion"] == 1


def test_a_build_pod_that_cannot_start_is_said_in_words_within_30_s(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    """credentialsSecret names a Secret without the secret key: the kubelet (the node agent, as a
    kubelet would) holds the build pod in CreateContainerConfigError."""
    cp = operator.cp
    uri = upload_model(s3, onnx_models, namespace)
    # The Secret lacks AWS_SECRET_ACCESS_KEY, which the builder's env requires.
    apply_resource(cp, namespace, NAME, uri, s3.endpoint, {"AWS_ACCESS_KEY_ID": "AKIA-ONLY"}, "half-secret")
    build = wait_for(lambda: component_jobs(cp, namespace, "build"), "the build Job", 60)[0]
    pod = wait_for(lambda: job_pods(cp, namespace, build["metadata"]["name"]), "the build pod", 60)[0]

    def waiting() -> bool:
        live = job_pods(cp, namespace, build["metadata"]["name"])
        statuses = [cs for p in live for cs in (p.get("status") or {}).get("containerStatuses") or ()]
        return any(
            (cs.get("state") or {}).get("waiting", {}).get("reason") == "CreateContainerConfigError"
            for cs in statuses
        )

    wait_for(waiting, "the pod waiting with CreateContainerConfigError", 60)
    seen = time.monotonic()
    trn = wait_for_trn(
        cp, namespace, NAME, _has_reason("PodStuck"), "PodStuck", timeout=30, operator=operator
    )
    print(f"stuck build pod in status after {time.monotonic() - seen:.1f} s")
    message = condition(trn, "Ready")["message"]
    assert pod["metadata"]["name"] in message and "CreateContainerConfigError" in message, message
    assert "half-secret" in message, message
    assert condition(trn, "Stalled")["status"] == "True"
