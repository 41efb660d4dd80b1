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
