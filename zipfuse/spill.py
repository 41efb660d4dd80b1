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

log = logging.getLogger(__name__)


def default_spill_root() -> str:
    base = os.environ.get("TMPDIR") or tempfile.gettempdir()  # tempfile caches; env may change
    return os.path.join(base, f"zipfuse-spill-{os.getuid()}")


def area_path(root: str | None, archive: str) -> str:
    """The one spill directory that belongs to ``archive`` (found again after a crash)."""
    root = os.path.abspath(root or default_spill_root())
    digest = hashlib.sha256(os.path.abspath(archive).encode()).hexdigest()[:16]
    base = os.path.basename(archive) or "archive"
    return os.path.join(root, f"{base}.{digest}")


class SpillArea:
    """Data files of one mount inside the private directory bound to its archive path.

    File names carry a per-session prefix, so files restored from an earlier session's journal
    never collide with new ones.
    """

    def __init__(self, root: str | None, archive: str, *, cache_only: bool = False) -> None:
        """``cache_only`` (read-only mounts): no area of our own, only a place for the
        unlinked temp files of decompressed entries (the spill root itself)."""
        if cache_only:
            self.path = os.path.abspath(root or default_spill_root())
        else:
            self.path = area_path(root, archive)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
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
            made.append((path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)))
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
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        return target

    def destroy(self) -> None:
        """Remove the whole area (after a successful final commit).

        Deleting 100k spill files takes seconds that nobody needs to wait for: the area is
        renamed away at once and removed by a detached ``rm``, so the daemon can exit.
        """
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
