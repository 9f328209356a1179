"""volume.py: the one atomic file write, and the one check that the model volume is there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tritonresnet_builder import cli, volume
from tritonresnet_builder.contract import BuildArgs, ExitCode, PublishArgs, Source


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "m" / "config.pbtxt"
    assert volume.write_atomic(target, "old") == 3
    assert volume.write_atomic(target, "new text") == 8
    assert target.read_text() == "new text"
    assert [p.name for p in target.parent.iterdir()] == ["config.pbtxt"]


def test_write_atomic_takes_bytes_and_buffers_and_counts_bytes(tmp_path: Path) -> None:
    """A TensorRT plan arrives as a buffer (memoryview of IHostMemory); its size is bytes, not items."""
    wide = memoryview(bytearray(range(8))).cast("I")  # 2 items of 4 bytes
    assert volume.write_atomic(tmp_path / "plan", wide) == 8
    assert (tmp_path / "plan").read_bytes() == bytes(range(8))
    assert volume.write_atomic(tmp_path / "raw", b"\x00\x01") == 2


def test_a_failed_write_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "engine.json"
    volume.write_atomic(target, "complete")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        volume.write_atomic(target, "half")
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["engine.json"]


@pytest.mark.parametrize("phase", ["build", "publish"])
def test_both_phases_refuse_a_volume_that_is_not_there(tmp_path: Path, phase: str) -> None:
    missing = str(tmp_path / "not-mounted")
    args: BuildArgs | PublishArgs
    if phase == "build":
        args = BuildArgs(repository=missing, engine_key="k", source=Source(uri="s3://b/m.onnx"))
    else:
        args = PublishArgs(repository=missing, model_name="m", version_key="v", engine_keys=("k",))
    result = cli.run(args)
    assert result.exit_code == ExitCode.BAD_INPUT
    assert result.error is not None and result.error.kind == "RepositoryMissing"
    assert missing in result.error.message
    assert not (tmp_path / "not-mounted").exists()
