"""The ``publish`` phase: assemble one Triton model version from built engines.

Order of writes, so that Triton (which loads ``configs/v<N>.pbtxt`` pinned to
version N) never sees a partial version and a kill at any point is harmless:

1. assemble ``<N>/`` (plans or model.onnx, marker) in a scratch folder in staging;
2. write ``configs/v<N>.pbtxt`` (atomic; names only version N, absent until step 3);
3. ``rename`` the scratch ``<N>/`` to ``<model>/<N>`` (atomic; fails if N is taken,
   and the next N is tried);
4. rewrite ``config.pbtxt`` if N is the newest version;
5. prune old versions: rename out of the model folder first, then delete;
6. remove engine folders no version of any model in the repository uses any
   more, and leftovers of dead runs in staging (:func:`collect_garbage`).

A version carries a marker naming its version key and the engine keys it was
assembled from; publishing a key again returns the version it already has.

Engines and versions share a volume with every other TritonResNet that uses it
(each under its own model name), so steps 1-5 hold the repository lock shared
(no engine folder disappears while it is read and linked) and step 6 holds it
exclusive.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tritonclient.grpc.model_config_pb2 import ModelConfig

from tritonresnet_builder import triton_config
from tritonresnet_builder.build import ENGINE_METADATA, KEY_RE, BuiltModelInfo, existing_engine
from tritonresnet_builder.contract import (
    CONTRACT,
    MODEL_NAME_RE,
    ONNX_FILENAME,
    VERSION_MARKER,
    PublishArgs,
    RepositoryLayout,
    Result,
)
from tritonresnet_builder.failures import bad_input, usage
from tritonresnet_builder.volume import (
    exclusive_lock,
    fsync_dir,
    layout_of,
    link_or_copy,
    local,
    remove_tree,
    repository_lock,
    require_repository,
    scratch_dir,
    scratch_in_use,
    used_bytes,
    write_atomic,
)

log = logging.getLogger(__name__)

MODEL_NAME_FIELD = "spec.model.name"

#: An engine folder no retained version uses is kept while it is younger than this
#: (by the folder's mtime, set when its build installed it), and so is a staging
#: folder of a run that died: a build for another resource, or for this resource's
#: next spec, may have just finished and its publish not have run yet. It bounds
#: how long a freed artifact can linger, not what is kept for retained versions.
GRACE_SECONDS = 30 * 60
#: Any valid key: the layout names engine folders, and their parent is what is listed.
_ANY_KEY = "any"


@dataclass(frozen=True)
class Engine:
    key: str
    folder: Path
    result: Result
    #: what it was built for (0: batch 1, served without batching); None: not recorded
    max_batch_size: int | None


def check_model_name(name: str) -> None:
    if not MODEL_NAME_RE.match(name) or name in (".", ".."):
        raise bad_input(
            "InvalidModelName",
            f"model name {name!r} is not a safe folder name (letters, digits, "
            "'_', '.', '-', starting with a letter or digit, at most 63)",
            MODEL_NAME_FIELD,
        )


def check_args(args: PublishArgs) -> None:
    check_model_name(args.model_name)
    for key in (args.version_key, *args.engine_keys):
        if not KEY_RE.match(key):
            raise usage("InvalidArgument", f"key {key!r} is not a safe folder name")
    if not args.engine_keys:
        raise usage("InvalidArgument", "no engine keys to publish")
    if (
        args.max_batch_size < 0
        or args.instance_count < 1
        or args.keep_versions < 1
        or args.max_queue_delay_us < 0
    ):
        raise usage(
            "InvalidArgument",
            "max batch size and queue delay must be at least 0, instance count and versions kept at least 1",
        )
    require_repository(args.repository)


def load_engines(layout: RepositoryLayout, keys: tuple[str, ...]) -> list[Engine]:
    engines = []
    for key in keys:
        folder = local(layout.engine_dir(key))
        result = existing_engine(folder)
        if result is None:
            raise bad_input(
                "EngineMissing", f"engine {key} has not been built (no valid engine.json in {folder})"
            )
        info = BuiltModelInfo.read(folder)
        engines.append(Engine(key, folder, result, info.max_batch_size if info else None))
    first = engines[0].result
    for engine in engines[1:]:
        if engine.result.format != first.format:
            raise bad_input(
                "EnginesDisagree",
                f"engines {engines[0].key} and {engine.key} have different formats "
                f"({first.format}, {engine.result.format})",
            )
        if (engine.result.inputs, engine.result.outputs) != (first.inputs, first.outputs):
            raise bad_input(
                "EnginesDisagree",
                f"engines {engines[0].key} and {engine.key} disagree on the model's "
                "inputs and outputs (built from different models?)",
            )
    if first.format == "tensorrt":
        ccs = [e.result.compute_capability for e in engines]
        if len(set(ccs)) != len(ccs):
            raise bad_input(
                "EnginesDisagree", f"two engines target the same compute capability: {sorted(ccs)}"
            )
    return engines


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and p.name[0] != "0"
    )


def find_version(model_dir: Path, version_key: str) -> int | None:
    for version in existing_versions(model_dir):
        marker = model_dir / str(version) / VERSION_MARKER
        with contextlib.suppress(OSError, ValueError):
            if json.loads(marker.read_text()).get("version_key") == version_key:
                return version
    return None


def version_files(engines: list[Engine]) -> dict[str, Path]:
    """File name in the version folder -> the engine file it comes from."""
    if engines[0].result.format == "tensorrt":
        return {e.result.artifact: e.folder / e.result.artifact for e in engines}
    folder = engines[0].folder
    return {
        str(p.relative_to(folder)): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ENGINE_METADATA
    }


def version_config(args: PublishArgs, engines: list[Engine], version: int) -> ModelConfig:
    first = engines[0].result
    # Every artifact runs batch 1, so max batch 0 (no batching) serves any of them; a
    # batching version gets no more than its smallest engine was built for, and an
    # engine built for 0 has a batch-1 profile only, so it makes the version unbatched.
    built = [e.max_batch_size for e in engines if e.max_batch_size is not None]
    built_max = min(built, default=args.max_batch_size)
    max_batch = min(args.max_batch_size, built_max)
    if max_batch < args.max_batch_size:
        log.warning(
            "serving max batch %d instead of %d: the engines were built for at most %d%s",
            max_batch,
            args.max_batch_size,
            built_max,
            " (0: batch 1 only, without batching)" if max_batch == 0 else "",
        )
    serving = triton_config.ServingSettings(
        max_batch_size=max_batch,
        max_queue_delay_us=args.max_queue_delay_us,
        preferred_batch_sizes=args.preferred_batch_sizes,
        instance_count=args.instance_count,
        instance_kind=args.instance_kind,
    )
    if first.format == "tensorrt":
        plans = {e.result.compute_capability: e.result.artifact for e in engines}
        default = plans[sorted(plans)[0]]
        # A GPU missing from cc_model_filenames loads the default: with an AMPERE_PLUS plan, that
        # is the plan every Ampere or newer GPU (a 9.0 joining later, say) can run.
        default = next(
            (e.result.artifact for e in engines if e.result.hardware_compatibility == "ampere_plus"), default
        )
    else:
        plans, default = {}, ONNX_FILENAME
    return triton_config.model_config(
        name=args.model_name,
        fmt="tensorrt" if first.format == "tensorrt" else "onnx",
        inputs=first.inputs,
        outputs=first.outputs,
        serving=serving,
        version=version,
        plan_files=plans,
        default_model_filename=default,
    )


def config_text(args: PublishArgs, engines: list[Engine], version: int) -> str:
    return triton_config.render(version_config(args, engines, version))


def _assemble(target: Path, args: PublishArgs, engines: list[Engine]) -> list[str]:
    target.mkdir()
    names = []
    for name, source in version_files(engines).items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(source, target / name)
        names.append(name)
    marker = {
        "contract": CONTRACT,
        "model_name": args.model_name,
        "version_key": args.version_key,
        "engine_keys": list(args.engine_keys),
        "files": names,
        "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (target / VERSION_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    fsync_dir(target)
    return names


def _pause_for_tests(point: str) -> None:
    """Hold still at a named point so a test can kill the process there (off unless the variable is set)."""
    if os.environ.get("TRITONRESNET_BUILDER_PAUSE_AT") == point:
        log.info("pausing at %s", point)
        print(f"paused at {point}", flush=True)
        time.sleep(3600)


def _place(
    scratch: Path, layout: RepositoryLayout, args: PublishArgs, engines: list[Engine]
) -> tuple[int, list[str]]:
    """Assemble and rename a new version in; returns its number and file names."""
    model_dir = local(layout.model_dir(args.model_name))
    model_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        version = max(existing_versions(model_dir), default=0) + 1
        assembled = scratch / str(version)
        names = _assemble(assembled, args, engines)
        _pause_for_tests("assembled")
        write_atomic(
            local(layout.pinned_config(args.model_name, version)), config_text(args, engines, version)
        )
        _pause_for_tests("pinned-config")
        try:
            os.rename(assembled, model_dir / str(version))
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            log.info("version %d appeared meanwhile; trying the next number", version)
            shutil.rmtree(assembled, ignore_errors=True)
            continue
        fsync_dir(model_dir)
        return version, names
    raise RuntimeError("could not claim a version number after 100 attempts")


def prune(layout: RepositoryLayout, args: PublishArgs, scratch: Path) -> tuple[int, ...]:
    """Drop versions beyond ``keep_versions``; never protected ones, never the newest."""
    model_dir = local(layout.model_dir(args.model_name))
    versions = existing_versions(model_dir)
    keep = set(versions[-args.keep_versions :]) | set(args.protect_versions) | set(versions[-1:])
    pruned = []
    for version in versions:
        if version in keep:
            continue
        doomed = scratch / f"pruned-{version}"
        os.rename(model_dir / str(version), doomed)  # gone from Triton's view in one step
        local(layout.pinned_config(args.model_name, version)).unlink(missing_ok=True)
        shutil.rmtree(doomed, ignore_errors=True)
        pruned.append(version)
    if pruned:
        log.info("pruned versions %s of %s", pruned, args.model_name)
    return tuple(pruned)


@dataclass(frozen=True)
class EngineUse:
    """What the versions on the volume need of ``.tritonresnet/engines``."""

    keys: frozenset[str]  #: engine keys named by version markers
    #: files of versions whose marker names no engine keys (unreadable, or not ours):
    #: an engine folder sharing one of these inodes is taken as used by them
    inodes: frozenset[tuple[int, int]]


def _marker_engine_keys(version_dir: Path) -> list[str] | None:
    try:
        keys = json.loads((version_dir / VERSION_MARKER).read_text()).get("engine_keys")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        return None
    return list(keys)


def _inodes(folder: Path) -> set[tuple[int, int]]:
    found = set()
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                found.add((info.st_dev, info.st_ino))
    return found


def engine_use(root: Path) -> EngineUse:
    """The engines every version of every model in the repository was published from.

    Several TritonResNets may share a volume, so this reads all model folders,
    not just the one being published; what is left after pruning is what each
    resource retains.
    """
    keys: set[str] = set()
    inodes: set[tuple[int, int]] = set()
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or not MODEL_NAME_RE.match(model_dir.name):
            continue
        for version in existing_versions(model_dir):
            version_dir = model_dir / str(version)
            named = _marker_engine_keys(version_dir)
            if named is None:
                inodes |= _inodes(version_dir)
            else:
                keys.update(named)
    return EngineUse(frozenset(keys), frozenset(inodes))


def _age(path: Path, now: float) -> float:
    return now - path.lstat().st_mtime


def remove_unused_engines(
    layout: RepositoryLayout, args: PublishArgs, scratch: Path, now: float
) -> tuple[str, ...]:
    """Remove engine folders no retained version uses, except this publish's and young ones.

    The caller holds the repository lock exclusively: no publisher is between
    reading an engine and linking it into a version. Each folder is renamed into
    our scratch folder before it is deleted, so nothing sees half an engine.
    """
    engines_dir = local(layout.engine_dir(_ANY_KEY)).parent
    if not engines_dir.is_dir():
        return ()
    use = engine_use(Path(args.repository))
    removed = []
    for folder in sorted(engines_dir.iterdir()):
        key = folder.name
        if not folder.is_dir() or not KEY_RE.match(key):
            continue  # not something a build installed; leave it to whoever put it there
        if key in args.engine_keys or key in use.keys:
            continue
        try:
            young = _age(folder, now) < GRACE_SECONDS
        except FileNotFoundError:
            continue  # a build discarded it meanwhile
        if young:
            log.info("keeping unused engine %s for now: younger than %d s", key, GRACE_SECONDS)
            continue
        if use.inodes and _inodes(folder) & use.inodes:
            continue
        if remove_tree(folder, scratch / f"engine~{key}", pause=lambda: _pause_for_tests("engine-trashed")):
            removed.append(key)
    if removed:
        log.info("removed engines no retained version uses: %s", removed)
    return tuple(removed)


def remove_dead_staging(layout: RepositoryLayout, ours: Path, now: float) -> None:
    """Staging folders of builds and publishes that died (any model), once older than the grace period.

    A live run holds its folder's lock (volume.scratch_in_use), so a long build is
    never taken for a dead one however old its folder is.
    """
    for entry in sorted(local(layout.staging_dir).iterdir()):
        if entry == ours:
            continue
        try:
            if _age(entry, now) < GRACE_SECONDS or scratch_in_use(entry):
                continue
        except FileNotFoundError:
            continue  # its run finished meanwhile
        log.info("removing %s, left in staging by a run that died", entry.name)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def collect_garbage(layout: RepositoryLayout, args: PublishArgs, scratch: Path) -> tuple[str, ...]:
    """Step 6. A failure is logged, not raised: the version is published, the next publish retries."""
    now = time.time()
    try:
        removed = remove_unused_engines(layout, args, scratch, now)
        remove_dead_staging(layout, scratch, now)
    except OSError as exc:
        log.warning("could not finish removing unused files (the next publish tries again): %s", exc)
        return ()
    return removed


def scratch_prefix(model_name: str) -> str:
    # '~' cannot occur in a model name, so one model's prefix never matches another's.
    return f"publish~{model_name}~"


def remove_stale_scratch(ours: Path, model_name: str) -> None:
    """Scratch folders of publishers of this model killed earlier (we hold the model's lock)."""
    for folder in ours.parent.glob(scratch_prefix(model_name) + "*"):
        if folder != ours:
            log.info("removing %s left by an interrupted publish", folder.name)
            shutil.rmtree(folder, ignore_errors=True)


def _publish_locked(
    args: PublishArgs, layout: RepositoryLayout, scratch: Path
) -> tuple[int, list[str], list[Engine], tuple[int, ...]]:
    """Steps 1-5, under the model's lock and the repository lock (shared)."""
    model_dir = local(layout.model_dir(args.model_name))
    # Read again under the lock: the engines were checked before it was taken, and
    # another resource's clean-up may have removed one since (then this is EngineMissing).
    engines = load_engines(layout, args.engine_keys)
    version = find_version(model_dir, args.version_key)
    if version is not None:
        log.info("version key %s is already published as version %d", args.version_key, version)
        names = sorted(
            str(p.relative_to(model_dir / str(version)))
            for p in (model_dir / str(version)).rglob("*")
            if p.is_file() and p.name != VERSION_MARKER
        )
        pinned = local(layout.pinned_config(args.model_name, version))
        if not pinned.is_file():  # written before the version appeared; restore it if someone removed it
            write_atomic(pinned, config_text(args, engines, version))
    else:
        version, names = _place(scratch, layout, args, engines)
        log.info("published %s version %d from engines %s", args.model_name, version, list(args.engine_keys))
    if version == max(existing_versions(model_dir)):
        write_atomic(local(layout.default_config(args.model_name)), config_text(args, engines, version))
    pruned = prune(layout, args, scratch)
    return version, names, engines, pruned


def publish(args: PublishArgs) -> Result:
    started = time.monotonic()
    check_args(args)
    layout = layout_of(args.repository)
    # Refuse missing or mismatched engines before any lock or scratch folder is made on the volume.
    load_engines(layout, args.engine_keys)
    lock = local(layout.state) / "locks" / f"{args.model_name}.lock"

    with exclusive_lock(lock), scratch_dir(layout, scratch_prefix(args.model_name)) as scratch:
        remove_stale_scratch(scratch, args.model_name)
        with exclusive_lock(repository_lock(layout), shared=True):
            version, names, engines, pruned = _publish_locked(args, layout, scratch)
        # Taken after the shared lock is let go (flock would not upgrade it atomically);
        # this version's marker is on the volume by now, so its engines count as used.
        with exclusive_lock(repository_lock(layout)):
            collect_garbage(layout, args, scratch)

    root = Path(args.repository)
    files = [
        str(local(layout.version_dir(args.model_name, version)).relative_to(root) / n) for n in sorted(names)
    ]
    files.append(str(local(layout.pinned_config(args.model_name, version)).relative_to(root)))
    first = engines[0].result
    # The tensors as the version serves them (its config's dims), which is what the
    # operator compares Triton's model metadata with; the engines' are the model's.
    inputs, outputs = triton_config.served_tensors(version_config(args, engines, version))
    return Result(
        ok=True,
        phase="publish",
        engine_key=",".join(args.engine_keys),
        source_sha256=first.source_sha256,
        inputs=inputs,
        outputs=outputs,
        format=first.format,
        # An onnx version has one engine: its reference answers go on to the verification.
        reference=first.reference if first.format == "onnx" else None,
        model_name=args.model_name,
        version=version,
        version_key=args.version_key,
        files=tuple(files),
        pruned=pruned,
        # measured once our scratch folder is gone, so it is what stays on the volume
        repository_bytes=used_bytes(root),
        seconds={"publish": round(time.monotonic() - started, 3)},
    )
