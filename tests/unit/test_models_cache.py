"""The ONNX model cache of the test ground: keys, reuse and atomic builds (no torch run here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testground import models


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path


def fake_build(calls: list[Path]) -> object:
    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "resnet18.onnx").write_bytes(b"onnx")
        (folder / "manifest.json").write_text(json.dumps({"files": {}}))

    return build


def test_cache_key_names_torch_onnx_and_module_versions() -> None:
    key = models.cache_key()
    assert key.startswith("torch-")
    assert "_onnx-" in key
    assert key.endswith(f"_v{models.MODELS_VERSION}")


def test_cache_root_follows_xdg_cache_home(cache_home: Path) -> None:
    assert models.cache_root() == cache_home / "tritonresnet" / "models"


def test_ensure_models_builds_once_then_reuses_when_cached(
    cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(models, "_build_all", fake_build(calls))

    first = models.ensure_models()
    second = models.ensure_models()

    assert len(calls) == 1
    assert first == second
    assert first.root == models.cache_root() / models.cache_key()
    assert first.path("resnet18").read_bytes() == b"onnx"
    # The build ran in a staging folder that was renamed into place: nothing else is left.
    assert sorted(p.name for p in models.cache_root().iterdir() if p.is_dir()) == [models.cache_key()]


def test_ensure_models_leaves_no_partial_cache_when_build_fails(
    cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(folder: Path) -> None:
        (folder / "resnet18.onnx").write_bytes(b"half")
        raise RuntimeError("export failed")

    monkeypatch.setattr(models, "_build_all", broken)
    with pytest.raises(RuntimeError, match="export failed"):
        models.ensure_models()
    assert [p for p in models.cache_root().iterdir() if p.is_dir()] == []


def test_paths_of_variants_when_external_data_is_a_folder(tmp_path: Path) -> None:
    cached = models.OnnxModels(tmp_path)
    assert cached.path("resnet50") == tmp_path / "resnet50.onnx"
    assert cached.path("external_data") == tmp_path / "external_data"
    assert cached.onnx_file("external_data") == tmp_path / "external_data" / "model.onnx"
    assert set(cached.names) == {"resnet18", "resnet50", "renamed", "fixed_batch", "external_data"}
    assert (cached.spec("renamed").input_name, cached.spec("renamed").output_name) == ("data", "logits")
