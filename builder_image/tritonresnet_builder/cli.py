"""``tritonresnet-builder build|publish``: the Job's entry point; and the report of ``tritonresnet inspect``.

Whatever happens, the run ends with its :class:`Result` as one JSON line, the
last line on stdout, also written to ``--result-file`` (the pod's termination
message), and exits with the result's :class:`ExitCode`. Logs go to stderr.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import onnx

from tritonresnet_builder import onnx_model, triton_config
from tritonresnet_builder.build import build
from tritonresnet_builder.contract import (
    ONNX_FILENAME,
    TERMINATION_LOG,
    BuildArgs,
    ExitCode,
    Failure,
    Format,
    PublishArgs,
    Result,
    parse_args,
    plan_filename,
)
from tritonresnet_builder.failures import BuilderError
from tritonresnet_builder.fetch import file_sha256
from tritonresnet_builder.publish import publish

log = logging.getLogger("tritonresnet_builder")


def run(args: BuildArgs | PublishArgs) -> Result:
    """Run one phase; every failure becomes a Result with its exit code, never an exception."""
    phase: Literal["build", "publish"] = "build" if isinstance(args, BuildArgs) else "publish"
    try:
        return build(args) if isinstance(args, BuildArgs) else publish(args)
    except BuilderError as exc:
        log.error("%s failed: %s", phase, exc.message)
        failure, code = exc.failure(), int(exc.exit_code)
    except Exception as exc:  # a bug: say what it was, and let the Job retry once
        log.exception("%s failed unexpectedly", phase)
        failure, code = (
            Failure("InternalError", f"{type(exc).__name__}: {exc}"[:1000]),
            int(ExitCode.INTERNAL),
        )
    if isinstance(args, BuildArgs):
        return Result(ok=False, phase=phase, exit_code=code, error=failure, engine_key=args.engine_key)
    return Result(
        ok=False,
        phase=phase,
        exit_code=code,
        error=failure,
        model_name=args.model_name,
        version_key=args.version_key,
    )


def write_result(result: Result, result_file: str) -> None:
    """stdout's last line, and the result file; a result file we cannot write is logged, not fatal."""
    text = result.to_json()
    path = Path(result_file)
    # Outside a pod nobody mounted a termination log: do not create one in /dev.
    if result_file and not (result_file == TERMINATION_LOG and not path.exists()):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError as exc:
            log.warning("could not write the result to %s: %s", result_file, exc)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _usage_failure(argv: Sequence[str], code: int) -> tuple[Result, str]:
    phase: Literal["build", "publish"] = "publish" if argv[:1] == ["publish"] else "build"
    result_file = TERMINATION_LOG
    for item in argv:
        if item.startswith("--result-file="):
            result_file = item.split("=", 1)[1]
    failure = Failure(
        "InvalidArguments", "the builder's arguments do not parse; see the log for argparse's message"
    )
    return Result(ok=False, phase=phase, exit_code=code, error=failure), result_file


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(ExitCode.USAGE)
        if code == 0:  # --help
            return 0
        result, result_file = _usage_failure(argv, int(ExitCode.USAGE))
        write_result(result, result_file)
        return int(ExitCode.USAGE)
    result = run(args)
    write_result(result, args.result_file)
    return result.exit_code


# -- the model report of the operator's `tritonresnet inspect` ------------------------


def _dims_text(value: onnx.ValueInfoProto) -> str:
    dims = [
        d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")
        for d in value.type.tensor_type.shape.dim
    ]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _elem_name(value: onnx.ValueInfoProto) -> str:
    elem = value.type.tensor_type.elem_type
    known = elem in onnx.TensorProto.DataType.values()
    return onnx.TensorProto.DataType.Name(elem).lower() if known else str(elem)


def inspect_report(
    path: Path,
    *,
    model_name: str = "resnet",
    fmt: Format = "tensorrt",
    max_batch_size: int = 8,
    compute_capabilities: Sequence[str] = (),
) -> str:
    """What ``polygraphy inspect model`` shows, plus the config.pbtxt we would write.

    Raises :class:`BuilderError` (BAD_INPUT) for a model we would refuse.
    """
    info = onnx_model.inspect(path, fmt)
    graph = onnx_model.load_graph(path).graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    lines = [
        "[I] ==== ONNX Model ====",
        f"    Name: {path.name} | ONNX opset={info.opset} | producer={info.producer or '?'}",
        f"    Size: {path.stat().st_size} bytes | sha256={file_sha256(path)}"
        + (f" | external data: {', '.join(info.external_data)}" if info.external_data else ""),
        "",
        f"    ---- {len(inputs)} Graph Input(s) ----",
        *(f"    {{{v.name} [dtype={_elem_name(v)}, shape={_dims_text(v)}]}}" for v in inputs),
        "",
        f"    ---- {len(graph.output)} Graph Output(s) ----",
        *(f"    {{{v.name} [dtype={_elem_name(v)}, shape={_dims_text(v)}]}}" for v in graph.output),
        "",
        f"    ---- {len(graph.node)} Node(s), {len(initializers)} Initializer(s) ----",
        "",
        f"    Batch dimension: 0 ({'dynamic' if not info.model_max_batch else 'fixed at 1'})",
        "",
    ]
    serving = triton_config.ServingSettings(max_batch_size=info.max_batch(max_batch_size))
    plans = {cc: plan_filename(cc) for cc in compute_capabilities} if fmt == "tensorrt" else {}
    default = ONNX_FILENAME if fmt == "onnx" else (plans[sorted(plans)[0]] if plans else "model.plan")
    config = triton_config.model_config(
        name=model_name,
        fmt=fmt,
        inputs=info.inputs,
        outputs=info.outputs,
        serving=serving,
        version=1,
        plan_files=plans,
        default_model_filename=default,
    )
    lines += [
        f"[I] ==== {model_name}/config.pbtxt we would write (version 1) ====",
        triton_config.render(config),
    ]
    return "\n".join(lines)
