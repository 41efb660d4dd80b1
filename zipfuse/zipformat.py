"""Zip archive format: reading the end records and the central directory.

No FUSE and no trio here. Everything works on a raw file descriptor with ``os.pread`` so that
many threads can read one archive at once without a shared file position.

INTERFACE CONTRACT (other modules rely on exactly these names):

- ``ZipFormatError(ValueError)``: the archive is not a zip or is damaged; ``str(exc)`` is a
  one-line human message (no traceback needed to understand it).
- ``ZipEntry``: one central-directory record, decoded. Fields listed below.
- ``CentralDirectory``: the whole parsed directory plus archive-level facts.
- ``read_central_directory(fd, size=None, *, keep_names=False, max_depth=None)
  -> CentralDirectory``
- ``local_data_offset(fd, entry, archive_size=None) -> int``: absolute offset of the entry's
  compressed bytes (``archive_size``: the size its directory was read with; else one fstat).

Robustness rules: every length and count read from the file is checked against the bytes that
are really there before it is used, so damaged input raises ``ZipFormatError`` (never
``IndexError``/``struct.error``) and nothing larger than the file itself is ever allocated.

Hostile layouts are refused when the directory is read, because no zip writer produces them:
entries whose local headers and data overlap each other or the central directory (the
"overlapping files" zip bombs, or two records naming one local header), and sizes that no file
can have (2**63 bytes or more). A symlink entry whose target would be ``PATH_MAX`` (4096) bytes
or longer is no symlink Linux could hold; it is presented as a regular file.

Data prepended to an archive (self-extracting stubs, ``cat stub.exe x.zip``) is handled like
CPython's zipfile does: the central directory must end right before the end record, so the
difference between where it really starts and where the end record says it starts is added to
every ``header_offset``.
"""

from __future__ import annotations

import array
import dataclasses
import itertools
import operator
import os
import stat
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

from . import zipspec

# Compression methods (APPNOTE 4.4.5).
STORED = 0
DEFLATED = 8
DEFLATE64 = 9
BZIP2 = 12
LZMA = 14
ZSTD = 93

FLAG_ENCRYPTED = 0x1
FLAG_DATA_DESCRIPTOR = 0x8
FLAG_UTF8 = 0x800

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")
_I32 = struct.Struct("<l")
_U64 = struct.Struct("<Q")

_MAX_COMMENT = 0xFFFF
_MAX_SIZE = 2**63 - 1  # st_size and off_t are signed 64-bit
_PATH_MAX = 4096  # a symlink target must be shorter
_DOS_DIR = 0x10
_DOS_READONLY = 0x01


class ZipFormatError(ValueError):
    """The archive cannot be parsed; the message says why, in one line."""


@dataclasses.dataclass(slots=True)
class ZipEntry:
    """One central-directory record with the facts a filesystem needs, already decoded."""

    index: int  # position in the central directory (0-based)
    name: str  # decoded name as stored (UTF-8 if flag 0x800, see _decode_name); NOT sanitised
    flags: int  # general purpose bit flags
    method: int  # compression method
    crc: int
    compressed_size: int  # zip64-resolved
    file_size: int  # zip64-resolved
    header_offset: int  # absolute offset of the local header in the file (prefix/SFX included)
    create_system: int  # "version made by" high byte (3 = Unix)
    create_version: int  # "version made by" low byte
    extract_version: int
    external_attr: int
    mode: int  # full st_mode incl. file type bits (S_IFREG/S_IFDIR/S_IFLNK/S_IFIFO...)
    uid: int | None  # from Info-ZIP 'ux' (0x7875) or 'Ux' (0x5855); None if absent
    gid: int | None
    mtime_ns: int  # UTC ns: NTFS 0x000a > extended timestamp 0x5455 > DOS time (local, naive)
    atime_ns: int | None
    dos_time: int  # raw DOS time field (kept so unchanged entries can be re-emitted as-is)
    dos_date: int
    extra: bytes  # raw central extra field
    comment: bytes  # raw entry comment
    # the name's bytes as stored, written back unchanged on commit; b"" when they are ASCII and
    # ``name`` encodes back to them (one copy less per entry)
    raw_name: bytes = b""
    rdev: int = 0  # device number of a character/block device entry (PKWARE Unix extra 0x000d)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)


# What a node needs of a record in a usual layout (``CentralDirectory.stats_at``): st_mode, uid,
# gid, size, mtime_ns, atime_ns (the mtime when the record has none), and the last component of
# the name as stored (b"" for a directory's own entry)
RecordStat = tuple[int, int, int, int, int, int, bytes]


class CentralDirectory:
    """The parsed central directory plus archive-level facts.

    Records are checked once when the directory is read, but decoded into ``ZipEntry`` objects
    only on demand (``entry``, ``entries_at``; ``entries`` decodes them all): a mount needs the
    names for its tree and nothing else until a directory is listed. ``detach`` drops the
    in-memory copy of the directory; records are then re-read from the archive when needed.
    """

    __slots__ = (
        "comment", "cd_offset", "cd_size", "prefix_size", "archive_size", "zip64",
        "end_offset", "_buf", "_fd", "_offs", "_hdr", "_concat", "_entries", "_names",
        "used",
    )  # fmt: skip

    def __init__(
        self,
        buf: bytes,
        offs: array.array,
        hdr: array.array,
        concat: int,
        *,
        names: list[bytes] | None = None,
        comment: bytes,
        cd_offset: int,
        cd_size: int,
        prefix_size: int,
        archive_size: int,
        zip64: bool,
        end_offset: int = -1,
    ) -> None:
        self.comment = comment  # archive comment
        self.cd_offset = cd_offset  # absolute offset of the central directory in the file
        self.cd_size = cd_size
        self.prefix_size = prefix_size  # bytes before the first entry (self-extracting stub)
        self.archive_size = archive_size
        self.zip64 = zip64
        self.end_offset = end_offset  # where the end records stop (bytes after it: trailing data)
        self._buf: bytes | None = buf  # the directory's bytes, until ``detach``
        self._fd: int | None = None  # where to re-read records from once detached
        self._offs = offs  # record i spans [offs[i], offs[i + 1]) of the directory
        self._hdr = hdr  # absolute local header offset of record i
        self._concat = concat
        self._entries: list[ZipEntry] | None = None
        self._names: list[bytes] | None = names
        # bytes the entries take in the archive (the sum of ``spans``), worked out by the
        # parse: a commit sizes dead space without a pass over every record
        self.used: int | None = None

    def __len__(self) -> int:
        return len(self._hdr)

    def record_span(self, index: int) -> tuple[int, int]:
        """Where record ``index`` starts and ends, relative to the directory's start."""
        return self._offs[index], self._offs[index + 1]

    @property
    def concat(self) -> int:
        """Bytes prepended without adjusting the offsets (``cat stub.exe x.zip``)."""
        return self._concat

    @property
    def entries(self) -> list[ZipEntry]:
        """Every entry, decoded (and kept) on first use."""
        if self._entries is None:
            self._entries = self.entries_at(range(len(self)))
        return self._entries

    def iter_entries(self, chunk: int = 4096) -> Iterator[ZipEntry]:
        """Every entry, decoded a chunk at a time and not kept (see ``entries``)."""
        for start in range(0, len(self), chunk):
            yield from self.entries_at(range(start, min(start + chunk, len(self))))

    def entry(self, index: int) -> ZipEntry:
        if self._entries is not None:
            return self._entries[index]
        start, end = self._offs[index], self._offs[index + 1]
        if self._buf is not None:
            return _decode_records(self._buf, (start,), (index,), self._concat)[0]
        return _decode_records(self._read(start, end - start), (0,), (index,), self._concat)[0]

    def header_offsets(self) -> array.array:
        """Absolute local header offset of every entry, in directory order (no decoding)."""
        return self._hdr

    def entries_at(self, indices: Sequence[int]) -> list[ZipEntry]:
        """Decode the given records; once detached, one pread covers them when they are close."""
        return cast("list[ZipEntry]", self._records_at(indices, False))

    def stats_at(self, indices: Sequence[int]) -> list[RecordStat | ZipEntry]:
        """What listing a directory needs of the given records: a ``RecordStat`` for each
        record in a usual layout (see ``_decode_records``), the decoded ``ZipEntry`` of any
        other. No ``ZipEntry`` is made for the former: ``entry`` decodes one when a read or a
        commit needs it, and gives exactly the metadata of its ``RecordStat``."""
        return self._records_at(indices, True)

    def _records_at(self, indices: Sequence[int], stats: bool) -> list[Any]:
        if self._entries is not None:
            return [self._entries[i] for i in indices]
        offs, concat = self._offs, self._concat
        buf = self._buf
        starts = list(map(offs.__getitem__, indices))  # C-level passes: once per listing
        if buf is None and indices:
            first, last = min(indices), max(indices)
            span = offs[last + 1] - offs[first]
            size = sum(map(offs.__getitem__, map(_NEXT, indices))) - sum(starts)
            if span > 2 * size + 65536:
                return self._records_apart(indices, stats)
            base = offs[first]
            buf = self._read(base, span)
            starts = list(map(operator.sub, starts, itertools.repeat(base)))
        if buf is None:  # no indices
            return []
        return _decode_records(buf, starts, indices, concat, stats)

    def _records_apart(self, indices: Sequence[int], stats: bool) -> list[Any]:
        """``_records_at`` of a detached directory for records far apart (a directory's files
        and its subdirectories' own entries): one read per cluster of close records."""
        offs, concat = self._offs, self._concat
        out: list[Any] = [None] * len(indices)
        order = sorted(range(len(indices)), key=indices.__getitem__)
        cluster: list[int] = []
        for k in [*order, -1]:  # -1: the end
            if cluster and (k < 0 or offs[indices[k]] - offs[indices[cluster[-1]] + 1] > 16384):
                first, last = indices[cluster[0]], indices[cluster[-1]]
                buf = self._read(offs[first], offs[last + 1] - offs[first])
                wanted = [indices[j] for j in cluster]
                positions = [offs[i] - offs[first] for i in wanted]
                entries = _decode_records(buf, positions, wanted, concat, stats)
                for j, entry in zip(cluster, entries, strict=True):
                    out[j] = entry
                cluster = []
            cluster.append(k)
        return out

    def _read(self, start: int, size: int) -> bytes:
        assert self._fd is not None
        return _pread_exact(self._fd, size, self.cd_offset + start, "central directory")

    def detach(self, fd: int) -> None:
        """Free the in-memory directory; read records from ``fd`` (the same, unchanged archive,
        kept open by the caller) from now on."""
        self._fd = fd
        self._buf = None

    def spans(self, indices: Iterable[int] | None = None) -> array.array:
        """Bytes each entry takes in the archive if its local extras equal its central ones
        (the usual case): local header, name, extra, compressed data. From the fixed fields,
        no decoding. ``indices``: only those entries."""
        fields = _CDFIELDS.unpack_from
        out = array.array("Q")
        offs = self._offs
        if self._buf is None and indices is not None:  # a few records: read just those
            buf = b""
        else:
            buf = self._buf if self._buf is not None else self._read(0, offs[-1])
        for i in range(len(self)) if indices is None else indices:
            if not buf:
                rec, at = self._read(offs[i], offs[i + 1] - offs[i]), 0
            else:
                rec, at = buf, offs[i]
            _, csize, usize, nlen, elen, *_ = fields(rec, at + 5)
            if csize == 0xFFFFFFFF:  # zip64: the real size is in the extra field
                csize = self.entry(i).compressed_size
            out.append(30 + nlen + elen + csize)
        return out

    def used_bytes(self) -> int:
        """``used``, worked out now if the parse did not."""
        if self.used is None:
            self.used = sum(self.spans())
        return self.used

    def index_fields(self) -> dict[str, Any]:
        """What ``from_index`` needs besides the directory's bytes (plain values, for
        ``indexcache``): the parse's results, so a later mount of the same bytes skips it."""
        return {
            "offs": self._offs.tobytes(),
            "hdr": self._hdr.tobytes(),
            "concat": self._concat,
            "comment": self.comment,
            "cd_offset": self.cd_offset,
            "cd_size": self.cd_size,
            "prefix_size": self.prefix_size,
            "archive_size": self.archive_size,
            "zip64": self.zip64,
            "end_offset": self.end_offset,
            "used": self.used,
        }

    @classmethod
    def from_index(cls, buf: bytes, fields: dict[str, Any]) -> CentralDirectory:
        """The directory ``index_fields`` described, over the same bytes ``buf`` (the caller
        checked they are the bytes it was made from). Raises ValueError if it does not fit."""
        offs, hdr = array.array("Q"), array.array("Q")
        offs.frombytes(fields["offs"])
        hdr.frombytes(fields["hdr"])
        if len(offs) != len(hdr) + 1 or len(buf) != fields["cd_size"] or offs[-1] > len(buf):
            raise ValueError("index does not fit the central directory")
        cd = cls(
            buf,
            offs,
            hdr,
            fields["concat"],
            comment=fields["comment"],
            cd_offset=fields["cd_offset"],
            cd_size=fields["cd_size"],
            prefix_size=fields["prefix_size"],
            archive_size=fields["archive_size"],
            zip64=fields["zip64"],
            end_offset=fields["end_offset"],
        )
        cd.used = fields["used"]
        return cd

    def take_names(self) -> list[bytes]:
        """The name key of every record, without decoding it (kept by ``keep_names``, handed
        over once, then rebuilt from the directory if asked again).

        A key is the raw ASCII name, ending with '/' exactly when the entry is a directory;
        ``DECODE`` (a NUL byte, which no usable name holds) when the entry must be decoded to
        know its name or kind (non-ASCII names, an Info-ZIP Unicode Path field, a trailing '/'
        that disagrees with the entry's mode).
        """
        names, self._names = self._names, None
        if names is None:
            buf = self._buf if self._buf is not None else self._read(0, self._offs[-1])
            names = []
            _scan_records(buf, self._concat, self.cd_offset, len(self), names)
        return names


_NEXT = (1).__add__
# a central record's signature, made-by system, csize, usize, name and extra lengths, external
# attributes and local header offset (what ``_stat_records`` uses)
_STAT_HEAD = struct.Struct("<4sxB14xLLHH6xLL")
# from offset 5 of a central record: made-by system, csize, usize, name, extra and comment
# lengths, disk, external attributes, local header offset
_CDFIELDS = struct.Struct("<B14xLLHHHH2xLL")
DECODE = b"\0"  # name key of an entry whose name or kind needs decoding (see take_names)
MAX_DEPTH = 1000  # path components; deeper entries make the mount refuse the archive


def _pread_exact(fd: int, size: int, offset: int, what: str) -> bytes:
    """pread that either returns exactly ``size`` bytes or raises ZipFormatError."""
    try:
        data = os.pread(fd, size, offset)
    except OSError as exc:
        raise ZipFormatError(f"cannot read {what}: {exc.strerror or exc}") from exc
    if len(data) != size:
        raise ZipFormatError(f"truncated archive: {what} at offset {offset} is incomplete")
    return data


def _find_eocd(fd: int, size: int) -> Iterator[tuple[int, tuple[int, ...], bytes]]:
    """End record candidates, best first: (position, unpacked fields, archive comment).

    Records whose comment ends exactly at the end of the file come first (latest first), then
    those followed by other bytes (trailing junk, or the half-written tail of an append in
    place). The caller takes the first whose central directory parses; the scan is only done
    when the fast path's candidate does not.
    """
    if size < zipspec.EOCD.size:
        raise ZipFormatError("not a zip archive (no end-of-central-directory record)")
    fast = size - zipspec.EOCD.size
    tail = _pread_exact(fd, zipspec.EOCD.size, fast, "end record")
    tried = tail[:4] == zipspec.EOCD_SIG and tail[-2:] == b"\0\0"
    if tried:  # no archive comment: the record is the last 22 bytes
        yield fast, zipspec.EOCD.unpack(tail), b""
    start = max(0, size - zipspec.EOCD.size - _MAX_COMMENT)
    buf = _pread_exact(fd, size - start, start, "end of archive")
    junk: list[tuple[int, tuple[int, ...], bytes]] = []
    pos = buf.rfind(zipspec.EOCD_SIG, 0, len(buf) - zipspec.EOCD.size + 4)
    while pos >= 0:
        fields = zipspec.EOCD.unpack_from(buf, pos)
        end = pos + zipspec.EOCD.size + fields[7]
        if end == len(buf):  # comment runs exactly to the end of the file: best candidates
            if not (tried and start + pos == fast):
                tried = True
                yield start + pos, fields, buf[pos + zipspec.EOCD.size : end]
        elif end < len(buf):  # trailing junk, or the torn tail of an interrupted append
            junk.append((start + pos, fields, buf[pos + zipspec.EOCD.size : end]))
        pos = buf.rfind(zipspec.EOCD_SIG, 0, pos)
    yield from junk
    if not tried and not junk:
        raise ZipFormatError("not a zip archive (no end-of-central-directory record)")


def _find_eocd64(fd: int, eocd_pos: int) -> tuple[int, tuple[int, ...]] | None:
    """Return (position, fields) of the zip64 end record if a locator precedes the end record."""
    loc_pos = eocd_pos - zipspec.LOCATOR64.size
    if loc_pos < 0:
        return None
    loc = zipspec.LOCATOR64.unpack(
        _pread_exact(fd, zipspec.LOCATOR64.size, loc_pos, "zip64 locator")
    )
    if loc[0] != zipspec.LOCATOR64_SIG:
        return None
    if loc[3] > 1:
        raise ZipFormatError("multi-disk zip archives are not supported")
    # Usually the record sits right before the locator; with prepended data the recorded
    # offset is off by the prefix length, so try the adjacent position first.
    for pos in (loc_pos - zipspec.EOCD64.size, loc[2]):
        if pos >= 0 and pos + zipspec.EOCD64.size <= loc_pos:
            rec = zipspec.EOCD64.unpack(
                _pread_exact(fd, zipspec.EOCD64.size, pos, "zip64 end record")
            )
            if rec[0] == zipspec.EOCD64_SIG:
                return pos, rec
    raise ZipFormatError("zip64 end-of-central-directory record not found")


def read_central_directory(
    fd: int, size: int | None = None, *, keep_names: bool = False, max_depth: int | None = None
) -> CentralDirectory:
    """Parse the end records and check the whole central directory (one pread).

    ``keep_names``: also collect every record's name key for ``take_names`` in the same pass
    (what a mount builds its tree from). ``max_depth``: refuse an entry nested deeper (a mount
    passes MAX_DEPTH; a commit re-reading what it wrote does not refuse its own archive).

    Each end record candidate is validated by parsing the directory it points to; a candidate
    that does not parse (garbage, or the torn tail of an interrupted append) is skipped for the
    previous one. When none in the last 64 KiB parses, earlier end records are looked for
    (``_earlier_eocds``: an append in flight may have written megabytes after the previous
    end). When none parses, the error of the best candidate is raised.
    """
    if size is None:
        size = os.fstat(fd).st_size
    first_error: ZipFormatError | None = None
    try:
        for eocd_pos, eocd, comment in _find_eocd(fd, size):
            try:
                return _read_directory(fd, size, eocd_pos, eocd, comment, keep_names, max_depth)
            except ZipFormatError as exc:
                if first_error is None:
                    first_error = exc
    except ZipFormatError as exc:  # no end record at all near the end
        if first_error is None:
            first_error = exc
    for eocd_pos, eocd, comment in _earlier_eocds(fd, size):
        try:
            cd = _read_directory(fd, size, eocd_pos, eocd, comment, keep_names, max_depth)
        except ZipFormatError:
            continue
        if len(cd) and not cd.concat and not cd.prefix_size:
            return cd
    assert first_error is not None
    raise first_error


_SCAN_CHUNK = 1 << 20


def _earlier_eocds(fd: int, size: int) -> Iterator[tuple[int, tuple[int, ...], bytes]]:
    """End records before the last 64 KiB, latest first, for ``read_central_directory`` when
    no candidate near the end is valid: the end of the previous version, followed by the torn
    tail of an append in place (a new mount started while a writer appends, or after a crash
    before recovery).

    Paid only in that case, and only for files that start with a local header (as every
    archive that is appended to does; a file that is no zip fails at once). The file is read
    backwards in 1 MiB pieces, at most all of it: the torn tail is what the append wrote, so
    reading it back costs the order of what tore it. Only records that could end an archive
    appended in place are offered: its directory right before it (no prepended bytes).
    """
    end = size - zipspec.EOCD.size - _MAX_COMMENT  # later positions: _find_eocd looked there
    if end <= 0:
        return
    try:
        if os.pread(fd, 4, 0) != zipspec.LOCAL_SIG:
            return
    except OSError:
        return
    while end > 0:
        lo = max(0, end - _SCAN_CHUNK)
        buf = _pread_exact(fd, end + zipspec.EOCD.size - lo, lo, "archive")
        pos = buf.rfind(zipspec.EOCD_SIG, 0, end - lo + 3)
        while pos >= 0:
            fields = zipspec.EOCD.unpack_from(buf, pos)
            at, cd_size, cd_offset, clen = lo + pos, fields[5], fields[6], fields[7]
            ends = (at, at - zipspec.EOCD64.size - zipspec.LOCATOR64.size)  # zip64 records
            fits = at + zipspec.EOCD.size + clen <= size
            if fits and (0xFFFFFFFF in (cd_size, cd_offset) or cd_offset + cd_size in ends):
                yield at, fields, _pread_exact(fd, clen, at + zipspec.EOCD.size, "comment")
            pos = buf.rfind(zipspec.EOCD_SIG, 0, pos + 3)
        end = lo


def _read_directory(
    fd: int,
    size: int,
    eocd_pos: int,
    eocd: tuple[int, ...],
    comment: bytes,
    keep_names: bool,
    max_depth: int | None,
) -> CentralDirectory:
    count, cd_size, real_cd_offset, concat, zip64 = _bounds(fd, eocd_pos, eocd)
    buf = _pread_exact(fd, cd_size, real_cd_offset, "central directory")
    names: list[bytes] | None = [] if keep_names else None
    scanned = _scan_plain_records(buf, concat, count, names, max_depth)
    if scanned is None:
        scanned = _scan_records(buf, concat, real_cd_offset, count, names, max_depth)
    offs, hdr, csize = scanned
    n = len(hdr)
    # More than 65535 entries without zip64 records: the 16-bit count wrapped around.
    if n != count and (n < count or (n - count) % 0x10000):
        raise ZipFormatError(f"central directory holds {n} entries but the end record says {count}")
    cd = CentralDirectory(
        buf,
        offs,
        hdr,
        concat,
        names=names,
        comment=comment,
        cd_offset=real_cd_offset,
        cd_size=cd_size,
        prefix_size=min(hdr) if n else real_cd_offset,
        archive_size=size,
        zip64=zip64,
        end_offset=eocd_pos + zipspec.EOCD.size + len(comment),
    )
    _check_layout(cd, csize)
    # a span is its central record's length - 16 (local header 30 instead of 46 bytes) - the
    # entry comment (rare; ignored: dead space is an estimate) + the compressed size
    cd.used = offs[-1] - offs[0] - 16 * n + sum(csize)
    return cd


def _bounds(fd: int, eocd_pos: int, eocd: tuple[int, ...]) -> tuple[int, int, int, int, bool]:
    """Entry count, size, real offset, prepended bytes (``concat``) and zip64-ness of the
    directory the end record at ``eocd_pos`` describes."""
    _, disk, cd_disk, _, count, cd_size, cd_offset, _ = eocd
    cd_end = eocd_pos  # the central directory ends where the end records begin
    zip64 = False
    found64 = _find_eocd64(fd, eocd_pos)
    if found64 is not None:
        zip64 = True
        cd_end, rec = found64
        disk, cd_disk, count, cd_size, cd_offset = rec[4], rec[5], rec[7], rec[8], rec[9]
    if disk not in (0, 0xFFFF) or cd_disk not in (0, 0xFFFF):
        raise ZipFormatError("multi-disk zip archives are not supported")
    if cd_size > cd_end:
        raise ZipFormatError(f"central directory size {cd_size} exceeds the archive")
    if count * zipspec.CENTRAL_HEADER.size > cd_size:
        raise ZipFormatError(f"entry count {count} does not fit in a {cd_size}-byte directory")
    real_cd_offset = cd_end - cd_size
    concat = real_cd_offset - cd_offset
    if concat < 0:
        raise ZipFormatError("central directory offset points beyond its real position")
    return count, cd_size, real_cd_offset, concat, zip64


def kept_runs(dropped: Sequence[int], count: int) -> Iterator[tuple[int, int]]:
    """The runs [lo, hi) of indices below ``count`` left between the ascending ``dropped``."""
    for lo, hi in itertools.pairwise([-1, *dropped, count]):
        if lo + 1 < hi:
            yield lo + 1, hi


def appended_directory(
    fd: int, old: CentralDirectory, dropped: Sequence[int], kept_records: bytes
) -> CentralDirectory:
    """The directory of an archive just appended to in place: the records of ``old`` but
    ``dropped`` (``kept_records``, as stored), then the new ones. Only the new records are
    scanned: re-reading tens of thousands of unchanged ones would make a small commit cost
    the archive again."""
    size = os.fstat(fd).st_size
    eocd_pos, eocd, comment = next(_find_eocd(fd, size))
    count, cd_size, cd_offset, concat, zip64 = _bounds(fd, eocd_pos, eocd)
    buf = _pread_exact(fd, cd_size, cd_offset, "central directory")
    nkept = len(old) - len(dropped)
    if concat or memoryview(buf)[: len(kept_records)] != kept_records or count < nkept:
        raise ZipFormatError("the appended central directory does not start with the kept one")
    kept_len = len(kept_records)
    new_offs, new_hdr, _ = _scan_records(buf[kept_len:], 0, cd_offset + kept_len, count - nkept)
    old_offs, old_hdr = old._offs, old._hdr
    offs, hdr = array.array("Q"), array.array("Q")
    at = 0
    for lo, hi in kept_runs(dropped, len(old)):
        shift = at - old_offs[lo]
        run = old_offs[lo:hi]
        offs.extend(run if not shift else array.array("Q", [o + shift for o in run]))
        hdr.extend(old_hdr[lo:hi])
        at = old_offs[hi] + shift
    if at != kept_len:
        raise ZipFormatError("the appended central directory does not start with the kept one")
    offs.extend(array.array("Q", [o + kept_len for o in new_offs]))
    hdr.extend(new_hdr)
    cd = CentralDirectory(
        buf,
        offs,
        hdr,
        0,
        comment=comment,
        cd_offset=cd_offset,
        cd_size=cd_size,
        prefix_size=old.prefix_size,
        archive_size=size,
        zip64=zip64,
        end_offset=eocd_pos + zipspec.EOCD.size + len(comment),
    )
    if len(hdr) != count:
        raise ZipFormatError(f"central directory holds {len(hdr)} entries, expected {count}")
    cd.used = old.used_bytes() - sum(old.spans(dropped)) + sum(cd.spans(range(nkept, count)))
    return cd


def _u32(heads: bytes, at: int, stride: int, add: int = 0) -> array.array:
    """The 32-bit little-endian field at byte ``at`` of every ``stride`` bytes of ``heads``,
    plus ``add``, as 64-bit values: four strided copies into the low bytes of each value."""
    n = len(heads) // stride
    out = bytearray(8 * n)
    for byte in range(4):
        out[byte::8] = heads[at + byte :: stride]
    values = array.array("Q", out)
    if add:
        values = array.array("Q", map(operator.add, values, itertools.repeat(add)))
    return values


def _scan_plain_records(
    buf: bytes, concat: int, count: int, names: list[bytes] | None, max_depth: int | None
) -> tuple[array.array, array.array, array.array] | None:
    """``_scan_records`` for the usual directory in a few C-level passes over all records
    instead of a Python loop per record (after the imports, a mount's biggest cost): only
    records, no zip64, each extra field absent or exactly Info-ZIP's 'UT' + 'ux', ASCII names,
    Unix modes that agree with the names' trailing '/'. Returns None for anything else (also
    when a signature occurs inside a record), and ``_scan_records`` then goes record by record.
    """
    add, rep = operator.add, itertools.repeat
    getitem = cast(Callable[[bytes, slice], bytes], operator.getitem)  # part[a:b]
    rest = zipspec.CENTRAL_HEADER.size - 4  # fixed part after the signature (42 bytes)
    parts = buf.split(zipspec.CENTRAL_SIG)
    n = len(parts) - 1
    if parts[0] or n < max(count, 1) or sys.byteorder != "little":
        return None
    del parts[0]
    lens = list(map(len, parts))
    if min(lens) < rest:
        return None
    heads = b"".join(map(getitem, parts, rep(slice(0, rest))))
    u16 = array.array("H", heads)  # 21 per record: field k of the record at 16-bit index k
    nlen, elen, clen = u16[12::21], u16[13::21], u16[14::21]
    name_end = list(map(add, nlen, rep(rest)))
    kinds = list(map(operator.and_, u16[18::21], rep(0o170000)))  # high half of external
    if (
        lens != list(map(add, map(add, name_end, elen), clen))  # a signature inside a record
        or heads[1::rest] != b"\3" * n  # made on Unix
        or 0xFFFF in u16[9::21]  # compressed size >= 4 GiB - 64 KiB (or zip64)
        or 0xFFFF in u16[11::21]
        or 0xFFFF in u16[20::21]  # local header offset likewise
        or 0xFFFF in u16[15::21]  # disk number
        or 0 in kinds
        or (max_depth is not None and max(nlen) > 2 * max_depth)
        or not set(elen) <= {0, 24}
    ):
        return None
    # every record with a 24-byte extra and no comment (Info-ZIP's usual): its extra and name
    # are at fixed distances from its end and start, cut with one slice object for all
    uniform = elen.count(24) == n and not any(clen) and min(nlen) > 0
    if uniform:
        extra = b"".join(map(getitem, parts, rep(slice(-24, None))))
    else:
        extra = b"".join(map(getitem, parts, map(slice, name_end, map(add, name_end, elen))))
    k = len(extra) // 24
    zero = bytes(k)
    if (
        extra[2::24] != b"\5" * k  # 'UT' of 5 bytes, then 'ux' of 11
        or extra[3::24] != zero
        or extra[11::24] != b"\x0b" * k
        or extra[12::24] != zero
    ):
        return None
    if names is not None:
        if uniform:
            raws = list(map(getitem, parts, rep(slice(rest, -24))))
        else:
            raws = list(map(getitem, parts, map(slice, rep(rest), name_end)))
        if not all(map(bytes.isascii, raws)) or list(map(bytes.endswith, raws, rep(b"/"))) != list(
            map(operator.eq, kinds, rep(stat.S_IFDIR))
        ):
            return None
        pos = extra.find(b"up")
        if pos >= 0:  # Info-ZIP's Unicode path field id, or just those bytes: decode to know
            with_extra = [i for i, e in enumerate(elen) if e]
            while pos >= 0:
                raws[with_extra[pos // 24]] = DECODE
                if pos % 24 == 23 and pos // 24 + 1 < k:  # straddles two records: both
                    raws[with_extra[pos // 24 + 1]] = DECODE
                pos = extra.find(b"up", pos + 1)
        names.extend(raws)
    offs = array.array("Q", itertools.accumulate(map(add, lens, rep(4)), initial=0))
    return offs, _u32(heads, 38, rest, concat), _u32(heads, 16, rest)


def _scan_records(
    buf: bytes,
    concat: int,
    cd_offset: int,
    count: int,
    names: list[bytes] | None = None,
    max_depth: int | None = None,
) -> tuple[array.array, array.array, array.array]:
    """Check consecutive central-directory records in ``buf``; return where each starts (plus
    the end), its absolute local header offset and its compressed size.

    Records are read until the buffer ends (the 16-bit count of a non-zip64 archive with more
    than 65535 entries has wrapped around); bytes after the expected ``count`` records that
    are not a record (e.g. a digital signature) are ignored. Records that need more than the
    fixed fields (zip64 sizes, unusual extra fields) are fully decoded here once, so a damaged
    one is refused now rather than when its directory is first listed. With ``names``, the
    name key of each record is appended to it (see ``CentralDirectory.take_names``).
    """
    offs = array.array("Q")
    hdr = array.array("Q")
    csizes = array.array("Q")
    fields = _CDFIELDS.unpack_from
    size = len(buf)
    pos = 0
    index = 0
    while pos < size:
        if not buf.startswith(zipspec.CENTRAL_SIG, pos):
            if index >= count:
                break
            raise ZipFormatError(f"bad central directory signature at offset {cd_offset + pos}")
        if pos + zipspec.CENTRAL_HEADER.size > size:
            raise ZipFormatError(f"truncated central directory record #{index}")
        system, csize, usize, nlen, elen, clen, disk, external, offset = fields(buf, pos + 5)
        start = pos + zipspec.CENTRAL_HEADER.size
        end = start + nlen + elen + clen
        if end > size:
            raise ZipFormatError(f"central directory record #{index} overruns the directory")
        if max_depth is not None and nlen > 2 * max_depth:  # else too short to be that deep
            _check_depth(buf, pos, index, concat, max_depth)
        if (
            (
                elen
                and not (  # the usual Info-ZIP layout: 'UT' (5 bytes) then 'ux' (11 bytes)
                    elen == 24
                    and buf.startswith(b"\x05\x00", start + nlen + 2)
                    and buf.startswith(b"\x0b\x00", start + nlen + 11)
                )
            )
            or offset == 0xFFFFFFFF
            or usize == 0xFFFFFFFF
            or csize == 0xFFFFFFFF
            or disk == 0xFFFF
        ):
            entry = _decode_record(buf, pos, index, concat)
            if entry.file_size > _MAX_SIZE or entry.compressed_size > _MAX_SIZE:
                raise ZipFormatError(f"entry #{index} ({entry.name!r}) has an impossible size")
            offset, csize = entry.header_offset - concat, entry.compressed_size
        offs.append(pos)
        hdr.append(offset + concat)
        csizes.append(csize)
        if names is not None:
            raw = buf[start : start + nlen]
            slash = raw.endswith(b"/")
            unix = external >> 16
            if system == 3 and unix:
                kind = unix & 0o170000
                is_dir = kind == stat.S_IFDIR or (kind == 0 and slash)
            else:
                is_dir = slash or bool(external & _DOS_DIR)
            if (
                is_dir != slash
                or not raw.isascii()
                or (elen and buf.find(b"up", start + nlen, start + nlen + elen) >= 0)
            ):
                raw = DECODE  # the entry must be decoded to know its name or kind
            names.append(raw)
        pos = end
        index += 1
    offs.append(pos)
    return offs, hdr, csizes


def _check_depth(buf: bytes, pos: int, index: int, concat: int, max_depth: int) -> None:
    """Refuse an entry nested deeper than ``max_depth``: each level costs memory and time."""
    entry = _decode_record(buf, pos, index, concat)
    depth = sum(1 for part in entry.name.split("/") if part not in ("", "."))
    if depth > max_depth:
        raise ZipFormatError(
            f"entry #{index} ({entry.name[:40]!r}...) is nested {depth} levels deep; "
            f"zipfuse refuses paths deeper than {max_depth} levels"
        )


def _decode_record(buf: bytes, pos: int, index: int, concat: int) -> ZipEntry:
    """Decode the record at ``pos`` of ``buf`` (already checked to lie within it)."""
    if not buf.startswith(zipspec.CENTRAL_SIG, pos):
        raise ZipFormatError(f"central directory record #{index} changed on disk")
    fields = zipspec.CENTRAL_HEADER.unpack_from(buf, pos)
    nlen, elen, clen = fields[11], fields[12], fields[13]
    start = pos + zipspec.CENTRAL_HEADER.size
    raw_name = buf[start : start + nlen]
    extra = buf[start + nlen : start + nlen + elen]
    comment = buf[start + nlen + elen : start + nlen + elen + clen]
    return _make_entry(index, fields, raw_name, extra, comment, concat)


def _decode_records(
    buf: bytes,
    positions: Sequence[int],
    indices: Sequence[int],
    concat: int,
    stats: bool = False,
) -> list[Any]:
    """``_decode_record`` for many records, with the usual layouts decoded inline.

    Listing a directory decodes all of its entries; records in a usual layout (ASCII name, no
    zip64, a regular file, directory or short symlink made on Unix, and as extra field either
    Info-ZIP's 'UT' + 'ux', or zipfuse's own 'UT' + 'ux' + NTFS times) take one or two unpacks
    each here and give exactly what ``_decode_record`` gives. Anything else goes through
    ``_decode_record``. With ``stats``, a record in a usual layout gives its ``RecordStat``
    instead of a ``ZipEntry`` (what a node needs, with the base name; a fraction of the cost).
    """
    if stats:
        return _stat_records(buf, positions, indices, concat)
    out: list[Any] = []
    head = zipspec.CENTRAL_HEADER.unpack_from
    infozip = _INFOZIP_FIXED.unpack_from
    own = _ZIPFUSE_FIXED.unpack_from
    hsize = zipspec.CENTRAL_HEADER.size
    sig = zipspec.CENTRAL_SIG
    append = out.append
    for pos, index in zip(positions, indices, strict=True):
        (signature, made_version, made_system, extract_version, flags, method, dos_time,
         dos_date, crc, csize, usize, nlen, elen, clen, _, _, external, offset,
         ) = head(buf, pos)  # fmt: skip
        if (elen == 24 or elen == 60) and signature == sig and made_system == 3:
            start = pos + hsize
            xpos = start + nlen
            atime_ns = None
            if elen == 24:  # Info-ZIP: 'UT' (mtime) + 'ux'
                ut, ut_flags, mtime, ux, uid, gsz, gid = infozip(buf, xpos)
                mtime_ns = mtime * 1_000_000_000
                times = ut_flags & 1
            else:  # zipfuse: 'UT' + 'ux' + NTFS times (which win over 'UT')
                ut, _, _, ux, uid, gsz, gid, ntfs, tag, nt_mtime, nt_atime = own(buf, xpos)
                mtime_ns = (nt_mtime - _NTFS_DELTA) * 100
                if nt_atime:
                    atime_ns = (nt_atime - _NTFS_DELTA) * 100
                times = (
                    ntfs == _NTFS_32 and tag == _NTFS_TAG1_24 and nt_mtime  # 0: not recorded
                    and _NS_MIN <= mtime_ns <= _NS_MAX
                    and (atime_ns is None or _NS_MIN <= atime_ns <= _NS_MAX)
                )  # fmt: skip
            raw = buf[start:xpos]
            unix = external >> 16
            if times and _usual(ut, ux, gsz, raw, unix, csize, usize, offset):
                end = xpos + elen
                comment = buf[end : end + clen] if clen else b""
                entry = ZipEntry(
                    index, raw.decode("ascii"), flags, method, crc, csize, usize,
                    offset + concat, made_system, made_version, extract_version, external,
                    unix, uid, gid, mtime_ns, atime_ns, dos_time, dos_date,
                    buf[xpos:end], comment, b"", 0,
                )  # fmt: skip
                append(entry)
                continue
        append(_decode_record(buf, pos, index, concat))
    return out


def _usual(
    ut: int, ux: int, gsz: int, raw: bytes, unix: int, csize: int, usize: int, offset: int
) -> bool:
    """The rest of the usual-layout test shared by ``_decode_records`` and ``_stat_records``
    (after their own check of the times): Info-ZIP's 'UT' and 32-bit 'ux' headers, an ASCII
    name, a plain file, folder or short symlink, no zip64 placeholder."""
    kind = unix & 0o170000
    return (
        ut == _UT_MTIME and ux == _UX_32 and gsz == 4 and raw.isascii()
        and (kind in _FILE_OR_DIR or (kind == _S_IFLNK and usize < _PATH_MAX))
        and csize != 0xFFFFFFFF and usize != 0xFFFFFFFF and offset != 0xFFFFFFFF
    )  # fmt: skip


def _stat_records(
    buf: bytes, positions: Sequence[int], indices: Sequence[int], concat: int
) -> list[RecordStat | ZipEntry]:
    """``_decode_records`` with ``stats``: the same usual layouts, tested the same way (kept
    in step with it by tests), read with a header struct of only the fields used here."""
    out: list[RecordStat | ZipEntry] = []
    head = _STAT_HEAD.unpack_from
    infozip = _INFOZIP_FIXED.unpack_from
    own = _ZIPFUSE_FIXED.unpack_from
    hsize = zipspec.CENTRAL_HEADER.size
    sig = zipspec.CENTRAL_SIG
    append = out.append
    for pos, index in zip(positions, indices, strict=True):
        signature, made_system, csize, usize, nlen, elen, external, offset = head(buf, pos)
        if (elen == 24 or elen == 60) and signature == sig and made_system == 3:
            xpos = pos + hsize + nlen
            if elen == 24:  # Info-ZIP: 'UT' (mtime) + 'ux'
                ut, ut_flags, mtime, ux, uid, gsz, gid = infozip(buf, xpos)
                mtime_ns = atime_ns = mtime * 1_000_000_000
                times = ut_flags & 1
            else:  # zipfuse: 'UT' + 'ux' + NTFS times (which win over 'UT')
                ut, _, _, ux, uid, gsz, gid, ntfs, tag, nt_mtime, nt_atime = own(buf, xpos)
                mtime_ns = (nt_mtime - _NTFS_DELTA) * 100
                atime_ns = (nt_atime - _NTFS_DELTA) * 100 if nt_atime else mtime_ns
                times = (
                    ntfs == _NTFS_32 and tag == _NTFS_TAG1_24 and nt_mtime  # 0: not recorded
                    and _NS_MIN <= mtime_ns <= _NS_MAX and _NS_MIN <= atime_ns <= _NS_MAX
                )  # fmt: skip
            raw = buf[pos + hsize : xpos]
            unix = external >> 16
            if times and _usual(ut, ux, gsz, raw, unix, csize, usize, offset):
                append((unix, uid, gid, usize, mtime_ns, atime_ns, raw[raw.rfind(b"/") + 1 :]))
                continue
        append(_decode_record(buf, pos, index, concat))
    return out


def _check_layout(cd: CentralDirectory, csize: array.array) -> None:
    """Refuse entries that overlap each other or the central directory.

    Each entry occupies at least its fixed local header plus its compressed bytes, starting at
    its header offset (names and extra fields only make it longer). Writers put entries one
    after the other, so the check is one pass in the usual case; it runs on the arrays of
    offsets and sizes, and decodes only the entries an error message names.
    """
    hdr = cd.header_offsets()
    n = len(hdr)
    if not n:
        return
    ends = array.array("Q", map(operator.add, hdr, csize))
    if all(map(operator.le, hdr, itertools.islice(hdr, 1, None))):  # the usual order
        starts = itertools.islice(hdr, 1, None)
        if not all(
            map(
                operator.le,
                map(operator.add, ends, itertools.repeat(zipspec.LOCAL_HEADER.size)),
                starts,
            )
        ):
            bad = next(i for i in range(n - 1) if ends[i] + zipspec.LOCAL_HEADER.size > hdr[i + 1])
            _overlap(cd, bad, bad + 1)
        last = n - 1
    else:
        last, last_end = -1, 0
        for i in sorted(range(n), key=hdr.__getitem__):
            if hdr[i] < last_end:
                _overlap(cd, last, i)
            last, last_end = i, ends[i] + zipspec.LOCAL_HEADER.size
    if ends[last] + zipspec.LOCAL_HEADER.size > cd.cd_offset:
        name = cd.entry(last).name
        raise ZipFormatError(f"data of entry #{last} ({name!r}) overlaps the central directory")


def _overlap(cd: CentralDirectory, a: int, b: int) -> None:
    raise ZipFormatError(
        f"entries #{a} ({cd.entry(a).name!r}) and #{b} ({cd.entry(b).name!r}) overlap "
        "(a zip bomb or a damaged archive)"
    )


def _split_extra(extra: bytes, index: int) -> dict[int, bytes]:
    """Map header id -> data of the first field with that id."""
    fields: dict[int, bytes] = {}
    end = 0
    for hid, start, end in zipspec.extra_fields(extra):
        fields.setdefault(hid, extra[start:end])
    if len(extra) - end >= 4:  # fewer trailing bytes are tolerated: some writers pad
        hid = zipspec.EXTRA_HEADER.unpack_from(extra, end)[0]
        raise ZipFormatError(f"entry #{index}: extra field 0x{hid:04x} has a bad length")
    return fields


def _make_entry(
    index: int,
    f: tuple[int, ...],
    raw_name: bytes,
    extra: bytes,
    comment: bytes,
    concat: int,
) -> ZipEntry:
    (_, create_version, create_system, extract_version, flags, method, dos_time, dos_date,
     crc, csize, usize, _, _, _, disk_start, _, external_attr, header_offset) = f  # fmt: skip
    uid: int | None
    gid: int | None
    fast = _infozip_extra(extra, 0, len(extra))
    if fast is not None and 0xFFFFFFFF not in (csize, usize, header_offset):
        # the common Info-ZIP layout (UT mtime + ux uid/gid), decoded with one unpack
        if flags & FLAG_UTF8:
            name = raw_name.decode("utf-8", "surrogateescape")
        else:
            name = _decode_name(raw_name, flags, None, create_system)
        uid, gid, mtime_ns = fast
        atime_ns = None
        if raw_name.isascii():  # the name encodes back to these bytes: keep one copy
            raw_name = b""
    else:
        ex = _split_extra(extra, index)
        if 0xFFFFFFFF in (csize, usize, header_offset) or disk_start == 0xFFFF:
            usize, csize, header_offset = _apply_zip64(
                ex.get(zipspec.EXTRA_ZIP64), index, usize, csize, header_offset, disk_start
            )
        upath = ex.get(zipspec.EXTRA_UPATH)
        name = _decode_name(raw_name, flags, upath, create_system)
        if upath is None and raw_name.isascii():  # encodes back to the same bytes
            raw_name = b""
        uid, gid = _owner(ex)
        mtime_ns, atime_ns = _times(ex, dos_date, dos_time)
    mode = _entry_mode(name, create_system, external_attr)
    if usize >= _PATH_MAX and stat.S_ISLNK(mode):
        mode = stat.S_IFREG | stat.S_IMODE(mode)
    rdev = _device(extra, index) if stat.S_IFMT(mode) in _DEVICES else 0
    # positional: ZipEntry is built once per entry at mount time, keyword passing costs more
    return ZipEntry(
        index, name, flags, method, crc, csize, usize, header_offset + concat, create_system,
        create_version, extract_version, external_attr, mode, uid, gid, mtime_ns, atime_ns,
        dos_time, dos_date, extra, comment, raw_name, rdev,
    )  # fmt: skip


_DEVICES = (stat.S_IFCHR, stat.S_IFBLK)
# PKWARE Unix extra (APPNOTE 4.5.7): atime, mtime (4 bytes), uid, gid (2 bytes), then variable
# data, which for a device entry is the major and the minor number, 4 bytes each.


def _device(extra: bytes, index: int) -> int:
    """st_rdev of a device entry from its PKWARE Unix extra field; 0 if absent or malformed."""
    data = _split_extra(extra, index).get(zipspec.EXTRA_PKWARE_UNIX)
    if data is None or len(data) < zipspec.PKWARE_UNIX_DEVICE.size:
        return 0
    major, minor = zipspec.PKWARE_UNIX_DEVICE.unpack_from(data)[4:]
    try:
        return os.makedev(major, minor)
    except (OverflowError, ValueError):
        return 0


# Central extra of Info-ZIP zip on Unix: 'UT' (flags, mtime) then 'ux' (v1, 4-byte uid and gid).
_INFOZIP_CENTRAL = struct.Struct("<HHBiHHBBIBI")
# The same with its fixed parts as bytes, for ``_decode_records``: 'UT' and its length (5),
# flags, mtime, 'ux' with its length (11), version 1 and uid size 4, uid, gid size, gid
_INFOZIP_FIXED = struct.Struct("<4sBi6sIBI")
# zipfuse's writer: the same, then NTFS (0x000a, 32 bytes): reserved, tag 1 of 24 bytes, mtime,
# atime (ctime skipped)
_ZIPFUSE_FIXED = struct.Struct("<4sBi6sIBI4s4x4sQQ8x")
_NTFS_32 = b"\x0a\x00\x20\x00"
_NTFS_TAG1_24 = b"\x01\x00\x18\x00"
_NTFS_DELTA = zipspec.NTFS_EPOCH_DELTA
_NS_MIN, _NS_MAX = -(2**63), 2**63 - 1  # what _clamp_ns keeps as it is
_UT_MTIME = b"UT\x05\x00"
_UX_32 = b"ux\x0b\x00\x01\x04"
_FILE_OR_DIR = frozenset((stat.S_IFREG, stat.S_IFDIR))
_S_IFLNK = stat.S_IFLNK


def _infozip_extra(buf: bytes, pos: int, size: int) -> tuple[int, int, int] | None:
    """(uid, gid, mtime_ns) when the ``size`` bytes at ``pos`` are exactly the common Info-ZIP
    extra layout, else None."""
    if size != _INFOZIP_CENTRAL.size:
        return None
    ut_id, ut_len, ut_flags, mtime, ux_id, ux_len, ver, usz, uid, gsz, gid = (
        _INFOZIP_CENTRAL.unpack_from(buf, pos)
    )
    if (
        ut_id == zipspec.EXTRA_UT and ut_len == 5 and ut_flags & 1 and ux_id == zipspec.EXTRA_UX3
        and ux_len == 11 and ver == 1 and usz == 4 and gsz == 4
    ):  # fmt: skip
        return uid, gid, mtime * 1_000_000_000
    return None


def _apply_zip64(
    data: bytes | None, index: int, usize: int, csize: int, offset: int, disk: int
) -> tuple[int, int, int]:
    """Replace the 0xFFFFFFFF placeholders, in APPNOTE order, from the zip64 extra field."""
    if data is None:
        if disk == 0xFFFF and 0xFFFFFFFF not in (usize, csize, offset):
            return usize, csize, offset  # some writers put 0xFFFF in the disk field; harmless
        raise ZipFormatError(f"entry #{index}: zip64 sizes announced but no zip64 extra field")
    pos = 0
    values = [usize, csize, offset]
    for i, value in enumerate(values):
        if value == 0xFFFFFFFF:
            if pos + 8 > len(data):
                raise ZipFormatError(f"entry #{index}: zip64 extra field is too short")
            values[i] = _U64.unpack_from(data, pos)[0]
            pos += 8
    return values[0], values[1], values[2]


def _decode_name(raw: bytes, flags: int, upath: bytes | None, create_system: int = 0) -> str:
    """UTF-8 if flagged, else CP437; a valid Info-ZIP Unicode Path field overrides both.

    Archives made on Unix (Info-ZIP without -UN=UTF8, many others) store names in the
    creator's locale without the flag; like unzip on Unix, take valid UTF-8 as UTF-8 there.
    """
    if (
        upath is not None
        and len(upath) >= 5
        and upath[0] == 1
        and _U32.unpack_from(upath, 1)[0] == zlib.crc32(raw)
    ):
        try:
            return upath[5:].decode("utf-8")
        except UnicodeDecodeError:
            pass
    if flags & FLAG_UTF8:
        # Invalid UTF-8 despite the flag: keep the bytes recoverable via surrogateescape.
        return raw.decode("utf-8", "surrogateescape")
    if create_system == 3:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return raw.decode("cp437")


def _entry_mode(name: str, create_system: int, external_attr: int) -> int:
    """Unix mode from the high 16 bits when made on Unix, else synthesised from DOS attributes."""
    unix = external_attr >> 16
    looks_dir = name.endswith("/")
    if create_system == 3 and unix:
        if stat.S_IFMT(unix) == 0:
            unix |= stat.S_IFDIR if looks_dir else stat.S_IFREG
        return unix
    if looks_dir or external_attr & _DOS_DIR:
        return stat.S_IFDIR | 0o755
    return stat.S_IFREG | (0o444 if external_attr & _DOS_READONLY else 0o644)


def _owner(ex: dict[int, bytes]) -> tuple[int | None, int | None]:
    """uid/gid from the Info-ZIP Unix extra fields; malformed fields are ignored."""
    ux = ex.get(zipspec.EXTRA_UX3)
    if ux is not None and len(ux) >= 2 and ux[0] == 1:
        usz = ux[1]
        if len(ux) >= 3 + usz:
            gsz = ux[2 + usz]
            if len(ux) >= 3 + usz + gsz:
                uid = int.from_bytes(ux[2 : 2 + usz], "little")
                gid = int.from_bytes(ux[3 + usz : 3 + usz + gsz], "little")
                if uid < 2**32 and gid < 2**32:  # anything wider is not a real id
                    return uid, gid
    new = ex.get(zipspec.EXTRA_UX_NEW)
    if new is not None and len(new) >= 4:
        return _U16.unpack_from(new, 0)[0], _U16.unpack_from(new, 2)[0]
    old = ex.get(zipspec.EXTRA_UX_OLD)
    if old is not None and len(old) >= 12:
        return _U16.unpack_from(old, 8)[0], _U16.unpack_from(old, 10)[0]
    return None, None


def _times(ex: dict[int, bytes], dos_date: int, dos_time: int) -> tuple[int, int | None]:
    """(mtime_ns, atime_ns): NTFS, then extended timestamp, then old Info-ZIP Unix, then DOS."""
    ntfs = _ntfs_times(ex.get(zipspec.EXTRA_NTFS))
    if ntfs is not None:
        return ntfs
    ut = ex.get(zipspec.EXTRA_UT)
    if ut is not None and len(ut) >= 5 and ut[0] & 1:
        mtime = _I32.unpack_from(ut, 1)[0] * 10**9
        atime = _I32.unpack_from(ut, 5)[0] * 10**9 if ut[0] & 2 and len(ut) >= 9 else None
        return mtime, atime
    old = ex.get(zipspec.EXTRA_UX_OLD)
    if old is not None and len(old) >= 8:
        return _I32.unpack_from(old, 4)[0] * 10**9, _I32.unpack_from(old, 0)[0] * 10**9
    return dos_to_ns(dos_date, dos_time), None


def _ntfs_times(data: bytes | None) -> tuple[int, int | None] | None:
    """Attribute tag 1 of the NTFS extra field: mtime, atime, ctime in 100 ns since 1601."""
    if data is None:
        return None
    pos = 4  # reserved
    while pos + 4 <= len(data):
        tag, size = zipspec.EXTRA_HEADER.unpack_from(data, pos)
        pos += 4
        if tag == 1 and size >= 16 and pos + 16 <= len(data):
            mtime, atime = struct.unpack_from("<QQ", data, pos)
            if mtime == 0:  # zero means "not recorded" (7-Zip writes zero atime/ctime)
                return None
            atime_ns = _clamp_ns((atime - zipspec.NTFS_EPOCH_DELTA) * 100) if atime else None
            return _clamp_ns((mtime - zipspec.NTFS_EPOCH_DELTA) * 100), atime_ns
        pos += size
    return None


def _clamp_ns(ns: int) -> int:
    """Keep absurd 64-bit NTFS times within what st_mtime_ns (signed 64 bit) can hold."""
    return max(-(2**63), min(ns, 2**63 - 1))


def dos_to_ns(dos_date: int, dos_time: int) -> int:
    """DOS date/time as local time (like Info-ZIP); impossible values become 1980-01-01."""
    year = (dos_date >> 9) + 1980
    month, day = (dos_date >> 5) & 0xF, dos_date & 0x1F
    hour, minute, second = dos_time >> 11, (dos_time >> 5) & 0x3F, (dos_time & 0x1F) * 2
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        year, month, day, hour, minute, second = 1980, 1, 1, 0, 0, 0
    try:
        secs = time.mktime((year, month, day, hour, minute, second, 0, 0, -1))
    except (OverflowError, ValueError):
        secs = time.mktime((1980, 1, 1, 0, 0, 0, 0, 0, -1))
    return int(secs) * 10**9


def local_data_offset(fd: int, entry: ZipEntry, archive_size: int | None = None) -> int:
    """Read the local header of ``entry`` and return where its compressed bytes start.

    The local extra field may differ in length from the central one (e.g. 'Ux' carries uid/gid
    only locally), so the central record cannot tell where the data begins. ``archive_size``
    (``CentralDirectory.archive_size`` of the version the entry belongs to) bounds the data;
    callers that know it pass it: an fstat per open is a round trip to the server on NFS, and
    there the first call that failed once the archive was replaced under a reader.
    """
    what = f"local header of {entry.name!r}"
    hdr = _pread_exact(fd, zipspec.LOCAL_HEADER.size, entry.header_offset, what)
    fields = zipspec.LOCAL_HEADER.unpack(hdr)
    if fields[0] != zipspec.LOCAL_SIG:
        raise ZipFormatError(f"bad local header signature for {entry.name!r}")
    data_offset = entry.header_offset + zipspec.LOCAL_HEADER.size + fields[9] + fields[10]
    size = os.fstat(fd).st_size if archive_size is None else archive_size
    if data_offset + entry.compressed_size > size:
        raise ZipFormatError(f"truncated archive: data of {entry.name!r} runs past the end")
    return data_offset
