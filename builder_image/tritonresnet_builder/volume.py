"""File operations on the model-repository volume that keep it consistent.

Everything is assembled in a scratch folder under ``.tritonresnet/staging``
(the same volume as the models, so publishing is one ``rename``) and the
scratch folder goes away on every exit path, including the folders we had
to create for it: a run that fails on bad input leaves the volume as it found it.
A run that is killed cannot clean up, so each scratch folder holds a lock while
its run lives (:func:`scratch_in_use`), which tells a later run what is left over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
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


#: In every scratch folder, locked (flock) for as long as the run that made it lives.
SCRATCH_LOCK = ".in-use"


@contextlib.contextmanager
def scratch_dir(layout: RepositoryLayout, prefix: str) -> Iterator[Path]:
    """A private folder in staging, removed (with staging parents we created) on exit.

    The folder's :data:`SCRATCH_LOCK` stays locked until then; the kernel drops
    the lock when the process dies, however it dies, so a folder whose lock can
    be taken is a dead run's leftover.
    """
    staging = local(layout.staging_dir)
    created = _make_dirs(staging)
    path = Path(tempfile.mkdtemp(dir=staging, prefix=prefix))
    fd = -1
    try:
        fd = os.open(path / SCRATCH_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:  # the lock goes with the folder, even if removing it failed
            if fd >= 0:
                os.close(fd)
        _remove_if_empty(created)


def scratch_in_use(path: Path) -> bool:
    """Whether a live run holds this scratch folder (see :func:`scratch_dir`).

    A folder without the lock file is not in use: either its run died before
    making it (the caller only asks about folders older than any such moment)
    or it was left by a builder that predates the lock.
    """
    try:
        fd = os.open(path / SCRATCH_LOCK, os.O_RDWR)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock if we took it
    return False


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
def exclusive_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """An advisory lock (flock) on ``path``, exclusive unless ``shared``.

    Two uses: the per-model lock, so two publishers of one model take turns
    (correctness does not rest on it: a version folder appears by rename, which
    fails if the name is taken; it saves a wasted assembly); and the repository
    lock, shared by publishers while they read and link engines and exclusive
    while engine folders are removed (see :func:`remove_tree`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def repository_lock(layout: RepositoryLayout) -> Path:
    """The lock file of the whole repository ('~' keeps it apart from every model's lock)."""
    return local(layout.state) / "locks" / "~repository.lock"


def remove_tree(path: Path, trash: Path, *, pause: Callable[[], None] = lambda: None) -> bool:
    """Remove a folder in two steps: rename it to ``trash``, then delete it there.

    The rename is atomic, so the folder is whole or absent for every reader, and
    a crash during the slow delete leaves a whole folder in ``trash`` (a scratch
    folder, removed as a leftover later) rather than half a folder in place.
    Deleting unlinks names: a file hard-linked into a model version keeps its
    other name and its bytes. ``False`` if someone else moved ``path`` first.
    """
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    pause()
    shutil.rmtree(trash, ignore_errors=True)
    return True


def used_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (apparent size), each inode counted once.

    A version hard-links its engine's files, so counting names would report an
    artifact twice; counting (device, inode) pairs reports what the volume holds.
    Files that vanish during the walk (another run cleaning up) are skipped.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                info = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            inode = (info.st_dev, info.st_ino)
            if stat.S_ISREG(info.st_mode) and inode not in seen:
                seen.add(inode)
                total += info.st_size
    return total
