"""Build hostile zip archives byte by byte (names, sizes and offsets exactly as the test says).

Python's zipfile cannot write some of these (it cuts names at NUL, computes sizes itself), so
this module assembles local headers, central records and the end record directly.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import struct
import zlib

LFH = struct.Struct("<4s2B4H3L2H")
CDH = struct.Struct("<4s4B4H3L5H2L")
EOCD = struct.Struct("<4s4H2LH")
EOCD64 = struct.Struct("<4sQ2H2L4Q")
LOC64 = struct.Struct("<4sLQL")
UNIX = 3
DOS_TIME, DOS_DATE = 0, (2020 - 1980) << 9 | 1 << 5 | 1


@dataclasses.dataclass
class Member:
    name: bytes
    payload: bytes  # the bytes stored after the local header (compressed data)
    method: int = 0
    crc: int = 0
    usize: int = 0  # declared uncompressed size (both headers)
    mode: int = stat.S_IFREG | 0o644
    csize: int | None = None  # declared compressed size; default len(payload)
    flags: int = 0x800  # UTF-8 names

    @property
    def declared_csize(self) -> int:
        return len(self.payload) if self.csize is None else self.csize


def stored(name: str | bytes, data: bytes, **kw) -> Member:
    return Member(_b(name), data, 0, zlib.crc32(data), len(data), **kw)


def deflated(name: str | bytes, data: bytes, **kw) -> Member:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return Member(_b(name), c.compress(data) + c.flush(), 8, zlib.crc32(data), len(data), **kw)


def directory(name: str | bytes) -> Member:
    return Member(_b(name), b"", mode=stat.S_IFDIR | 0o755)


def symlink(name: str | bytes, target: bytes) -> Member:
    return Member(_b(name), target, 0, zlib.crc32(target), len(target), mode=stat.S_IFLNK | 0o777)


def _b(name: str | bytes) -> bytes:
    return name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name


def _zip64_extra(m: Member) -> tuple[int, int, bytes]:
    """(usize field, csize field, extra) with zip64 placeholders where a size needs them."""
    usize, csize, extra = m.usize, m.declared_csize, b""
    if usize >= 0xFFFFFFFF:
        extra += struct.pack("<Q", usize)
        usize = 0xFFFFFFFF
    if csize >= 0xFFFFFFFF:
        extra += struct.pack("<Q", csize)
        csize = 0xFFFFFFFF
    if extra:
        extra = struct.pack("<HH", 1, len(extra)) + extra
    return usize, csize, extra


def local_header(m: Member) -> bytes:
    usize, csize, extra = _zip64_extra(m)
    return (
        LFH.pack(
            b"PK\x03\x04",
            45 if extra else 20,
            0,
            m.flags,
            m.method,
            DOS_TIME,
            DOS_DATE,
            m.crc,
            csize,
            usize,
            len(m.name),
            len(extra),
        )  # fmt: skip
        + m.name
        + extra
    )


def central_record(m: Member, offset: int) -> bytes:
    usize, csize, extra = _zip64_extra(m)
    return (
        CDH.pack(
            b"PK\x01\x02",
            45 if extra else 20,
            UNIX,
            20,
            0,
            m.flags,
            m.method,
            DOS_TIME,
            DOS_DATE,
            m.crc,
            csize,
            usize,
            len(m.name),
            len(extra),
            0,
            0,
            0,
            m.mode << 16,
            offset,
        )  # fmt: skip
        + m.name
        + extra
    )


def build(
    members: list[Member],
    *,
    aliases: list[tuple[Member, int]] = (),  # type: ignore[assignment]
    count: int | None = None,
    count64: int | None = None,
    offset_shift: dict[int, int] | None = None,
) -> bytes:
    """An archive of ``members``; ``aliases`` adds central records pointing at the local header
    of member #i; ``count``/``count64`` override the entry counts of the end records;
    ``offset_shift`` moves the recorded header offset of member #i."""
    out = bytearray()
    offsets = []
    for m in members:
        offsets.append(len(out))
        out += local_header(m) + m.payload
    cd_start = len(out)
    shift = offset_shift or {}
    for i, (m, off) in enumerate(zip(members, offsets, strict=True)):
        out += central_record(m, off + shift.get(i, 0))
    for m, target in aliases:
        out += central_record(m, offsets[target])
    cd_size = len(out) - cd_start
    n = len(members) + len(aliases) if count is None else count
    if count64 is not None:
        eocd64_pos = len(out)
        out += EOCD64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, count64, count64, cd_size, cd_start)
        out += LOC64.pack(b"PK\x06\x07", 0, eocd64_pos, 1)
        out += EOCD.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    else:
        out += EOCD.pack(b"PK\x05\x06", 0, 0, n & 0xFFFF, n & 0xFFFF, cd_size, cd_start, 0)
    return bytes(out)


def write(path: os.PathLike | str, members: list[Member], **kw) -> None:
    with open(path, "wb") as f:
        f.write(build(members, **kw))


# ------------------------------------------------------------------------------ bomb streams
def zero_deflate_stream(total: int, chunk: int = 1 << 20) -> bytes:
    """Raw deflate of ``total`` zero bytes, built from one compressed chunk repeated.

    After a full flush the compressor starts afresh, so every ``chunk`` of zeros compresses to
    the same bytes: 1 GiB costs one 1 MiB compression instead of 1024.
    """
    assert total % chunk == 0
    zeros = bytes(chunk)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert first[-4:] == again[-4:] == b"\x00\x00\xff\xff"
    end = c.flush(zlib.Z_FINISH)
    body = first + again * (total // chunk - 1) + end
    d = zlib.decompressobj(-15)
    assert len(d.decompress(body[: len(first) + len(again)], 1)) == 1  # sane start
    return body


def zero_crc(size: int) -> int:
    """CRC-32 of ``size`` zero bytes without allocating them all at once."""
    crc, block = 0, bytes(min(size, 1 << 24))
    left = size
    while left:
        n = min(left, len(block))
        crc = zlib.crc32(memoryview(block)[:n], crc)
        left -= n
    return crc


class _Bits:
    """Deflate bit writer: values LSB first, Huffman codes MSB first."""

    def __init__(self) -> None:
        self.acc = self.n = 0
        self.out = bytearray()

    def put(self, value: int, nbits: int) -> None:
        self.acc |= value << self.n
        self.n += nbits
        while self.n >= 8:
            self.out.append(self.acc & 0xFF)
            self.acc >>= 8
            self.n -= 8

    def code(self, code: int, nbits: int) -> None:
        self.put(int(format(code, f"0{nbits}b")[::-1], 2), nbits)

    def fixed(self, sym: int) -> None:
        """A literal/length symbol with the fixed Huffman code (RFC 1951 3.2.6)."""
        if sym < 144:
            self.code(0x30 + sym, 8)
        elif sym < 256:
            self.code(0x190 + sym - 144, 9)
        elif sym < 280:
            self.code(sym - 256, 7)
        else:
            self.code(0xC0 + sym - 280, 8)

    def bytes(self) -> bytes:
        if self.n:
            self.out.append(self.acc & 0xFF)
            self.acc = self.n = 0
        return bytes(self.out)


def deflate64_zero_bomb(matches: int) -> tuple[bytes, int]:
    """A Deflate64 stream of one zero then ``matches`` copies of 65538 bytes at distance 1.

    Deflate64's length code 285 carries 16 extra bits, so each 65538-byte copy costs 29 bits:
    a ratio of about 18000:1 (returns the stream and its plaintext size).
    """
    b = _Bits()
    b.put(1, 1)  # final block
    b.put(1, 2)  # fixed Huffman codes
    b.fixed(0)
    for _ in range(matches):
        b.fixed(285)
        b.put(65535, 16)  # length 3 + 65535
        b.code(0, 5)  # distance code 0: distance 1
    b.fixed(256)
    return b.bytes(), 1 + matches * 65538


def lzma_zip_payload(data_chunks, dict_size_field: int | None = None) -> bytes:
    """Method-14 payload: 2-byte version, 2-byte props size, 5 props bytes, raw LZMA1 stream."""
    import lzma

    filt = {"id": lzma.FILTER_LZMA1, "preset": 1, "dict_size": 1 << 20}
    c = lzma.LZMACompressor(lzma.FORMAT_RAW, filters=[filt])
    body = b"".join(c.compress(chunk) for chunk in data_chunks) + c.flush()
    props = lzma._encode_filter_properties(filt)  # lc/lp/pb byte + dictionary size
    if dict_size_field is not None:
        props = props[:1] + struct.pack("<L", dict_size_field)
    return struct.pack("<BBH", 9, 20, len(props)) + props + body
