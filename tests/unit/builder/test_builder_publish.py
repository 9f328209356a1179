"""Building (format onnx) and publishing into a model repository, in process, with small real models."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tritonresnet_builder import accuracy, triton_config
from tritonresnet_builder.build import MODEL_INFO, build
from tritonresnet_builder.cli import run
from tritonresnet_builder.contract import (
    ENGINE_RESULT,
    VERSION_MARKER,
    BuildArgs,
    EngineSettings,
    ExitCode,
    PublishArgs,
    Result,
    Source,
    Tensor,
    parse_result,
)
from tritonresnet_builder.publish import publish
from unit.builder import onnx_graphs


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def build_onnx(repo: Path, source: Path, key: str = "k1", max_batch: int = 8) -> Result:
    args = BuildArgs(
        repository=str(repo),
        engine_key=key,
        source=Source(uri=str(source)),
        engine=EngineSettings(format="onnx", max_batch_size=max_batch),
        result_file="",
    )
    return build(args)


def publish_args(
    repo: Path, version_key: str, engine_keys: tuple[str, ...] = ("k1",), **kw: Any
) -> PublishArgs:
    return PublishArgs(
        repository=str(repo),
        model_name="resnet",
        version_key=version_key,
        engine_keys=engine_keys,
        instance_kind="KIND_CPU",
        result_file="",
        **kw,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    return path


def test_build_onnx_installs_engine_folder_with_result(repo: Path, tmp_path: Path) -> None:
    result = build_onnx(repo, onnx_graphs.classifier(tmp_path / "src" / "m.onnx"))
    folder = repo / ".tritonresnet" / "engines" / "k1"
    assert result.ok and result.artifact == "model.onnx" and result.format == "onnx"
    assert sorted(p.name for p in folder.iterdir()) == [ENGINE_RESULT, MODEL_INFO, "model.onnx"]
    assert parse_result((folder / ENGINE_RESULT).read_text()) == result
    assert len(result.source_sha256) == 64
    # the scratch folder is gone, and so is the staging folder it needed
    assert not (repo / ".tritonresnet" / "staging").exists()


def test_build_twice_reuses_the_engine(repo: Path, tmp_path: Path) -> None:
    source = onnx_graphs.classifier(tmp_path / "src" / "m.onnx")
    first = build_onnx(repo, source)
    mtime = (repo / ".tritonresnet/engines/k1/model.onnx").stat().st_mtime_ns
    second = build_onnx(repo, source)
    assert second.seconds == {"reused": pytest.approx(second.seconds["reused"])}
    assert replace(second, seconds={}) == replace(first, seconds={})
    assert (repo / ".tritonresnet/engines/k1/model.onnx").stat().st_mtime_ns == mtime


def test_build_copies_external_data_next_to_the_model(repo: Path, tmp_path: Path) -> None:
    result = build_onnx(repo, onnx_graphs.classifier(tmp_path / "src" / "m.onnx", external=True))
    folder = repo / ".tritonresnet" / "engines" / "k1"
    # the model keeps its relative reference, so the data file keeps its name
    assert (folder / "m.onnx.data").is_file()
    assert (
        result.artifact_bytes
        == (folder / "model.onnx").stat().st_size + (folder / "m.onnx.data").stat().st_size
    )


def test_publish_assembles_version_with_marker_and_configs(repo: Path, tmp_path: Path) -> None:
    build_onnx(repo, onnx_graphs.classifier(tmp_path / "src" / "m.onnx"))
    result = publish(publish_args(repo, "v-a", preferred_batch_sizes=(4,)))
    assert result.ok and result.version == 1 and result.pruned == ()
    assert result.files == ("resnet/1/model.onnx", "resnet/configs/v1.pbtxt")
    marker = json.loads((repo / "resnet" / "1" / VERSION_MARKER).read_text())
    assert marker["version_key"] == "v-a" and marker["engine_keys"] == ["k1"]
    pinned = triton_config.parse((repo / "resnet/configs/v1.pbtxt").read_text())
    assert pinned == triton_config.parse((repo / "resnet/config.pbtxt").read_text())
    assert pinned.platform == "onnxruntime_onnx"
    assert list(pinned.version_policy.specific.versions) == [1]
    assert [(i.name, list(i.dims)) for i in pinned.input] == [("input", [3, 4, 4])]
    assert list(pinned.dynamic_batching.preferred_batch_size) == [4]
    assert not (repo / ".tritonresnet" / "staging").exists()


def test_publish_same_version_key_twice_returns_the_same_version(repo: Path, tmp_path: Path) -> None:
    build_onnx(repo, onnx_graphs.classifier(tmp_path / "src" / "m.onnx"))
    first = publish(publish_args(repo, "v-a"))
    before = tree(repo)
    second = publish(publish_args(repo, "v-a"))
    assert (first.version, first.files) == (second.version, second.files) == (1, first.files)
    assert tree(repo) == before


def test_publish_numbers_new_keys_and_points_default_config_at_newest(repo: Path, tmp_path: Path) -> None:
    build_onnx(repo, onnx_graphs.classifier(tmp_path / "src" / "m.onnx"))
    versions = [publish(publish_args(repo, f"v-{n}", max_batch_size=4)).version for n in range(3)]
    assert versions == [1, 2, 3]
    default = triton_config.parse((repo / "resnet/config.pbtxt").read_text())
    assert list(default.version_policy.specific.versions) == [3]
    assert default.max_batch_size == 4


def test_publish_prunes_oldest_but_never_protected_or_newest(repo: Path, tmp_path: Path) -> None:
    build_onnx(repo, onnx_graphs.classifier(tmp_path / "src" / "m.onnx"))
    for n in range(4):
        publish(publish_args(repo, f"v-{n}", keep_versions=10))
    result = publish(publish_args(repo, "v-4", keep_versions=2, protect_versions=(1,)))
    assert result.version == 5
    assert result.pruned == (2, 3)
    assert sorted(p.name for p in (repo / "resnet").iterdir()) == ["1", "4", "5", "config.pbtxt", "configs"]
    assert sorted(p.name for p in (repo / "resnet/configs").iterdir()) == ["v1.pbtxt", "v4.pbtxt", "v5.pbtxt"]
    # keep_versions=1 still keeps the newest, even when another one is protected
    again = publish(publish_args(repo, "v-5", keep_versions=1, protect_versions=(1,)))
    assert again.version == 6 and again.pruned == (4, 5)


def test_publish_clamps_max_batch_to_what_a_fixed_batch_model_allows(repo: Path, tmp_path: Path) -> None:
    build_onnx(repo, onnx_graphs.classifier(tmp_path / "src" / "m.onnx", batch=1))
    publish(publish_args(repo, "v-a", max_batch_size=8))
    config = triton_config.parse((repo / "resnet/configs/v1.pbtxt").read_text())
    assert config.max_batch_size == 1 and not config.HasField("dynamic_batching")


def stand_in_tensorrt_engine(
    repo: Path, key: str, cc: str, inputs: tuple[Tensor, ...], hardware_compatibility: str = ""
) -> None:
    """An engine folder as a TensorRT build would leave it, with stand-in plan bytes (no TensorRT here)."""
    folder = repo / ".tritonresnet" / "engines" / key
    folder.mkdir(parents=True)
    plan = f"model.sm{cc.replace('.', '')}.plan"
    (folder / plan).write_bytes(b"stand-in plan bytes, not a TensorRT engine")
    result = Result(
        ok=True,
        phase="build",
        engine_key=key,
        source_sha256="0" * 64,
        inputs=inputs,
        outputs=(Tensor("output", "FP32", (1000,)),),
        format="tensorrt",
        artifact=plan,
        artifact_bytes=42,
        compute_capability=cc,
        hardware_compatibility=hardware_compatibility,
        tensorrt_version="10.8.0.43",
    )
    (folder / ENGINE_RESULT).write_text(result.to_json())
    (folder / MODEL_INFO).write_text(json.dumps({"max_batch_size": 8, "model_max_batch": 0}))


def test_publish_maps_plans_by_compute_capability_with_stand_in_plan_files(repo: Path) -> None:
    """Engine folders hold stand-in plan bytes: this checks publish's layout, not TensorRT."""
    inputs = (Tensor("input", "FP32", (3, 224, 224)),)
    stand_in_tensorrt_engine(repo, "ampere", "8.6", inputs)
    stand_in_tensorrt_engine(repo, "hopper", "9.0", inputs)
    result = publish(publish_args(repo, "v-a", engine_keys=("hopper", "ampere")))
    assert sorted(p.name for p in (repo / "resnet/1").iterdir()) == [
        "model.sm86.plan",
        "model.sm90.plan",
        VERSION_MARKER,
    ]
    config = triton_config.parse((repo / "resnet/configs/v1.pbtxt").read_text())
    assert config.platform == "tensorrt_plan"
    assert dict(config.cc_model_filenames) == {"8.6": "model.sm86.plan", "9.0": "model.sm90.plan"}
    assert result.files == ("resnet/1/model.sm86.plan", "resnet/1/model.sm90.plan", "resnet/configs/v1.pbtxt")


def test_publish_makes_an_ampere_plus_plan_the_default_with_stand_in_plan_files(repo: Path) -> None:
    """Stand-in plan bytes: a GPU missing from cc_model_filenames (a 9.0 joining later) loads the
    default, which is the AMPERE_PLUS plan; the T4's own plan stays mapped to 7.5."""
    inputs = (Tensor("input", "FP32", (3, 224, 224)),)
    stand_in_tensorrt_engine(repo, "turing", "7.5", inputs)
    stand_in_tensorrt_engine(repo, "ampere", "8.6", inputs, hardware_compatibility="ampere_plus")
    publish(publish_args(repo, "v-a", engine_keys=("turing", "ampere")))
    config = triton_config.parse((repo / "resnet/configs/v1.pbtxt").read_text())
    assert dict(config.cc_model_filenames) == {"7.5": "model.sm75.plan", "8.6": "model.sm86.plan"}
    assert config.default_model_filename == "model.sm86.plan"


def test_publish_refuses_engines_that_disagree_on_inputs(repo: Path) -> None:
    """Stand-in plan files again; the refusal happens before any file is read."""
    stand_in_tensorrt_engine(repo, "a", "8.6", (Tensor("input", "FP32", (3, 224, 224)),))
    stand_in_tensorrt_engine(repo, "b", "9.0", (Tensor("data", "FP32", (3, 224, 224)),))
    before = tree(repo)
    result = run(publish_args(repo, "v-a", engine_keys=("a", "b")))
    assert result.exit_code == ExitCode.BAD_INPUT and result.error is not None
    assert result.error.kind == "EnginesDisagree"
    assert tree(repo) == before


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "..", "", "x" * 64, "name with space"])
def test_publish_refuses_unsafe_model_names_before_touching_the_repository(
    repo: Path, tmp_path: Path, name: str
) -> None:
    build_onnx(repo, onnx_graphs.classifier(tmp_path / "src" / "m.onnx"))
    before = tree(repo)
    result = run(replace(publish_args(repo, "v-a"), model_name=name))
    assert result.exit_code == ExitCode.BAD_INPUT
    assert result.error is not None and result.error.field == "spec.model.name"
    assert tree(repo) == before


# -- max batch 0: no batch dimension in requests, each run at batch 1 --------------------------


@pytest.mark.parametrize("batch", ["batch", 1], ids=["dynamic", "fixed-1"])
def test_publish_without_batching_reshapes_to_batch_one_and_reports_served_shapes(
    repo: Path, tmp_path: Path, batch: str | int
) -> None:
    build_onnx(repo, onnx_graphs.classifier(tmp_path / "src" / "m.onnx", batch=batch), max_batch=0)
    info = json.loads((repo / ".tritonresnet/engines/k1" / MODEL_INFO).read_text())
    assert info["max_batch_size"] == 0
    result = publish(publish_args(repo, "v-a", max_batch_size=0, preferred_batch_sizes=(4,)))
    config = triton_config.parse((repo / "resnet/configs/v1.pbtxt").read_text())
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims), list(i.reshape.shape)) for i in config.input] == [
        ("input", [3, 4, 4], [1, 3, 4, 4])
    ]
    assert [(o.name, list(o.dims), list(o.reshape.shape)) for o in config.output] == [
        ("output", [10], [1, 10])
    ]
    # what Triton's metadata will show for an unbatched model: no -1 in front
    assert result.inputs == (Tensor("input", "FP32", (3, 4, 4)),)
    assert result.outputs == (Tensor("output", "FP32", (10,)),)


def test_publish_serves_an_engine_built_for_batch_one_only_without_batching(
    repo: Path, tmp_path: Path
) -> None:
    """An engine built with max batch 0 has a batch-1 profile: a batching version would overrun it."""
    build_onnx(repo, onnx_graphs.classifier(tmp_path / "src" / "m.onnx"), max_batch=0)
    publish(publish_args(repo, "v-a", max_batch_size=8))
    config = triton_config.parse((repo / "resnet/configs/v1.pbtxt").read_text())
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")


def test_publish_result_reports_a_per_item_scalar_as_triton_serves_it(repo: Path, tmp_path: Path) -> None:
    build_onnx(repo, onnx_graphs.identity(tmp_path / "src" / "m.onnx", dims=("batch",)))
    result = publish(publish_args(repo, "v-a"))
    # dims [1] reshaped to []: Triton's metadata says [-1, 1], so the result says (1,)
    assert result.inputs == (Tensor("x", "FP32", (1,)),)
    assert result.outputs == (Tensor("y", "FP32", (1,)),)


def test_publish_refuses_a_negative_max_batch(repo: Path, tmp_path: Path) -> None:
    build_onnx(repo, onnx_graphs.classifier(tmp_path / "src" / "m.onnx"))
    result = run(publish_args(repo, "v-a", max_batch_size=-1))
    assert result.exit_code == ExitCode.USAGE and result.error is not None


def test_an_onnx_build_and_its_publish_carry_onnxruntimes_reference_answers(
    repo: Path, tmp_path: Path
) -> None:
    """The reference the operator's verification compares a served onnx version with."""
    built = build_onnx(repo, onnx_graphs.classifier(tmp_path / "src" / "m.onnx"))
    assert built.reference is not None
    assert built.reference.seed == accuracy.SEED and built.reference.samples == accuracy.SAMPLES
    reference = built.reference
    assert [len(row) for row in reference.top5] == [len(row) for row in reference.values]
    assert publish(publish_args(repo, "v-a")).reference == built.reference
