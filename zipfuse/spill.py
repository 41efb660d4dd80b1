"""The spill area: one directory per mount holding the full bytes of every dirty file.

Modified data lives here on disk, never only in RAM. The default place is under $TMPDIR (node
local on most HPC systems), so writing into a mount costs no inodes in a quota'd home.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile


def default_spill_root() -> str:
    return os.path.join(tempfile.gettempdir(), f"zipfuse-{os.getuid()}")


class SpillArea:
    """Files named by inode number inside a private directory bound to one archive path."""

    def __init__(self, root: str | None, archive: str) -> None:
        root = os.path.abspath(root or default_spill_root())
        os.makedirs(root, mode=0o700, exist_ok=True)
        digest = hashlib.sha256(os.path.abspath(archive).encode()).hexdigest()[:16]
        base = os.path.basename(archive) or "archive"
        self.path = os.path.join(root, f"{base}.{digest}")
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def file_path(self, ino: int) -> str:
        return os.path.join(self.path, str(ino))

    def create_empty(self, ino: int) -> str:
        path = self.file_path(ino)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        return path

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def is_empty(self) -> bool:
        return not any(os.scandir(self.path))

    def destroy(self) -> None:
        """Remove the whole area (after a successful final commit)."""
        shutil.rmtree(self.path, ignore_errors=True)
