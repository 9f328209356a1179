"""names: content keys follow exactly what changes the artifact; child names are DNS labels."""

from __future__ import annotations

import re
from typing import Any

import pytest
from tritonresnet.api import names
from tritonresnet.api.spec import Target, TritonResNetSpec, parse_spec

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


def parse(**spec: Any) -> TritonResNetSpec:
    base: dict[str, Any] = {
        "source": {"uri": "s3://models/r50/model.onnx"},
        "repository": {"claimName": "models"},
    }
    base.update(spec)
    return parse_spec({"metadata": {"name": "resnet50"}, "spec": base})


A10G = Target("a10g", {"nvidia.com/gpu.product": "NVIDIA-A10G"})


def key(spec: TritonResNetSpec, target: Target = A10G, release: str = "25.01") -> str:
    return names.engine_key(spec, target, release)


def test_engine_key_is_16_hex_and_deterministic() -> None:
    assert HEX16.match(key(parse()))
    assert key(parse()) == key(parse())


@pytest.mark.parametrize(
    "changed",
    [
        {"engine": {"precision": "fp32"}},
        {"engine": {"maxBatchSize": 16}},
        {"engine": {"optBatchSize": 2}},
        {"engine": {"workspaceMiB": 8192}},
        {"engine": {"hardwareCompatibility": "AmperePlus"}},
        {"source": {"uri": "s3://models/r50/other.onnx"}},
        {"source": {"uri": "s3://models/r50/model.onnx", "endpoint": "http://minio:9000"}},
        {"model": {"format": "onnx"}},
    ],
)
def test_engine_key_changes_with_what_changes_the_artifact(changed: dict[str, Any]) -> None:
    assert key(parse(**changed)) != key(parse())


def test_engine_key_changes_with_release_gpu_kind_and_pinned_digest() -> None:
    base = key(parse())
    assert key(parse(), release="25.02") != base
    assert key(parse(), target=Target("a10g", {"nvidia.com/gpu.product": "NVIDIA-L4"})) != base
    # Pinning (or re-pinning) the digest is how a user asks for an overwritten object to be rebuilt.
    pinned = key(parse(source={"uri": "s3://models/r50/model.onnx", "sha256": "c" * 64}))
    assert pinned != base
    assert key(parse(source={"uri": "s3://models/r50/model.onnx", "sha256": "d" * 64})) != pinned


def test_engine_key_changes_with_an_external_data_pin_and_stays_without_one() -> None:
    """A new pin of a data file is a new build, as a new graph pin is; no pins (or an empty
    list) keep the key every resource had before the field existed."""
    graph = {"uri": "s3://models/r50/model.onnx", "sha256": "c" * 64}
    base = key(parse(source=graph))
    assert key(parse(source={**graph, "externalData": []})) == base
    pinned = key(
        parse(source={**graph, "externalData": [{"location": "model.onnx.data", "sha256": "e" * 64}]})
    )
    assert pinned != base
    repinned = {**graph, "externalData": [{"location": "model.onnx.data", "sha256": "f" * 64}]}
    assert key(parse(source=repinned)) != pinned


def test_engine_key_changes_with_a_changed_accuracy_gate_and_stays_at_its_defaults() -> None:
    """A tighter gate checks again instead of reusing a plan a looser one let through; the
    defaults written out keep the key resources had before the gate existed."""
    base = key(parse())
    assert key(parse(engine={"accuracy": {"minTop5AgreementPercent": 90, "maxAbsDifference": 1.0}})) == base
    assert key(parse(engine={"accuracy": {"minTop5AgreementPercent": 100}})) != base
    onnx = parse(model={"format": "onnx"})
    assert key(parse(model={"format": "onnx"}, engine={"accuracy": {"maxAbsDifference": 0.1}})) == key(onnx)


def test_engine_key_ignores_what_does_not_change_the_artifact() -> None:
    base = key(parse())
    assert key(parse(), target=Target("renamed", dict(A10G.node_selector))) == base
    assert key(parse(serving={"replicas": 5, "dynamicBatching": {"maxQueueDelayMicroseconds": 7}})) == base
    assert key(parse(model={"name": "other"})) == base


def test_engine_key_of_a_pinned_source_does_not_depend_on_its_location() -> None:
    pinned = {"uri": "s3://models/r50/model.onnx", "sha256": "b" * 64}
    moved = {"uri": "s3://archive/r50.onnx", "sha256": "b" * 64}
    assert key(parse(source=pinned)) == key(parse(source=moved))


def test_engine_key_of_onnx_ignores_precision_and_gpu_kind() -> None:
    onnx = parse(model={"format": "onnx"})
    onnx_fp32 = parse(model={"format": "onnx"}, engine={"precision": "fp32"})
    assert key(onnx) == key(onnx_fp32) == key(onnx, target=Target("onnx"))


def test_version_key_depends_on_engines_as_a_set_and_on_the_serving_config() -> None:
    spec = parse()
    base = names.version_key(spec, ["b" * 16, "a" * 16])
    assert HEX16.match(base)
    assert names.version_key(spec, ["a" * 16, "b" * 16]) == base
    assert names.version_key(spec, ["a" * 16]) != base
    batching = parse(serving={"dynamicBatching": {"preferredBatchSizes": [4]}})
    assert names.version_key(batching, ["a" * 16, "b" * 16]) != base
    assert names.version_key(parse(serving={"instanceCount": 2}), ["a" * 16, "b" * 16]) != base
    assert names.version_key(parse(serving={"replicas": 3}), ["a" * 16, "b" * 16]) == base


CR_NAMES = ["resnet50", "r", "a" * 63, "b" * 253, "team.vision.resnet50", "9lives", "x" * 50 + ".y" * 40]


@pytest.mark.parametrize("cr_name", CR_NAMES)
def test_child_names_are_dns_labels(cr_name: str) -> None:
    engine = "0123456789abcdef"
    for child in (
        names.build_job_name(cr_name, engine),
        names.publish_job_name(cr_name, engine),
        names.deployment_name(cr_name),
        names.pdb_name(cr_name),
        names.hpa_name(cr_name),
        names.pvc_name(cr_name),
    ):
        assert DNS_LABEL.match(child), child
    assert DNS_1035.match(names.service_name(cr_name))
    assert len(names.label_value(cr_name)) <= 63


def test_child_names_read_naturally_when_the_name_is_short() -> None:
    assert names.build_job_name("resnet50", "0123456789abcdef") == "resnet50-build-0123456789"
    assert names.publish_job_name("resnet50", "fedcba9876543210") == "resnet50-publish-fedcba9876"
    assert names.deployment_name("resnet50") == "resnet50-triton"
    assert names.service_name("resnet50") == "resnet50"
    assert names.pvc_name("resnet50") == "resnet50-models"


def test_long_names_sharing_a_prefix_stay_distinct_and_stable() -> None:
    first, second = "a" * 70 + "-one", "a" * 70 + "-two"
    assert names.deployment_name(first) != names.deployment_name(second)
    assert names.deployment_name(first) == names.deployment_name(first)
    assert names.deployment_name(first).endswith("-triton")


def test_selector_string_selects_the_triton_selector_labels() -> None:
    labels = names.selector_labels("resnet50", "triton")
    parsed = dict(item.split("=", 1) for item in names.selector("resnet50").split(","))
    assert parsed == labels
    assert labels[names.LABEL_COMPONENT] == "triton"


def test_labels_carry_the_standard_keys_and_extras() -> None:
    labels = names.labels("resnet50", "build", {names.LABEL_ENGINE_KEY: "k"})
    assert labels == {
        "app.kubernetes.io/name": "tritonresnet",
        "app.kubernetes.io/instance": "resnet50",
        "app.kubernetes.io/component": "build",
        "app.kubernetes.io/managed-by": "tritonresnet-operator",
        "tritonresnet.io/engine-key": "k",
    }
