"""cli.main: the result line, the result file, and exit codes for argument errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonresnet_builder import cli
from tritonresnet_builder.contract import BuildArgs, EngineSettings, ExitCode, Source, parse_result
from unit.builder import onnx_graphs


def test_main_prints_result_as_last_stdout_line_and_writes_result_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    result_file = tmp_path / "deep" / "er" / "termination-log"
    args = BuildArgs(
        repository=str(repo),
        engine_key="k",
        source=Source(uri=str(onnx_graphs.classifier(tmp_path / "m.onnx"))),
        engine=EngineSettings(format="onnx"),
        result_file=str(result_file),
    )
    assert cli.main(args.to_argv()) == ExitCode.OK
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert parse_result(last_line) == parse_result(result_file.read_text())
    assert parse_result(last_line).artifact == "model.onnx"


def test_main_exits_usage_on_argument_errors_with_a_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result_file = tmp_path / "result"
    code = cli.main(
        ["build", "--repository=/x", f"--result-file={result_file}"]
    )  # no --engine-key, no --source
    assert code == ExitCode.USAGE
    result = parse_result(capsys.readouterr().out)
    assert result.exit_code == ExitCode.USAGE and not result.ok
    assert parse_result(result_file.read_text()) == result


def test_main_keeps_going_when_the_result_file_cannot_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = cli.main(
        [
            "publish",
            "--repository=/nonexistent",
            "--model-name=m",
            "--version-key=v",
            "--engine-key=k",
            f"--result-file={blocker}/result",
        ]
    )
    assert code == ExitCode.BAD_INPUT
    assert parse_result(capsys.readouterr().out).error is not None


def test_inspect_report_shows_tensors_and_the_config_we_would_write(tmp_path: Path) -> None:
    report = cli.inspect_report(
        onnx_graphs.classifier(tmp_path / "m.onnx", input_name="data"),
        model_name="r50",
        compute_capabilities=("8.6",),
    )
    assert "{data [dtype=float, shape=(batch, 3, 4, 4)]}" in report
    assert "{output [dtype=float, shape=(batch, 10)]}" in report
    assert 'name: "r50"' in report and 'platform: "tensorrt_plan"' in report
    assert 'value: "model.sm86.plan"' in report
