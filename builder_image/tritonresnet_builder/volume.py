"""File operations on the model-repository volume that keep it consistent.

Everything is assembled in a scratch folder under ``.tritonresnet/staging``
(the same volume as the models, so publishing is one ``rename``) and the
scratch folder goes away on every exit path, including the folders we had
to create for it: a run that fails on bad input leaves the volume as it found it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tritonresnet_builder.contract import RepositoryLayout
from tritonresnet_builder.failures import bad_input


def local(path: object) -> Path:
    """A contract path (PurePosixPath) as a local one."""
    return Path(str(path))


def require_repository(repository: str) -> None:
    """Refuse to run on a volume that is not there, before anything is created on it."""
    if not Path(repository).is_dir():
        raise bad_input(
            "RepositoryMissing",
            f"the model repository {repository} is not a folder (is the volume mounted?)",
        )


def layout_of(repository: str | Path) -> RepositoryLayout:
    from pathlib import PurePosixPath

    return RepositoryLayout(PurePosixPath(str(repository)))


def _make_dirs(path: Path) -> list[Path]:
    """mkdir -p, returning the folders it created (deepest last)."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
    return list(reversed(missing))


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError as exc:  # not empty (another run uses it) or already gone
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EBUSY):
                raise
            return


@contextlib.contextmanager
def scratch_dir(layout: RepositoryLayout, prefix: str) -> Iterator[Path]:
    """A private folder in staging, removed (with staging parents we created) on exit."""
    staging = local(layout.staging_dir)
    created = _make_dirs(staging)
    path = Path(tempfile.mkdtemp(dir=staging, prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        _remove_if_empty(created)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | memoryview | str) -> int:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half of one.

    The bytes go to a temporary name in the same folder (so the final step is a
    rename within one file system), are flushed to disk, then renamed over
    ``path``; the folder is synced so the rename survives a crash too. A failure
    leaves no temporary behind. Returns the number of bytes written.
    """
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return memoryview(payload).nbytes


def link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link an immutable engine file into a version (no second copy), else copy it."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An advisory lock so two publishers of one model take turns.

    Correctness does not rest on it (a version folder appears by rename, which
    fails if the name is taken); it only saves a wasted assembly.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
