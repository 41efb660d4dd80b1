"""Pack a directory tree into an environment archive (``condafuse import``), without FUSE.

The archive holds one top folder ``NAME/`` with every file, directory and symlink of the source
tree. Kept: symlinks (as Unix symlink entries, never followed), permission bits, and mtimes to
100 ns (NTFS extra field, read first by zipfuse; an Info-ZIP "UT" field gives other unzip tools
whole seconds). Hard links become separate copies; sockets, FIFOs and devices are skipped.
The zip is written beside the destination and renamed into place after an fsync, so a crash
never leaves a half-written ``NAME.zip``.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import struct
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from .errors import CondafuseError

# Seconds between 1601-01-01 (NTFS epoch) and 1970-01-01.
_NTFS_EPOCH_DELTA = 11_644_473_600
_CHUNK = 1 << 20


@dataclasses.dataclass
class PackProgress:
    entries_done: int
    entries_total: int
    bytes_done: int
    bytes_total: int


def _ntfs_time(ns: int) -> int:
    return ns // 100 + _NTFS_EPOCH_DELTA * 10_000_000


def _extra(st: os.stat_result) -> bytes:
    mtime = int(st.st_mtime)
    ut = struct.pack("<HHBl", 0x5455, 5, 1, max(min(mtime, 2**31 - 1), -(2**31)))
    m, a = _ntfs_time(st.st_mtime_ns), _ntfs_time(st.st_atime_ns)
    ntfs = struct.pack("<HHIHHQQQ", 0x000A, 32, 0, 0x0001, 24, m, a, m)
    return ntfs + ut


def _zipinfo(arcname: str, st: os.stat_result, kind: int) -> zipfile.ZipInfo:
    t = time.localtime(st.st_mtime)
    if t.tm_year < 1980:
        date_time = (1980, 1, 1, 0, 0, 0)
    elif t.tm_year > 2107:
        date_time = (2107, 12, 31, 23, 59, 58)
    else:
        date_time = tuple(t[:6])
    zi = zipfile.ZipInfo(arcname, date_time)
    zi.create_system = 3  # Unix: external_attr holds st_mode
    mode = stat.S_IMODE(st.st_mode)
    zi.external_attr = ((kind | mode) & 0xFFFF) << 16
    if kind == stat.S_IFDIR:
        zi.external_attr |= 0x10  # MS-DOS directory bit
    zi.extra = _extra(st)
    return zi


def scan(src: Path) -> tuple[list[tuple[str, os.stat_result]], int]:
    """Every entry under ``src`` as (relative path, lstat), parents first; and the byte total."""
    out: list[tuple[str, os.stat_result]] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, src)
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            out.append((rel, st))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return out, total


def pack(
    src: Path,
    dest: Path,
    top: str,
    *,
    level: int = 6,
    progress: Callable[[PackProgress], None] | None = None,
) -> int:
    """Write ``src`` as ``top/...`` into the new zip ``dest``. Returns the number of entries."""
    src = Path(src)
    if not src.is_dir():
        raise CondafuseError(f"{src} is not a directory")
    entries, total = scan(src)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    done_bytes = 0
    skipped = 0
    last = 0.0
    n_total = len(entries) + 1
    try:
        with open(tmp, "wb") as raw:
            with zipfile.ZipFile(
                raw, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level, allowZip64=True
            ) as z:
                z.writestr(_zipinfo(top + "/", os.stat(src), stat.S_IFDIR), b"")
                for i, (rel, st) in enumerate(entries, start=2):
                    arc = f"{top}/{rel}"
                    full = os.path.join(src, rel)
                    if stat.S_ISDIR(st.st_mode):
                        z.writestr(_zipinfo(arc + "/", st, stat.S_IFDIR), b"")
                    elif stat.S_ISLNK(st.st_mode):
                        zi = _zipinfo(arc, st, stat.S_IFLNK)
                        zi.compress_type = zipfile.ZIP_STORED
                        z.writestr(zi, os.fsencode(os.readlink(full)))
                    elif stat.S_ISREG(st.st_mode):
                        zi = _zipinfo(arc, st, stat.S_IFREG)
                        zi.compress_type = zipfile.ZIP_DEFLATED
                        zi.file_size = st.st_size
                        big = st.st_size > 2**31
                        with open(full, "rb") as f, z.open(zi, "w", force_zip64=big) as w:
                            while chunk := f.read(_CHUNK):
                                w.write(chunk)
                                done_bytes += len(chunk)
                    else:
                        skipped += 1
                        continue
                    now = time.monotonic()
                    if progress and (now - last > 0.2 or i == n_total):
                        last = now
                        progress(PackProgress(i, n_total, done_bytes, total))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dest)
        dfd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if progress:
        progress(PackProgress(n_total, n_total, total, total))
    if skipped:
        print(
            f"condafuse: skipped {skipped} special files (sockets, FIFOs, devices)", file=sys.stderr
        )
    return n_total - skipped
