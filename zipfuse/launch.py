"""What a mount checks before anything is mounted, in the command's process.

``prepare`` does everything that can fail with a useful message before anything is mounted
(archive readable and parseable, mountpoint usable, /dev/fuse present). The daemon (``spawn``)
is forked before this module is even imported, so the daemon's imports overlap this work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import stat
from collections.abc import Iterator
from typing import Any

from . import indexcache, oldversions, registry
from .errors import ZipfuseError
from .zipformat import MAX_DEPTH, CentralDirectory, ZipFormatError, read_central_directory


@dataclasses.dataclass
class Config:
    archive: str
    mountpoint: str
    read_only: bool = False
    spill_dir: str | None = None
    fuse_options: tuple[str, ...] = ()
    level: int = 6
    foreground: bool = False
    debug: bool = False
    restore: bool = False  # mount with an interrupted session's changes instead of committing
    nonempty: bool = False  # allow mounting over a directory that has files (they are hidden)


@dataclasses.dataclass
class Prepared:
    config: Config
    archive_fd: int | None
    cd: CentralDirectory | None
    notes: list[str] = dataclasses.field(default_factory=list)  # what recovery did
    tree: Any = None  # the tree's state from the archive's index (indexcache), if it matched
    index_path: str | None = None  # where to store the index the daemon builds (no match)
    index_key: indexcache.Key | None = None


def prepare(config: Config) -> Prepared:
    """Validate and open everything in the caller's process; raise ZipfuseError with why not."""
    # one identity per archive: a symlink to it shares its lock, spill area and registry key,
    # and the commit replaces the real file (the symlink stays a symlink)
    config.archive = os.path.realpath(config.archive)
    config.mountpoint = os.path.abspath(config.mountpoint)
    if not os.path.exists("/dev/fuse"):
        raise ZipfuseError("/dev/fuse is missing: FUSE is not available on this machine")
    if not os.path.isdir(config.mountpoint):
        what = "does not exist" if not os.path.exists(config.mountpoint) else "is not a directory"
        raise ZipfuseError(f"mountpoint {config.mountpoint} {what}")
    if os.path.ismount(config.mountpoint) or config.mountpoint in registry.fuse_mounts():
        raise ZipfuseError(f"mountpoint {config.mountpoint} is already a mount point (busy)")
    if not config.nonempty and _has_entries(config.mountpoint):
        raise ZipfuseError(
            f"mountpoint {config.mountpoint} is not empty (the mount would hide its files); "
            "use an empty directory, or --nonempty to mount over it anyway"
        )
    writers = [
        r
        for r in registry.records()
        if not r["dead"] and _same_archive(r["archive"], config.archive) and not r["read_only"]
    ]
    if writers and not config.read_only:
        raise ZipfuseError(
            f"{config.archive} is already mounted read-write at {writers[0]['mountpoint']}"
        )
    notes: list[str] = []
    if not config.read_only:
        parent = os.path.dirname(config.archive)
        if not os.path.isdir(parent):
            raise ZipfuseError(f"directory {parent} for the archive does not exist")
        notes = _recover_first(config)
    if not os.path.exists(config.archive):
        if config.read_only:
            raise ZipfuseError(f"archive {config.archive} does not exist")
        return Prepared(config, None, None, notes)
    kind = os.stat(config.archive).st_mode
    if not stat.S_ISREG(kind):
        what = "a directory" if stat.S_ISDIR(kind) else "not a regular file"
        raise ZipfuseError(f"archive {config.archive} is {what}")
    try:
        fd = oldversions.open_current(config.archive)  # with the readers' shared lock
    except OSError as exc:
        raise ZipfuseError(f"cannot open {config.archive}: {exc.strerror}") from None
    size = os.fstat(fd).st_size  # cannot fail on an open descriptor
    oldversions.collect(config.archive)
    index_path = indexcache.path_for(config.spill_dir, config.archive)
    with no_gc():
        hit = None if index_path is None else indexcache.load(index_path, fd, size, MAX_DEPTH)
    if hit is not None:
        cd, tree = hit
        cd.detach(fd)
        return Prepared(config, fd, cd, notes, tree=tree)
    try:
        with no_gc():
            cd = read_central_directory(fd, size, keep_names=True, max_depth=MAX_DEPTH)
    except ZipFormatError as exc:
        os.close(fd)
        raise ZipfuseError(f"{config.archive}: {exc}") from None
    key = None if index_path is None else indexcache.key_for(fd, cd, MAX_DEPTH)
    cd.detach(fd)  # free it before the fork: records are re-read when listed
    return Prepared(config, fd, cd, notes, index_path=index_path, index_key=key)


def _same_archive(a: str, b: str) -> bool:
    """Same path, or the same file (device and inode) reached through another name."""
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _has_entries(path: str) -> bool:
    """Whether the directory lists anything (unreadable counts as empty: FUSE will tell)."""
    try:
        with os.scandir(path) as it:
            return next(it, None) is not None
    except OSError:
        return False


def _recover_first(config: Config) -> list[str]:
    """Before a read-write mount: take the lock, and finish an interrupted session if any."""
    from . import recovery  # the commit path: a read-only mount never imports it
    from .lock import ArchiveLock

    lock = ArchiveLock(config.archive)
    lock.acquire()
    try:
        if config.restore and recovery.pending(config.archive, config.spill_dir):
            return ["changes of an interrupted session are restored into the mount (not yet "
                    "committed)"]  # fmt: skip
        note = recovery.recover(config.archive, config.spill_dir, level=config.level)
        return [note] if note else []
    finally:
        lock.release()


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Building 100k long-lived objects triggers many useless cyclic-gc passes; skip them."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
