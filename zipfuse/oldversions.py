"""Replaced archive versions stay readable until their last reader is gone (shared filesystems).

A full rewrite (``zipfuse compact``, or a commit past the dead-space limit) installs the new
archive with a rename over the old one. On a local filesystem the old inode lives on while a
process holds it open; on NFS it does not: the server frees it, and readers on other clients
get ESTALE or EIO (NFS has no cross-client "silly rename"). The protocol:

1. Readers announce themselves. Every mount, read-only or read-write, holds a SHARED lock on
   each archive version it reads (the whole file, on its open descriptor: ``share``). The
   daemon's first version is opened and locked by ``open_current``, which then checks that the
   archive's name still points to the locked inode and starts over if not (a rewrite slipped in
   between): so nobody ever starts reading a version that is already only a hidden name. Later
   versions of a read-write mount are locked when the mount adopts them (``ArchiveVersion``).
   The locks are open file description locks (``F_OFD_SETLK``): they go to the NFS server like
   any POSIX record lock (NLM on v3, LOCK on v4), but belong to the descriptor, not to the
   process, so closing another descriptor of the same file in the daemon (a fingerprint, the
   read-write descriptor of an append) does not silently drop them, and they survive the
   fork of the daemon. The daemon keeps a version open only while something reads it
   (``ArchiveVersion`` counts references), so it holds no stale versions itself.
2. The writer never removes a version. Right before the rename, ``keep`` gives the archive a
   second, hidden name beside it: ``.NAME.zipfuse-old-INO`` (INO: its inode number), made with
   link(2), which never follows a symlink and fails if the name exists: in a shared directory
   nobody can make us write through a name they planted. The old inode therefore keeps a link
   on the server after the rename.
3. Hidden versions are collected (``collect``) when no lock is held on them: the writer does it
   after each commit, every mount at start and at unmount, and ``zipfuse compact``. A hidden
   version with any lock held on it (tested with F_OFD_GETLK for an exclusive lock, which sees
   the locks of every process and client, our own descriptors included) stays. A hidden name
   of the CURRENT archive stays too: a writer made it and is about to rename (or crashed
   there); it becomes an old version with the next rewrite. Test-then-unlink is safe without
   holding the lock: a version that is no longer current gets no new reader (a reader that
   locked it after our test finds, on its check, that the archive's name points elsewhere:
   our test came after the rename, its check after our test), so "unlocked" cannot change
   under us.

Crashes: every step is a link, a rename or an unlink of a name in the archive's directory. A
crash after ``keep`` and before the rename leaves a hidden second name of the CURRENT archive,
which costs no space and is collected after the next rewrite. A crash after the rename leaves
the old version hidden, collected once unlocked. So the worst case is a hidden file that the
next collection removes; the archive itself is only ever replaced by the atomic rename.

Filesystems without locks (Lustre mounted without ``flock``, some FUSE ones): ``share`` logs
once and the mount works as before, and ``keep`` makes no hidden name (nothing could ever tell
when to collect it): the rewrite replaces the archive as it always did. A hidden version whose
locks cannot be tested is kept by ``collect``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct

log = logging.getLogger(__name__)

# struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)
_FLOCK = struct.Struct("hhqqi4x")
_OFD = hasattr(fcntl, "F_OFD_SETLK") and struct.calcsize("l") == 8
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_warned = False


def hidden_prefix(archive: str) -> str:
    head, tail = os.path.split(archive)
    return os.path.join(head, f".{tail}.zipfuse-old-")


def share(fd: int, *, quiet: bool = False) -> bool:
    """Hold a shared lock on the whole file open as ``fd`` until it is closed; False when the
    filesystem has no locks (logged once, unless ``quiet``: before the daemon's log exists)
    or someone holds an exclusive one."""
    global _warned
    try:
        if _OFD:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0))
        else:  # pragma: no cover - other platforms: a process lock, dropped by any close
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if not _warned and not quiet:
            _warned = True
            log.warning(
                "cannot hold a shared lock on the archive (%s): a compaction by another "
                "node's writer may remove the version this mount reads",
                exc.strerror or exc,
            )
        return False


def _locked(fd: int) -> bool | None:
    """Whether any process (or NFS client) holds a lock on the file; None: cannot tell."""
    try:
        if _OFD:
            got = fcntl.fcntl(
                fd, fcntl.F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            )
            return _FLOCK.unpack(got)[0] != fcntl.F_UNLCK
        return None  # pragma: no cover - a process lock test misses our own readers
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            log.warning("cannot test the locks of an old archive version: %s", exc)
        return None


def open_current(archive: str) -> int:
    """Open the archive read-only with its shared lock held, making sure the locked inode is
    still the archive (a rewrite between the open and the lock would leave us a version only a
    hidden name keeps, which a collection may already have removed). OSError as os.open."""
    fd = -1
    for _ in range(20):
        fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
        if not share(fd, quiet=True):
            return fd  # no locks here: nothing to protect us, and nothing to re-check against
        try:  # an open, not a stat: on NFS an open asks the server, a stat may be cached
            again = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            again = -1
        if again >= 0:  # closing it keeps the lock: it belongs to ``fd``'s open file
            same = os.path.samestat(os.fstat(fd), os.fstat(again))
            os.close(again)
            if same:
                return fd
        os.close(fd)
    return os.open(archive, os.O_RDONLY | os.O_CLOEXEC)  # keeps changing: the latest one


def keep(archive: str) -> str | None:
    """Give the archive about to be replaced a hidden name of its own; return it (None when
    there is no archive yet, or no link can be made: logged, the rename goes on as it always
    did). Called by the writer, under the write lock, right before the rename."""
    try:
        st = os.lstat(archive)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or not _locks_work(archive):
        return None
    base = f"{hidden_prefix(archive)}{st.st_ino}"
    for k in range(100):
        path = base if k == 0 else f"{base}.{k}"
        try:
            os.link(archive, path, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                # no hard links here (vfat, some FUSE filesystems), or another user's archive
                # under fs.protected_hardlinks: replace it as before, readers elsewhere unkept
                log.warning("cannot keep the old version of %s for its readers: %s", archive, exc)
                return None
            try:
                if os.path.samestat(os.lstat(path), st):
                    return path  # made by an earlier attempt that was interrupted
            except FileNotFoundError:
                pass
            continue  # someone else's file (or an inode number used again): next name
        return path
    log.warning("no free name to keep the old version of %s for its readers", archive)
    return None


def _locks_work(archive: str) -> bool:
    """Whether locks can be tested on the archive: without them no hidden version could ever
    be collected, so none is made (each rewrite would otherwise keep a full copy)."""
    try:
        fd = os.open(archive, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        works = _locked(fd) is not None
    finally:
        os.close(fd)
    if not works:
        log.warning("no file locks on %s: its old version is not kept for readers", archive)
    return works


def collect(archive: str) -> tuple[int, int]:
    """Remove the hidden old versions of ``archive`` that nobody reads any more; return
    (removed, kept). Never raises: a version that cannot be tested or removed stays."""
    prefix = hidden_prefix(archive)
    head, start = os.path.split(prefix)
    try:
        names = [n for n in os.listdir(head or ".") if n.startswith(start)]
    except OSError:
        return 0, 0
    try:
        current: os.stat_result | None = os.stat(archive)
    except OSError:
        current = None
    removed = kept = 0
    for name in names:
        path = os.path.join(head, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue  # not something we made: leave it alone
        if current is not None and os.path.samestat(st, current):
            continue  # a writer about to rename (or one that crashed there): not old yet
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            kept += 1
            continue
        try:
            if not os.path.samestat(os.fstat(fd), st) or _locked(fd) is not False:
                kept += 1
                continue
        finally:
            os.close(fd)
        if _unlink_if(path, st):
            removed += 1
        else:
            kept += 1
    if removed or kept:
        log.info("old archive versions of %s: %d removed, %d still read", archive, removed, kept)
    return removed, kept


def _unlink_if(path: str, st: os.stat_result) -> bool:
    """Unlink ``path`` if it still names the file ``st`` describes."""
    try:
        if not os.path.samestat(os.lstat(path), st):
            return False
        os.unlink(path)
        return True
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.debug("cannot remove %s: %s", path, exc)
        return False
