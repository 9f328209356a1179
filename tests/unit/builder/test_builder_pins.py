"""The pin covers what is served: external-data pins through the contract, the digest of every
fetched file in the result, and external-data locations that would replace another file refused.

Local files only (the fetcher's local path); the same cases against moto's S3 are in
tests/integration/test_builder_s3.py and test_builder_bad_inputs.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tritonresnet_builder.build import refuse_colliding_locations
from tritonresnet_builder.contract import (
    MAX_RESULT_BYTES,
    BuildArgs,
    ExitCode,
    Result,
    Source,
    SourceFile,
    parse_args,
    parse_result,
)
from tritonresnet_builder.failures import BuilderError
from tritonresnet_builder.fetch import EXTERNAL_DATA_FIELD, SourceFetcher


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_external_data_pins_survive_the_argv_including_a_location_with_an_equals_sign() -> None:
    pins = {"model.onnx.data": "a" * 64, "w/x=1.bin": "b" * 64}
    args = BuildArgs(
        repository="/models", engine_key="k", source=Source(uri="/m.onnx", external_data_sha256=pins)
    )
    argv = args.to_argv()
    assert f"--external-data-sha256=w/x=1.bin={'b' * 64}" in argv
    parsed = parse_args(argv)
    assert isinstance(parsed, BuildArgs)
    assert parsed.source == args.source


def test_an_argv_pin_without_a_location_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(
            ["build", "--repository=/m", "--engine-key=k", "--source=/m.onnx", "--external-data-sha256=abc"]
        )
    assert exited.value.code == ExitCode.USAGE


def test_the_result_lists_every_fetched_file_and_parses_back() -> None:
    files = (SourceFile("model.onnx", "a" * 64, 10), SourceFile("model.onnx.data", "b" * 64, 20))
    result = Result(ok=True, phase="build", source_sha256="a" * 64, source_files=files)
    assert parse_result(result.to_json()).source_files == files


def test_a_result_with_too_many_files_for_the_termination_message_leaves_the_list_out_whole() -> None:
    """A model saved with one file per tensor: the list is dropped, never cut, and the model's own
    digest stays."""
    files = tuple(SourceFile(f"layer{i}.weight", f"{i:064x}", 1 << 20) for i in range(300))
    text = Result(ok=True, phase="build", source_sha256="a" * 64, source_files=files).to_json()
    assert len(text.encode()) <= MAX_RESULT_BYTES
    parsed = parse_result(text)
    assert parsed.source_files == () and parsed.source_sha256 == "a" * 64


@pytest.mark.parametrize(
    ("location", "fragment"),
    [
        ("model.onnx", "the model's own file name"),
        ("resnet.onnx", "the model's own file name"),
        ("model.onnx/weights.bin", "the model's own file name"),
        ("engine.json", "a file the builder writes next to the model (engine.json)"),
        ("model-info.json", "a file the builder writes"),
        ("tritonresnet-version.json", "a file the builder writes"),
        ("model.sm86.plan", "a file the builder writes"),
        ("weights/engine.json", "a file the builder writes"),
        ("weights", "a folder of another external-data location"),
    ],
)
def test_an_external_data_location_that_would_replace_another_file_is_refused_naming_it(
    location: str, fragment: str
) -> None:
    locations = tuple(sorted({location, "weights/fc.bin"} if location == "weights" else {location}))
    with pytest.raises(BuilderError) as error:
        refuse_colliding_locations(locations, "resnet.onnx")
    assert error.value.exit_code == ExitCode.BAD_INPUT
    assert error.value.kind == "ExternalDataCollision"
    assert repr(location) in error.value.message and fragment in error.value.message
    assert error.value.field == "spec.source.uri"


def test_ordinary_external_data_locations_pass() -> None:
    refuse_colliding_locations(("model.onnx.data", "weights/fc.bin", "weights/conv1.bin"), "model.onnx")


def _model_with_data(folder: Path) -> tuple[Path, Path]:
    folder.mkdir()
    model, data = folder / "model.onnx", folder / "model.onnx.data"
    model.write_bytes(b"graph")
    data.write_bytes(b"weights" * 100)
    return model, data


def test_a_pinned_external_data_file_with_another_digest_fails_naming_the_file(tmp_path: Path) -> None:
    model, data = _model_with_data(tmp_path / "src")
    good = sha256(data)
    data.write_bytes(b"tampered" * 100)
    fetcher = SourceFetcher(Source(uri=str(model), external_data_sha256={"model.onnx.data": good}))
    with pytest.raises(BuilderError) as error:
        fetcher.fetch_sibling("model.onnx.data", tmp_path / "out" / "model.onnx.data")
    assert error.value.kind == "DigestMismatch"
    assert str(data) in error.value.message and f"the spec pins {good}" in error.value.message
    assert error.value.field == EXTERNAL_DATA_FIELD


def test_a_pinned_external_data_file_with_its_digest_is_fetched(tmp_path: Path) -> None:
    model, data = _model_with_data(tmp_path / "src")
    fetcher = SourceFetcher(Source(uri=str(model), external_data_sha256={"model.onnx.data": sha256(data)}))
    fetched = fetcher.fetch_sibling("model.onnx.data", tmp_path / "out" / "model.onnx.data")
    assert fetched.sha256 == sha256(data)
    assert fetcher.model_name == "model.onnx"


def test_a_pin_of_a_location_the_model_does_not_read_is_refused_naming_both(tmp_path: Path) -> None:
    model, _ = _model_with_data(tmp_path / "src")
    fetcher = SourceFetcher(Source(uri=str(model), external_data_sha256={"weights.bin": "c" * 64}))
    with pytest.raises(BuilderError) as error:
        fetcher.refuse_unused_pins(("model.onnx.data",))
    assert error.value.kind == "UnknownExternalData"
    assert "'weights.bin'" in error.value.message and "'model.onnx.data'" in error.value.message
    assert error.value.field == EXTERNAL_DATA_FIELD


@pytest.mark.parametrize("pin", ["", "C" * 64, "abc"])
def test_a_malformed_external_data_pin_is_refused_before_any_fetch(tmp_path: Path, pin: str) -> None:
    with pytest.raises(BuilderError) as error:
        SourceFetcher(Source(uri=str(tmp_path / "nowhere.onnx"), external_data_sha256={"d.bin": pin}))
    assert error.value.kind == "InvalidDigest" and error.value.field == EXTERNAL_DATA_FIELD
