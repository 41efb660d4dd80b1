"""The zip format's fixed layouts (APPNOTE 4.3, 4.5), defined once for the reader and the writer.

Records are ``struct.Struct`` objects whose first field is the 4-byte signature as bytes.
Extra fields are walked by ``extra_fields``; what a field means is the reader's business
(zipformat.py) and the writer's (zipwrite.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

# sig, version needed, flags, method, time, date, crc, csize, usize, name len, extra len
LOCAL_HEADER = struct.Struct("<4s5H3L2H")
LOCAL_SIG = b"PK\x03\x04"
# sig, made-by version, made-by system, version needed, flags, method, time, date, crc, csize,
# usize, name len, extra len, comment len, disk start, internal attr, external attr, offset
CENTRAL_HEADER = struct.Struct("<4s2B5H3L5H2L")
CENTRAL_SIG = b"PK\x01\x02"
# sig, disk, cd disk, entries on this disk, entries, cd size, cd offset, comment len
EOCD = struct.Struct("<4s4H2LH")
EOCD_SIG = b"PK\x05\x06"
# sig, size of the rest, made by, needed, disk, cd disk, entries on this disk, entries,
# cd size, cd offset
EOCD64 = struct.Struct("<4sQ2H2L4Q")
EOCD64_SIG = b"PK\x06\x06"
# sig, disk holding the zip64 end record, its offset, total disks
LOCATOR64 = struct.Struct("<4sLQL")
LOCATOR64_SIG = b"PK\x06\x07"
# sig, crc, csize, usize (32- and 64-bit sizes)
DESCRIPTOR = struct.Struct("<4s3L")
DESCRIPTOR64 = struct.Struct("<4sLQQ")
DESCRIPTOR_SIG = b"PK\x07\x08"

EXTRA_HEADER = struct.Struct("<HH")  # id, data length
EXTRA_ZIP64 = 0x0001
EXTRA_NTFS = 0x000A
EXTRA_PKWARE_UNIX = 0x000D  # atime, mtime, uid, gid, then device numbers or a link target
EXTRA_UT = 0x5455  # Info-ZIP extended timestamp
EXTRA_UX_OLD = 0x5855  # Info-ZIP Unix, original: atime, mtime[, uid, gid]
EXTRA_UX_NEW = 0x7855  # Info-ZIP Unix, second form: uid, gid (16 bit; local header only)
EXTRA_UX3 = 0x7875  # Info-ZIP Unix, third form: variable-size uid/gid
EXTRA_UPATH = 0x7075  # Info-ZIP Unicode path
# PKWARE Unix extra of a device entry: atime, mtime, uid, gid, then major and minor
PKWARE_UNIX_DEVICE = struct.Struct("<LLHHLL")

NTFS_EPOCH_DELTA = 116_444_736_000_000_000  # 1601-01-01 to 1970-01-01 in 100 ns ticks


def extra_fields(extra: bytes) -> Iterator[tuple[int, int, int]]:
    """(id, data start, data end) of each field; stops at the first one that does not fit.

    Callers that must reject a malformed field compare the last end with ``len(extra)``.
    """
    pos, n = 0, len(extra)
    while pos + 4 <= n:
        hid, length = EXTRA_HEADER.unpack_from(extra, pos)
        start = pos + 4
        end = start + length
        if end > n:
            return
        yield hid, start, end
        pos = end
