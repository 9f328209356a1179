"""The ``build`` phase: fetch, validate and build one artifact for one GPU kind.

The artifact lands in ``.tritonresnet/engines/<engine-key>/`` with its
``engine.json`` (this run's :class:`Result`) in one rename, so the engine folder
either holds a complete, described artifact or does not exist. A second run
for the same key finds it and reports it without doing the work again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath

from tritonresnet_builder import accuracy, onnx_model, tensorrt_api, tensorrt_engine
from tritonresnet_builder.contract import (
    ENGINE_RESULT,
    ONNX_FILENAME,
    PLAN_FILENAME_RE,
    VERSION_MARKER,
    BuildArgs,
    ContractError,
    ReferenceAnswers,
    RepositoryLayout,
    Result,
    SourceFile,
    Tensor,
    parse_result,
)
from tritonresnet_builder.failures import bad_input, usage
from tritonresnet_builder.fetch import SourceFetcher
from tritonresnet_builder.volume import (
    fsync_dir,
    layout_of,
    local,
    require_repository,
    scratch_dir,
    write_atomic,
)

log = logging.getLogger(__name__)

#: Next to engine.json: what publish needs beyond the contract's Result.
MODEL_INFO = "model-info.json"
#: Files of an engine folder that describe it rather than serve it.
ENGINE_METADATA = frozenset({ENGINE_RESULT, MODEL_INFO})
KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


@dataclass(frozen=True)
class BuiltModelInfo:
    #: the batch the artifact was built for (the profile's max); 0: built to be served
    #: without batching, its profile batch 1 only
    max_batch_size: int
    model_max_batch: int  #: 0: the model's batch dimension is dynamic
    opset: int
    producer: str
    external_data: tuple[str, ...]

    @staticmethod
    def read(engine_dir: Path) -> BuiltModelInfo | None:
        path = engine_dir / MODEL_INFO
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return BuiltModelInfo(
            max_batch_size=int(data["max_batch_size"]),
            model_max_batch=int(data["model_max_batch"]),
            opset=int(data.get("opset", 0)),
            producer=str(data.get("producer", "")),
            external_data=tuple(data.get("external_data", ())),
        )


def check_args(args: BuildArgs) -> None:
    """Refuse arguments no operator should render (USAGE) and int8 (BAD_INPUT)."""
    if not KEY_RE.match(args.engine_key):
        raise usage("InvalidArgument", f"engine key {args.engine_key!r} is not a safe folder name")
    engine = args.engine
    if engine.max_batch_size < 0:
        raise usage(
            "InvalidArgument",
            f"max batch size {engine.max_batch_size} is below 0",
            "spec.engine.maxBatchSize",
        )
    if not 1 <= engine.optimum_batch() <= engine.largest_batch():
        raise usage(
            "InvalidArgument",
            f"optimum batch {engine.optimum_batch()} is outside 1..{engine.largest_batch()}",
            "spec.engine.optBatchSize",
        )
    if engine.workspace_mib < 1:
        raise usage(
            "InvalidArgument", f"workspace {engine.workspace_mib} MiB is below 1", "spec.engine.workspaceMiB"
        )
    if engine.format == "tensorrt":
        tensorrt_engine.refuse_uncalibrated(engine.precision)
    require_repository(args.repository)


def refuse_colliding_locations(locations: tuple[str, ...], model_name: str) -> None:
    """Refuse external data whose file would replace another file of the build.

    The data files land next to the model in the engine folder and, for onnx, in
    the version folder. A location named like the model (``model.onnx``, the
    name the model is kept under, or the model's own file name) would make the
    fetch overwrite the graph with whatever object has that name: a different
    model served under the pin of this one. The builder's own files would
    overwrite or hide the data, and a location that is another one's folder
    cannot be written at all. ``locations`` are normalised (onnx_model).
    """
    own = {ONNX_FILENAME, model_name}
    ours = {*ENGINE_METADATA, VERSION_MARKER}
    folders = {parent for name in locations for parent in PurePosixPath(name).parents} - {PurePosixPath(".")}
    for location in locations:
        parts = location.split("/")
        theirs = [part for part in parts if part in ours or PLAN_FILENAME_RE.match(part)]
        what = ""
        if parts[0] in own:
            names = " and ".join(sorted(own))
            what = f"the model's own file name ({names}); fetching it would replace the graph"
        elif theirs:
            # publish leaves the metadata names out of a version wherever they are
            what = f"a file the builder writes next to the model ({theirs[0]})"
        elif PurePosixPath(location) in folders:
            what = "a folder of another external-data location"
        if what:
            raise bad_input(
                "ExternalDataCollision",
                f"the model keeps tensor data in {location!r}, which collides with {what}; "
                "save the model with another external-data location",
                onnx_model.SOURCE_FIELD,
            )


def existing_engine(engine_dir: Path) -> Result | None:
    """The result of an earlier complete build of this key, if there is one."""
    path = engine_dir / ENGINE_RESULT
    if not path.is_file():
        return None
    try:
        result = parse_result(path.read_text())
    except (ContractError, KeyError, ValueError, TypeError):
        return None
    if not result.ok or not (engine_dir / result.artifact).is_file():
        return None
    return result


def _discard(engine_dir: Path, layout: RepositoryLayout) -> None:
    """Move a damaged engine folder out of the way (renamed first, so readers never see half of it)."""
    graveyard = local(layout.staging_dir) / f"discarded-{engine_dir.name}-{os.getpid()}"
    graveyard.parent.mkdir(parents=True, exist_ok=True)
    os.rename(engine_dir, graveyard)
    shutil.rmtree(graveyard, ignore_errors=True)


def _install(out: Path, engine_dir: Path) -> Result | None:
    """Rename the finished folder into place; another builder's result if it got there first."""
    engine_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(out, engine_dir)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        return existing_engine(engine_dir)
    fsync_dir(engine_dir.parent)
    return None


def _reference(model: Path, inputs: tuple[Tensor, ...], largest_batch: int) -> ReferenceAnswers | None:
    """onnxruntime's answers for the operator's accuracy gate at verification (it has no model
    bytes). Best effort: a model onnxruntime on CPU cannot run here still builds, without a
    reference (the verification then says it compared nothing)."""
    try:
        return accuracy.reference(model, inputs, largest_batch)
    # Inputs the gate cannot make, no onnxruntime, or onnxruntime's own errors (no common type).
    except Exception as error:
        log.warning("no reference answers for the accuracy gate at verification: %s", error)
        return None


def build(args: BuildArgs) -> Result:
    started = time.monotonic()
    check_args(args)
    layout = layout_of(args.repository)
    engine_dir = local(layout.engine_dir(args.engine_key))

    previous = existing_engine(engine_dir)
    if previous is not None:
        log.info("engine %s is already built (%s); nothing to do", args.engine_key, previous.artifact)
        # Fresh again: a publish's clean-up keeps engines younger than its grace period, and this
        # one is about to be published (another resource's publish must not remove it meanwhile).
        os.utime(engine_dir)
        return replace(previous, seconds={"reused": round(time.monotonic() - started, 3)})
    if engine_dir.exists():
        log.warning("engine folder %s has no valid %s; building it again", engine_dir, ENGINE_RESULT)
        _discard(engine_dir, layout)

    fetcher = SourceFetcher(args.source)  # refuses a malformed URI or pin before any I/O
    engine = args.engine
    if engine.format == "tensorrt":
        # Fail on a node without TensorRT or a GPU before spending a download on it.
        tensorrt_api.import_tensorrt()
        tensorrt_engine.require_gpu()

    seconds: dict[str, float] = {}
    with scratch_dir(layout, f"build-{args.engine_key}-") as scratch:
        out = scratch / "engine"
        out.mkdir()
        model_path = out / ONNX_FILENAME
        mark = time.monotonic()
        fetched = fetcher.fetch_model(model_path)
        external = onnx_model.external_data_files(onnx_model.load_graph(model_path))
        refuse_colliding_locations(external, fetcher.model_name)
        fetcher.refuse_unused_pins(external)
        files = [SourceFile(fetcher.model_name, fetched.sha256, fetched.size)]
        for name in external:
            data = fetcher.fetch_sibling(name, out / name)
            files.append(SourceFile(name, data.sha256, data.size))
        seconds["fetch"] = round(time.monotonic() - mark, 3)

        mark = time.monotonic()
        info = onnx_model.inspect(model_path, engine.format)
        seconds["validate"] = round(time.monotonic() - mark, 3)
        max_batch = info.max_batch(engine.max_batch_size)
        opt_batch = min(engine.optimum_batch(), max(1, max_batch))
        log.info(
            "model: opset %d, %s; inputs %s; outputs %s; max batch %d",
            info.opset,
            info.producer or "?",
            [asdict(t) for t in info.inputs],
            [asdict(t) for t in info.outputs],
            max_batch,
        )

        result = Result(
            ok=True,
            phase="build",
            engine_key=args.engine_key,
            source_sha256=fetched.sha256,
            source_files=tuple(files),
            inputs=info.inputs,
            outputs=info.outputs,
            format=engine.format,
        )
        if engine.format == "tensorrt":
            mark = time.monotonic()
            plan = tensorrt_engine.build_plan(
                tensorrt_engine.PlanRequest(
                    onnx_path=model_path,
                    out_dir=out,
                    timing_cache_dir=local(layout.timing_cache_dir),
                    precision=engine.precision,
                    max_batch_size=max_batch,
                    opt_batch_size=opt_batch,
                    workspace_mib=engine.workspace_mib,
                    hardware_compatibility=engine.hardware_compatibility,
                )
            )
            seconds["build"] = round(time.monotonic() - mark, 3)
            mark = time.monotonic()
            # Before the engine folder exists: a plan outside the tolerance is never published.
            agreement = accuracy.check(
                model_path,
                plan.path,
                info.inputs,
                engine.accuracy,
                engine.precision,
                tensorrt_engine.run_plan,  # looked up here, so a test can put a stand-in in its place
                max(1, max_batch),
            )
            seconds["accuracy"] = round(time.monotonic() - mark, 3)
            log.info(
                "accuracy: top-5 agreement %.1f%%, max abs difference %.4g on %d fixed inputs",
                agreement.top5_agreement_percent,
                agreement.max_abs_difference,
                agreement.samples,
            )
            for name in (ONNX_FILENAME, *external):  # the plan is self-contained
                (out / name).unlink()
            result = replace(
                result,
                artifact=plan.path.name,
                artifact_bytes=plan.size,
                compute_capability=plan.compute_capability,
                hardware_compatibility=""
                if plan.hardware_compatibility == "none"
                else plan.hardware_compatibility,
                tensorrt_version=plan.tensorrt_version,
            )
        else:
            size = model_path.stat().st_size + sum((out / name).stat().st_size for name in external)
            mark = time.monotonic()
            reference = _reference(model_path, info.inputs, max(1, max_batch))
            seconds["reference"] = round(time.monotonic() - mark, 3)
            result = replace(result, artifact=ONNX_FILENAME, artifact_bytes=size, reference=reference)

        seconds["total"] = round(time.monotonic() - started, 3)
        result = replace(result, seconds=seconds)
        built = BuiltModelInfo(
            max_batch_size=max_batch,
            model_max_batch=info.model_max_batch,
            opset=info.opset,
            producer=info.producer,
            external_data=external,
        )
        write_atomic(out / MODEL_INFO, json.dumps(asdict(built), sort_keys=True))
        write_atomic(out / ENGINE_RESULT, result.to_json())
        fsync_dir(out)
        winner = _install(out, engine_dir)
        if winner is not None:
            log.info("another builder installed engine %s first; reporting its result", args.engine_key)
            return winner
    log.info("engine %s installed at %s", args.engine_key, engine_dir)
    return result
