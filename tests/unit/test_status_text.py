"""tritonresnet.client.status_text.describe on the status the operator's reconcile really writes."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from tritonresnet.client.status_text import age, describe
from tritonresnet_builder.contract import Result, SourceFile
from unit import worlds

#: Five minutes after the worlds' clock: the conditions that turned with the last pass are 5m old.
NOW = datetime(2026, 11, 25, 10, 5, 0, tzinfo=timezone.utc)
A100 = {"name": "a100", "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}}


def ready_resource() -> dict[str, Any]:
    """A tensorrt resource walked to Ready by the real reconcile: version 4 on two replicas."""
    cr = worlds.resource(fmt="tensorrt", targets=[A100], replicas=2, generation=3)
    key = worlds.plan(worlds.world(cr), worlds.SETTINGS).status.targets[0].engine_key  # type: ignore[index]
    build = Result(
        ok=True,
        phase="build",
        engine_key=key,
        format="tensorrt",
        artifact="model.plan",
        artifact_bytes=52428800,
        compute_capability="8.0",
        tensorrt_version="10.3.0",
        source_files=(
            SourceFile("model.onnx", "a" * 64, 1_048_576),
            SourceFile("model.onnx.data", "b" * 64, 47_185_920),
        ),
        inputs=worlds.INPUTS,
        outputs=worlds.OUTPUTS,
    )
    ready, _, _, _ = worlds.lifecycle_to_ready(cr, version=4, ips=("10.0.0.7", "10.0.0.8"), build=build)
    return ready


def test_describe_ready_resource_names_phase_version_replicas_and_endpoints() -> None:
    text = describe(ready_resource(), now=NOW)
    assert text.startswith("TritonResNet vision/resnet50\n")
    assert "Phase:      Ready (serving:" in text
    assert "Model:      version 4 is being served" in text
    assert "Replicas:   2 of 2 ready" in text
    assert "Endpoints:  10.0.0.7:8000, 10.0.0.8:8000" in text
    assert "Tensors:    input input FP32 3x224x224\n            output output FP32 1000\n" in text
    assert "Published:" not in text  # the published version is the one served


def test_describe_lists_each_target_with_its_plan_details() -> None:
    resource = ready_resource()
    key = resource["status"]["targets"][0]["engineKey"]
    text = describe(resource, now=NOW)
    assert "  a100: Built\n" in text
    for detail in (
        "nodes nvidia.com/gpu.product=NVIDIA-A100-SXM4-40GB",
        "compute capability 8.0",
        "TensorRT 10.3.0",
        f"engine key {key}",
        f"Job resnet50-build-{key[:10]}",
        "artifact model.plan (50.0 MiB)",
        f"fetched model.onnx (1.0 MiB) sha256 {'a' * 64}",
        f"fetched model.onnx.data (45.0 MiB) sha256 {'b' * 64}",
    ):
        assert f"    {detail}\n" in text


def test_describe_conditions_say_status_reason_message_and_age() -> None:
    text = describe(ready_resource(), now=NOW)
    assert (
        "  Ready is True (Verified), since 5m ago\n"
        f"    2 endpoint(s) and the Service {worlds.SERVICE} answered at version 4\n"
    ) in text
    assert "  Stalled is False (Progressing), since 5m ago\n" in text


def test_describe_says_when_the_operator_has_not_seen_the_latest_spec() -> None:
    resource = ready_resource()
    resource["metadata"]["generation"] = 5
    assert "seen generation 3 of the spec, not yet the latest, 5" in describe(resource, now=NOW)


def test_describe_shows_a_published_version_that_is_not_served_yet() -> None:
    resource = ready_resource()
    resource["status"].update(phase="Deploying", modelVersion=3)
    text = describe(resource, now=NOW)
    assert "Phase:      Deploying (rolling out" in text
    assert "Model:      version 3 is being served" in text
    assert "Published:  version 4 (not serving yet)" in text


def test_describe_failed_build_shows_the_targets_message() -> None:
    resource = ready_resource()
    target = resource["status"]["targets"][0]
    target.update(state="Failed", message="exit code 6: TensorRT is not available on this node")
    resource["status"].update(phase="Failed", endpoints=[])
    text = describe(resource, now=NOW)
    assert "Phase:      Failed (stuck:" in text
    assert "  a100: Failed\n" in text
    assert "    exit code 6: TensorRT is not available on this node\n" in text
    assert "Endpoints:  none verified yet" in text


def test_describe_resource_without_status_says_the_operator_has_not_reported() -> None:
    text = describe({"metadata": {"name": "fresh", "namespace": "default", "generation": 1}}, now=NOW)
    assert text == (
        "TritonResNet default/fresh\n"
        "Phase:      unknown: the operator has not reported on this resource yet\n"
    )


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2025-03-01T11:59:50Z", "10s ago"),
        ("2025-03-01T11:58:30Z", "1m ago"),
        ("2025-03-01T10:30:00Z", "90m ago"),
        ("2025-03-01T06:00:00Z", "6h ago"),
        ("2025-02-20T12:00:00Z", "9d ago"),
        ("2025-03-01T12:00:05Z", "just now"),
        ("yesterday", "yesterday"),
    ],
)
def test_age_reads_like_kubectl(timestamp: str, expected: str) -> None:
    assert age(timestamp, datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)) == expected
