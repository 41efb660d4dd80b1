"""Small OS helpers the standard library lacks."""

from __future__ import annotations

import ctypes
import os
import sys
import time

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: str) -> None:
    """syncfs(2) on the filesystem holding ``path``, with the GIL released.

    pyfuse3.syncfs keeps the GIL while the kernel flushes: called on our own mount, the kernel
    then waits for WRITE replies from a daemon that cannot run Python. ctypes releases it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def fdatasync_path(path: str) -> None:
    """fdatasync(2) of a file by name; a file deleted meanwhile needs nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


# CLOCK_REALTIME_COARSE (Linux): the clock the kernel stamps inodes with (current_time()).
_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5 if sys.platform.startswith("linux") else None)


def now_ns() -> int:
    """Wall-clock time for new timestamps: one nanosecond before the kernel's own clock.

    With the writeback cache the kernel sends its own ``current_time()`` (the coarse clock) for
    ``utime(NULL)`` and after writes; stamping with the finer CLOCK_REALTIME put a new file's
    mtime up to one tick AFTER a later ``utime(NULL)``: time went backwards. One nanosecond
    less than the coarse clock also keeps a write in the same tick a change of mtime for the
    kernel, which then sends its SETATTR (and with it the journal's data record) before
    ``close()`` returns, as it did with the finer clock.
    """
    if _COARSE is not None:
        try:
            return time.clock_gettime_ns(_COARSE) - 1
        except OSError:
            pass
    return time.time_ns()


def release_free_memory() -> None:
    """Give the C heap's free pages back to the kernel (glibc ``malloc_trim``; no-op elsewhere).

    Building the index frees large temporaries (the central directory, the name list); glibc
    keeps such memory in its heap after raising its mmap threshold, so the daemon's RSS would
    stay at the peak for the whole mount.
    """
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
