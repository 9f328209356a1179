"""The CRD rejects bad specs at apply time: each case is sent to the real apiserver.

Every case starts from a valid resource, breaks one thing, runs ``kubectl
apply`` and expects a refusal that names the field. Updates that change an
immutable field are applied over a stored resource. A valid resource must
come back with the schema's defaults, and ``kubectl scale`` must reach
``spec.serving.replicas`` through the scale subresource.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from testground.chart import MANIFESTS_DIR, to_yaml
from testground.controlplane import ControlPlane
from testground.operator_run import install_crd

pytestmark = pytest.mark.cluster

Spec = dict[str, Any]


def good_resource(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "tritonresnet.io/v1alpha1",
        "kind": "TritonResNet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"uri": "s3://models/resnet50/model.onnx"},
            "repository": {"claimName": "models"},
        },
    }


@pytest.fixture(scope="module")
def crd_namespace(control_plane: ControlPlane) -> Iterator[str]:
    install_crd(control_plane)
    with control_plane.throwaway_namespace("crd") as name:
        yield name


def apply(cp: ControlPlane, obj: dict[str, Any]) -> tuple[int, str]:
    result = cp.kubectl("apply", "-f", "-", input=to_yaml([obj]), check=False)
    return result.returncode, result.stdout + result.stderr


def _set(path: str, value: Any) -> Callable[[Spec], None]:
    """A mutation of the spec: set a dotted path (creating sections on the way)."""

    def mutate(spec: Spec) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return mutate


def _delete(path: str) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node[key]
        del node[leaf]

    return mutate


def _all(*mutations: Callable[[Spec], None]) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        for mutation in mutations:
            mutation(spec)

    return mutate


# (case id, mutation of a good spec, texts the apiserver's refusal must contain: the field first)
BAD_SPECS: list[tuple[str, Callable[[Spec], None], tuple[str, ...]]] = [
    ("missing-source-uri", _delete("source.uri"), ("spec.source.uri", "Required value")),
    ("missing-source", _delete("source"), ("spec.source", "Required value")),
    ("missing-repository", _delete("repository"), ("spec.repository", "Required value")),
    ("uri-bad-scheme", _set("source.uri", "http://models/resnet50.onnx"), ("spec.source.uri",)),
    ("uri-relative-path", _set("source.uri", "models/resnet50.onnx"), ("spec.source.uri",)),
    ("sha256-not-hex", _set("source.sha256", "ABC123"), ("spec.source.sha256",)),
    (
        "external-data-location-leaves-the-folder",
        _set("source.externalData", [{"location": "../model.onnx.data", "sha256": "a" * 64}]),
        ("spec.source.externalData[0].location",),
    ),
    (
        "external-data-without-digest",
        _set("source.externalData", [{"location": "model.onnx.data"}]),
        ("spec.source.externalData[0].sha256", "Required value"),
    ),
    (
        "external-data-pinned-twice",
        _set(
            "source.externalData",
            [{"location": "d.bin", "sha256": "a" * 64}, {"location": "d.bin", "sha256": "b" * 64}],
        ),
        ("spec.source.externalData[1]", "Duplicate value"),
    ),
    ("endpoint-not-http", _set("source.endpoint", "ftp://minio:9000"), ("spec.source.endpoint",)),
    ("secret-name-invalid", _set("source.credentialsSecret", "S3_Creds"), ("spec.source.credentialsSecret",)),
    ("format-not-in-enum", _set("model.format", "pytorch"), ("spec.model.format", "Unsupported value")),
    ("model-name-with-slash", _set("model.name", "vision/resnet50"), ("spec.model.name",)),
    (
        "precision-not-in-enum",
        _set("engine.precision", "fp64"),
        ("spec.engine.precision", "Unsupported value"),
    ),
    ("precision-int8-refused", _set("engine.precision", "int8"), ("spec.engine.precision", "calibration")),
    ("max-batch-negative", _set("engine.maxBatchSize", -1), ("spec.engine.maxBatchSize",)),
    ("max-batch-1000", _set("engine.maxBatchSize", 1000), ("spec.engine.maxBatchSize",)),
    ("max-batch-not-integer", _set("engine.maxBatchSize", "eight"), ("spec.engine.maxBatchSize",)),
    (
        "opt-batch-over-max",
        _all(_set("engine.maxBatchSize", 4), _set("engine.optBatchSize", 8)),
        ("spec.engine.optBatchSize", "optBatchSize must be at most maxBatchSize"),
    ),
    (
        "opt-batch-with-max-zero",
        _all(_set("engine.maxBatchSize", 0), _set("engine.optBatchSize", 1)),
        ("spec.engine.optBatchSize", "0 when maxBatchSize is 0"),
    ),
    ("workspace-too-small", _set("engine.workspaceMiB", 16), ("spec.engine.workspaceMiB",)),
    (
        "accuracy-difference-a-string",
        _set("engine.accuracy", {"maxAbsDifference": "0.1"}),
        ("spec.engine.accuracy.maxAbsDifference",),
    ),
    (
        "accuracy-percent-above-100",
        _set("engine.accuracy", {"minTop5AgreementPercent": 101}),
        ("spec.engine.accuracy.minTop5AgreementPercent",),
    ),
    (
        "gpu-kinds-auto-with-onnx",
        _all(_set("model.format", "onnx"), _set("engine.gpuKinds", "Auto")),
        ("spec.engine.gpuKinds", "Auto only applies to format tensorrt"),
    ),
    (
        "ampere-plus-with-onnx",
        _all(_set("model.format", "onnx"), _set("engine.hardwareCompatibility", "AmperePlus")),
        ("spec.engine.hardwareCompatibility", "only applies to format tensorrt"),
    ),
    ("gpu-kinds-unknown", _set("engine.gpuKinds", "All"), ("spec.engine.gpuKinds",)),
    (
        "targets-with-onnx",
        _all(_set("model.format", "onnx"), _set("engine.targets", [{"nodeSelector": {"gpu": "a10g"}}])),
        ("spec.engine.targets", "only applies to format tensorrt"),
    ),
    (
        "target-names-duplicate",
        _set(
            "engine.targets",
            [{"name": "a", "nodeSelector": {"gpu": "a10g"}}, {"name": "a", "nodeSelector": {"gpu": "t4"}}],
        ),
        ("spec.engine.targets", "target names must be unique"),
    ),
    (
        "toleration-bad-effect",
        _set("serving.tolerations", [{"key": "gpu", "effect": "Sometimes"}]),
        ("spec.serving.tolerations[0].effect", "Unsupported value"),
    ),
    ("replicas-negative", _set("serving.replicas", -1), ("spec.serving.replicas",)),
    ("release-bad-pattern", _set("serving.release", "25.1"), ("spec.serving.release",)),
    (
        "resource-not-a-quantity",
        _set("serving.resources", {"limits": {"memory": "lots"}}),
        ("spec.serving.resources.limits.memory",),
    ),
    (
        "preferred-batch-over-max",
        _all(
            _set("engine.maxBatchSize", 8), _set("serving.dynamicBatching", {"preferredBatchSizes": [4, 16]})
        ),
        ("spec.serving.dynamicBatching.preferredBatchSizes", "at most engine.maxBatchSize"),
    ),
    (
        "preferred-batch-with-max-zero",
        _all(_set("engine.maxBatchSize", 0), _set("serving.dynamicBatching", {"preferredBatchSizes": [1]})),
        ("spec.serving.dynamicBatching.preferredBatchSizes", "must be empty with engine.maxBatchSize 0"),
    ),
    (
        "autoscaling-min-over-max",
        _set("serving.autoscaling", {"minReplicas": 5, "maxReplicas": 2, "metric": {"type": "queueTime"}}),
        ("spec.serving.autoscaling.minReplicas", "must be at most maxReplicas"),
    ),
    (
        "autoscaling-missing-max",
        _set("serving.autoscaling", {"minReplicas": 2}),
        ("spec.serving.autoscaling.maxReplicas", "Required value"),
    ),
    (
        "autoscaling-cpu-without-request",
        _set("serving.autoscaling", {"maxReplicas": 4}),
        ("spec.serving.resources", "needs resources.requests.cpu"),
    ),
    (
        "autoscaling-metric-mismatch",
        _set(
            "serving.autoscaling",
            {"maxReplicas": 4, "metric": {"type": "queueTime", "targetAverageUtilization": 50}},
        ),
        ("spec.serving.autoscaling.metric", "targetQueueTimeMicroseconds for type queueTime"),
    ),
    (
        "repository-claim-and-create",
        _set("repository.create", {"size": "10Gi"}),
        ("spec.repository", "set exactly one of claimName"),
    ),
    (
        "repository-neither",
        _set("repository", {"subPath": "x"}),
        ("spec.repository", "set exactly one of claimName"),
    ),
    ("repository-subpath-traversal", _set("repository.subPath", "../other"), ("spec.repository.subPath",)),
    (
        "repository-access-mode",
        _set("repository", {"create": {"accessModes": ["ReadWriteSometimes"]}}),
        ("spec.repository.create.accessModes[0]", "Unsupported value"),
    ),
    ("unknown-field-typo", _set("source.url", "s3://models/x.onnx"), ("spec.source.url", "unknown field")),
]


@pytest.mark.parametrize(("case", "mutate", "expected"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_crd_rejects_bad_spec_at_apply_time(
    control_plane: ControlPlane,
    crd_namespace: str,
    case: str,
    mutate: Callable[[Spec], None],
    expected: tuple[str, ...],
) -> None:
    obj = good_resource(f"bad-{case}", crd_namespace)
    mutate(obj["spec"])
    code, output = apply(control_plane, obj)
    assert code != 0, f"{case}: the apiserver accepted it:\n{output}"
    for text in expected:
        assert text in output, f"{case}: {text!r} not in the refusal:\n{output}"
    stored = control_plane.kubectl("get", "trn", obj["metadata"]["name"], "-n", crd_namespace, check=False)
    assert stored.returncode != 0, f"{case}: the resource was stored"


# (case id, mutation of a good spec): specs the apiserver must accept, and spec.py too.
GOOD_SPECS: list[tuple[str, Callable[[Spec], None]]] = [
    # the tutorial's layout: no batching; the batcher's delay is ignored, an empty list allowed
    ("max-batch-zero", _set("engine.maxBatchSize", 0)),
    (
        "max-batch-zero-with-batcher-defaults",
        _all(
            _set("engine", {"maxBatchSize": 0, "optBatchSize": 0}),
            _set("serving.dynamicBatching", {"maxQueueDelayMicroseconds": 500, "preferredBatchSizes": []}),
        ),
    ),
    (
        "max-batch-one-preferred-one",
        _all(_set("engine.maxBatchSize", 1), _set("serving.dynamicBatching", {"preferredBatchSizes": [1]})),
    ),
]


@pytest.mark.parametrize(("case", "mutate"), GOOD_SPECS, ids=[c[0] for c in GOOD_SPECS])
def test_crd_accepts_good_spec_at_apply_time(
    control_plane: ControlPlane, crd_namespace: str, case: str, mutate: Callable[[Spec], None]
) -> None:
    from tritonresnet.api.spec import parse_spec

    obj = good_resource(f"good-{case}", crd_namespace)
    mutate(obj["spec"])
    code, output = apply(control_plane, obj)
    assert code == 0, f"{case}: the apiserver refused it:\n{output}"
    parse_spec(get_json(control_plane, crd_namespace, obj["metadata"]["name"]))


def test_crd_rejects_default_model_name_from_a_long_metadata_name(
    control_plane: ControlPlane, crd_namespace: str
) -> None:
    obj = good_resource("r" * 70, crd_namespace)
    code, output = apply(control_plane, obj)
    assert code != 0 and "set spec.model.name" in output, output
    obj["spec"]["model"] = {"name": "resnet50_long"}
    code, output = apply(control_plane, obj)
    assert code == 0, output


# (case id, the stored spec's mutation, the update's mutation, texts of the refusal)
IMMUTABLE: list[tuple[str, Callable[[Spec], None], Callable[[Spec], None], tuple[str, ...]]] = [
    (
        "model-name",
        _set("model.name", "resnet50_a"),
        _set("model.name", "resnet50_b"),
        ("spec.model.name", "model.name cannot be changed"),
    ),
    (
        "repository-claim",
        lambda spec: None,
        _set("repository.claimName", "other-models"),
        ("spec.repository", "cannot be changed"),
    ),
    (
        "repository-subpath",
        _set("repository.subPath", "a"),
        _set("repository.subPath", "b"),
        ("spec.repository", "cannot be changed"),
    ),
    (
        "repository-claim-to-create",
        lambda spec: None,
        _set("repository", {"create": {"size": "5Gi"}}),
        ("spec.repository", "cannot be changed"),
    ),
    (
        "create-access-modes",
        _set("repository", {"create": {"accessModes": ["ReadWriteMany"]}}),
        _set("repository.create.accessModes", ["ReadWriteOnce"]),
        ("spec.repository.create", "cannot be changed"),
    ),
]


@pytest.mark.parametrize(("case", "before", "after", "expected"), IMMUTABLE, ids=[c[0] for c in IMMUTABLE])
def test_crd_rejects_changing_immutable_fields(
    control_plane: ControlPlane,
    crd_namespace: str,
    case: str,
    before: Callable[[Spec], None],
    after: Callable[[Spec], None],
    expected: tuple[str, ...],
) -> None:
    obj = good_resource(f"immutable-{case}", crd_namespace)
    before(obj["spec"])
    code, output = apply(control_plane, obj)
    assert code == 0, output
    changed = copy.deepcopy(obj)
    after(changed["spec"])
    code, output = apply(control_plane, changed)
    assert code != 0, f"{case}: the change was accepted"
    for text in expected:
        assert text in output, f"{case}: {text!r} not in the refusal:\n{output}"


def get_json(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cp.kubectl("get", "trn", name, "-n", namespace, "-o", "json").stdout)
    return result


def test_crd_accepts_a_minimal_spec_and_applies_defaults(
    control_plane: ControlPlane, crd_namespace: str
) -> None:
    code, output = apply(control_plane, good_resource("defaults", crd_namespace))
    assert code == 0, output
    spec = get_json(control_plane, crd_namespace, "defaults")["spec"]
    assert spec["model"] == {"format": "tensorrt"}
    assert spec["engine"] == {
        "precision": "fp16",
        "maxBatchSize": 8,
        "optBatchSize": 0,
        "workspaceMiB": 4096,
        "buildTimeoutSeconds": 3600,
        # the API server stores the number 1.0 as 1; parse_spec reads either as 1.0
        "accuracy": {"minTop5AgreementPercent": 90, "maxAbsDifference": 1},
        "gpuKinds": "Listed",
        "hardwareCompatibility": "None",
    }
    assert spec["serving"]["replicas"] == 1
    assert spec["serving"]["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert spec["serving"]["dynamicBatching"] == {"maxQueueDelayMicroseconds": 100}
    assert spec["serving"]["instanceCount"] == 1
    assert spec["repository"] == {"claimName": "models", "retainVersions": 3}


def test_crd_defaults_a_created_claim(control_plane: ControlPlane, crd_namespace: str) -> None:
    obj = good_resource("created-claim", crd_namespace)
    obj["spec"]["repository"] = {"create": {}}
    code, output = apply(control_plane, obj)
    assert code == 0, output
    create = get_json(control_plane, crd_namespace, "created-claim")["spec"]["repository"]["create"]
    assert create == {"size": "20Gi", "accessModes": ["ReadWriteMany"]}


def sample_files() -> list[Path]:
    return sorted(p for p in (MANIFESTS_DIR / "samples").glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", sample_files(), ids=[p.name for p in sample_files()])
def test_every_sample_is_accepted_by_the_apiserver(
    control_plane: ControlPlane, crd_namespace: str, path: Path
) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for doc in documents:
        doc["metadata"]["namespace"] = crd_namespace  # the samples say "vision"
    result = control_plane.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=to_yaml(documents), check=False
    )
    assert result.returncode == 0, result.stderr
    assert sum("TritonResNet" in doc["kind"] for doc in documents) >= 1


def test_kubectl_scale_writes_serving_replicas_through_the_scale_subresource(
    control_plane: ControlPlane, crd_namespace: str
) -> None:
    code, output = apply(control_plane, good_resource("scaled", crd_namespace))
    assert code == 0, output
    control_plane.kubectl("scale", "trn", "scaled", "-n", crd_namespace, "--replicas=3")
    assert get_json(control_plane, crd_namespace, "scaled")["spec"]["serving"]["replicas"] == 3
    path = f"/apis/tritonresnet.io/v1alpha1/namespaces/{crd_namespace}/tritonresnets/scaled/scale"
    scale = json.loads(control_plane.kubectl("get", "--raw", path).stdout)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 3


def test_kubectl_get_trn_shows_the_printer_columns(control_plane: ControlPlane, crd_namespace: str) -> None:
    code, output = apply(control_plane, good_resource("columns", crd_namespace))
    assert code == 0, output
    table = control_plane.kubectl("get", "trn", "columns", "-n", crd_namespace).stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "READY", "VERSION", "AGE"]


# -- the spec parser and the CRD accept exactly the same strings -----------------------------

# (field path in the spec, value). Each is sent to the API server (a server-side dry run) and to
# spec.parse_spec, and both must agree. The tricky ones are where Python's re differs from the Go
# regexp the API server runs: ``$`` before a final newline, Unicode digits in ``\d`` and ``\S``.
PATTERN_CASES: list[tuple[str, str]] = [
    ("serving.release", "25.01"),
    ("serving.release", "25.01\n"),
    ("serving.release", "\u0662\u0665.\u0660\u0661"),  # Arabic-Indic digits
    ("serving.release", "25.1"),
    ("serving.release", " 25.01"),
    ("model.name", "resnet50"),
    ("model.name", "resnet50\n"),
    ("model.name", "res net"),
    ("model.name", "r\u00e9snet"),
    ("model.name", "-resnet"),
    ("source.uri", "s3://models/resnet50/model.onnx"),
    ("source.uri", "s3://models/resnet50/model.onnx\n"),
    ("source.uri", "s3://models/res net.onnx"),
    ("source.uri", "/models/incoming/model.onnx"),
    ("source.uri", "relative/model.onnx"),
    ("source.sha256", "a" * 64),
    ("source.sha256", "a" * 64 + "\n"),
    ("source.sha256", "A" * 64),
    ("source.region", "eu-west-1"),
    ("source.region", "eu-west-1\n"),
    ("source.endpoint", "http://127.0.0.1:9000"),
    ("source.endpoint", "http://127.0.0.1:9000\n"),
    ("source.credentialsSecret", "s3-creds"),
    ("source.credentialsSecret", "s3-creds\n"),
    ("repository.claimName", "models"),
    ("repository.claimName", "models\n"),
    ("repository.claimName", "Models"),
    ("repository.subPath", "team/a"),
    ("repository.subPath", "team/../a"),
    ("repository.subPath", "team/a\n"),
    ("source.externalData[0].location", "model.onnx.data"),
    ("source.externalData[0].location", "weights/layer1.0.conv1.weight"),
    ("source.externalData[0].location", "model.onnx.data\n"),
    ("source.externalData[0].location", "./model.onnx.data"),
    ("source.externalData[0].location", "weights//fc.bin"),
    ("source.externalData[0].location", "/etc/passwd"),
    ("source.externalData[0].sha256", "a" * 64),
    ("source.externalData[0].sha256", "a" * 64 + "\n"),
    ("source.externalData[0].sha256", ""),
    ("engine.targets[0].name", "a10g"),
    ("engine.targets[0].name", "a10g\n"),
    ("engine.targets[0].name", "\u0661"),
]


def _spec_with(field: str, value: str) -> Spec:
    spec: Spec = {"source": {"uri": "s3://models/resnet50/model.onnx"}, "repository": {"claimName": "models"}}
    if field.startswith("engine.targets"):
        spec["engine"] = {"targets": [{"name": value, "nodeSelector": {"gpu": "a10g"}}]}
        return spec
    if field.startswith("source.externalData"):
        pin = {"location": "model.onnx.data", "sha256": "a" * 64} | {field.rsplit(".", 1)[1]: value}
        spec["source"]["externalData"] = [pin]
        return spec
    _set(field, value)(spec)
    if field == "repository.subPath":
        spec["repository"]["claimName"] = "models"
    return spec


def test_spec_parser_accepts_exactly_what_the_crd_accepts(
    control_plane: ControlPlane, crd_namespace: str
) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    from tritonresnet.api.spec import SpecError, parse_spec

    api = client.CustomObjectsApi(control_plane.api_client())
    disagreements = []
    for index, (field, value) in enumerate(PATTERN_CASES):
        obj = good_resource(f"pattern-{index}", crd_namespace)
        obj["spec"] = _spec_with(field, value)
        try:
            api.create_namespaced_custom_object(
                "tritonresnet.io", "v1alpha1", crd_namespace, "tritonresnets", obj, dry_run="All"
            )
            server = True
        except ApiException as exc:
            assert exc.status == 422, exc.body
            server = False
        try:
            parse_spec(obj)
            parser = True
        except SpecError:
            parser = False
        if server != parser:
            disagreements.append(f"spec.{field}={value!r}: API server {server}, spec.py {parser}")
    assert disagreements == []
    # The table is not vacuous: it holds values both accept and values both refuse.
    assert len({field for field, _ in PATTERN_CASES}) >= 10
