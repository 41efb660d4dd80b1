"""Zip archive format: writing a new archive.

No FUSE and no trio here. A ``ZipWriter`` owns one file descriptor opened for writing (the temp
file beside the archive) and writes entries from offset 0 with ``os.pwrite``/``os.pwritev`` at
offsets it tracks itself, so the descriptor's file position is never used.

Data path:

- Unchanged entries (``copy_raw``): new local header, compressed bytes copied as they are with
  ``os.copy_file_range`` (fallback ``os.sendfile``, then ``pread``/``pwrite``); small ones go
  through the output buffer instead, and runs of small entries that lie back to back in the
  source are read with one ``pread`` of up to ~1 MiB (an unchanged archive is mostly that).
- New file data (``add_file``/``add_bytes``): read with ``os.pread`` and compressed on a pool of
  worker threads (zlib releases the GIL). A file above ``_SPLIT_THRESHOLD`` is cut into blocks
  that are deflated in parallel into ONE raw deflate stream, the way pigz does it: every block
  gets its own compressor primed with the previous 32 KiB as dictionary, non-final blocks end
  with ``Z_SYNC_FLUSH`` (byte aligned, not final), the last one with ``Z_FINISH``.
- A single writer thread consumes entries in call order and writes each result as soon as it is
  ready, batching small pieces into ``pwritev`` calls of ~1 MiB. Plain and compressed bytes in
  flight are bounded by ``max_inflight`` (each queued entry also counts ``_JOB_COST`` bytes, so
  the number of queued entries is bounded too); the producer (the thread calling ``add_*``)
  blocks when the budget is used up. Peak memory is about ``max_inflight`` plus one block per
  worker, whatever the archive size; only the central records (~120 bytes per entry) grow.
- The central records are accumulated in one ``bytearray`` and written by ``finish()``.

Metadata written for every entry we create (so it reads back exactly): Unix "version made by",
``external_attr = st_mode << 16`` (| 0x10 for directories), Info-ZIP extended timestamp 0x5455
(local: mtime+atime, central: mtime), Info-ZIP Unix 0x7875 (uid/gid, 4 bytes each), NTFS 0x000a
(mtime/atime/ctime in 100 ns units; ctime = mtime), DOS time in local time clamped to 1980..2107.
Character and block devices also get the PKWARE Unix extra 0x000d, whose variable part holds
the major and minor device numbers (APPNOTE 4.5.7); Info-ZIP and Python's zipfile ignore it.
No data descriptors (bit 3) are written for our own entries: headers are self-contained; a local
header whose sizes are only known after compression is rewritten in place with ``os.pwrite``.

Known caveats:

- Times round-trip with 100 ns resolution (NTFS extra); the 0x5455 extra has 1 s resolution.
- ``ZipEntry`` carries no internal file attributes; copied entries get 0 there.
- The writer is not thread-safe: one thread calls ``add_*``/``finish``. ``abort`` may also come
  from another thread; it wakes a producer blocked on the budget. The progress callback runs on
  the writer thread.
- Deciding store vs deflate for a split file uses 8 samples of 64 KiB; a file whose samples
  compress well but whose bulk does not is deflated anyway (zlib then emits stored deflate
  blocks, so it grows by well under 1 %).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import fcntl
import functools
import os
import queue
import stat
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from zipfuse import zipspec
from zipfuse.deflate import crc32
from zipfuse.zipformat import (
    DEFLATED,
    FLAG_DATA_DESCRIPTOR,
    FLAG_ENCRYPTED,
    FLAG_UTF8,
    STORED,
    ZipEntry,
    ZipFormatError,
)

__all__ = ["EntryMeta", "ZipWriter", "crc32_combine"]

# --- On-disk records and extra-field ids: zipspec.py, shared with the reader ---

# Extras that describe what EntryMeta replaces; dropped when copy_raw gets new metadata.
_META_EXTRAS = frozenset(
    {
        zipspec.EXTRA_ZIP64,
        zipspec.EXTRA_NTFS,
        zipspec.EXTRA_PKWARE_UNIX,
        zipspec.EXTRA_UT,
        zipspec.EXTRA_UX_OLD,
        zipspec.EXTRA_UX_NEW,
        zipspec.EXTRA_UX3,
        zipspec.EXTRA_UPATH,
    }
)

_ZIP64_ONLY = frozenset({zipspec.EXTRA_ZIP64})

_CREATE_UNIX = 3
_VERSION_DEFAULT = 10  # 1.0: stored file
_VERSION_DEFLATE = 20  # 2.0: deflate, directories
_VERSION_ZIP64 = 45  # 4.5
_U32 = 0xFFFFFFFF
_U16 = 0xFFFF

_DOS_MIN = (1980, 1, 1, 0, 0, 0)
_DOS_MAX = (2107, 12, 31, 23, 59, 58)

# --- Tuning ---

_SPLIT_THRESHOLD = 8 << 20  # files above this are compressed in parallel blocks
_BLOCK_SIZE = 2 << 20  # block size for split files (compressed independently)
_WINDOW = 32 << 10  # deflate window: dictionary handed from one block to the next
_STORE_RATIO = 0.98  # keep deflate only if compressed < 98 % of the original
_SAMPLE = 64 << 10  # bytes per sample when deciding store vs deflate for a split file
_SAMPLES = 8  # samples spread over the file
_JOB_COST = 2048  # budget charged per queued entry on top of its data, bounds the job count
_OUT_BUFFER = 1 << 20  # flush the output buffer beyond this many bytes
_IDLE_FLUSH = 256 << 10  # ... or this many when the writer is about to wait for work
_OUT_PIECES = 512  # ... or this many pieces (IOV_MAX is 1024 on Linux)
_RELEASE_BATCH = 1 << 20  # the writer returns budget in steps of this size, or before waiting
_SMALL_COPY = 64 << 10  # copy_raw below this: one pread into the output buffer


def _zip64_margin(size: int) -> int:
    """Upper bound of what deflate (with our sync flushes) can add to ``size`` bytes."""
    return (size >> 10) + (size // _BLOCK_SIZE + 1) * 16 + (1 << 20)


@dataclasses.dataclass(slots=True)
class EntryMeta:
    """Name and metadata of one entry to write."""

    name: str  # archive name, '/'-separated, no leading '/'; directories end with '/'
    mode: int  # full st_mode including file type bits
    uid: int
    gid: int
    mtime_ns: int  # UTC ns since epoch
    atime_ns: int
    rdev: int = 0  # device number, for character and block devices


# --- CRC-32 combination (GF(2) matrices, as in zlib's crc32_combine) ---
#
# Why per-block CRCs combined here rather than one streaming pass: each worker computes the CRC of
# its block while the block is hot in cache, in parallel with the other workers; a separate pass
# would read every byte a second time on one core (~1 GB/s) and could not overlap with compression.
# A combine costs at most 64 small matrix-vector products, microseconds per 2 MiB block.

_CRC_POLY = 0xEDB88320
_crc_ops: list[list[int]] = []  # _crc_ops[k]: operator appending 2**k zero bytes to a CRC
_crc_ops_lock = threading.Lock()


def _gf2_times(mat: Sequence[int], vec: int) -> int:
    total = 0
    i = 0
    while vec:
        if vec & 1:
            total ^= mat[i]
        vec >>= 1
        i += 1
    return total


def _gf2_square(mat: Sequence[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def _zero_byte_operators() -> list[list[int]]:
    if not _crc_ops:
        with _crc_ops_lock:
            if not _crc_ops:
                op = [_CRC_POLY] + [1 << n for n in range(31)]  # one zero bit
                for _ in range(3):  # -> one zero byte (8 bits)
                    op = _gf2_square(op)
                ops = [op]
                for _ in range(63):
                    op = _gf2_square(op)
                    ops.append(op)
                _crc_ops.extend(ops)
    return _crc_ops


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``A + B`` from ``crc1 = crc32(A)``, ``crc2 = crc32(B)`` and ``len2 = len(B)``."""
    if len2 < 0:
        raise ValueError("len2 must be >= 0")
    ops = _zero_byte_operators()
    k = 0
    while len2:
        if len2 & 1:
            crc1 = _gf2_times(ops[k], crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2


# --- Small encoders ---


def _encode_name(name: str) -> tuple[bytes, int]:
    """Name bytes and the UTF-8 flag they need."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > _U16:
        raise ValueError(f"entry name too long ({len(raw)} bytes): {name[:80]!r}...")
    return raw, (0 if raw.isascii() else FLAG_UTF8)


def _dos_datetime(mtime_ns: int) -> tuple[int, int]:
    """(dos_time, dos_date) of ``mtime_ns`` in local time, clamped to what DOS dates can hold."""
    return _dos_datetime_secs(mtime_ns // 1_000_000_000)


@functools.lru_cache(maxsize=1024)  # files of one install share mtimes; localtime() is not free
def _dos_datetime_secs(secs: int) -> tuple[int, int]:
    try:
        tm = time.localtime(secs)
        parts = (tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)
    except (OverflowError, OSError, ValueError):
        parts = _DOS_MIN if secs < 0 else _DOS_MAX
    if parts < _DOS_MIN:
        parts = _DOS_MIN
    elif parts > _DOS_MAX:
        parts = _DOS_MAX
    year, mon, day, hour, minute, sec = parts
    sec = min(sec, 59)  # leap second
    return (hour << 11) | (minute << 5) | (sec // 2), ((year - 1980) << 9) | (mon << 5) | day


def _u32_time(secs: int) -> bytes | None:
    """Seconds for the 0x5455 extra: signed 32-bit, or unsigned up to 2106; None if neither fits."""
    if -(1 << 31) <= secs < (1 << 31):
        return struct.pack("<i", secs)
    if 0 <= secs <= _U32:
        return struct.pack("<I", secs)
    return None


def _filetime(ns: int) -> int:
    ticks = ns // 100 + zipspec.NTFS_EPOCH_DELTA
    return min(max(ticks, 0), (1 << 64) - 1)


# 0x7875 (uid, gid) followed by 0x000a (NTFS mtime, atime, ctime): same in local and central.
_EXTRA_OWNER_NTFS = struct.Struct("<HHBBIBIHHIHHQQQ")
_EXTRA_UT_LOCAL = struct.Struct("<HHBii")  # 0x5455, mtime + atime
_EXTRA_UT_CENTRAL = struct.Struct("<HHBi")  # 0x5455, mtime only
_I32_MIN = -(1 << 31)
_I32_MAX = (1 << 31) - 1


def _meta_extras(meta: EntryMeta) -> tuple[bytes, bytes]:
    """(local, central) extra fields carrying times, uid and gid."""
    mtime_ns = meta.mtime_ns
    mt = _filetime(mtime_ns)
    tail = _EXTRA_OWNER_NTFS.pack(
        zipspec.EXTRA_UX3, 11, 1, 4, meta.uid & _U32, 4, meta.gid & _U32,
        zipspec.EXTRA_NTFS, 32, 0, 1, 24, mt, _filetime(meta.atime_ns), mt,
    )  # fmt: skip
    msecs = mtime_ns // 1_000_000_000
    asecs = meta.atime_ns // 1_000_000_000
    if _I32_MIN <= msecs <= _I32_MAX and _I32_MIN <= asecs <= _I32_MAX:  # the common case
        return (
            _EXTRA_UT_LOCAL.pack(zipspec.EXTRA_UT, 9, 3, msecs, asecs) + tail,
            _EXTRA_UT_CENTRAL.pack(zipspec.EXTRA_UT, 5, 3, msecs) + tail,
        )
    mtime = _u32_time(msecs)
    atime = _u32_time(asecs)
    if mtime is not None and atime is not None:
        local = zipspec.EXTRA_HEADER.pack(zipspec.EXTRA_UT, 9) + b"\x03" + mtime + atime
        central = zipspec.EXTRA_HEADER.pack(zipspec.EXTRA_UT, 5) + b"\x03" + mtime
    elif mtime is not None:
        local = central = zipspec.EXTRA_HEADER.pack(zipspec.EXTRA_UT, 5) + b"\x01" + mtime
    else:
        local = central = b""
    return local + tail, central + tail


_DEVICES = (stat.S_IFCHR, stat.S_IFBLK)
# 0x000d, PKWARE Unix (APPNOTE 4.5.7): atime, mtime, uid, gid, then major and minor (4 bytes each)
_EXTRA_DEVICE = struct.Struct("<HH" + zipspec.PKWARE_UNIX_DEVICE.format[1:])


def _device_extra(meta: EntryMeta) -> bytes:
    """The PKWARE Unix extra field of a device entry: the only one that carries st_rdev."""
    return _EXTRA_DEVICE.pack(
        zipspec.EXTRA_PKWARE_UNIX, _EXTRA_DEVICE.size - 4,
        min(max(meta.atime_ns // 1_000_000_000, 0), _U32),
        min(max(meta.mtime_ns // 1_000_000_000, 0), _U32),
        min(meta.uid, _U16), min(meta.gid, _U16),
        os.major(meta.rdev), os.minor(meta.rdev),
    )  # fmt: skip


def _split_extra(extra: bytes) -> list[tuple[int, bytes]] | None:
    """Extra field as (id, whole record) pairs; None if it is malformed."""
    out = []
    end = 0
    for hid, start, end in zipspec.extra_fields(extra):
        out.append((hid, extra[start - 4 : end]))
    return out if end == len(extra) else None


def _without_zip64(extra: bytes) -> bytes:
    """``extra`` minus its zip64 field; walks the field headers only (hot path of copy_raw)."""
    for hid, _, _ in zipspec.extra_fields(extra):
        if hid == zipspec.EXTRA_ZIP64:
            return _filter_extra(extra, _ZIP64_ONLY)
    return extra


def _filter_extra(extra: bytes, drop: frozenset[int]) -> bytes:
    parts = _split_extra(extra)
    if parts is None:
        return extra  # keep bytes we cannot parse untouched
    return b"".join(rec for hid, rec in parts if hid not in drop)


def _check_type(meta: EntryMeta, want: Callable[[int], bool], fmt: int, what: str) -> int:
    mode = meta.mode
    if stat.S_IFMT(mode) == 0:
        mode |= fmt
    if not want(mode):
        raise ValueError(f"{what} entry {meta.name!r} has mode {oct(meta.mode)}")
    return mode


def _check_name(name: str, is_dir: bool) -> None:
    if not name or name.startswith("/"):
        raise ValueError(f"bad entry name {name!r}")
    if name.endswith("/") != is_dir:
        what = "directory names must" if is_dir else "only directory names may"
        raise ValueError(f"{what} end with '/': {name!r}")


# --- Entries and jobs ---


@dataclasses.dataclass(slots=True)
class _Rec:
    """Everything needed to emit one local header and one central record."""

    name: bytes
    flags: int
    method: int
    crc: int
    csize: int
    usize: int
    dos_time: int
    dos_date: int
    made_by: int  # (system << 8) | version
    needed: int  # minimum "version needed" before zip64 is considered
    external_attr: int
    local_extra: bytes  # without zip64
    central_extra: bytes  # without zip64
    comment: bytes = b""
    zip64_local: bool = False  # local header carries a zip64 extra with both sizes
    descriptor: bool = False  # copied entry keeps bit 3 and a data descriptor (encrypted)

    def local_header(self) -> bytes:
        extra = self.local_extra
        crc, csize, usize = self.crc, self.csize, self.usize
        if self.descriptor:
            crc = csize = usize = 0
        needed = self.needed
        if self.zip64_local:
            extra = (
                zipspec.EXTRA_HEADER.pack(zipspec.EXTRA_ZIP64, 16)
                + struct.pack("<QQ", usize, csize)
                + extra
            )
            csize = usize = _U32
            needed = max(needed, _VERSION_ZIP64)
        if len(extra) > _U16:
            raise ValueError(f"extra field too long for {self.name!r}")
        return (
            zipspec.LOCAL_HEADER.pack(
                zipspec.LOCAL_SIG,
                needed,
                self.flags,
                self.method,
                self.dos_time,
                self.dos_date,
                crc,
                csize,
                usize,
                len(self.name),
                len(extra),
            )
            + self.name
            + extra
        )

    def central_record(self, offset: int, limit: int) -> bytes:
        z64 = []
        usize, csize = self.usize, self.csize
        if self.zip64_local or usize >= limit:
            z64.append(usize)
            usize = _U32
        if self.zip64_local or csize >= limit:
            z64.append(csize)
            csize = _U32
        if offset >= limit:
            z64.append(offset)
            offset = _U32
        extra = self.central_extra
        needed = self.needed
        made_by = self.made_by
        if z64:
            extra = (
                zipspec.EXTRA_HEADER.pack(zipspec.EXTRA_ZIP64, 8 * len(z64))
                + struct.pack(f"<{len(z64)}Q", *z64)
                + extra
            )
            needed = max(needed, _VERSION_ZIP64)
            made_by = (made_by & 0xFF00) | max(made_by & 0xFF, _VERSION_ZIP64)
        if len(extra) > _U16:
            raise ValueError(f"extra field too long for {self.name!r}")
        return (
            zipspec.CENTRAL_HEADER.pack(
                zipspec.CENTRAL_SIG,
                made_by & 0xFF,
                made_by >> 8,
                needed,
                self.flags,
                self.method,
                self.dos_time,
                self.dos_date,
                self.crc,
                csize,
                usize,
                len(self.name),
                len(extra),
                len(self.comment),
                0,
                0,
                self.external_attr,
                offset,
            )
            + self.name
            + extra
            + self.comment
        )


_END = object()  # end of the job stream / end of a block stream
_ABANDONED = object()  # the producer failed half-way through a split file


@dataclasses.dataclass(slots=True)
class _Job:
    rec: _Rec
    kind: str  # "ready" | "whole" | "blocks" | "raw"
    cost: int  # budget to release once written
    data: bytes | memoryview = b""  # "ready"
    future: Future | None = None  # "whole": -> (method, crc, payload)
    blocks: queue.SimpleQueue | None = None  # "blocks": Futures -> (crc, len, payload), _END
    # "raw": (src_fd, entry, data_off, keep_local); "run": (src_fd, start, end, [(off, rec)])
    raw: Any = None


_MIN_LOCAL = zipspec.LOCAL_HEADER.size
_MAX_LOCAL = zipspec.LOCAL_HEADER.size + 2 * _U16


def _original_rec(entry: ZipEntry, flags: int) -> _Rec:
    """The record of an entry copied unchanged: its central record, to be placed anew."""
    return _Rec(
        name=_stored_name(entry),
        flags=flags,
        method=entry.method,
        crc=entry.crc,
        csize=entry.compressed_size,
        usize=entry.file_size,
        dos_time=entry.dos_time,
        dos_date=entry.dos_date,
        made_by=(entry.create_system << 8) | entry.create_version,
        needed=entry.extract_version,
        external_attr=entry.external_attr,
        local_extra=b"",
        central_extra=_without_zip64(entry.extra),
        comment=entry.comment,
    )


def _stored_name(entry: ZipEntry) -> bytes:
    """The entry's name bytes exactly as the source archive stored them."""
    if entry.raw_name:
        return entry.raw_name
    return entry.name.encode("utf-8" if entry.flags & FLAG_UTF8 else "cp437", "surrogateescape")


def _raw_span(job: _Job) -> tuple[int, int] | None:
    """Source range (local header .. end of data) of a small raw copy, else None."""
    _, entry, data_offset, _ = job.raw
    if entry.compressed_size > _SMALL_COPY:
        return None
    if not _MIN_LOCAL <= data_offset - entry.header_offset <= _MAX_LOCAL:
        return None
    return entry.header_offset, data_offset + entry.compressed_size


def _span(job: _Job) -> tuple[int, int]:
    """The source range of a raw copy already known to be small (see ``_raw_span``)."""
    span = _raw_span(job)
    assert span is not None
    return span


# --- Worker functions (run on the pool) ---


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            raise OSError(
                errno.EIO,
                f"short read: source ended at {offset + got}, wanted {size} bytes from {offset}",
            )
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _compress_whole(fd: int, size: int, level: int) -> tuple[int, int, bytes | memoryview]:
    data = _pread_exact(fd, size, 0)
    return _compress_data(data, level)


def _compress_data(data: bytes | memoryview, level: int) -> tuple[int, int, bytes | memoryview]:
    crc = crc32(data)
    if level == 0 or not data:
        return STORED, crc, data
    comp = zlib.compressobj(level, zlib.DEFLATED, -15)
    out = comp.compress(data) + comp.flush()
    if len(out) >= len(data) * _STORE_RATIO:
        return STORED, crc, data
    return DEFLATED, crc, out


def _compress_block(
    fd: int, offset: int, length: int, level: int, last: bool, deflate: bool
) -> tuple[int, int, bytes]:
    """One block of a split file: (crc of its plain bytes, plain length, payload)."""
    if not deflate:
        data = _pread_exact(fd, length, offset)
        return crc32(data), length, data
    # One pread for the dictionary (the 32 KiB before the block) and the block itself.
    dict_len = min(offset, _WINDOW)
    buf = memoryview(_pread_exact(fd, dict_len + length, offset - dict_len))
    block = buf[dict_len:]
    if dict_len:
        comp = zlib.compressobj(
            level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, buf[:dict_len]
        )
    else:
        comp = zlib.compressobj(level, zlib.DEFLATED, -15)
    out = comp.compress(block) + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return crc32(block), length, out


def _should_store(fd: int, size: int, level: int) -> bool:
    """Decide store vs deflate for a split file from samples spread evenly over it."""
    if level == 0:
        return True
    plain = 0
    packed = 0
    step = max(size // _SAMPLES, _SAMPLE)
    for off in range(0, max(size - _SAMPLE, 0) + 1, step):
        data = _pread_exact(fd, min(_SAMPLE, size - off), off)
        comp = zlib.compressobj(level, zlib.DEFLATED, -15)
        packed += len(comp.compress(data)) + len(comp.flush())
        plain += len(data)
    return packed >= plain * _STORE_RATIO


def _usable_cpus() -> int:
    """CPUs this process may run on: on a shared HPC node the affinity mask (batch job, taskset)
    is often far smaller than ``os.cpu_count()``, and extra workers would only add memory."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# --- The writer ---


class ZipWriter:
    """Writes a new archive into an open fd (from offset 0) and keeps the central records.

    Usage: call ``add_*``/``copy_raw`` in the order entries should appear, then ``finish()``.
    On any exception call ``abort()`` (or use the writer as a context manager, which does it),
    then delete the temp file. ``finish()`` does not fsync; the caller does.

    Several calls return before their data is written (``add_file``, ``add_bytes``, ``copy_raw``):
    the source descriptors they receive must stay open and unchanged until ``finish()`` or
    ``abort()`` returns. An OSError of a write or read (ENOSPC, EIO...) is raised, as the same
    exception object with its errno, from the next ``add_*``/``copy_raw``/``finish`` call.

    ``level``: zlib level 1-9, 0 stores everything. ``threads``: compression workers (default:
    the CPUs in this process's affinity mask, i.e. ``os.cpu_count()`` unless restricted).
    ``max_inflight``: bytes of plain/compressed data in flight at most (default 64 MiB).
    ``progress(entries_done, bytes_done)`` runs on the writer thread after each entry and after
    each block of a split file; ``bytes_done`` counts the bytes each entry takes as input: plain
    bytes of new entries (read and compressed), compressed bytes of copied ones (``copy_raw``,
    ``copy_run``), so a total computed the same way is reached exactly. If it raises, the write
    fails with that exception.
    """

    # Limits beyond which zip64 records are used; class attributes so tests can lower them.
    _zip64_limit = _U32
    _zip64_count_limit = _U16

    def __init__(
        self,
        fd: int,
        *,
        level: int = 6,
        threads: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        max_inflight: int = 64 << 20,
        start: int = 0,
        writeback_every: int = 0,
    ) -> None:
        """``start``: where the first entry goes (an append after an archive's current end).
        ``writeback_every``: start the kernel's writeback of each such many bytes written, so
        the final fsync has little left to do (on ext4 an fsync of any small file waits for a
        large file's pending data: writers elsewhere would stall for the whole flush)."""
        if not 0 <= level <= 9:
            raise ValueError(f"compression level must be 0..9, not {level}")
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            raise ValueError("the archive fd must not be opened with O_APPEND (pwrite appends)")
        self._fd = fd
        self._level = level
        self._progress = progress
        self._max_inflight = max(max_inflight, 1)
        self._pool = ThreadPoolExecutor(
            max_workers=threads or _usable_cpus(), thread_name_prefix="zipwrite"
        )
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._open_block_jobs: collections.deque[_Job] = collections.deque()
        self._budget = threading.Condition(threading.Lock())
        self._inflight = 0
        self._error: BaseException | None = None
        self._aborted = False
        self._closed = False
        # Writer-thread state.
        self._pos = start
        self._writeback_every = writeback_every
        self._written_back = start
        self._out: list[bytes | memoryview] = []
        self._out_len = 0
        self._central = bytearray()
        self._count = 0
        self._bytes_done = 0
        self._copy_mode = "copy_file_range"
        self._pushback: _Job | object | None = None
        self._unreleased = 0
        self._writer = threading.Thread(
            target=self._writer_main, name="zipwrite-writer", daemon=True
        )
        self._writer.start()

    def __enter__(self) -> ZipWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._closed:
            self.abort()

    # --- producer side (caller thread) ---

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ValueError("ZipWriter is finished or aborted")

    def _reserve(self, cost: int) -> None:
        """Take ``cost`` bytes of the in-flight budget, waiting for the writer if needed."""
        with self._budget:
            while self._inflight > 0 and self._inflight + cost > self._max_inflight:
                if self._error is not None:
                    raise self._error
                if self._aborted:
                    raise ValueError("ZipWriter was aborted")
                self._budget.wait()
            if self._error is not None:
                raise self._error
            self._inflight += cost

    def _release(self, cost: int) -> None:
        """Writer side: give budget back, in batches (each lock hand-off between two busy
        threads also costs a GIL hand-off). ``_release_now`` runs before the writer waits."""
        self._unreleased += cost
        if self._unreleased >= _RELEASE_BATCH:
            self._release_now()

    def _release_now(self) -> None:
        if self._unreleased:
            with self._budget:
                self._inflight -= self._unreleased
                self._budget.notify_all()
            self._unreleased = 0

    def _submit(self, job: _Job) -> None:
        self._reserve(job.cost)
        self._jobs.put(job)

    def _new_rec(
        self, meta: EntryMeta, mode: int, method: int, crc: int, size: int, flags: int = 0
    ) -> _Rec:
        name, name_flag = _encode_name(meta.name)
        is_dir = stat.S_ISDIR(mode)
        needed = _VERSION_DEFLATE if (method == DEFLATED or is_dir) else _VERSION_DEFAULT
        dos_time, dos_date = _dos_datetime(meta.mtime_ns)
        local_extra, central_extra = _meta_extras(meta)
        if stat.S_IFMT(mode) in _DEVICES:
            device = _device_extra(meta)
            local_extra += device
            central_extra += device
        return _Rec(
            name=name,
            flags=flags | name_flag,
            method=method,
            crc=crc,
            csize=size,
            usize=size,
            dos_time=dos_time,
            dos_date=dos_date,
            made_by=(_CREATE_UNIX << 8) | _VERSION_DEFLATE,
            needed=needed,
            external_attr=((mode & 0xFFFF) << 16) | (0x10 if is_dir else 0),
            local_extra=local_extra,
            central_extra=central_extra,
        )

    def _add_ready(self, meta: EntryMeta, mode: int, data: bytes) -> None:
        self._check()
        rec = self._new_rec(meta, mode, STORED, crc32(data), len(data))
        self._submit(_Job(rec, "ready", _JOB_COST + len(data), data=data))

    def add_directory(self, meta: EntryMeta) -> None:
        """An explicit directory entry (name ends with '/'), stored, size 0."""
        _check_name(meta.name, True)
        mode = _check_type(meta, stat.S_ISDIR, stat.S_IFDIR, "directory")
        self._add_ready(meta, mode, b"")

    def add_symlink(self, meta: EntryMeta, target: bytes) -> None:
        """A symlink: S_IFLNK mode, the target bytes as stored data."""
        _check_name(meta.name, False)
        mode = _check_type(meta, stat.S_ISLNK, stat.S_IFLNK, "symlink")
        self._add_ready(meta, mode, bytes(target))

    def add_special(self, meta: EntryMeta) -> None:
        """A FIFO, socket or device node: empty stored entry whose mode keeps the type bits."""
        _check_name(meta.name, False)
        fmt = stat.S_IFMT(meta.mode)
        if fmt in (0, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
            raise ValueError(f"special entry {meta.name!r} has mode {oct(meta.mode)}")
        self._add_ready(meta, meta.mode, b"")

    def add_bytes(self, meta: EntryMeta, data: bytes) -> None:
        """A regular file from memory (meant for small files); compressed on a worker."""
        _check_name(meta.name, False)
        mode = _check_type(meta, stat.S_ISREG, stat.S_IFREG, "regular file")
        self._check()
        data = bytes(data)  # a caller's bytearray may change after we return
        if len(data) < 64:
            rec = self._new_rec(meta, mode, STORED, crc32(data), len(data))
            self._submit(_Job(rec, "ready", _JOB_COST + len(data), data=data))
            return
        rec = self._new_rec(meta, mode, STORED, 0, len(data))
        rec.zip64_local = len(data) + _zip64_margin(len(data)) >= self._zip64_limit
        cost = _JOB_COST + 2 * len(data)
        self._reserve(cost)
        job = _Job(rec, "whole", cost, future=self._pool.submit(_compress_data, data, self._level))
        self._jobs.put(job)

    def add_file(self, meta: EntryMeta, src_fd: int, size: int) -> None:
        """A regular file whose bytes are ``os.pread(src_fd, ...)`` over ``[0, size)``.

        Compression runs on the workers; this call may return before the data is written, and
        ``src_fd`` must stay open (and the file unchanged) until ``finish()`` returns. The entry
        still lands in the archive in call order. Blocks while the in-flight budget is full.
        """
        _check_name(meta.name, False)
        mode = _check_type(meta, stat.S_ISREG, stat.S_IFREG, "regular file")
        self._check()
        if size < 0:
            raise ValueError("size must be >= 0")
        if size == 0:
            self._add_ready(meta, mode, b"")
            return
        rec = self._new_rec(meta, mode, STORED, 0, size)
        rec.zip64_local = size + _zip64_margin(size) >= self._zip64_limit
        if size <= _SPLIT_THRESHOLD:
            cost = _JOB_COST + size
            self._reserve(cost)
            fut = self._pool.submit(_compress_whole, src_fd, size, self._level)
            self._jobs.put(_Job(rec, "whole", cost, future=fut))
            return
        deflate = not _should_store(src_fd, size, self._level)
        rec.method = DEFLATED if deflate else STORED
        rec.needed = _VERSION_DEFLATE if deflate else _VERSION_DEFAULT
        blocks: queue.SimpleQueue = queue.SimpleQueue()
        job = _Job(rec, "blocks", _JOB_COST, blocks=blocks)
        self._submit(job)
        self._open_block_jobs.append(job)
        try:
            for offset in range(0, size, _BLOCK_SIZE):
                length = min(_BLOCK_SIZE, size - offset)
                self._reserve(length)
                last = offset + length >= size
                blocks.put(
                    self._pool.submit(
                        _compress_block, src_fd, offset, length, self._level, last, deflate
                    )
                )
            blocks.put(_END)
        except BaseException as exc:
            blocks.put(_ABANDONED)
            if self._error is None:
                self._error = exc
            raise
        finally:
            self._open_block_jobs.remove(job)

    def copy_raw(
        self, src_fd: int, entry: ZipEntry, data_offset: int, meta: EntryMeta | None = None
    ) -> None:
        """Copy ``entry``'s compressed bytes from ``src_fd`` at ``data_offset`` unchanged.

        Without ``meta`` the local header and central record match the original (name bytes,
        flags, method, CRC, sizes, DOS time, extra fields, comment); only the offset (and zip64
        records, when needed) change, and a data-descriptor flag is dropped because the new local
        header carries the real CRC and sizes (except for encrypted entries, whose password check
        may depend on it: those keep bit 3 and get a data descriptor). With ``meta``: new name
        and metadata extras, same compressed bytes, CRC, sizes and method.
        The copy happens later on the writer thread: ``src_fd`` must stay open until ``finish()``.
        """
        self._check()
        keep_descriptor = bool(entry.flags & FLAG_ENCRYPTED and entry.flags & FLAG_DATA_DESCRIPTOR)
        if meta is None:
            flags = entry.flags if keep_descriptor else entry.flags & ~FLAG_DATA_DESCRIPTOR
            # local_extra is filled from the original local header by the writer thread
            rec = _original_rec(entry, flags)
            rec.descriptor = keep_descriptor
            keep_local = True
        else:
            _check_name(meta.name, stat.S_ISDIR(meta.mode))
            # Method-specific bits (1, 2) and encryption bits stay with the data.
            keep = 0x0006 | FLAG_ENCRYPTED | 0x0040
            if keep_descriptor:
                keep |= FLAG_DATA_DESCRIPTOR
            rec = self._new_rec(meta, meta.mode, entry.method, entry.crc, 0, entry.flags & keep)
            rec.csize = entry.compressed_size
            rec.usize = entry.file_size
            rec.needed = max(rec.needed, entry.extract_version)
            rec.descriptor = keep_descriptor
            if keep_descriptor:  # the password check byte comes from the DOS time
                rec.dos_time, rec.dos_date = entry.dos_time, entry.dos_date
            # Keep foreign extras (e.g. AES 0x9901), replace the ones meta describes.
            rec.local_extra += _filter_extra(entry.extra, _META_EXTRAS)
            rec.central_extra += _filter_extra(entry.extra, _META_EXTRAS)
            keep_local = False
        limit = self._zip64_limit
        rec.zip64_local = rec.csize >= limit or rec.usize >= limit
        self._submit(_Job(rec, "raw", _JOB_COST, raw=(src_fd, entry, data_offset, keep_local)))

    def copy_run(self, src_fd: int, start: int, end: int, entries: list[ZipEntry]) -> None:
        """Copy source bytes ``[start, end)`` verbatim and list ``entries`` (which lie there, in
        order) with their original central records, only the offsets moved.

        The fast path for a commit: a run of unchanged entries costs one copy and no per-entry
        I/O; local headers, data and data descriptors stay exactly as they were.
        """
        self._check()
        if not entries:
            return
        recs = [(e.header_offset - start, _original_rec(e, e.flags)) for e in entries]
        job = _Job(recs[0][1], "run", _JOB_COST, raw=(src_fd, start, end, recs))
        self._submit(job)

    def keep_entries(self, entries: list[ZipEntry]) -> None:
        """List ``entries`` with their original central records at their CURRENT offsets,
        without writing their bytes: an append in place leaves them where they are."""
        self._check()
        if not entries:
            return
        recs = [(e.header_offset, _original_rec(e, e.flags)) for e in entries]
        self._submit(_Job(recs[0][1], "keep", _JOB_COST, raw=recs))

    def keep_central(self, records: bytes, count: int, nbytes: int) -> None:
        """Like ``keep_entries`` for ``count`` entries whose central records are already encoded
        (``records``, copied from the directory that lists them at these same offsets);
        ``nbytes``: their compressed bytes, for progress."""
        self._check()
        if count:
            keep = _Job(None, "keep", _JOB_COST, raw=(records, count, nbytes))  # type: ignore[arg-type]
            self._submit(keep)  # (a keep job has no record of its own: rec is never read)

    def finish(self, comment: bytes = b"", before_end: Callable[[], None] | None = None) -> int:
        """Wait for all pending work, write the central directory and end records.

        Returns the archive size. Raises the first error of a worker or of the writer.
        Does not fsync. ``before_end`` runs once every entry is written, before the directory
        (crash tests stop an append there).
        """
        if len(comment) > _U16:
            raise ValueError("archive comment longer than 65535 bytes")
        self._check()
        try:
            self._jobs.put(_END)
            self._writer.join()
            if self._error is not None:
                raise self._error
            if before_end is not None:
                before_end()
            size = self._write_end(bytes(comment))
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            self.abort()
            raise
        self._closed = True
        self._pool.shutdown(wait=True)
        return size

    def abort(self) -> None:
        """Stop the workers and the writer and drop pending work; idempotent.

        The caller deletes the temp file afterwards.
        """
        if self._aborted:
            return
        self._aborted = True
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._budget:
            self._budget.notify_all()
        for job in list(self._open_block_jobs):
            assert job.blocks is not None
            job.blocks.put(_ABANDONED)
        self._jobs.put(_END)
        self._writer.join()
        self._pool.shutdown(wait=True)

    @property
    def entries_written(self) -> int:
        """Number of entries written so far (central records kept)."""
        return self._count

    # --- writer thread ---

    def _writer_main(self) -> None:
        try:
            while True:
                job = self._next_job()
                if job is _END or self._aborted:
                    break
                if job.kind == "raw" and _raw_span(job) is not None:
                    batch, buf, start = self._raw_batch(job)
                    for item in batch:
                        lo, hi = _span(item)
                        self._write_job(item, buf[lo - start : hi - start])
                        self._count += 1
                        if self._progress is not None:
                            self._progress(self._count, self._bytes_done)
                    continue
                self._write_job(job)
                self._count += 1
                if self._progress is not None:
                    self._progress(self._count, self._bytes_done)
                if (
                    self._writeback_every
                    and self._pos - self._written_back >= self._writeback_every
                ):
                    self._write_back()
            if not self._aborted:
                self._flush()
        except BaseException as exc:
            if self._error is None and not self._aborted:
                self._error = exc
            with self._budget:
                self._budget.notify_all()

    def _next_job(self):
        job = self._pushback
        if job is not None:
            self._pushback = None
            return job
        if self._jobs.empty():
            self._flush_idle()
        return self._jobs.get()

    def _raw_batch(self, first: _Job) -> tuple[list[_Job], memoryview, int]:
        """``first`` plus the queued raw copies that follow it back to back in the same source,
        read with one pread: an unchanged archive is copied in ~1 MiB reads instead of one
        pread per entry (each syscall also costs a GIL hand-off to a busy producer)."""
        batch = [first]
        start, end = _span(first)
        fd = first.raw[0]
        while end - start < _OUT_BUFFER:
            try:
                nxt = self._jobs.get_nowait()
            except queue.Empty:
                break
            span = _raw_span(nxt) if nxt is not _END and nxt.kind == "raw" else None
            if span is None or span[0] != end or nxt.raw[0] != fd:
                self._pushback = nxt
                break
            batch.append(nxt)
            end = span[1]
        return batch, memoryview(_pread_exact(fd, end - start, start)), start

    def _emit(self, piece: bytes | memoryview) -> None:
        if not piece:
            return
        self._out.append(piece)
        self._out_len += len(piece)
        if self._out_len >= _OUT_BUFFER or len(self._out) >= _OUT_PIECES:
            self._flush()

    def _flush(self) -> None:
        bufs = self._out
        total = self._out_len
        self._out = []
        self._out_len = 0
        pos = self._pos
        left = total
        while left:
            if len(bufs) > 1:
                n = os.pwritev(self._fd, bufs, pos)
            else:
                n = os.pwrite(self._fd, bufs[0], pos)
            if n == 0:
                raise OSError(errno.EIO, "write returned 0")
            pos += n
            left -= n
            if left:  # short write (rare: e.g. the disk just filled up); drop what went out
                i = 0
                while n >= len(bufs[i]):
                    n -= len(bufs[i])
                    i += 1
                bufs = bufs[i:]
                if n:
                    bufs[0] = memoryview(bufs[0])[n:]
        self._pos += total

    def _write_back(self) -> None:
        """Start writeback of what was written since the last call, without waiting for it
        (POSIX_FADV_DONTNEED starts it for dirty pages and drops the clean ones: the archive's
        new bytes are read again only when a clean file is next opened)."""
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(
                self._fd,
                self._written_back,
                self._pos - self._written_back,
                os.POSIX_FADV_DONTNEED,
            )
        self._written_back = self._pos

    def _flush_idle(self) -> None:
        """About to wait: hand back the budget (or the producer could wait for us forever) and
        write out a well-filled buffer so the disk works while we wait."""
        self._release_now()
        if self._out_len >= _IDLE_FLUSH:
            self._flush()

    def _result(self, fut: Future):
        if not fut.done():
            self._flush_idle()
        return fut.result()

    def _here(self) -> int:
        return self._pos + self._out_len

    def _add_central(self, rec: _Rec, offset: int) -> None:
        self._central += rec.central_record(offset, self._zip64_limit)

    def _write_job(self, job: _Job, prefetched: memoryview | None = None) -> None:
        rec = job.rec
        offset = self._here()
        if job.kind == "ready":
            self._emit(rec.local_header())
            self._emit(job.data)
            self._bytes_done += rec.usize
        elif job.kind == "whole":
            assert job.future is not None
            method, crc, payload = self._result(job.future)
            job.future = None
            rec.method, rec.crc, rec.csize = method, crc, len(payload)
            if method == DEFLATED:
                rec.needed = max(rec.needed, _VERSION_DEFLATE)
            self._check_sizes(rec)
            self._emit(rec.local_header())
            self._emit(payload)
            self._bytes_done += rec.usize
        elif job.kind == "blocks":
            self._write_blocks(job, offset)
        elif job.kind == "keep":
            if isinstance(job.raw, tuple):  # encoded records (keep_central)
                records, count, nbytes = job.raw
                self._central += records
                self._bytes_done += nbytes
                self._count += count - 1  # the caller counts one
            else:
                for at, kept in job.raw:
                    self._add_central(kept, at)
                    self._bytes_done += kept.csize
                self._count += len(job.raw) - 1
            self._release(job.cost)
            return
        elif job.kind == "run":
            src_fd, start, end, recs = job.raw
            self._flush()
            self._copy_range(src_fd, start, end - start)
            for delta, run_rec in recs:
                self._add_central(run_rec, offset + delta)
                self._bytes_done += run_rec.csize
            self._count += max(len(recs) - 1, 0)  # the caller counts one
            self._release(job.cost)
            return
        else:
            self._write_raw(job, offset, prefetched)
        self._add_central(rec, offset)
        self._release(job.cost)

    def _check_sizes(self, rec: _Rec) -> None:
        if not rec.zip64_local and (
            rec.csize >= self._zip64_limit or rec.usize >= self._zip64_limit
        ):
            raise ValueError(f"{rec.name!r}: compressed size {rec.csize} outgrew the zip64 margin")

    def _write_blocks(self, job: _Job, offset: int) -> None:
        rec = job.rec
        # Give back the job's own share now: every earlier entry is written, so once the blocks
        # submitted so far are written too the budget is empty and the producer may go on even
        # when max_inflight is smaller than a block.
        self._release(job.cost)
        job.cost = 0
        header = rec.local_header()  # placeholder CRC and sizes, same length as the final one
        self._emit(header)
        crc = 0
        csize = 0
        usize = 0
        blocks = job.blocks
        assert blocks is not None
        while True:
            if blocks.empty():
                self._flush_idle()
            item = blocks.get()
            if item is _END:
                break
            if item is _ABANDONED:
                raise RuntimeError(f"entry {rec.name!r} was abandoned by its producer")
            block_crc, length, payload = self._result(item)
            crc = crc32_combine(crc, block_crc, length)
            csize += len(payload)
            usize += length
            self._emit(payload)
            del payload, item
            self._bytes_done += length
            self._release(length)
            if self._progress is not None:
                self._progress(self._count, self._bytes_done)
        rec.crc, rec.csize = crc, csize
        if usize != rec.usize:
            raise RuntimeError(f"{rec.name!r}: wrote {usize} bytes, expected {rec.usize}")
        self._check_sizes(rec)
        final = rec.local_header()
        assert len(final) == len(header)
        self._flush()
        self._pwrite_all(final, offset)

    def _pwrite_all(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            if n == 0:
                raise OSError(errno.EIO, "write returned 0")
            view = view[n:]
            offset += n

    def _write_raw(self, job: _Job, offset: int, prefetched: memoryview | None) -> None:
        """``prefetched``: the source bytes from the local header to the end of the data."""
        rec = job.rec
        src_fd, entry, data_offset, keep_local = job.raw
        length = entry.compressed_size
        header_len = data_offset - entry.header_offset
        header_ok = _MIN_LOCAL <= header_len <= _MAX_LOCAL
        if prefetched is not None:
            head = bytes(prefetched[:header_len])
            data = prefetched[header_len:]
        elif keep_local and header_ok:
            head = _pread_exact(src_fd, header_len, entry.header_offset)
            data = None
        else:
            head = b""
            data = None
        if keep_local:
            self._adopt_local_header(rec, head, entry)
        self._emit(rec.local_header())
        if data is not None:
            self._emit(data)
        else:
            self._flush()
            self._copy_range(src_fd, data_offset, length)
        if rec.descriptor:
            if rec.zip64_local:
                desc = zipspec.DESCRIPTOR64.pack(
                    zipspec.DESCRIPTOR_SIG, rec.crc, rec.csize, rec.usize
                )
            else:
                desc = zipspec.DESCRIPTOR.pack(
                    zipspec.DESCRIPTOR_SIG, rec.crc, rec.csize, rec.usize
                )
            self._emit(desc)
        self._bytes_done += rec.csize  # a copy costs its compressed bytes

    @staticmethod
    def _adopt_local_header(rec: _Rec, head: bytes, entry: ZipEntry) -> None:
        """Take the extra field (zip64 removed) and, if needed, the name from the original header.

        ``entry.name`` may come from an Info-ZIP Unicode Path field (0x7075) rather than from the
        stored bytes; then re-encoding it cannot give the original bytes, but the local header
        (whose name that field's CRC vouches for) can.
        """
        if len(head) >= 30:
            fields = zipspec.LOCAL_HEADER.unpack_from(head)
            if fields[0] == zipspec.LOCAL_SIG and 30 + fields[9] + fields[10] == len(head):
                local_name = head[30 : 30 + fields[9]]
                rec.local_extra = _without_zip64(head[30 + fields[9] :])
                if local_name != rec.name:
                    for hid, field in _split_extra(entry.extra) or ():
                        if (
                            hid == zipspec.EXTRA_UPATH
                            and len(field) >= 9
                            and struct.unpack_from("<I", field, 5)[0] == zlib.crc32(local_name)
                        ):
                            rec.name = local_name
                return
        rec.local_extra = _without_zip64(entry.extra)

    def _copy_range(self, src_fd: int, src_off: int, length: int) -> None:
        """Copy ``length`` bytes from ``src_fd`` at ``src_off`` to our current end."""
        dst_off = self._pos
        end = src_off + length
        while src_off < end:
            want = min(end - src_off, 1 << 30)
            n = self._copy_chunk(src_fd, src_off, dst_off, want)
            if n == 0:
                raise ZipFormatError(
                    f"archive truncated: entry data ends at {end}, source ends at {src_off}"
                )
            src_off += n
            dst_off += n
        self._pos = dst_off

    def _copy_chunk(self, src_fd: int, src_off: int, dst_off: int, want: int) -> int:
        fallback = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF)
        if self._copy_mode == "copy_file_range":
            try:
                return os.copy_file_range(src_fd, self._fd, want, src_off, dst_off)
            except OSError as exc:
                if exc.errno not in fallback:
                    raise
                self._copy_mode = "sendfile"
        if self._copy_mode == "sendfile":
            try:
                os.lseek(self._fd, dst_off, os.SEEK_SET)
                return os.sendfile(self._fd, src_fd, src_off, want)
            except OSError as exc:
                if exc.errno not in fallback:
                    raise
                self._copy_mode = "pread"
        data = os.pread(src_fd, min(want, 4 << 20), src_off)
        if data:
            self._pwrite_all(data, dst_off)
        return len(data)

    def _write_end(self, comment: bytes) -> int:
        """Central directory, zip64 end records if needed, end of central directory."""
        cd_offset = self._pos
        cd_size = len(self._central)
        view = memoryview(self._central)
        off = cd_offset
        step = 16 << 20
        for start in range(0, cd_size, step):
            self._pwrite_all(view[start : start + step], off)
            off += min(step, cd_size - start)
        view.release()
        self._central = bytearray()
        end = cd_offset + cd_size
        count = self._count
        limit = self._zip64_limit
        tail = b""
        if count >= self._zip64_count_limit or cd_offset >= limit or cd_size >= limit:
            made = (_CREATE_UNIX << 8) | _VERSION_ZIP64
            tail = zipspec.EOCD64.pack(
                zipspec.EOCD64_SIG, 44, made, _VERSION_ZIP64, 0, 0, count, count, cd_size, cd_offset
            ) + zipspec.LOCATOR64.pack(zipspec.LOCATOR64_SIG, 0, end, 1)
            if count >= self._zip64_count_limit:
                count = _U16
            if cd_size >= limit:
                cd_size = _U32
            if cd_offset >= limit:
                cd_offset = _U32
        tail += (
            zipspec.EOCD.pack(
                zipspec.EOCD_SIG, 0, 0, count, count, cd_size, cd_offset, len(comment)
            )
            + comment
        )
        self._pwrite_all(tail, end)
        self._pos = end + len(tail)
        try:  # whatever the file held beyond our end would hide the end records
            os.ftruncate(self._fd, self._pos)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # not a regular file
                raise
        return self._pos
