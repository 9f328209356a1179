"""A publish killed (SIGKILL) at any point leaves no partial version; the next publish completes it.

The builder pauses at a named point when TRITONRESNET_BUILDER_PAUSE_AT is set
(publish.py's ``_pause_for_tests``), prints ``paused at <point>`` and the test kills it there;
the last test kills the clean-up after a publish, between moving an engine away and deleting it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tritonresnet_builder import triton_config
from tritonresnet_builder.cli import run
from tritonresnet_builder.contract import (
    BuildArgs,
    EngineSettings,
    ExitCode,
    PublishArgs,
    Source,
    parse_result,
)
from tritonresnet_builder.publish import GRACE_SECONDS
from unit.builder import onnx_graphs
from unit.builder.test_builder_storage import volume_bytes


def publish_argv(repo: Path, version_key: str, result: Path) -> list[str]:
    return PublishArgs(
        repository=str(repo),
        model_name="resnet",
        version_key=version_key,
        engine_keys=("k",),
        instance_kind="KIND_CPU",
        result_file=str(result),
    ).to_argv()


@pytest.mark.parametrize("point", ["assembled", "pinned-config"])
def test_publish_killed_mid_way_leaves_no_partial_version(tmp_path: Path, point: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    built = run(
        BuildArgs(
            repository=str(repo),
            engine_key="k",
            result_file="",
            source=Source(uri=str(onnx_graphs.classifier(tmp_path / "m.onnx"))),
            engine=EngineSettings(format="onnx"),
        )
    )
    assert built.ok
    first = run(
        PublishArgs(
            repository=str(repo), model_name="resnet", version_key="v1", engine_keys=("k",), result_file=""
        )
    )
    assert first.version == 1

    env = os.environ | {"TRITONRESNET_BUILDER_PAUSE_AT": point}
    process = subprocess.Popen(
        [sys.executable, "-m", "tritonresnet_builder", *publish_argv(repo, "v2", tmp_path / "killed")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"paused at {point}"
        # the assembled version exists, in staging only
        assert list((repo / ".tritonresnet" / "staging").rglob("model.onnx"))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    # Triton's view: version 1 only, and the newest config still names it
    assert sorted(p.name for p in (repo / "resnet").iterdir() if p.name.isdigit()) == ["1"]
    default = triton_config.parse((repo / "resnet" / "config.pbtxt").read_text())
    assert list(default.version_policy.specific.versions) == [1]

    done = subprocess.run(
        [sys.executable, "-m", "tritonresnet_builder", *publish_argv(repo, "v2", tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == ExitCode.OK, done.stderr
    assert parse_result(done.stdout).version == 2
    assert (repo / "resnet" / "2" / "model.onnx").is_file()
    # the killed run's scratch folder was cleaned up by the next publish of the model
    staging = repo / ".tritonresnet" / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_publish_killed_while_removing_an_unused_engine_leaves_it_whole_out_of_sight(tmp_path: Path) -> None:
    """Killed between moving an engine out of ``engines/`` and deleting it: nothing sees half an engine."""
    repo = tmp_path / "repo"
    repo.mkdir()

    def build_key(key: str, seed: int) -> None:
        source = onnx_graphs.classifier(tmp_path / f"{key}.onnx", seed=seed)
        built = run(
            BuildArgs(
                repository=str(repo),
                engine_key=key,
                result_file="",
                source=Source(uri=str(source)),
                engine=EngineSettings(format="onnx"),
            )
        )
        assert built.ok

    build_key("k", 0)
    build_key("unused", 1)  # built for a spec that never got published, long ago
    old = time.time() - 2 * GRACE_SECONDS
    os.utime(repo / ".tritonresnet/engines/unused", (old, old))

    env = os.environ | {"TRITONRESNET_BUILDER_PAUSE_AT": "engine-trashed"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tritonresnet_builder", *publish_argv(repo, "v1", tmp_path / "killed")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "paused at engine-trashed"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    engines = repo / ".tritonresnet" / "engines"
    assert sorted(p.name for p in engines.iterdir()) == ["k"]
    [trashed] = (repo / ".tritonresnet" / "staging").glob("publish~resnet~*/engine~unused")
    assert (trashed / "model.onnx").is_file() and (trashed / "engine.json").is_file()
    assert (repo / "resnet" / "1" / "model.onnx").is_file()  # published before the clean-up began

    done = subprocess.run(
        [sys.executable, "-m", "tritonresnet_builder", *publish_argv(repo, "v1", tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == ExitCode.OK, done.stderr
    result = parse_result(done.stdout)
    assert result.version == 1
    staging = repo / ".tritonresnet" / "staging"
    assert list(staging.iterdir()) == []
    assert result.repository_bytes == volume_bytes(repo)
