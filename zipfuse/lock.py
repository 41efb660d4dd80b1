"""One writer per archive: a lock file beside it, held with fcntl (also on NFS and Lustre).

The lock is a POSIX record lock on ``.NAME.zipfuse-lock`` in the archive's directory. The kernel
(or the NFS lock manager) drops it when the holder dies, so a stale lock file never blocks
anyone; its text (host, pid, time) only serves the error message. Record locks belong to a
process, so the daemon takes the lock itself after it has forked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time

from .errors import ZipfuseError


def lock_path(archive: str) -> str:
    head, tail = os.path.split(archive)
    return os.path.join(head, f".{tail}.zipfuse-lock")


class ArchiveLock:
    def __init__(self, archive: str) -> None:
        self.archive = archive
        self.path = lock_path(archive)
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ZipfuseError naming the current holder."""
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise ZipfuseError(
                    f"cannot create the lock file {self.path}: {exc.strerror} "
                    "(a read-write mount needs a writable archive directory; try --read-only)"
                ) from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read(fd)
                os.close(fd)
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    raise ZipfuseError(
                        f"{self.archive} is already mounted read-write ({holder}); "
                        "mount it --read-only or unmount the other one first"
                    ) from None
                raise ZipfuseError(f"cannot lock {self.path}: {exc.strerror}") from None
            # the file may have been removed by its previous holder between open and lock
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)  # fmt: skip
            self.fd = fd
            return
        raise ZipfuseError(f"cannot lock {self.archive}: the lock file keeps changing")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


def _read(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "by another process"
