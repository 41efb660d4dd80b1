"""The spill area: one directory per mount holding the full bytes of every dirty file.

Modified data lives here on disk, never only in RAM. The default place is under $TMPDIR (node
local on most HPC systems), so writing into a mount costs no inodes in a quota'd home.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
import subprocess
import tempfile
import time

from . import registry
from .private import checked_existing, create_file, private_dir, user_root

log = logging.getLogger(__name__)
WHAT = "spill directory"
HINT = "use --spill-dir with a directory of your own"


def default_spill_root() -> str:
    base = os.environ.get("TMPDIR") or tempfile.gettempdir()  # tempfile caches; env may change
    return os.path.join(os.path.abspath(base), f"zipfuse-spill-{os.getuid()}")


def spill_root(root: str | None, archive: str | None = None) -> str:
    """The spill root to use, checked (created private if missing).

    Without an explicit ``root``, the one a dead session of ``archive`` was told to use
    (remembered in the registry) wins over the default, so recovery finds its journal.
    """
    if root is None and archive is not None:
        root = registry.remembered_spill(os.path.realpath(archive))
    if root is not None:
        return user_root(root, WHAT)
    path = default_spill_root()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return private_dir(path, WHAT, HINT)


def area_path(root: str | None, archive: str) -> str:
    """The one spill directory that belongs to ``archive`` (found again after a crash).

    Named after the archive's real path: a symlink to it and the archive itself share one area.
    """
    archive = os.path.realpath(archive)
    return os.path.join(spill_root(root, archive), area_name(archive))


def area_name(archive: str) -> str:
    """The file name an archive's own things go by (its spill area, its index): the archive's
    name plus a digest of its real path."""
    digest = hashlib.sha256(archive.encode()).hexdigest()[:16]
    return f"{os.path.basename(archive) or 'archive'}.{digest}"


def existing_area(root: str | None, archive: str) -> str | None:
    """The archive's spill area if there is one, checked before anything is read from it."""
    path = area_path(root, archive)
    return path if checked_existing(path, WHAT, HINT) else None


class SpillArea:
    """Data files of one mount inside the private directory bound to its archive path.

    File names carry a per-session prefix, so files restored from an earlier session's journal
    never collide with new ones.
    """

    def __init__(self, root: str | None, archive: str, *, cache_only: bool = False) -> None:
        """``cache_only`` (read-only mounts): no area of our own, only a place for the
        unlinked temp files of decompressed entries (the spill root itself)."""
        if cache_only:
            self.path = spill_root(root)
        else:
            self.path = private_dir(area_path(root, archive), WHAT, HINT)
            self.root = os.path.dirname(self.path)
            self.archive = os.path.realpath(archive)
            if self.root != default_spill_root():
                registry.remember_spill(self.archive, self.root)
        self.session = f"{os.getpid():x}{time.time_ns() & 0xFFFFFFFF:08x}"
        self._counter = itertools.count()

    def new_path(self) -> str:
        """A fresh, never used file name (callable from any thread)."""
        return os.path.join(self.path, f"{self.session}-{next(self._counter)}")

    def make_empty(self, count: int) -> list[tuple[str, int]]:
        """Create ``count`` empty files ahead of need (runs on a worker thread): creating a
        file costs far more than writing a small one, so new files should not wait for it."""
        made = []
        for _ in range(count):
            path = self.new_path()
            made.append((path, create_file(path)))
        return made

    def remove_all(self, paths: list[str]) -> None:
        for path in paths:
            self.remove(path)

    def remove(self, path: str) -> None:
        """A spill file that cannot be deleted only costs space until the area is removed."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot delete spill file %s: %s", path, exc.strerror or exc)

    def move_aside(self, why: str) -> str:
        """Keep an area that cannot be used (for the user to inspect) under another name."""
        target = f"{self.path}.{why}-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(self.path, target)
        private_dir(self.path, WHAT, HINT)
        return target

    def destroy(self) -> None:
        """Remove the whole area (after a successful final commit).

        Deleting 100k spill files takes seconds that nobody needs to wait for: the area is
        renamed away at once and removed by a detached ``rm``, so the daemon can exit.
        """
        if hasattr(self, "root"):
            registry.forget_spill(self.archive, self.root)
        trash = f"{self.path}.trash-{os.getpid()}-{time.time_ns()}"
        try:
            os.rename(self.path, trash)
        except OSError:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        try:
            subprocess.Popen(
                ["rm", "-rf", "--", trash], start_new_session=True, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError:
            shutil.rmtree(trash, ignore_errors=True)
