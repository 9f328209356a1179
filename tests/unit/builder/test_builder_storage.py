"""Storage stays bounded: engine folders no retained version uses are removed after a publish.

Engines are built by the real build step (format onnx) from small ONNX graphs whose
weights make each artifact 1 MiB, and published by the real publish step. The grace
period is real too: a test that needs an engine to be old sets its folder's mtime
back, as time passing between two spec changes would.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tritonresnet_builder import volume
from tritonresnet_builder.build import build
from tritonresnet_builder.contract import (
    VERSION_MARKER,
    BuildArgs,
    EngineSettings,
    PublishArgs,
    Result,
    Source,
    parse_result,
)
from tritonresnet_builder.publish import GRACE_SECONDS, publish
from unit.builder import onnx_graphs

#: image 16x16 flattened (256) times 1024 classes of FP32: 1 MiB of weights per model
IMAGE = (16, 16)
CLASSES = 1024
ARTIFACT_BYTES = 256 * CLASSES * 4
#: configs, markers, engine.json and model-info.json of the versions and engines kept
SMALL = 64 << 10


def volume_bytes(root: Path) -> int:
    """The test's own count: regular files under root, each (device, inode) once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            info = os.lstat(os.path.join(folder, name))
            if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def names_bytes(root: Path) -> int:
    """What a count by name (no inode dedupe) says: every hard link again."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def engines(repo: Path) -> set[str]:
    folder = repo / ".tritonresnet" / "engines"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def build_engine(repo: Path, tmp_path: Path, key: str, seed: int) -> Result:
    source = onnx_graphs.classifier(tmp_path / "src" / f"{key}.onnx", image=IMAGE, classes=CLASSES, seed=seed)
    return build(
        BuildArgs(
            repository=str(repo),
            engine_key=key,
            source=Source(uri=str(source)),
            engine=EngineSettings(format="onnx"),
            result_file="",
        )
    )


def publish_args(
    repo: Path, version_key: str, engine_key: str, model: str = "resnet", **kw: Any
) -> PublishArgs:
    return PublishArgs(
        repository=str(repo),
        model_name=model,
        version_key=version_key,
        engine_keys=(engine_key,),
        instance_kind="KIND_CPU",
        result_file="",
        **kw,
    )


def age(path: Path, seconds: float) -> None:
    """Set the folder's mtime back, as if it had been installed ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def age_engines(repo: Path, seconds: float = 2 * GRACE_SECONDS) -> None:
    for folder in (repo / ".tritonresnet" / "engines").iterdir():
        age(folder, seconds)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    return path


def test_ten_changes_keep_the_volume_within_retained_plus_one_artifacts(repo: Path, tmp_path: Path) -> None:
    """Each change is a new model (new engine key); changes are further apart than the grace period."""
    keep = 3
    bound = (keep + 1) * ARTIFACT_BYTES + SMALL
    rows = []
    for change in range(1, 11):
        built = build_engine(repo, tmp_path, f"k{change}", seed=change)
        assert ARTIFACT_BYTES <= built.artifact_bytes < ARTIFACT_BYTES + 4096
        after_build = volume_bytes(repo)
        result = publish(publish_args(repo, f"v-{change}", f"k{change}", keep_versions=keep))
        after_publish = volume_bytes(repo)
        rows.append((change, after_build, after_publish, names_bytes(repo), result.pruned))

        assert result.version == change
        assert result.repository_bytes == after_publish
        assert after_build <= bound and after_publish <= bound
        retained = list(range(max(1, change - keep + 1), change + 1))
        assert sorted(int(p.name) for p in (repo / "resnet").iterdir() if p.name.isdigit()) == retained
        # exactly the retained versions' engines are left: nothing else holds an artifact
        assert engines(repo) == {f"k{n}" for n in retained}
        assert after_publish < (len(retained) + 1) * ARTIFACT_BYTES
        age_engines(repo)  # time passes before the next change

    # a count by name sees every artifact twice (engine folder and version): hence the inode dedupe
    assert rows[-1][3] > 2 * keep * ARTIFACT_BYTES
    # the measurements, shown with pytest -s
    print("\nchange  after build  after publish  by name  pruned")
    for change, built_bytes, published_bytes, by_name, pruned in rows:
        print(f"{change:6d}  {built_bytes:11d}  {published_bytes:13d}  {by_name:7d}  {pruned}")


def test_the_result_field_survives_the_termination_message(repo: Path, tmp_path: Path) -> None:
    build_engine(repo, tmp_path, "k1", seed=1)
    result = publish(publish_args(repo, "v-1", "k1"))
    assert result.repository_bytes > ARTIFACT_BYTES
    assert json.loads(result.to_json())["repository_bytes"] == result.repository_bytes
    assert parse_result(result.to_json()).repository_bytes == result.repository_bytes
    # a result of a builder from before the field still parses; 0 means not reported
    old = json.loads(result.to_json())
    del old["repository_bytes"]
    assert parse_result(json.dumps(old)).repository_bytes == 0


def test_an_unused_engine_younger_than_the_grace_period_is_kept_and_an_older_one_removed(
    repo: Path, tmp_path: Path
) -> None:
    build_engine(repo, tmp_path, "k1", seed=1)
    publish(publish_args(repo, "v-1", "k1", keep_versions=1))
    build_engine(repo, tmp_path, "young", seed=2)  # built for a publish still to come
    build_engine(repo, tmp_path, "old", seed=3)
    age(repo / ".tritonresnet/engines/young", GRACE_SECONDS - 120)
    age(repo / ".tritonresnet/engines/old", GRACE_SECONDS + 120)
    build_engine(repo, tmp_path, "k2", seed=4)
    age(repo / ".tritonresnet/engines/k2", 2 * GRACE_SECONDS)  # its own engines are kept however old

    result = publish(publish_args(repo, "v-2", "k2", keep_versions=1))
    assert result.pruned == (1,)
    # k1 lost its version just now but was built moments ago: it waits for the grace period too
    assert engines(repo) == {"k1", "k2", "young"}
    assert (repo / "resnet/2/model.onnx").is_file()

    age(repo / ".tritonresnet/engines/k1", GRACE_SECONDS + 1)
    publish(publish_args(repo, "v-2", "k2", keep_versions=1))  # the same key again: clean-up runs too
    assert engines(repo) == {"k2", "young"}


def test_engines_retained_by_another_model_on_the_volume_are_kept(repo: Path, tmp_path: Path) -> None:
    build_engine(repo, tmp_path, "a1", seed=1)
    publish(publish_args(repo, "a-1", "a1", model="alpha", keep_versions=1))
    build_engine(repo, tmp_path, "b1", seed=2)
    age_engines(repo)
    publish(publish_args(repo, "b-1", "b1", model="beta", keep_versions=1))
    assert engines(repo) == {"a1", "b1"}  # a1 is old and not beta's, but alpha's version 1 uses it

    build_engine(repo, tmp_path, "a2", seed=3)
    result = publish(publish_args(repo, "a-2", "a2", model="alpha", keep_versions=1))
    assert result.pruned == (1,)
    assert engines(repo) == {"a2", "b1"}  # a1 was alpha's only; b1 is beta's, however old
    assert (repo / "beta/1/model.onnx").is_file()
    assert result.repository_bytes == volume_bytes(repo) < 3 * ARTIFACT_BYTES


def test_a_version_whose_marker_names_no_engines_keeps_the_engine_it_links(
    repo: Path, tmp_path: Path
) -> None:
    """A marker without engine_keys (damaged, hand-made) is judged by its files: a shared inode is a use."""
    build_engine(repo, tmp_path, "linked", seed=1)
    publish(publish_args(repo, "v-1", "linked", model="hand"))
    marker = repo / "hand/1" / VERSION_MARKER
    marker.write_text(json.dumps({"version_key": "v-1"}))
    build_engine(repo, tmp_path, "copied", seed=2)
    publish(publish_args(repo, "c-1", "copied", model="copy"))
    # a version of copies (the fallback when a hard link fails) needs nothing of its engine
    copy_dir = repo / "copy/1"
    (copy_dir / "copy.tmp").write_bytes((copy_dir / "model.onnx").read_bytes())
    os.replace(copy_dir / "copy.tmp", copy_dir / "model.onnx")  # a new inode (writing in place would not be)
    (copy_dir / VERSION_MARKER).write_text("not json")
    build_engine(repo, tmp_path, "k", seed=3)
    age_engines(repo)

    publish(publish_args(repo, "v-1", "k"))
    assert engines(repo) == {"linked", "k"}
    assert len((copy_dir / "model.onnx").read_bytes()) > ARTIFACT_BYTES


def test_removing_an_engine_leaves_the_hard_links_of_a_version_whole(tmp_path: Path) -> None:
    engine = tmp_path / "engines" / "k"
    engine.mkdir(parents=True)
    (engine / "model.onnx").write_bytes(b"x" * 4096)
    version = tmp_path / "model" / "1"
    version.mkdir(parents=True)
    volume.link_or_copy(engine / "model.onnx", version / "model.onnx")
    assert (version / "model.onnx").stat().st_nlink == 2

    assert volume.remove_tree(engine, tmp_path / "trash")
    assert not engine.exists() and not (tmp_path / "trash").exists()
    assert (version / "model.onnx").read_bytes() == b"x" * 4096
    assert (version / "model.onnx").stat().st_nlink == 1
    assert not volume.remove_tree(engine, tmp_path / "trash")  # already gone: someone else got there first


class Crash(BaseException):
    """Stands in for the process dying: nothing after it runs, no clean-up either."""


def test_a_crash_after_an_engine_is_renamed_away_leaves_the_repository_consistent(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_engine(repo, tmp_path, "k1", seed=1)
    publish(publish_args(repo, "v-1", "k1", keep_versions=1))
    build_engine(repo, tmp_path, "k2", seed=2)
    age_engines(repo)

    def crash(*args: object, **kwargs: object) -> None:
        raise Crash

    # volume.py's deletes (the engine's, then the scratch folder's) fail from here on, as in a killed run
    monkeypatch.setattr(volume, "shutil", SimpleNamespace(rmtree=crash))
    with pytest.raises(Crash):
        publish(publish_args(repo, "v-2", "k2", keep_versions=1))
    monkeypatch.undo()

    # k1 is gone from engines in one step and lies whole in the dead run's scratch folder
    assert engines(repo) == {"k2"}
    [trashed] = (repo / ".tritonresnet/staging").glob("publish~resnet~*/engine~k1")
    assert sorted(p.name for p in trashed.iterdir()) == ["engine.json", "model-info.json", "model.onnx"]
    # Triton's view: version 2, published before the clean-up began
    assert sorted(p.name for p in (repo / "resnet").iterdir() if p.name.isdigit()) == ["2"]

    # the operator runs the publish again: same version, and the leftover goes
    again = publish(publish_args(repo, "v-2", "k2", keep_versions=1))
    assert again.version == 2
    assert list((repo / ".tritonresnet/staging").iterdir()) == []  # the folder itself is the dead run's
    assert again.repository_bytes == volume_bytes(repo) < 2 * ARTIFACT_BYTES


def test_dead_runs_staging_folders_go_after_the_grace_period_and_live_ones_stay(
    repo: Path, tmp_path: Path
) -> None:
    build_engine(repo, tmp_path, "k1", seed=1)
    staging = repo / ".tritonresnet" / "staging"
    layout = volume.layout_of(repo)
    dead_old = staging / "build-gone-abc"  # a killed build: its lock file is there, nobody holds it
    (dead_old / "engine").mkdir(parents=True)
    (dead_old / volume.SCRATCH_LOCK).touch()
    (dead_old / "engine" / "model.onnx").write_bytes(b"half a download")
    discarded = staging / "discarded-k0-17"  # a build killed while moving a damaged engine away
    discarded.mkdir()
    dead_young = staging / "build-recent-abc"
    dead_young.mkdir()
    age(dead_old, GRACE_SECONDS + 60)
    age(discarded, GRACE_SECONDS + 60)

    # a build running for longer than the grace period: its folder is old, its lock is held
    with volume.scratch_dir(layout, "build-long-") as live:
        age(live, 3 * GRACE_SECONDS)
        publish(publish_args(repo, "v-1", "k1"))
        assert sorted(p.name for p in staging.iterdir()) == sorted([live.name, dead_young.name])
    assert [p.name for p in staging.iterdir()] == [dead_young.name]


def test_clean_up_waits_for_a_publisher_reading_engines(repo: Path, tmp_path: Path) -> None:
    """Another model's publisher holds the repository lock shared while it links engines."""
    build_engine(repo, tmp_path, "k1", seed=1)
    publish(publish_args(repo, "v-1", "k1", keep_versions=1))
    build_engine(repo, tmp_path, "k2", seed=2)
    age_engines(repo)
    results: list[Result] = []
    with volume.exclusive_lock(volume.repository_lock(volume.layout_of(repo)), shared=True):
        worker = threading.Thread(
            target=lambda: results.append(publish(publish_args(repo, "v-2", "k2", keep_versions=1)))
        )
        worker.start()
        deadline = time.monotonic() + 30
        while not (repo / "resnet/2").is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        # placed and pruned under the shared lock; the clean-up waits for ours
        assert (repo / "resnet/2").is_dir() and not (repo / "resnet/1").exists()
        assert engines(repo) == {"k1", "k2"} and not results
    worker.join(timeout=30)
    assert results and results[0].version == 2
    assert engines(repo) == {"k2"}
