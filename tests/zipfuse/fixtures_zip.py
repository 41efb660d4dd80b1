"""Helpers that build and doctor zip archives for the zipfuse format-layer tests."""

from __future__ import annotations

import os
import random
import struct
import zipfile
from pathlib import Path

# Offsets of fields inside a central-directory record (APPNOTE 4.3.12).
CD_FLAGS = 8
CD_METHOD = 10
CD_DOS_TIME = 12
CD_DOS_DATE = 14
CD_CRC = 16


def text_data(size: int, seed: int = 0) -> bytes:
    """Compressible but non-trivial bytes (random words), exactly ``size`` long."""
    rnd = random.Random(seed)
    words = [
        bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz", k=rnd.randint(1, 12))) for _ in range(4000)
    ]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rnd.choices(words, k=20000)) + b"\n"
    return bytes(out[:size])


def central_record_offsets(path: Path) -> list[int]:
    """Absolute offsets of every central-directory record, found with the stdlib parser."""
    with zipfile.ZipFile(path) as zf:
        start = zf.start_dir
        count = len(zf.infolist())
    data = path.read_bytes()
    offsets = []
    pos = start
    for _ in range(count):
        assert data[pos : pos + 4] == b"PK\x01\x02"
        offsets.append(pos)
        nlen, elen, clen = struct.unpack_from("<3H", data, pos + 28)
        pos += 46 + nlen + elen + clen
    return offsets


def patch_central(path: Path, index: int, field: int, fmt: str, value: int) -> None:
    """Overwrite one fixed field of central record ``index`` in place."""
    offset = central_record_offsets(path)[index] + field
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def patch_local(path: Path, index: int, field: int, fmt: str, value: int) -> None:
    """Overwrite one fixed field of the local header of entry ``index`` in place.

    Local header offsets of flags/method/time/date/crc are the central ones minus 2.
    """
    with zipfile.ZipFile(path) as zf:
        offset = zf.infolist()[index].header_offset + field - 2
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


class SparseZeros:
    """File wrapper that turns writes of one known all-zero buffer into holes (fast 4 GiB)."""

    def __init__(self, f, zeros: bytes) -> None:
        self._f = f
        self._zeros = zeros

    def write(self, data) -> int:
        if data is self._zeros:
            self._f.seek(len(data), os.SEEK_CUR)
            return len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)
