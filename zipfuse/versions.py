"""Open versions of the archive, reference counted.

A commit installs a new archive file (or appends a new version to the same file, whose old
bytes stay where they are); readers that were decoding an entry of the old one (or a
file deleted before the commit, which exists only there) keep reading it. The old version's
descriptor closes when the last of them goes, so replaced versions do not keep their disk space
until unmount (nor, on NFS, a ``.nfsXXXX`` copy per commit). Each version holds a shared lock on
its file while open (see oldversions): a writer's compaction elsewhere keeps it until then.
Used only on the trio thread.
"""

from __future__ import annotations

import os

from . import oldversions


class ArchiveVersion:
    """One open archive file; the mount holds a reference while it is the current version."""

    __slots__ = ("fd", "refs", "size")

    def __init__(self, fd: int, size: int | None = None) -> None:
        """``size``: the archive size its directory was read with (else one fstat now); it
        bounds entry data, so opening an entry needs no fstat (see local_data_offset)."""
        self.fd = fd
        self.refs = 1
        self.size = os.fstat(fd).st_size if size is None else size
        oldversions.share(fd)  # a no-op for the mount's first version, locked when opened

    def acquire(self) -> ArchiveVersion:
        self.refs += 1
        return self

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            os.close(self.fd)
            self.fd = -1
