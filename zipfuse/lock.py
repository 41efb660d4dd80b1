"""One writer per archive: a lock file beside it, held with fcntl (also on NFS and Lustre).

The lock is a POSIX record lock on ``.NAME.zipfuse-lock`` in the archive's directory. The kernel
(or the NFS lock manager) drops it when the holder dies, so a stale lock file never blocks
anyone; its text (host, pid, time) only serves the error message. Record locks belong to a
process, so the daemon takes the lock itself after it has forked.

A lock can be lost without notice: an NFSv4 client cut off from the server for longer than its
lease (~90 s) loses its locks, and another node may then become the writer (taking the lock,
rewriting or replacing the lock file). So the text also carries a random token, and right
before a commit touches the archive (``check``, called by the commit itself) the holder makes
sure that the lock file is still the file it locked, still holds its token, and that the lock
can be asserted again; otherwise the commit is refused with ``LockLost`` and nothing is
written. A lost lock's file is never removed at release (it may be the new writer's).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import socket
import stat
import time

from .errors import ZipfuseError
from .private import user_name


def lock_path(archive: str) -> str:
    head, tail = os.path.split(archive)
    return os.path.join(head, f".{tail}.zipfuse-lock")


class LockLost(ZipfuseError):
    """The write lock is no longer ours; the archive was not touched."""

    def __init__(self, archive: str, why: str) -> None:
        self.archive = archive
        self.why = why
        super().__init__(
            f"the write lock on {archive} was lost ({why}); the archive was not touched"
        )


_HELD: dict[str, ArchiveLock] = {}  # archive -> the lock this process holds on it


def check(archive: str) -> None:
    """Raise LockLost if this process took the archive's write lock and no longer has it.
    Called right before a commit touches the archive; no-op when no lock was taken here."""
    lock = _HELD.get(archive)
    if lock is not None:
        why = lock.lost()
        if why is not None:
            raise LockLost(archive, why)


class ArchiveLock:
    def __init__(self, archive: str) -> None:
        self.archive = archive
        self.path = lock_path(archive)
        self.fd: int | None = None
        self.text = b""

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
            self.text = (f"host {socket.gethostname()} pid {os.getpid()} since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')} "
                         f"token {secrets.token_hex(8)}\n").encode()  # fmt: skip
            os.pwrite(fd, self.text, 0)
            self.fd = fd
            _HELD[self.archive] = self
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

    def lost(self) -> str | None:
        """None while the lock is ours; else why not, naming the holder if known. Asserts the
        lock again (non-blocking: on NFS the server refuses it if another client has it, and
        a granted lock makes the client drop its cached pages), then checks that the lock
        file is still the file we locked and still holds our token."""
        if self.fd is None:
            return "it was released"
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.lstat(self.path)
            if not os.path.samestat(st, os.fstat(self.fd)):
                return f"its lock file was replaced, now held {_by(_holder_at(self.path))}"
            if os.pread(self.fd, 300, 0) != self.text:
                return f"now held {_by(_holder(self.fd))}"
        except FileNotFoundError:
            return f"its lock file {self.path} was removed"
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return f"now held {_by(_holder(self.fd))}"
            return f"it cannot be asserted again: {exc.strerror or exc}"
        return None

    def release(self) -> None:
        if self.fd is None:
            return
        if _HELD.get(self.archive) is self:
            del _HELD[self.archive]
        if self.lost() is None:  # a lost lock's file may be the new writer's now
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


_HOLDER = re.compile(r"host [A-Za-z0-9._-]{1,253} pid [0-9]{1,10}( since [0-9: -]{10,20})?")
_TOKEN = re.compile(r" token [0-9a-f]{16}$")


def _by(holder: str) -> str:
    return holder if holder.startswith("by ") else f"by {holder}"


def _holder_at(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return "by another process"
    try:
        return _holder(fd)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    """Who holds the lock, from the file's text if it is ours in form; never arbitrary text."""
    try:
        st = os.fstat(fd)
        text = os.pread(fd, 300, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return "by another process"
    text = _TOKEN.sub("", text)  # the token only tells holders apart
    who = user_name(st.st_uid)
    if _HOLDER.fullmatch(text):
        return text if st.st_uid == os.getuid() else f"by {who}, {text}"
    return f"by another process of {who}"
