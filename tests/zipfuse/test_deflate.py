"""The raw-deflate decoder and CRC-32 the read path uses (ISA-L through python-isal)."""

from __future__ import annotations

import io
import os
import random
import zipfile
import zlib

import pytest

from zipfuse import deflate


def test_isal_is_used() -> None:
    # isal is a dependency: without it, reads would silently fall back to zlib's speed
    assert deflate.ACCELERATED


def _raw_deflate(data: bytes, level: int = 6) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("size", [0, 1, 1000, 300_000])
def test_decodes_what_zipfile_writes(size: int) -> None:
    rng = random.Random(size)
    data = bytes(rng.choice(b"ab cd\n") for _ in range(size)) + os.urandom(size // 10)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("f", data)
    with zipfile.ZipFile(buf) as z:
        info = z.getinfo("f")
    raw = buf.getvalue()
    start = (
        info.header_offset
        + 30
        + len(b"f")
        + int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    )
    comp = raw[start : start + info.compress_size]
    d = deflate.decompressobj()
    out = b""
    tail = comp
    while not d.eof:  # in small output steps, as the streaming reader asks
        out += d.decompress(tail, 4096)
        tail = d.unconsumed_tail
    assert out == data
    assert deflate.crc32(out) == info.CRC == zlib.crc32(data)


def test_crc32_continues_like_zlib() -> None:
    data = os.urandom(1 << 20)
    crc = 0
    for i in range(0, len(data), 65_521):
        crc = deflate.crc32(memoryview(data)[i : i + 65_521], crc)
    assert crc == zlib.crc32(data)


def test_corrupt_stream_raises_a_known_error() -> None:
    bad = bytearray(_raw_deflate(os.urandom(5000) * 3))
    bad[0] |= 0x06  # block type 3: reserved, invalid in every decoder
    with pytest.raises(deflate.ERRORS):
        deflate.decompressobj().decompress(bytes(bad), 1 << 20)
