"""parse_spec: the user's spec becomes frozen dataclasses with defaults, or a SpecError naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from tritonresnet.api.spec import (
    DEFAULT_TARGET_NAME,
    ONNX_TARGET_NAME,
    AutoscalingMetric,
    SpecError,
    TritonResNetSpec,
    parse_spec,
    target_name_for,
)
from tritonresnet_builder.contract import AccuracyTolerance, EngineSettings, Source


def body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "source": {"uri": "s3://models/resnet50/model.onnx"},
        "repository": {"claimName": "models"},
    }
    base.update(spec)
    return {"metadata": {"name": "resnet50", "namespace": "vision"}, "spec": base}


def test_parse_spec_applies_every_default_when_only_required_fields_are_given() -> None:
    spec = parse_spec(body())

    assert spec.source.contract() == Source(uri="s3://models/resnet50/model.onnx")
    assert spec.source.credentials_secret == ""
    assert spec.model.name == "resnet50"
    assert spec.model.format == "tensorrt"
    assert spec.engine_settings() == EngineSettings()
    assert spec.engine.build_timeout_seconds == 3600
    assert spec.engine.targets == ()
    assert spec.serving.release == ""
    assert spec.serving.replicas == 1
    assert spec.serving.resources == {"limits": {"nvidia.com/gpu": "1"}}
    assert spec.serving.dynamic_batching.max_queue_delay_us == 100
    assert spec.serving.instance_count == 1
    assert spec.serving.autoscaling is None
    assert spec.repository.claim_name == "models"
    assert spec.repository.create is None
    assert spec.repository.retain_versions == 3


def test_parse_spec_reads_the_issue_sample() -> None:
    spec = parse_spec(
        body(
            source={
                "uri": "s3://models/resnet50/model.onnx",
                "sha256": "a" * 64,
                "credentialsSecret": "s3-creds",
            },
            model={"name": "resnet50", "format": "onnx"},
            engine={"precision": "fp16", "maxBatchSize": 8},
            serving={
                "release": "25.01",
                "replicas": 2,
                "resources": {"limits": {"nvidia.com/gpu": 1}},
                "nodeSelector": {},
                "tolerations": [],
                "dynamicBatching": {"maxQueueDelayMicroseconds": 100},
            },
        )
    )
    assert spec.model.format == "onnx"
    assert spec.source.sha256 == "a" * 64
    assert spec.source.credentials_secret == "s3-creds"
    assert spec.serving.replicas == 2
    # YAML's integer 1 is normalized to the quantity string Kubernetes returns.
    assert spec.serving.resources == {"limits": {"nvidia.com/gpu": "1"}}
    assert spec.serving.release == "25.01"


def test_parse_spec_leaves_the_body_untouched_and_shares_nothing_with_it() -> None:
    original = body(serving={"tolerations": [{"key": "a", "operator": "Exists"}], "nodeSelector": {"x": "y"}})
    snapshot = copy.deepcopy(original)
    spec = parse_spec(original)
    assert original == snapshot
    original["spec"]["serving"]["tolerations"][0]["key"] = "changed"
    original["spec"]["serving"]["nodeSelector"]["x"] = "changed"
    assert spec.serving.tolerations[0]["key"] == "a"
    assert spec.serving.node_selector == {"x": "y"}


def test_model_name_defaults_to_metadata_name_and_fails_when_that_is_too_long() -> None:
    long_name = "r" * 64
    with pytest.raises(SpecError) as error:
        parse_spec({"metadata": {"name": long_name}, "spec": body()["spec"]})
    assert error.value.field == "spec.model.name"
    named = parse_spec({"metadata": {"name": long_name}, "spec": body(model={"name": "resnet50"})["spec"]})
    assert named.model.name == "resnet50"


def test_build_targets_default_to_where_triton_runs_when_none_are_written() -> None:
    toleration = {"key": "gpu", "operator": "Exists"}
    spec = parse_spec(body(serving={"nodeSelector": {"pool": "a10g"}, "tolerations": [toleration]}))
    (target,) = spec.build_targets()
    assert target.name == DEFAULT_TARGET_NAME
    assert target.node_selector == {"pool": "a10g"}
    assert target.tolerations == (toleration,)


def test_build_targets_are_one_cpu_build_for_onnx() -> None:
    spec = parse_spec(body(model={"format": "onnx"}, serving={"nodeSelector": {"pool": "a10g"}}))
    (target,) = spec.build_targets()
    assert target.name == ONNX_TARGET_NAME
    assert target.node_selector == {}
    assert not spec.uses_gpu_builds


def test_gpu_kinds_auto_leaves_only_the_listed_targets_to_the_spec_and_is_refused_for_onnx() -> None:
    assert parse_spec(body()).engine.gpu_kinds == "Listed"
    spec = parse_spec(body(engine={"gpuKinds": "Auto"}))
    assert spec.fleet_mode and spec.build_targets() == ()  # the fleet's kinds come from Nodes
    listed = parse_spec(
        body(engine={"gpuKinds": "Auto", "targets": [{"name": "t4", "nodeSelector": {"p": "T4"}}]})
    )
    assert [t.name for t in listed.build_targets()] == ["t4"]
    with pytest.raises(SpecError) as error:
        parse_spec(body(model={"format": "onnx"}, engine={"gpuKinds": "Auto"}))
    assert error.value.field == "spec.engine.gpuKinds"


def test_hardware_compatibility_maps_to_the_contract_and_is_refused_for_onnx() -> None:
    assert parse_spec(body()).engine_settings().hardware_compatibility == "none"
    spec = parse_spec(body(engine={"hardwareCompatibility": "AmperePlus"}))
    assert spec.engine_settings().hardware_compatibility == "ampere_plus"
    with pytest.raises(SpecError) as error:
        parse_spec(body(model={"format": "onnx"}, engine={"hardwareCompatibility": "AmperePlus"}))
    assert error.value.field == "spec.engine.hardwareCompatibility"


def test_unnamed_targets_are_named_from_their_selector_independently_of_key_order() -> None:
    spec = parse_spec(
        body(
            engine={
                "targets": [
                    {"nodeSelector": {"a": "1", "b": "2"}},
                    {"name": "l4", "nodeSelector": {"p": "L4"}},
                ]
            }
        )
    )
    first, second = spec.build_targets()
    assert first.name == target_name_for({"b": "2", "a": "1"})
    assert first.name.startswith("gpu-")
    assert second.name == "l4"


def test_autoscaling_defaults_to_cpu_at_80_percent() -> None:
    spec = parse_spec(
        body(serving={"resources": {"requests": {"cpu": "2"}}, "autoscaling": {"maxReplicas": 4}})
    )
    assert spec.serving.autoscaling is not None
    assert spec.serving.autoscaling.min_replicas == 1
    assert spec.serving.autoscaling.metric == AutoscalingMetric("cpu", target_average_utilization=80)


def test_autoscaling_on_queue_time_needs_no_cpu_request() -> None:
    spec = parse_spec(body(serving={"autoscaling": {"maxReplicas": 4, "metric": {"type": "queueTime"}}}))
    assert spec.serving.autoscaling is not None
    assert spec.serving.autoscaling.metric == AutoscalingMetric("queueTime", target_queue_time_us=2000)


def test_repository_create_defaults() -> None:
    spec = parse_spec(body(repository={"create": {}}))
    assert spec.repository.create is not None
    assert spec.repository.create.size == "20Gi"
    assert spec.repository.create.storage_class_name is None
    assert spec.repository.create.access_modes == ("ReadWriteMany",)


def test_external_data_pins_reach_the_builder_as_location_to_digest() -> None:
    spec = parse_spec(
        body(
            source={
                "uri": "s3://models/resnet50/model.onnx",
                "externalData": [
                    {"location": "model.onnx.data", "sha256": "a" * 64},
                    {"location": "weights/fc.bin", "sha256": "b" * 64},
                ],
            }
        )
    )
    assert spec.source.contract().external_data_sha256 == {
        "model.onnx.data": "a" * 64,
        "weights/fc.bin": "b" * 64,
    }
    assert parse_spec(body()).source.contract().external_data_sha256 == {}


def test_accuracy_tolerance_defaults_and_reaches_the_builder() -> None:
    assert parse_spec(body()).engine_settings().accuracy == AccuracyTolerance(90, 1.0)
    spec = parse_spec(body(engine={"accuracy": {"minTop5AgreementPercent": 100, "maxAbsDifference": 0.05}}))
    assert spec.engine_settings().accuracy == AccuracyTolerance(100, 0.05)
    # YAML writes `maxAbsDifference: 2` as an integer; it is the number 2.
    assert (
        parse_spec(body(engine={"accuracy": {"maxAbsDifference": 2}})).engine.accuracy.max_abs_difference
        == 2.0
    )


def _pins(*items: Any) -> dict[str, Any]:
    return {"source": {"uri": "/m.onnx", "externalData": list(items)}}


BAD_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("no source", {"source": None}, "spec.source"),
    (
        "external data not a list",
        {"source": {"uri": "/m.onnx", "externalData": {"model.onnx.data": "a" * 64}}},
        "spec.source.externalData",
    ),
    ("external data item not an object", _pins("model.onnx.data"), "spec.source.externalData[0]"),
    (
        "external data location leaves the folder",
        _pins({"location": "../model.onnx.data", "sha256": "a" * 64}),
        "spec.source.externalData[0].location",
    ),
    (
        "external data location absolute",
        _pins({"location": "/etc/passwd", "sha256": "a" * 64}),
        "spec.source.externalData[0].location",
    ),
    (
        "external data without a digest",
        _pins({"location": "model.onnx.data"}),
        "spec.source.externalData[0].sha256",
    ),
    (
        "external data with an empty digest",
        _pins({"location": "model.onnx.data", "sha256": ""}),
        "spec.source.externalData[0].sha256",
    ),
    (
        "external data digest in capitals",
        _pins({"location": "model.onnx.data", "sha256": "A" * 64}),
        "spec.source.externalData[0].sha256",
    ),
    ("external data without a location", _pins({"sha256": "a" * 64}), "spec.source.externalData[0].location"),
    (
        "external data pinned twice",
        _pins({"location": "d.bin", "sha256": "a" * 64}, {"location": "d.bin", "sha256": "b" * 64}),
        "spec.source.externalData[1].location",
    ),
    (
        "external data unknown field",
        _pins({"location": "d.bin", "sha256": "a" * 64, "size": 3}),
        "spec.source.externalData[0]",
    ),
    (
        "external data too many",
        _pins(*({"location": f"d{i}.bin", "sha256": "a" * 64} for i in range(65))),
        "spec.source.externalData",
    ),
    ("no uri", {"source": {}}, "spec.source.uri"),
    ("http uri", {"source": {"uri": "http://example/model.onnx"}}, "spec.source.uri"),
    ("uri not a string", {"source": {"uri": 5}}, "spec.source.uri"),
    ("short digest", {"source": {"uri": "/m.onnx", "sha256": "abc"}}, "spec.source.sha256"),
    ("endpoint scheme", {"source": {"uri": "/m.onnx", "endpoint": "minio:9000"}}, "spec.source.endpoint"),
    ("region", {"source": {"uri": "/m.onnx", "region": "EU West"}}, "spec.source.region"),
    (
        "secret name",
        {"source": {"uri": "/m.onnx", "credentialsSecret": "Bad_Name"}},
        "spec.source.credentialsSecret",
    ),
    ("model name traversal", {"model": {"name": "../etc"}}, "spec.model.name"),
    ("format", {"model": {"format": "pytorch"}}, "spec.model.format"),
    ("precision", {"engine": {"precision": "fp4"}}, "spec.engine.precision"),
    ("int8 without calibration", {"engine": {"precision": "int8"}}, "spec.engine.precision"),
    ("batch negative", {"engine": {"maxBatchSize": -1}}, "spec.engine.maxBatchSize"),
    ("opt with batch zero", {"engine": {"maxBatchSize": 0, "optBatchSize": 1}}, "spec.engine.optBatchSize"),
    (
        "preferred with batch zero",
        {"engine": {"maxBatchSize": 0}, "serving": {"dynamicBatching": {"preferredBatchSizes": [1]}}},
        "spec.serving.dynamicBatching.preferredBatchSizes",
    ),
    ("batch too large", {"engine": {"maxBatchSize": 257}}, "spec.engine.maxBatchSize"),
    ("batch bool", {"engine": {"maxBatchSize": True}}, "spec.engine.maxBatchSize"),
    ("opt above max", {"engine": {"maxBatchSize": 8, "optBatchSize": 9}}, "spec.engine.optBatchSize"),
    ("workspace", {"engine": {"workspaceMiB": 1}}, "spec.engine.workspaceMiB"),
    (
        "accuracy percent above 100",
        {"engine": {"accuracy": {"minTop5AgreementPercent": 101}}},
        "spec.engine.accuracy.minTop5AgreementPercent",
    ),
    (
        "accuracy difference negative",
        {"engine": {"accuracy": {"maxAbsDifference": -0.1}}},
        "spec.engine.accuracy.maxAbsDifference",
    ),
    (
        "accuracy difference a string",
        {"engine": {"accuracy": {"maxAbsDifference": "0.1"}}},
        "spec.engine.accuracy.maxAbsDifference",
    ),
    (
        "accuracy difference a bool",
        {"engine": {"accuracy": {"maxAbsDifference": True}}},
        "spec.engine.accuracy.maxAbsDifference",
    ),
    ("timeout", {"engine": {"buildTimeoutSeconds": 5}}, "spec.engine.buildTimeoutSeconds"),
    ("engine not an object", {"engine": [1]}, "spec.engine"),
    ("targets for onnx", {"model": {"format": "onnx"}, "engine": {"targets": [{}]}}, "spec.engine.targets"),
    ("target name", {"engine": {"targets": [{"name": "A10G"}]}}, "spec.engine.targets[0].name"),
    (
        "duplicate target",
        {"engine": {"targets": [{"name": "a"}, {"name": "a"}]}},
        "spec.engine.targets[1].name",
    ),
    (
        "selector value",
        {"engine": {"targets": [{"nodeSelector": {"a": 1}}]}},
        "spec.engine.targets[0].nodeSelector",
    ),
    (
        "target toleration",
        {"engine": {"targets": [{"tolerations": [{"effect": "Sometimes"}]}]}},
        "spec.engine.targets[0].tolerations[0].effect",
    ),
    ("release", {"serving": {"release": "25.1"}}, "spec.serving.release"),
    ("replicas", {"serving": {"replicas": -1}}, "spec.serving.replicas"),
    ("instances", {"serving": {"instanceCount": 0}}, "spec.serving.instanceCount"),
    (
        "toleration operator",
        {"serving": {"tolerations": [{"operator": "Maybe"}]}},
        "spec.serving.tolerations[0].operator",
    ),
    ("toleration field", {"serving": {"tolerations": [{"keys": "a"}]}}, "spec.serving.tolerations[0]"),
    (
        "quantity",
        {"serving": {"resources": {"limits": {"memory": "lots"}}}},
        "spec.serving.resources.limits.memory",
    ),
    ("resources field", {"serving": {"resources": {"claims": []}}}, "spec.serving.resources"),
    (
        "preferred above max",
        {"serving": {"dynamicBatching": {"preferredBatchSizes": [4, 16]}}},
        "spec.serving.dynamicBatching.preferredBatchSizes[1]",
    ),
    (
        "queue delay",
        {"serving": {"dynamicBatching": {"maxQueueDelayMicroseconds": -1}}},
        "spec.serving.dynamicBatching.maxQueueDelayMicroseconds",
    ),
    (
        "autoscaling max",
        {"serving": {"autoscaling": {"minReplicas": 1}}},
        "spec.serving.autoscaling.maxReplicas",
    ),
    (
        "autoscaling min above max",
        {"serving": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2, "metric": {"type": "queueTime"}}}},
        "spec.serving.autoscaling.minReplicas",
    ),
    (
        "autoscaling cpu request",
        {"serving": {"autoscaling": {"maxReplicas": 2}}},
        "spec.serving.resources.requests.cpu",
    ),
    (
        "metric type",
        {"serving": {"autoscaling": {"maxReplicas": 2, "metric": {"type": "gpu"}}}},
        "spec.serving.autoscaling.metric.type",
    ),
    (
        "metric target mismatch",
        {
            "serving": {
                "autoscaling": {
                    "maxReplicas": 2,
                    "metric": {"type": "queueTime", "targetAverageUtilization": 5},
                }
            }
        },
        "spec.serving.autoscaling.metric.targetAverageUtilization",
    ),
    ("no repository", {"repository": None}, "spec.repository"),
    ("empty repository", {"repository": {}}, "spec.repository"),
    ("both repositories", {"repository": {"claimName": "m", "create": {}}}, "spec.repository"),
    (
        "sub path traversal",
        {"repository": {"claimName": "m", "subPath": "a/../b"}},
        "spec.repository.subPath",
    ),
    ("retain", {"repository": {"claimName": "m", "retainVersions": 0}}, "spec.repository.retainVersions"),
    ("pvc size", {"repository": {"create": {"size": "big"}}}, "spec.repository.create.size"),
    (
        "access mode",
        {"repository": {"create": {"accessModes": ["ReadWriteSometimes"]}}},
        "spec.repository.create.accessModes[0]",
    ),
]


def test_max_batch_zero_is_the_tutorials_layout_built_at_batch_one() -> None:
    """maxBatchSize 0: no batching; the engine's profile (optimum and largest batch) is batch 1."""
    spec = parse_spec(
        body(
            engine={"maxBatchSize": 0},
            serving={"dynamicBatching": {"maxQueueDelayMicroseconds": 500, "preferredBatchSizes": []}},
        )
    )
    assert spec.engine.max_batch_size == 0 and spec.engine.opt_batch_size == 0
    settings = spec.engine_settings()
    assert settings.max_batch_size == 0
    assert (settings.optimum_batch(), settings.largest_batch()) == (1, 1)
    assert spec.serving.dynamic_batching.preferred_batch_sizes == ()


@pytest.mark.parametrize(
    ("overrides", "field"), [(o, f) for _, o, f in BAD_SPECS], ids=[n for n, _, _ in BAD_SPECS]
)
def test_parse_spec_names_the_field_when_it_is_invalid(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_spec(body(**overrides))
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")


def test_parse_spec_names_metadata_and_spec_when_the_object_is_not_a_resource() -> None:
    with pytest.raises(SpecError) as no_name:
        parse_spec({"spec": body()["spec"]})
    assert no_name.value.field == "metadata.name"
    with pytest.raises(SpecError) as no_spec:
        parse_spec({"metadata": {"name": "x"}})
    assert no_spec.value.field == "spec"


def test_parsed_spec_is_frozen() -> None:
    spec: TritonResNetSpec = parse_spec(body())
    with pytest.raises(AttributeError):
        spec.serving = spec.serving  # type: ignore[misc]
