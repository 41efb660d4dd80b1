"""The mount index of an archive, kept between mounts: a few milliseconds instead of a parse.

Every mount of a 63k-entry archive parsed its central directory (0.18 s) and placed the names
in a tree (0.17 s; 2.3 s together for 300k entries), although most mounts see an archive that
nobody changed since the last one. A mount that did this work stores the result (the record
offsets and the tree's compact tables, ~40 bytes per entry) in ``index/`` of the user's private
spill root. A later mount uses it only when the bytes from the start of the central directory
to the end of the file are the ones it was made from: same file size, same length and CRC-32
of those bytes (one read of the directory, which a mount reads anyway). The entries' data
before the directory need not match: the parse never reads it. A missing, stale, torn or
foreign index is a miss, never an error, and the mount makes it again.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import time
from typing import Any

from .deflate import crc32
from .errors import ZipfuseError
from .private import private_dir, replace_file
from .zipformat import CentralDirectory

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what is stored, or what the parse and scan make of it, changes
SUFFIX = ".index"
KEEP_DAYS = 30  # an index nobody used for this long goes (its archive is likely gone)
Key = tuple[int, int, int, int, int, int]  # format, size, start, length, CRC-32, max depth


def path_for(spill_dir: str | None, archive: str) -> str | None:
    """Where the index of ``archive`` (a real path) lives; None if there is no usable place
    (the mount then reports the spill directory's problem itself)."""
    from .spill import WHAT, area_name, spill_root  # the spill module pulls in the registry

    try:
        folder = private_dir(os.path.join(spill_root(spill_dir, archive), "index"), WHAT, "")
    except (ZipfuseError, OSError):
        return None
    return os.path.join(folder, area_name(archive) + SUFFIX)


def key_for(fd: int, cd: CentralDirectory, max_depth: int) -> Key | None:
    """The key of a directory just parsed from ``fd``: what ``load`` compares."""
    start = cd.cd_offset
    length = cd.archive_size - start
    try:
        tail = os.pread(fd, length, start)
    except OSError:
        return None
    if len(tail) != length:
        return None
    return (FORMAT, cd.archive_size, start, length, crc32(tail), max_depth)


def load(path: str, fd: int, size: int, max_depth: int) -> tuple[CentralDirectory, Any] | None:
    """The directory of the archive open at ``fd`` (``size`` bytes) and the tree's state, from
    the index at ``path``, if it was made from these very bytes; else None."""
    try:
        fh = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fh, "rb") as f:
            key, fields, state = marshal.loads(f.read())
        fmt, size0, start, length, crc, depth = key
        if fmt != FORMAT or size0 != size or depth != max_depth or start + length != size:
            return None
        cd_size = fields["cd_size"]
        buf = os.pread(fd, cd_size, start)
        rest = os.pread(fd, length - cd_size, start + cd_size)
        if len(buf) + len(rest) != length or crc32(rest, crc32(buf)) != crc:
            return None
        cd = CentralDirectory.from_index(buf, fields)
    except (OSError, ValueError, EOFError, TypeError, KeyError) as exc:
        log.info("index %s not used: %s", path, exc)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # used: keep it (see KEEP_DAYS)
    return cd, state


def save(path: str, key: Key, cd: CentralDirectory, state: Any) -> None:
    """Store the index (best effort: a failure only costs the next mount a parse)."""
    try:
        data = marshal.dumps((key, cd.index_fields(), state))
        replace_file(path, data, tmp=f"{path}.{os.getpid()}.tmp")  # mounts may save at once
        _prune(os.path.dirname(path))
    except (OSError, ValueError) as exc:
        log.info("index %s not saved: %s", path, exc)


def _prune(folder: str) -> None:
    now = time.time()
    with os.scandir(folder) as it:
        for e in it:
            mtime = e.stat(follow_symlinks=False).st_mtime
            if (e.name.endswith(SUFFIX) and mtime < now - KEEP_DAYS * 86400) or (
                e.name.endswith(".tmp") and mtime < now - 86400  # left by a crash
            ):
                with contextlib.suppress(OSError):
                    os.unlink(e.path)
