"""Small OS helpers the standard library lacks."""

from __future__ import annotations

import ctypes
import os

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


def release_free_memory() -> None:
    """Give the C heap's free pages back to the kernel (glibc ``malloc_trim``; no-op elsewhere).

    Building the index frees large temporaries (the central directory, the name list); glibc
    keeps such memory in its heap after raising its mmap threshold, so the daemon's RSS would
    stay at the peak for the whole mount.
    """
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
