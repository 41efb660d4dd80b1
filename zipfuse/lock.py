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
import re
import socket
import stat
import time

from .errors import ZipfuseError
from .private import user_name


def lock_path(archive: str) -> str:
    head, tail = os.path.split(archive)
    return os.path.join(head, f".{tail}.zipfuse-lock")


class ArchiveLock:
    def __init__(self, archive: str) -> None:
        self.archive = archive
        self.path = lock_path(archive)
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ZipfuseError naming the current holder.

        The lock file is never followed through a symlink, and only a file of our own is ever
        written: in a group-writable directory someone else may have put one there.
        """
        for _ in range(10):
            fd = self._open()
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _holder(fd)
                os.close(fd)
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    raise ZipfuseError(
                        f"{self.archive} is already mounted read-write ({holder}); "
                        "mount it --read-only or unmount the other one first"
                    ) from None
                raise ZipfuseError(f"cannot lock {self.path}: {exc.strerror}") from None
            st = os.fstat(fd)
            # the file may have been removed by its previous holder between open and lock
            try:
                same = os.path.samestat(st, os.lstat(self.path))
            except FileNotFoundError:
                same = False
            if same and (st.st_uid != os.getuid() or st.st_nlink != 1):
                # nobody holds it, but it is not ours alone (left by another user, or a hard
                # link to some file): replace it by a fresh file of our own, never write to it
                try:
                    os.unlink(self.path)
                except OSError:
                    os.close(fd)
                    raise ZipfuseError(self._foreign(st.st_uid)) from None
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

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ZipfuseError(
                f"cannot create the lock file {self.path}: {exc.strerror} "
                "(a read-write mount needs a writable archive directory; try --read-only)"
            ) from None
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return self._open()
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise ZipfuseError(
                f"refusing the lock file {self.path}: it is {kind} (owned by "
                f"{user_name(st.st_uid)}); remove it"
            )
        try:
            return os.open(self.path, flags)
        except FileNotFoundError:
            return self._open()
        except OSError as exc:
            if st.st_uid != os.getuid():
                raise ZipfuseError(self._foreign(st.st_uid)) from None
            raise ZipfuseError(f"cannot open the lock file {self.path}: {exc.strerror}") from None

    def _foreign(self, uid: int) -> str:
        return (
            f"cannot lock {self.archive}: its lock file {self.path} is owned by "
            f"{user_name(uid)} (a read-write mount of theirs, or left behind by one)"
        )

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


_HOLDER = re.compile(r"host [A-Za-z0-9._-]{1,253} pid [0-9]{1,10}( since [0-9: -]{10,20})?")


def _holder(fd: int) -> str:
    """Who holds the lock, from the file's text if it is ours in form; never arbitrary text."""
    try:
        st = os.fstat(fd)
        text = os.pread(fd, 300, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return "by another process"
    who = user_name(st.st_uid)
    if _HOLDER.fullmatch(text):
        return text if st.st_uid == os.getuid() else f"by {who}, {text}"
    return f"by another process of {who}"
