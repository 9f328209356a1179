"""The versioned contract between the operator and the builder.

The operator and the builder meet in three places, all defined here and only
here:

* **Arguments in**: :class:`BuildArgs` and :class:`PublishArgs` render to and
  parse from the container's argv, so the operator never hand-writes flags.
* **A JSON result out**: one line, on stdout's last line and in the pod's
  termination message (kept under :data:`MAX_RESULT_BYTES`), parsed by the
  operator with :func:`parse_result`.
* **The repository layout**: :class:`RepositoryLayout` names every path the
  builder writes and Triton reads.

Bump :data:`CONTRACT` when any of them changes incompatibly; the operator
refuses results of a contract it does not know. An optional argument or result
field is a compatible addition (the bump would change every engine key and so
rebuild every model): an older builder refuses an argument it does not know
(exit 2), so a pin is never silently dropped, and an older operator ignores a
result field it does not read.

This module is pure (no I/O beyond path arithmetic, no third-party imports) so
the operator can import it without pulling the builder's dependencies.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import PurePosixPath
from typing import Any, Literal

CONTRACT = "tritonresnet.io/builder/v1"

#: Kubernetes truncates termination messages at 4096 bytes.
MAX_RESULT_BYTES = 4096

#: Where the operator asks the builder to write its result (the pod's
#: terminationMessagePath); the builder takes it as ``--result-file``.
TERMINATION_LOG = "/dev/termination-log"

Format = Literal["tensorrt", "onnx"]
Precision = Literal["fp32", "fp16", "bf16", "fp8", "int8"]
FORMATS: tuple[Format, ...] = ("tensorrt", "onnx")
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "bf16", "fp8", "int8")
#: TensorRT's hardware compatibility level: ``ampere_plus`` builds, on an Ampere or newer GPU,
#: one plan that runs on every GPU of compute capability 8.0 and up (TensorRT's AMPERE_PLUS).
HardwareCompatibility = Literal["none", "ampere_plus"]
HARDWARE_COMPATIBILITIES: tuple[HardwareCompatibility, ...] = ("none", "ampere_plus")
#: The lowest compute capability an ``ampere_plus`` plan runs on (and is built on).
AMPERE_MAJOR = 8

#: The most one input may take per sample (batch 1), in bytes: 64 MiB. A ResNet's
#: 3x224x224 FP32 image is 0.6 MiB and a 3x2048x2048 one 48 MiB; a model that
#: declares more (say [N, 3, 100000, 100000]) is refused when it is built, since
#: no client could send it and Triton would reserve memory for it per instance.
MAX_INPUT_SAMPLE_BYTES = 64 << 20

#: A Triton model name we accept: no path separators, no dot-names, no
#: traversal. Triton itself only needs a directory name; we are stricter so
#: the name is also a safe path component and a DNS-ish label.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ExitCode(IntEnum):
    """Builder exit codes; the Job's podFailurePolicy keys on them."""

    OK = 0
    USAGE = 2  #: bad arguments: a bug in whoever rendered them; never retried
    BAD_INPUT = 3  #: the user's mistake (URI, credentials, digest, ONNX): never retried
    TRANSIENT = 4  #: network, throttling, a busy volume: retry
    INTERNAL = 5  #: a bug in the builder: retried once by the Job's backoffLimit
    UNSUPPORTED = 6  #: the node cannot do this (no TensorRT, no GPU): never retried


#: Exit codes the operator's podFailurePolicy turns into an immediate Job failure.
NON_RETRYABLE_EXIT_CODES: tuple[int, ...] = (ExitCode.USAGE, ExitCode.BAD_INPUT, ExitCode.UNSUPPORTED)


# -- arguments in -------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    uri: str  #: s3://bucket/key or a local path
    sha256: str = ""  #: optional pin, lowercase hex
    endpoint: str = ""  #: S3-compatible endpoint URL (MinIO, Ceph)
    region: str = ""
    #: optional pins of external-data files: the location as the model names it (relative to
    #: the model, normalised) -> lowercase hex sha256
    external_data_sha256: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AccuracyTolerance:
    """How far a TensorRT plan may answer from onnxruntime on the builder's fixed inputs."""

    #: inputs whose top-5 classes must be the same set as onnxruntime's, in percent
    min_top5_agreement_percent: int = 90
    #: the largest absolute difference allowed in any value of the first output
    max_abs_difference: float = 1.0


@dataclass(frozen=True)
class EngineSettings:
    format: Format = "tensorrt"
    precision: Precision = "fp16"
    #: 0: served without a batch dimension (Triton's max_batch_size 0); the model runs at batch 1
    max_batch_size: int = 8
    opt_batch_size: int = 0  #: 0: half of max_batch_size, at least 1
    workspace_mib: int = 4096
    accuracy: AccuracyTolerance = field(default_factory=AccuracyTolerance)
    hardware_compatibility: HardwareCompatibility = "none"

    def optimum_batch(self) -> int:
        return self.opt_batch_size or max(1, self.max_batch_size // 2)

    def largest_batch(self) -> int:
        """The largest batch the artifact must run: max_batch_size, and 1 when that is 0
        (requests then carry no batch dimension and Triton reshapes each to batch 1)."""
        return max(1, self.max_batch_size)


@dataclass(frozen=True)
class BuildArgs:
    """`tritonresnet-builder build`: fetch, validate, build one artifact for one GPU kind."""

    repository: str  #: the mounted model-repository volume
    engine_key: str  #: computed by the operator; names the engine folder
    source: Source
    engine: EngineSettings = field(default_factory=EngineSettings)
    result_file: str = TERMINATION_LOG

    def to_argv(self) -> list[str]:
        argv = [
            "build",
            f"--repository={self.repository}",
            f"--engine-key={self.engine_key}",
            f"--source={self.source.uri}",
            f"--format={self.engine.format}",
            f"--precision={self.engine.precision}",
            f"--max-batch-size={self.engine.max_batch_size}",
            f"--opt-batch-size={self.engine.optimum_batch()}",
            f"--workspace-mib={self.engine.workspace_mib}",
            f"--result-file={self.result_file}",
        ]
        if self.engine.format == "tensorrt":  # the gate compares a plan; an onnx build has none
            argv += [
                f"--min-top5-agreement={self.engine.accuracy.min_top5_agreement_percent}",
                f"--max-abs-difference={self.engine.accuracy.max_abs_difference!r}",
            ]
        if self.engine.hardware_compatibility != "none":  # left out by default: older argv unchanged
            argv.append(f"--hardware-compatibility={self.engine.hardware_compatibility}")
        if self.source.sha256:
            argv.append(f"--sha256={self.source.sha256}")
        if self.source.endpoint:
            argv.append(f"--endpoint={self.source.endpoint}")
        if self.source.region:
            argv.append(f"--region={self.source.region}")
        argv += [
            f"--external-data-sha256={location}={digest}"
            for location, digest in sorted(self.source.external_data_sha256.items())
        ]
        return argv


@dataclass(frozen=True)
class PublishArgs:
    """`tritonresnet-builder publish`: assemble one model version from built engines."""

    repository: str
    model_name: str
    version_key: str  #: computed by the operator; the same key always maps to the same version
    engine_keys: tuple[str, ...]
    #: 0: no batch dimension in requests, each reshaped to batch 1, no dynamic batching
    max_batch_size: int = 8
    max_queue_delay_us: int = 100
    preferred_batch_sizes: tuple[int, ...] = ()
    instance_count: int = 1
    #: KIND_AUTO: GPU where the server has one, CPU otherwise (the test ground)
    instance_kind: Literal["KIND_AUTO", "KIND_GPU", "KIND_CPU"] = "KIND_AUTO"
    keep_versions: int = 3  #: retention: versions kept besides the protected ones
    protect_versions: tuple[int, ...] = ()  #: never pruned (the version being served)
    result_file: str = TERMINATION_LOG

    def to_argv(self) -> list[str]:
        argv = [
            "publish",
            f"--repository={self.repository}",
            f"--model-name={self.model_name}",
            f"--version-key={self.version_key}",
            *(f"--engine-key={key}" for key in self.engine_keys),
            f"--max-batch-size={self.max_batch_size}",
            f"--max-queue-delay-us={self.max_queue_delay_us}",
            f"--instance-count={self.instance_count}",
            f"--instance-kind={self.instance_kind}",
            f"--keep-versions={self.keep_versions}",
            f"--result-file={self.result_file}",
        ]
        argv += [f"--preferred-batch-size={n}" for n in self.preferred_batch_sizes]
        argv += [f"--protect-version={n}" for n in self.protect_versions]
        return argv


def argument_parser() -> argparse.ArgumentParser:
    """The builder's argv grammar; :func:`parse_args` is its inverse of ``to_argv``."""
    parser = argparse.ArgumentParser(
        prog="tritonresnet-builder", description="tritonresnet builder (" + CONTRACT + ")"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="fetch, validate and build one engine")
    build.add_argument("--repository", required=True)
    build.add_argument("--engine-key", required=True)
    build.add_argument("--source", required=True)
    build.add_argument("--sha256", default="")
    build.add_argument("--endpoint", default="")
    build.add_argument("--region", default="")
    # LOCATION=SHA256, once per pinned external-data file; a location may hold "=", a digest never.
    build.add_argument("--external-data-sha256", action="append", default=[], dest="external_pins")
    build.add_argument("--format", choices=FORMATS, default="tensorrt")
    build.add_argument("--precision", choices=PRECISIONS, default="fp16")
    build.add_argument("--max-batch-size", type=int, default=8)
    build.add_argument("--opt-batch-size", type=int, default=0)
    build.add_argument("--workspace-mib", type=int, default=4096)
    build.add_argument("--min-top5-agreement", type=int, default=AccuracyTolerance.min_top5_agreement_percent)
    build.add_argument("--max-abs-difference", type=float, default=AccuracyTolerance.max_abs_difference)
    build.add_argument("--hardware-compatibility", choices=HARDWARE_COMPATIBILITIES, default="none")
    build.add_argument("--result-file", default=TERMINATION_LOG)

    publish = sub.add_parser("publish", help="assemble a model version from built engines")
    publish.add_argument("--repository", required=True)
    publish.add_argument("--model-name", required=True)
    publish.add_argument("--version-key", required=True)
    publish.add_argument("--engine-key", action="append", required=True, dest="engine_keys")
    publish.add_argument("--max-batch-size", type=int, default=8)
    publish.add_argument("--max-queue-delay-us", type=int, default=100)
    publish.add_argument("--preferred-batch-size", type=int, action="append", default=[], dest="preferred")
    publish.add_argument("--instance-count", type=int, default=1)
    publish.add_argument(
        "--instance-kind", choices=("KIND_AUTO", "KIND_GPU", "KIND_CPU"), default="KIND_AUTO"
    )
    publish.add_argument("--keep-versions", type=int, default=3)
    publish.add_argument("--protect-version", type=int, action="append", default=[], dest="protect")
    publish.add_argument("--result-file", default=TERMINATION_LOG)
    return parser


def _pins(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for item in items:
        location, equals, digest = item.rpartition("=")
        if not equals or not location:
            parser.error(f"--external-data-sha256 {item!r} is not LOCATION=SHA256")  # exits 2, USAGE
        pins[location] = digest
    return pins


def parse_args(argv: Sequence[str]) -> BuildArgs | PublishArgs:
    """Parse builder argv; raises SystemExit(2) (ExitCode.USAGE) on bad arguments."""
    parser = argument_parser()
    ns = parser.parse_args(list(argv))
    if ns.command == "build":
        return BuildArgs(
            repository=ns.repository,
            engine_key=ns.engine_key,
            source=Source(
                uri=ns.source,
                sha256=ns.sha256,
                endpoint=ns.endpoint,
                region=ns.region,
                external_data_sha256=_pins(parser, ns.external_pins),
            ),
            engine=EngineSettings(
                format=ns.format,
                precision=ns.precision,
                max_batch_size=ns.max_batch_size,
                opt_batch_size=ns.opt_batch_size,
                workspace_mib=ns.workspace_mib,
                accuracy=AccuracyTolerance(ns.min_top5_agreement, ns.max_abs_difference),
                hardware_compatibility=ns.hardware_compatibility,
            ),
            result_file=ns.result_file,
        )
    return PublishArgs(
        repository=ns.repository,
        model_name=ns.model_name,
        version_key=ns.version_key,
        engine_keys=tuple(ns.engine_keys),
        max_batch_size=ns.max_batch_size,
        max_queue_delay_us=ns.max_queue_delay_us,
        preferred_batch_sizes=tuple(ns.preferred),
        instance_count=ns.instance_count,
        instance_kind=ns.instance_kind,
        keep_versions=ns.keep_versions,
        protect_versions=tuple(ns.protect),
        result_file=ns.result_file,
    )


# -- the repository layout -----------------------------------------------------------


@dataclass(frozen=True)
class RepositoryLayout:
    """Every path on the model-repository volume, relative to its root.

    Triton sees ``<model>/config.pbtxt``, ``<model>/configs/v<N>.pbtxt`` and
    ``<model>/<N>/``. Everything of ours that Triton must not load lives under
    the hidden ``.tritonresnet/`` folder (Triton skips names it cannot load as
    models, and the operator only ever loads a model explicitly).
    """

    root: PurePosixPath

    @property
    def state(self) -> PurePosixPath:
        return self.root / ".tritonresnet"

    def engine_dir(self, engine_key: str) -> PurePosixPath:
        """A built artifact and its ``engine.json`` (the build result)."""
        return self.state / "engines" / engine_key

    @property
    def timing_cache_dir(self) -> PurePosixPath:
        return self.state / "timing-cache"

    @property
    def staging_dir(self) -> PurePosixPath:
        """Same volume as the models, so publishing is one rename."""
        return self.state / "staging"

    def model_dir(self, model: str) -> PurePosixPath:
        return self.root / model

    def version_dir(self, model: str, version: int) -> PurePosixPath:
        return self.root / model / str(version)

    def pinned_config(self, model: str, version: int) -> PurePosixPath:
        """Config that serves exactly one version; Triton loads it with
        ``--model-config-name`` (see :func:`pinned_config_name`)."""
        return self.root / model / "configs" / f"{pinned_config_name(version)}.pbtxt"

    def default_config(self, model: str) -> PurePosixPath:
        """The newest published version's config, for tools that read config.pbtxt."""
        return self.root / model / "config.pbtxt"


#: In every version folder: JSON naming the version key the version was published from.
VERSION_MARKER = "tritonresnet-version.json"
ENGINE_RESULT = "engine.json"


def pinned_config_name(version: int) -> str:
    return f"v{version}"


def plan_filename(compute_capability: str) -> str:
    """``8.6`` -> ``model.sm86.plan``: one file per GPU kind in a version."""
    return f"model.sm{compute_capability.replace('.', '')}.plan"


#: Every name :func:`plan_filename` gives.
PLAN_FILENAME_RE = re.compile(r"^model\.sm[0-9]+\.plan$")

ONNX_FILENAME = "model.onnx"


# -- the JSON result out --------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str  #: Triton datatype, e.g. FP32
    #: without the batch dimension; -1 is dynamic. In a publish result, the dims of the
    #: version's config: what Triton's model metadata reports (after a leading -1 when
    #: the version batches, i.e. its max_batch_size is above 0)
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SourceFile:
    """One file the builder fetched, as it hashed it."""

    #: the model file's own name (the last part of the URI), or an external-data
    #: location as the model names it, relative to the model
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Failure:
    kind: str  #: CamelCase reason, e.g. DigestMismatch, ObjectNotFound, InvalidOnnx
    message: str  #: one human sentence naming the field, file or object
    field: str = ""  #: the spec field at fault, e.g. spec.source.sha256


#: The version of :class:`ReferenceAnswers`' layout.
REFERENCE_SCHEME = "tritonresnet.io/reference/v1"


@dataclass(frozen=True)
class ReferenceAnswers:
    """onnxruntime's answers to the accuracy gate's fixed inputs, from an ``onnx`` build.

    The operator has no model bytes; with these it holds a served ``format: onnx`` version
    to ``spec.engine.accuracy`` during verification: it makes the same inputs (the gate's,
    from ``seed``, ``samples`` of them), sends them, and compares the served answers with
    these. Small by design (the result must fit :data:`MAX_RESULT_BYTES`): per sample the
    reference's top-5 classes and its values there, not whole outputs; so the max abs
    difference a verification reports is over those values. ``scheme`` versions this
    field on its own: an operator refuses none it does not know, it skips the comparison.
    """

    seed: int
    samples: int
    #: per sample: the reference's top-5 class indices of the first output, best first
    top5: tuple[tuple[int, ...], ...]
    #: per sample: the reference's values at those indices
    values: tuple[tuple[float, ...], ...]
    scheme: str = REFERENCE_SCHEME


def reference_from_dict(data: Any) -> ReferenceAnswers | None:
    """The :class:`ReferenceAnswers` of a result's (or the operator's annotation's) JSON; None without."""
    if not isinstance(data, dict):
        return None
    return ReferenceAnswers(
        seed=int(data["seed"]),
        samples=int(data["samples"]),
        top5=tuple(tuple(int(i) for i in row) for row in data["top5"]),
        values=tuple(tuple(float(v) for v in row) for row in data["values"]),
        scheme=str(data.get("scheme", "")),
    )


@dataclass(frozen=True)
class Result:
    """What one builder run reports. ``ok`` decides which fields are meaningful."""

    ok: bool
    phase: Literal["build", "publish"]
    exit_code: int = 0
    error: Failure | None = None
    # build and publish
    engine_key: str = ""
    source_sha256: str = ""
    #: every file fetched: the model first, then its external data by location
    source_files: tuple[SourceFile, ...] = ()
    inputs: tuple[Tensor, ...] = ()
    outputs: tuple[Tensor, ...] = ()
    # build
    format: str = ""
    artifact: str = ""  #: file name inside the engine folder
    artifact_bytes: int = 0
    compute_capability: str = ""  #: e.g. 8.6; empty for onnx
    #: "ampere_plus" when the plan runs on every GPU of compute capability 8.0 and up
    hardware_compatibility: str = ""
    tensorrt_version: str = ""
    #: onnx builds (and their publish): onnxruntime's answers for the verification's accuracy gate
    reference: ReferenceAnswers | None = None
    # publish
    model_name: str = ""
    version: int = 0
    version_key: str = ""
    files: tuple[str, ...] = ()
    pruned: tuple[int, ...] = ()
    #: after the publish and its clean-up: bytes of all files under the repository root,
    #: ``.tritonresnet`` included, each inode once (a version's hard links to its engine
    #: count once); 0 when not reported (a builder from before this field)
    repository_bytes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    contract: str = CONTRACT

    def to_json(self) -> str:
        # Unset fields (empty or zero) are left out: the message must stay small.
        data = {
            k: v
            for k, v in asdict(self).items()
            if k in ("ok", "phase") or v not in ("", (), [], {}, None, 0)
        }
        text = json.dumps(data, separators=(",", ":"), sort_keys=True)
        if len(text.encode()) > MAX_RESULT_BYTES:
            # Never let the kubelet cut the JSON in half: drop the bulky parts, the list
            # of source files last (a model saved with one file per tensor has hundreds;
            # the model's own digest stays in source_sha256).
            data.pop("files", None)
            data.pop("outputs", None)
            data["truncated"] = True
            text = json.dumps(data, separators=(",", ":"), sort_keys=True)
            if len(text.encode()) > MAX_RESULT_BYTES:
                data.pop("source_files", None)
                text = json.dumps(data, separators=(",", ":"), sort_keys=True)[:MAX_RESULT_BYTES]
        return text


class ContractError(ValueError):
    """A termination message that is not a result of a contract we know."""


def _tensors(items: Any) -> tuple[Tensor, ...]:
    return tuple(Tensor(name=t["name"], datatype=t["datatype"], shape=tuple(t["shape"])) for t in items or ())


def parse_result(text: str) -> Result:
    """Parse a termination message (or stdout's last line) into a :class:`Result`."""
    line = text.strip().splitlines()[-1] if text.strip() else ""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ContractError(f"builder result is not JSON: {line[:200]!r}") from exc
    if not isinstance(data, dict) or data.get("contract") != CONTRACT:
        raise ContractError(
            f"builder result has contract {data.get('contract') if isinstance(data, dict) else None!r}, "
            f"expected {CONTRACT!r}"
        )
    error = data.get("error")
    return Result(
        ok=bool(data["ok"]),
        phase=data["phase"],
        exit_code=int(data.get("exit_code", 0)),
        error=Failure(**error) if error else None,
        engine_key=data.get("engine_key", ""),
        source_sha256=data.get("source_sha256", ""),
        source_files=tuple(
            SourceFile(name=f["name"], sha256=f["sha256"], size=int(f["size"]))
            for f in data.get("source_files", ())
        ),
        inputs=_tensors(data.get("inputs")),
        outputs=_tensors(data.get("outputs")),
        format=data.get("format", ""),
        artifact=data.get("artifact", ""),
        artifact_bytes=int(data.get("artifact_bytes", 0)),
        compute_capability=data.get("compute_capability", ""),
        hardware_compatibility=data.get("hardware_compatibility", ""),
        tensorrt_version=data.get("tensorrt_version", ""),
        reference=reference_from_dict(data.get("reference")),
        model_name=data.get("model_name", ""),
        version=int(data.get("version", 0)),
        version_key=data.get("version_key", ""),
        files=tuple(data.get("files", ())),
        pruned=tuple(data.get("pruned", ())),
        repository_bytes=int(data.get("repository_bytes", 0)),
        seconds=dict(data.get("seconds", {})),
    )
