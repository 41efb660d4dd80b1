"""Open versions of the archive, reference counted.

A commit installs a new archive file (or appends a new version to the same file, whose old
bytes stay where they are); readers that were decoding an entry of the old one (or a
file deleted before the commit, which exists only there) keep reading it. The old version's
descriptor closes when the last of them goes, so replaced versions do not keep their disk space
until unmount. Used only on the trio thread.
"""

from __future__ import annotations

import os


class ArchiveVersion:
    """One open archive file; the mount holds a reference while it is the current version."""

    __slots__ = ("fd", "refs")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 1

    def acquire(self) -> ArchiveVersion:
        self.refs += 1
        return self

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            os.close(self.fd)
            self.fd = -1
