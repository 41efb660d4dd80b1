"""Tests of the zip writer: metadata round-trip, interop with unzip/7z/zipfile, zip64, parallel
block compression, raw copies, memory bound and error propagation."""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zipfuse import zipwrite
from zipfuse.zipformat import STORED, local_data_offset, read_central_directory
from zipfuse.zipwrite import EntryMeta, ZipWriter, crc32_combine

NOW_NS = 1_700_000_000_123_456_700  # 2023-11-14, sub-second part is a multiple of 100 ns


def meta(name: str, mode: int, *, mtime_ns: int = NOW_NS, atime_ns: int | None = None,
         uid: int = 1234, gid: int = 5678) -> EntryMeta:  # fmt: skip
    return EntryMeta(name, mode, uid, gid, mtime_ns, mtime_ns - 7 * 10**9 if atime_ns is None
                     else atime_ns)  # fmt: skip


def write_zip(path: Path, fill, comment: bytes = b"", *, trunc: bool = True, **kwargs) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | (os.O_TRUNC if trunc else 0), 0o644)
    try:
        with ZipWriter(fd, **kwargs) as writer:
            fill(writer)
            size = writer.finish(comment)
        assert size == os.fstat(fd).st_size
        return size
    finally:
        os.close(fd)


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed")
        pytest.skip(f"{name} is not installed")
    return path


def check_with_tools(path: Path, *, testzip: bool = True) -> None:
    """zipfile.testzip, unzip -tq and 7z t all accept the archive."""
    if testzip:
        with zipfile.ZipFile(path) as zf:
            assert zf.testzip() is None
    unzip = need_tool("unzip")
    res = subprocess.run([unzip, "-tq", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    sevenz = need_tool("7z")
    res = subprocess.run([sevenz, "t", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Everything is Ok" in res.stdout


def read_entries(path: Path) -> dict:
    fd = os.open(path, os.O_RDONLY)
    try:
        cd = read_central_directory(fd)
        return {e.name: e for e in cd.entries}
    finally:
        os.close(fd)


def extra_fields(extra: bytes) -> dict[int, bytes]:
    out = {}
    pos = 0
    while pos + 4 <= len(extra):
        hid, ln = struct.unpack_from("<HH", extra, pos)
        out[hid] = extra[pos + 4 : pos + 4 + ln]
        pos += 4 + ln
    assert pos == len(extra)
    return out


def ntfs_times(extra: bytes) -> tuple[int, int, int]:
    """(mtime_ns, atime_ns, ctime_ns) from an NTFS extra field, parsed here independently."""
    data = extra_fields(extra)[0x000A]
    tag, size = struct.unpack_from("<HH", data, 4)
    assert (tag, size) == (1, 24)
    ticks = struct.unpack_from("<QQQ", data, 8)
    return tuple((t - 116_444_736_000_000_000) * 100 for t in ticks)


def local_extra(path: Path, info: zipfile.ZipInfo) -> bytes:
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
        nlen, elen = struct.unpack_from("<HH", head, 26)
        f.seek(nlen, io.SEEK_CUR)
        return f.read(elen)


def make_source(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def mixed_data(size: int, seed: int = 1) -> bytes:
    """Compressible text interleaved with random chunks."""
    rnd = __import__("random").Random(seed)
    text = Path(zipfile.__file__).read_bytes()
    out = bytearray()
    while len(out) < size:
        if rnd.random() < 0.3:
            out += rnd.randbytes(rnd.randint(1000, 200_000))
        else:
            start = rnd.randrange(len(text))
            out += text[start : start + rnd.randint(1000, 200_000)]
    return bytes(out[:size])


# --- crc32_combine ---


@given(st.binary(max_size=3000), st.binary(max_size=3000))
@settings(max_examples=100, deadline=None)
def test_crc32_combine_matches_zlib(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_crc32_combine_long_lengths() -> None:
    a = os.urandom(1000)
    b = bytes(5 << 20)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    assert crc32_combine(123, 0, 0) == 123
    with pytest.raises(ValueError):
        crc32_combine(0, 0, -1)


# --- Round trip of every entry type ---


def test_roundtrip_every_entry_type(tmp_path: Path) -> None:
    text = b"import os\n" * 500
    src_fd = make_source(tmp_path / "src", text)
    archive = tmp_path / "out.zip"
    special_ns = 1_234_567_890_987_654_300

    def fill(w: ZipWriter) -> None:
        w.add_directory(meta("top/", stat.S_IFDIR | 0o755))
        w.add_directory(meta("top/empty/", stat.S_IFDIR | 0o700, uid=0, gid=0))
        w.add_file(meta("top/mod.py", stat.S_IFREG | 0o644), src_fd, len(text))
        w.add_bytes(meta("top/run.sh", stat.S_IFREG | 0o4755, mtime_ns=special_ns), b"#!/bin/sh\n")
        w.add_bytes(meta("top/empty.txt", stat.S_IFREG | 0o600), b"")
        w.add_file(meta("top/empty2.txt", stat.S_IFREG | 0o600), src_fd, 0)
        w.add_symlink(meta("top/link", stat.S_IFLNK | 0o777), b"mod.py")
        w.add_symlink(meta("top/abs", stat.S_IFLNK | 0o777), b"/etc/h\xc3\xa9")
        w.add_special(meta("top/fifo", stat.S_IFIFO | 0o640))
        w.add_bytes(meta("top/ünïcødé €.txt", stat.S_IFREG | 0o644, uid=4_000_000_000), b"x")

    try:
        write_zip(archive, fill, comment=b"made by a test")
    finally:
        os.close(src_fd)
    check_with_tools(archive)

    expect_modes = {
        "top/": stat.S_IFDIR | 0o755,
        "top/empty/": stat.S_IFDIR | 0o700,
        "top/mod.py": stat.S_IFREG | 0o644,
        "top/run.sh": stat.S_IFREG | 0o4755,
        "top/empty.txt": stat.S_IFREG | 0o600,
        "top/empty2.txt": stat.S_IFREG | 0o600,
        "top/link": stat.S_IFLNK | 0o777,
        "top/abs": stat.S_IFLNK | 0o777,
        "top/fifo": stat.S_IFIFO | 0o640,
        "top/ünïcødé €.txt": stat.S_IFREG | 0o644,
    }
    with zipfile.ZipFile(archive) as zf:
        assert zf.comment == b"made by a test"
        assert zf.namelist() == list(expect_modes)  # call order kept
        for info in zf.infolist():
            mode = expect_modes[info.filename]
            assert info.create_system == 3
            assert info.external_attr == (mode << 16) | (0x10 if stat.S_ISDIR(mode) else 0)
            mtime_ns = special_ns if info.filename == "top/run.sh" else NOW_NS
            lt = time.localtime(mtime_ns // 10**9)
            expect_dt = (*lt[:5], lt.tm_sec // 2 * 2)
            assert info.date_time == expect_dt
            assert bool(info.flag_bits & 0x800) == (not info.filename.isascii())
            assert not info.flag_bits & 0x8  # no data descriptors
            # Own parsing of the extras: NTFS (ns), 0x5455 and 0x7875, central and local.
            m, a, c = ntfs_times(info.extra)
            assert m == c == mtime_ns
            assert a == mtime_ns - 7 * 10**9
            fields = extra_fields(info.extra)
            assert fields[0x5455] == b"\x03" + struct.pack("<i", mtime_ns // 10**9)
            uid = (
                4_000_000_000 if "ü" in info.filename else 0 if "empty/" in info.filename else 1234
            )
            gid = 0 if "empty/" in info.filename else 5678
            assert fields[0x7875] == struct.pack("<BBIBI", 1, 4, uid, 4, gid)
            local = extra_fields(local_extra(archive, info))
            assert local[0x5455] == b"\x03" + struct.pack(
                "<ii", mtime_ns // 10**9, mtime_ns // 10**9 - 7
            )
            assert local[0x7875] == fields[0x7875]
            assert local[0x000A] == fields[0x000A]
            if stat.S_ISDIR(mode) or stat.S_ISFIFO(mode) or stat.S_ISLNK(mode):
                assert info.compress_type == zipfile.ZIP_STORED
        assert zf.read("top/mod.py") == text
        assert zf.getinfo("top/mod.py").compress_type == zipfile.ZIP_DEFLATED
        assert zf.read("top/link") == b"mod.py"
        assert zf.read("top/abs") == b"/etc/h\xc3\xa9"
        assert zf.read("top/run.sh") == b"#!/bin/sh\n"
        assert zf.getinfo("top/fifo").file_size == 0
        assert zf.getinfo("top/empty.txt").compress_type == zipfile.ZIP_STORED

    # The project's reader sees the same metadata.
    entries = read_entries(archive)
    assert list(entries) == list(expect_modes)
    fd = os.open(archive, os.O_RDONLY)
    try:
        for name, e in entries.items():
            assert e.mode == expect_modes[name]
            assert e.mtime_ns == (special_ns if name == "top/run.sh" else NOW_NS)
            assert e.atime_ns == e.mtime_ns - 7 * 10**9
            assert (e.uid, e.gid) == (
                (4_000_000_000 if "ü" in name else 0 if "empty/" in name else 1234),
                (0 if "empty/" in name else 5678),
            )
            if stat.S_ISLNK(e.mode):
                target = os.pread(fd, e.compressed_size, local_data_offset(fd, e))
                assert target == {"top/link": b"mod.py", "top/abs": b"/etc/h\xc3\xa9"}[name]
                assert e.method == STORED
    finally:
        os.close(fd)


_segment = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
    min_size=1,
    max_size=12,
)
_kinds = st.sampled_from([stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK])
_entry = st.tuples(
    st.lists(_segment, min_size=1, max_size=3).map("/".join),
    _kinds,
    st.integers(0, 0o7777),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(-(2**31) * 10**9, 2**33 * 10**9),
    st.integers(0, 2**32 * 10**9),
    st.binary(max_size=300),
)


@given(st.lists(_entry, min_size=1, max_size=8, unique_by=lambda e: e[0]))
@settings(max_examples=40, deadline=None)
def test_metadata_roundtrip_property(tmp_path_factory, entries) -> None:
    archive = tmp_path_factory.mktemp("prop") / "p.zip"

    def fill(w: ZipWriter) -> None:
        for name, kind, perm, uid, gid, mtime, atime, data in entries:
            m = EntryMeta(name, kind | perm, uid, gid, mtime, atime)
            if kind == stat.S_IFDIR:
                m.name += "/"
                w.add_directory(m)
            elif kind == stat.S_IFLNK:
                w.add_symlink(m, data or b"t")
            elif kind == stat.S_IFREG:
                w.add_bytes(m, data)
            else:
                w.add_special(m)

    write_zip(archive, fill, threads=2)
    got = list(read_entries(archive).values())
    assert len(got) == len(entries)
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
    for e, (name, kind, perm, uid, gid, mtime, atime, data) in zip(got, entries, strict=True):
        assert e.name == name + ("/" if kind == stat.S_IFDIR else "")
        assert e.mode == kind | perm
        assert (e.uid, e.gid) == (uid, gid)
        assert e.mtime_ns == mtime // 100 * 100
        assert e.atime_ns == atime // 100 * 100
        if kind == stat.S_IFREG:
            assert e.file_size == len(data)


def test_empty_archive(tmp_path: Path) -> None:
    archive = tmp_path / "empty.zip"
    assert write_zip(archive, lambda w: None, comment=b"nothing") == 22 + len(b"nothing")
    with zipfile.ZipFile(archive) as zf:
        assert zf.namelist() == []
        assert zf.comment == b"nothing"
    assert read_entries(archive) == {}


def test_old_content_beyond_the_end_is_cut(tmp_path: Path) -> None:
    archive = tmp_path / "reused.zip"
    archive.write_bytes(os.urandom(100_000))
    size = write_zip(archive, lambda w: w.add_bytes(meta("a", 0o100644), b"a"), trunc=False)
    assert archive.stat().st_size == size < 1000
    with zipfile.ZipFile(archive) as zf:
        assert zf.read("a") == b"a"


def test_dos_time_clamped_but_precise_time_kept(tmp_path: Path) -> None:
    old = -5 * 10**9  # 1969
    late = 7_500_000_000 * 10**9  # year ~2207
    y2050 = 2_524_608_000 * 10**9 + 500  # beyond signed 32-bit seconds

    def fill(w: ZipWriter) -> None:
        w.add_bytes(meta("old", 0o100644, mtime_ns=old, atime_ns=old), b"a")
        w.add_bytes(meta("late", 0o100644, mtime_ns=late, atime_ns=late), b"b")
        w.add_bytes(meta("y2050", 0o100644, mtime_ns=y2050, atime_ns=y2050), b"c")

    archive = tmp_path / "t.zip"
    write_zip(archive, fill)
    check_with_tools(archive)
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo("old").date_time == (1980, 1, 1, 0, 0, 0)
        assert zf.getinfo("late").date_time == (2107, 12, 31, 23, 59, 58)
        for name, ns in (("old", old), ("late", late), ("y2050", y2050)):
            assert ntfs_times(zf.getinfo(name).extra)[0] == ns // 100 * 100
    entries = read_entries(archive)
    assert entries["old"].mtime_ns == old
    assert entries["late"].mtime_ns == late
    assert entries["y2050"].mtime_ns == y2050 // 100 * 100


def test_bad_arguments_rejected(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "x.zip", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with ZipWriter(fd) as w:
            with pytest.raises(ValueError):
                w.add_directory(meta("nodir", stat.S_IFDIR | 0o755))
            with pytest.raises(ValueError):
                w.add_bytes(meta("/abs", stat.S_IFREG | 0o644), b"")
            with pytest.raises(ValueError):
                w.add_bytes(meta("file/", stat.S_IFREG | 0o644), b"")
            with pytest.raises(ValueError):
                w.add_symlink(meta("l", stat.S_IFREG | 0o644), b"t")
            with pytest.raises(ValueError):
                w.add_special(meta("s", stat.S_IFREG | 0o644))
            w.add_bytes(meta("typeless", 0o644), b"")  # type bits filled in
            w.finish()
            with pytest.raises(ValueError):
                w.add_bytes(meta("late", 0o100644), b"")
        with pytest.raises(ValueError):
            ZipWriter(fd, level=10)
    finally:
        os.close(fd)
    fd = os.open(tmp_path / "x.zip", os.O_WRONLY | os.O_APPEND)
    try:
        with pytest.raises(ValueError):
            ZipWriter(fd)
    finally:
        os.close(fd)
    with zipfile.ZipFile(tmp_path / "x.zip") as zf:
        assert zf.getinfo("typeless").external_attr >> 16 == stat.S_IFREG | 0o644


# --- Compression paths ---


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split files above 256 KiB into 64 KiB blocks, so many blocks are cheap to test."""
    monkeypatch.setattr(zipwrite, "_SPLIT_THRESHOLD", 256 << 10)
    monkeypatch.setattr(zipwrite, "_BLOCK_SIZE", 64 << 10)
    monkeypatch.setattr(zipwrite, "_SAMPLE", 16 << 10)


def raw_member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
        nlen, elen = struct.unpack_from("<HH", head, 26)
        f.seek(info.header_offset + 30 + nlen + elen)
        return f.read(info.compress_size)


@pytest.mark.parametrize("threads", [1, 3])
def test_split_file_is_one_deflate_stream(tmp_path: Path, small_blocks, threads: int) -> None:
    data = mixed_data(3_000_000 + 12_345)
    src = make_source(tmp_path / "src", data)
    archive = tmp_path / "big.zip"
    seen = []
    try:
        write_zip(
            archive,
            lambda w: w.add_file(meta("big.bin", 0o100644), src, len(data)),
            threads=threads,
            max_inflight=300_000,  # only a few blocks in flight
            progress=lambda n, b: seen.append((n, b)),
        )
    finally:
        os.close(src)
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("big.bin")
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert zlib.crc32(data) == info.CRC
        assert info.compress_size < len(data) * 0.9
        assert zf.read("big.bin") == data
    # Independently: the member body is one raw deflate stream that ends exactly at its end.
    d = zlib.decompressobj(-15)
    assert d.decompress(raw_member(archive, "big.bin")) == data
    assert d.eof and not d.unused_data
    check_with_tools(archive)
    assert read_entries(archive)["big.bin"].crc == zlib.crc32(data)
    # Progress is reported per block and ends with the whole file.
    assert len(seen) > 10
    assert seen[-1] == (1, len(data))
    assert [b for _, b in seen] == sorted(b for _, b in seen)


@pytest.mark.parametrize("size", [(256 << 10) + 1, 5 << 16, (5 << 16) - 1, (5 << 16) + 1])
def test_split_sizes_at_block_boundaries(tmp_path: Path, small_blocks, size: int) -> None:
    data = mixed_data(size, seed=size)
    src = make_source(tmp_path / "src", data)
    archive = tmp_path / "b.zip"
    try:
        write_zip(archive, lambda w: w.add_file(meta("f", 0o100644), src, size), threads=2)
    finally:
        os.close(src)
    d = zlib.decompressobj(-15)
    assert d.decompress(raw_member(archive, "f")) == data
    assert d.eof and not d.unused_data
    with zipfile.ZipFile(archive) as zf:
        assert zlib.crc32(data) == zf.getinfo("f").CRC


def test_budget_smaller_than_a_block(tmp_path: Path, small_blocks) -> None:
    """A tiny max_inflight degrades to one block at a time; it must not deadlock."""
    data = mixed_data(1_000_000, seed=4)
    src = make_source(tmp_path / "src", data)
    archive = tmp_path / "b.zip"
    done = threading.Event()

    def fill(w: ZipWriter) -> None:
        w.add_bytes(meta("first", 0o100644), data[:300_000])
        w.add_file(meta("big", 0o100644), src, len(data))
        w.add_file(meta("small", 0o100644), src, 100_000)
        done.set()

    try:
        write_zip(archive, fill, max_inflight=10_000)
    finally:
        os.close(src)
    assert done.is_set()
    with zipfile.ZipFile(archive) as zf:
        assert zf.read("big") == data
        assert zf.read("first") == data[:300_000]


def test_real_split_threshold(tmp_path: Path) -> None:
    data = mixed_data(zipwrite._SPLIT_THRESHOLD + 3 * zipwrite._BLOCK_SIZE + 7, seed=3)
    src = make_source(tmp_path / "src", data)
    archive = tmp_path / "big.zip"
    try:
        write_zip(archive, lambda w: w.add_file(meta("big", 0o100644), src, len(data)))
    finally:
        os.close(src)
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo("big").compress_type == zipfile.ZIP_DEFLATED
        assert zf.read("big") == data


def test_incompressible_data_is_stored(tmp_path: Path, small_blocks) -> None:
    small = os.urandom(100_000)
    big = os.urandom(1_000_000)  # split path: decided from samples
    src_small = make_source(tmp_path / "s", small)
    src_big = make_source(tmp_path / "b", big)
    archive = tmp_path / "r.zip"

    def fill(w: ZipWriter) -> None:
        w.add_file(meta("small", 0o100644), src_small, len(small))
        w.add_file(meta("big", 0o100644), src_big, len(big))
        w.add_bytes(meta("mem", 0o100644), small)
        w.add_bytes(meta("text", 0o100644), b"abc" * 1000)

    try:
        write_zip(archive, fill)
    finally:
        os.close(src_small)
        os.close(src_big)
    with zipfile.ZipFile(archive) as zf:
        for name in ("small", "big", "mem"):
            info = zf.getinfo(name)
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.compress_size == info.file_size
        assert zf.getinfo("text").compress_type == zipfile.ZIP_DEFLATED
        assert zf.read("big") == big
        assert zf.read("small") == small
    check_with_tools(archive)


def test_level_zero_stores_everything(tmp_path: Path, small_blocks) -> None:
    data = b"compressible " * 100_000
    src = make_source(tmp_path / "s", data)
    archive = tmp_path / "z.zip"
    try:
        write_zip(
            archive,
            lambda w: (
                w.add_file(meta("a", 0o100644), src, len(data)),
                w.add_file(meta("b", 0o100644), src, 1000),
                w.add_bytes(meta("c", 0o100644), data[:5000]),
            ),
            level=0,
        )
    finally:
        os.close(src)
    with zipfile.ZipFile(archive) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        assert zf.read("a") == data
        assert zf.read("b") == data[:1000]
    check_with_tools(archive)


def test_many_mixed_entries_keep_order(tmp_path: Path, small_blocks) -> None:
    data = mixed_data(2_000_000, seed=7)
    src = make_source(tmp_path / "src", data)
    archive = tmp_path / "m.zip"
    sizes = [0, 1, 10, 5000, 70_000, 300_000, 1_000_000, 2_000_000, 3, 65_536, 262_144, 262_145]
    try:
        write_zip(
            archive,
            lambda w: [
                w.add_file(meta(f"f{i:03d}", 0o100644), src, sizes[i % len(sizes)])
                for i in range(60)
            ],
            threads=4,
            max_inflight=1 << 20,
        )
    finally:
        os.close(src)
    with zipfile.ZipFile(archive) as zf:
        assert zf.namelist() == [f"f{i:03d}" for i in range(60)]
        for i in range(60):
            assert zf.read(f"f{i:03d}") == data[: sizes[i % len(sizes)]]
    check_with_tools(archive)


# --- zip64 ---


def test_zip64_with_70000_entries(tmp_path: Path) -> None:
    archive = tmp_path / "many.zip"
    n = 70_000

    def fill(w: ZipWriter) -> None:
        w.add_directory(meta("d/", stat.S_IFDIR | 0o755))
        for i in range(n - 1):
            w.add_bytes(meta(f"d/{i}", 0o100644), b"%d" % i)

    write_zip(archive, fill)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        assert len(infos) == n
        assert zf.read("d/69998") == b"69998"
    with open(archive, "rb") as f:
        f.seek(-22, io.SEEK_END)
        eocd = f.read(22)
        f.seek(-22 - 20, io.SEEK_END)
        locator = f.read(20)
    assert struct.unpack_from("<IHHHH", eocd)[3:] == (0xFFFF, 0xFFFF)
    assert struct.unpack_from("<I", locator)[0] == 0x07064B50
    entries = read_entries(archive)
    assert len(entries) == n
    check_with_tools(archive, testzip=False)  # zipfile's testzip takes ~6 s here


def test_zip64_fields_when_limits_are_crossed(tmp_path: Path, monkeypatch, small_blocks) -> None:
    """Lower the zip64 limits so every size/offset/count path is exercised without 4 GiB files."""
    monkeypatch.setattr(ZipWriter, "_zip64_limit", 100_000)
    monkeypatch.setattr(ZipWriter, "_zip64_count_limit", 3)
    data = mixed_data(700_000, seed=11)
    src = make_source(tmp_path / "src", data)
    archive = tmp_path / "z64.zip"

    def fill(w: ZipWriter) -> None:
        w.add_bytes(meta("tiny", 0o100644), b"tiny")  # offset 0, no zip64
        w.add_file(meta("whole", 0o100644), src, 200_000)  # size above the limit, one worker job
        w.add_file(meta("split", 0o100644), src, len(data))  # split, local header patched
        w.add_symlink(meta("after", 0o120777), b"tiny")  # offset above the limit
        w.add_directory(meta("dir/", 0o40755))

    try:
        write_zip(archive, fill)
    finally:
        os.close(src)
    with zipfile.ZipFile(archive) as zf:
        assert zf.read("split") == data
        assert zf.read("whole") == data[:200_000]
        assert zf.read("after") == b"tiny"
        split = zf.getinfo("split")
        assert split.extract_version == 45
        # Local header: 0xFFFFFFFF sizes and a zip64 extra with the real values.
        with open(archive, "rb") as f:
            f.seek(split.header_offset)
            head = f.read(30)
        crc, csize, usize = struct.unpack_from("<III", head, 14)
        assert crc == zlib.crc32(data)
        assert (csize, usize) == (0xFFFFFFFF, 0xFFFFFFFF)
        z64 = extra_fields(local_extra(archive, split))[0x0001]
        assert struct.unpack("<QQ", z64) == (len(data), split.compress_size)
        assert zf.getinfo("after").header_offset > 100_000
    entries = read_entries(archive)
    assert entries["split"].file_size == len(data)
    assert entries["after"].header_offset == zipfile.ZipFile(archive).getinfo("after").header_offset
    check_with_tools(archive)


# --- copy_raw ---


def make_tree(root: Path) -> None:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "empty").mkdir()
    (root / "pkg" / "mod.py").write_bytes(b"def f():\n    return 1\n" * 200)
    (root / "pkg" / "sub" / "data.bin").write_bytes(os.urandom(100_000))
    (root / "pkg" / "sub" / "big.txt").write_bytes(mixed_data(400_000, seed=5))
    (root / "pkg" / "run").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "pkg" / "run").chmod(0o755)
    (root / "pkg" / "link").symlink_to("mod.py")


def copy_all(src: Path, dst: Path, rename=None, copy_mode: str | None = None) -> dict:
    src_fd = os.open(src, os.O_RDONLY)
    try:
        entries = read_central_directory(src_fd).entries

        def fill(w: ZipWriter) -> None:
            if copy_mode is not None:
                w._copy_mode = copy_mode
            for e in entries:
                off = local_data_offset(src_fd, e)
                if rename is None:
                    w.copy_raw(src_fd, e, off)
                else:
                    m = EntryMeta(rename(e.name), e.mode, 42, 43, NOW_NS, NOW_NS)
                    w.copy_raw(src_fd, e, off, m)

        write_zip(dst, fill)
        return {e.name: e for e in entries}
    finally:
        os.close(src_fd)


def test_copy_raw_from_info_zip_archive(tmp_path: Path) -> None:
    zip_tool = need_tool("zip")
    make_tree(tmp_path / "tree")
    src = tmp_path / "src.zip"
    subprocess.run([zip_tool, "-q", "-r", "-y", str(src), "pkg"], cwd=tmp_path / "tree", check=True)
    dst = tmp_path / "copy.zip"
    copy_all(src, dst)
    check_with_tools(dst)
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst) as b:
        assert a.namelist() == b.namelist()
        for ia, ib in zip(a.infolist(), b.infolist(), strict=True):
            for attr in ("filename", "flag_bits", "compress_type", "CRC", "compress_size",
                         "file_size", "date_time", "external_attr", "create_system",
                         "create_version", "extract_version", "extra", "comment"):  # fmt: skip
                assert getattr(ia, attr) == getattr(ib, attr), (ia.filename, attr)
            assert a.read(ia) == b.read(ib)
            assert local_extra(src, ia) == local_extra(dst, ib)  # local extras kept too
        assert b.read("pkg/link") == b"mod.py"
    ea, eb = read_entries(src), read_entries(dst)
    for name in ea:
        assert (ea[name].mode, ea[name].uid, ea[name].mtime_ns) == (
            eb[name].mode, eb[name].uid, eb[name].mtime_ns)  # fmt: skip


def test_copy_raw_with_new_meta(tmp_path: Path) -> None:
    zip_tool = need_tool("zip")
    make_tree(tmp_path / "tree")
    src = tmp_path / "src.zip"
    subprocess.run([zip_tool, "-q", "-r", "-y", str(src), "pkg"], cwd=tmp_path / "tree", check=True)
    dst = tmp_path / "renamed.zip"
    copy_all(src, dst, rename=lambda n: "new/é" + n)
    check_with_tools(dst)
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst) as b:
        for ia, ib in zip(a.infolist(), b.infolist(), strict=True):
            assert ib.filename == "new/é" + ia.filename
            assert ib.flag_bits & 0x800
            assert (ia.CRC, ia.compress_size, ia.file_size, ia.compress_type) == (
                ib.CRC, ib.compress_size, ib.file_size, ib.compress_type)  # fmt: skip
            assert ia.external_attr >> 16 == ib.external_attr >> 16
            assert a.read(ia) == b.read(ib)
            assert ntfs_times(ib.extra)[0] == NOW_NS
    for e in read_entries(dst).values():
        assert (e.uid, e.gid, e.mtime_ns) == (42, 43, NOW_NS)


class _Unseekable(io.RawIOBase):
    """A write-only stream, so zipfile writes data descriptors (flag bit 3)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        return self.buf.write(b)


def test_copy_raw_drops_data_descriptors_and_handles_zip64_sources(
    tmp_path: Path, monkeypatch
) -> None:
    sink = _Unseekable()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.txt", b"hello " * 1000)
        with zf.open("b.bin", "w") as f:
            f.write(os.urandom(5000))
        zf.writestr(zipfile.ZipInfo("dir/"), b"")
    src = tmp_path / "dd.zip"
    src.write_bytes(sink.buf.getvalue())
    with zipfile.ZipFile(src) as zf:
        assert zf.getinfo("a.txt").flag_bits & 0x8
    dst = tmp_path / "copy.zip"
    copy_all(src, dst)
    check_with_tools(dst)
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst) as b:
        for ia, ib in zip(a.infolist(), b.infolist(), strict=True):
            assert ib.flag_bits == ia.flag_bits & ~0x8
            assert a.read(ia) == b.read(ib)
    # Copy a zip64-everything archive back into a normal one and into a zip64 one.
    monkeypatch.setattr(ZipWriter, "_zip64_limit", 1000)
    z64 = tmp_path / "z64.zip"
    copy_all(dst, z64)
    check_with_tools(z64)
    monkeypatch.setattr(ZipWriter, "_zip64_limit", 0xFFFFFFFF)
    back = tmp_path / "back.zip"
    copy_all(z64, back)
    check_with_tools(back)
    with zipfile.ZipFile(dst) as a, zipfile.ZipFile(back) as b:
        for ia, ib in zip(a.infolist(), b.infolist(), strict=True):
            assert (ia.filename, ia.CRC, ia.compress_size, ia.extra) == (
                ib.filename, ib.CRC, ib.compress_size, ib.extra)  # fmt: skip
            assert a.read(ia) == b.read(ib)


@pytest.mark.parametrize("rename", [False, True])
def test_copy_raw_keeps_encrypted_entries_readable(tmp_path: Path, rename: bool) -> None:
    """Traditional PKWARE encryption with bit 3 checks the password against the DOS time: such
    entries keep bit 3, their DOS time and get a data descriptor."""
    zip_tool = need_tool("zip")
    unzip = need_tool("unzip")
    (tmp_path / "a.txt").write_bytes(b"secret data " * 10)
    (tmp_path / "b.bin").write_bytes(mixed_data(200_000))
    src = tmp_path / "enc.zip"
    subprocess.run(
        [zip_tool, "-q", "-P", "pw", str(src), "a.txt", "b.bin"], cwd=tmp_path, check=True
    )
    dst = tmp_path / "copy.zip"
    copy_all(src, dst, rename=(lambda n: "x/" + n) if rename else None)
    res = subprocess.run([unzip, "-P", "pw", "-tq", str(dst)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    with zipfile.ZipFile(dst) as zf:
        zf.setpassword(b"pw")
        prefix = "x/" if rename else ""
        assert zf.read(prefix + "a.txt") == b"secret data " * 10
        assert zf.read(prefix + "b.bin") == (tmp_path / "b.bin").read_bytes()
        assert all(i.flag_bits & 0x9 == 0x9 for i in zf.infolist())


@pytest.mark.parametrize("mode", ["copy_file_range", "sendfile", "pread", "exdev"])
def test_copy_raw_large_entries_every_copy_method(tmp_path: Path, monkeypatch, mode: str) -> None:
    data = os.urandom(3 << 20)
    src = tmp_path / "s.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("r.bin", data)
        zf.writestr("small", b"s" * 100)
        zf.writestr("r2.bin", data[::-1])
    if mode == "exdev":

        def cross_device(*args, **kwargs):
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", cross_device)
    dst = tmp_path / "d.zip"
    copy_all(src, dst, copy_mode=None if mode == "exdev" else mode)
    with zipfile.ZipFile(dst) as zf:
        assert zf.read("r.bin") == data
        assert zf.read("r2.bin") == data[::-1]
    check_with_tools(dst)


# --- Errors, abort, memory ---


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("zipwrite")]


def test_enospc_is_raised_with_errno(tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if res.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs: {res.stderr!r}")
        pytest.skip("cannot mount a tmpfs (needs root)")
    try:
        data = os.urandom(3 << 20)
        src = make_source(tmp_path / "src", data)
        fd = os.open(mnt / "out.zip", os.O_RDWR | os.O_CREAT, 0o644)
        writer = ZipWriter(fd)
        try:
            with pytest.raises(OSError) as info:
                for i in range(20):
                    writer.add_file(meta(f"f{i}", 0o100644), src, len(data))
                writer.finish()
            assert info.value.errno == errno.ENOSPC
            with pytest.raises(OSError):  # stays failed
                writer.finish()
        finally:
            writer.abort()
            os.close(fd)
            os.close(src)
        assert not _writer_threads()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_short_writes_are_resumed(tmp_path: Path, monkeypatch) -> None:
    real_pwrite = os.pwrite

    def short_pwritev(fd, bufs, pos):
        return real_pwrite(fd, b"".join(bytes(b) for b in bufs)[:777], pos)

    def short_pwrite(fd, data, pos):
        return real_pwrite(fd, bytes(data)[:777], pos)

    monkeypatch.setattr(os, "pwritev", short_pwritev)
    monkeypatch.setattr(os, "pwrite", short_pwrite)
    archive = tmp_path / "short.zip"
    payloads = [os.urandom(i * 100) + b"a" * 3000 for i in range(30)]
    write_zip(
        archive,
        lambda w: [w.add_bytes(meta(f"f{i}", 0o100644), p) for i, p in enumerate(payloads)],
    )
    monkeypatch.undo()
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        assert [zf.read(f"f{i}") for i in range(30)] == payloads


def test_worker_read_error_propagates(tmp_path: Path) -> None:
    src = make_source(tmp_path / "short", b"only ten b")
    fd = os.open(tmp_path / "o.zip", os.O_RDWR | os.O_CREAT, 0o644)
    writer = ZipWriter(fd)
    try:
        writer.add_file(meta("short", 0o100644), src, 1000)  # the file is shorter than claimed
        with pytest.raises(OSError) as info:
            writer.finish()
        assert info.value.errno == errno.EIO
    finally:
        writer.abort()
        os.close(fd)
        os.close(src)
    assert not _writer_threads()


def test_progress_exception_fails_the_write(tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def progress(n: int, b: int) -> None:
        if n == 3:
            raise Stop

    fd = os.open(tmp_path / "o.zip", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with pytest.raises(Stop), ZipWriter(fd, progress=progress) as w:
            for i in range(10):
                w.add_bytes(meta(f"f{i}", 0o100644), b"x" * 100)
            w.finish()
    finally:
        os.close(fd)
    assert not _writer_threads()


def test_abort_with_pending_work(tmp_path: Path, small_blocks) -> None:
    data = mixed_data(3_000_000, seed=9)
    src = make_source(tmp_path / "src", data)
    fd = os.open(tmp_path / "o.zip", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        w = ZipWriter(fd, threads=2)
        for i in range(5):
            w.add_file(meta(f"f{i}", 0o100644), src, len(data))
        w.abort()
        w.abort()  # idempotent
        with pytest.raises(ValueError):
            w.add_bytes(meta("x", 0o100644), b"")
    finally:
        os.close(fd)
        os.close(src)
    assert not _writer_threads()


def test_abort_from_another_thread_wakes_a_blocked_producer(tmp_path: Path) -> None:
    gate = threading.Event()
    fd = os.open(tmp_path / "o.zip", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # The writer stalls in the progress callback, so the producer soon blocks on the budget.
        w = ZipWriter(fd, progress=lambda n, b: gate.wait(), max_inflight=8 * zipwrite._JOB_COST)

        def stopper() -> None:
            time.sleep(0.3)
            threading.Timer(0.2, gate.set).start()
            w.abort()

        t = threading.Thread(target=stopper)
        t.start()
        with pytest.raises(ValueError, match="aborted"):
            for i in range(1000):
                w.add_bytes(meta(f"f{i}", 0o100644), b"x")
        t.join()
    finally:
        gate.set()
        os.close(fd)
    assert not _writer_threads()


_RSS_SCRIPT = textwrap.dedent(
    """
    import os, random, resource, sys
    from zipfuse.zipwrite import EntryMeta, ZipWriter
    src_path, out_path, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    text = open(random.__file__, "rb").read()
    rnd = random.Random(0)
    with open(src_path, "wb") as f:
        written = 0
        while written < total:
            chunk = rnd.randbytes(1 << 20) if rnd.random() < 0.25 else (text * 40)[: 1 << 20]
            f.write(chunk)
            written += len(chunk)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    src = os.open(src_path, os.O_RDONLY)
    fd = os.open(out_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    w = ZipWriter(fd, level=1)
    sizes = [total, 3 << 20, 100_000, total // 2, 5 << 20]
    for i, size in enumerate(sizes * 2):
        w.add_file(EntryMeta(f"f{i}", 0o100644, 0, 0, 0, 0), src, min(size, total))
    w.finish()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) // 1024, sum(min(s, total) for s in sizes * 2) >> 20)
    """
)


def test_memory_stays_bounded(tmp_path: Path) -> None:
    """~300 MiB of file data through add_file: peak RSS must grow by far less than that."""
    total = 100 << 20
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            _RSS_SCRIPT,
            str(tmp_path / "src"),
            str(tmp_path / "o.zip"),
            str(total),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    delta_mib, data_mib = map(int, res.stdout.split())
    assert data_mib >= 300
    assert delta_mib < 150, f"peak RSS grew by {delta_mib} MiB for {data_mib} MiB of data"
    with zipfile.ZipFile(tmp_path / "o.zip") as zf:  # validity is checked elsewhere; too slow here
        assert [i.file_size for i in zf.infolist()][:3] == [total, 3 << 20, 100_000]
        assert zf.read("f2") == (tmp_path / "src").read_bytes()[:100_000]


@pytest.mark.slow
def test_zip64_real_4gib_entries(tmp_path: Path) -> None:
    """Real sizes and offsets above 4 GiB: a stored 4.1 GiB file followed by a small one, and a
    deflated 4.1 GiB file (sparse sources, so only the stored archive costs disk space)."""
    size = (1 << 32) + (100 << 20)
    src_path = tmp_path / "zeros"
    with open(src_path, "wb") as f:
        f.truncate(size)
    src = os.open(src_path, os.O_RDONLY)
    stored = tmp_path / "stored.zip"
    deflated = tmp_path / "deflated.zip"
    try:
        write_zip(
            stored,
            lambda w: (
                w.add_file(meta("zeros", 0o100644), src, size),
                w.add_bytes(meta("after", 0o100644), b"after the big one"),
            ),
            level=0,
        )
        write_zip(deflated, lambda w: w.add_file(meta("zeros", 0o100644), src, size), level=1)
    finally:
        os.close(src)
    expect_crc = crc32_combine(0, zlib.crc32(bytes(1 << 20)), 1 << 20)
    for _ in range(12):  # crc of 4 GiB of zeros by doubling
        expect_crc = crc32_combine(expect_crc, expect_crc, 1 << 20 << _)
    expect_crc = crc32_combine(expect_crc, zlib.crc32(bytes(100 << 20)), 100 << 20)
    for archive, method in ((stored, STORED), (deflated, zipfile.ZIP_DEFLATED)):
        with zipfile.ZipFile(archive) as zf:
            info = zf.getinfo("zeros")
            assert (info.file_size, info.CRC, info.compress_type) == (size, expect_crc, method)
            if archive is stored:
                assert zf.read("after") == b"after the big one"
                assert zf.getinfo("after").header_offset > 1 << 32
        entries = read_entries(archive)
        assert entries["zeros"].file_size == size
        check_with_tools(archive, testzip=False)
    stored.unlink()


def test_device_entries_carry_rdev_in_pkware_unix_extra(tmp_path: Path) -> None:
    """Character/block devices: mode in the external attributes, major/minor in 0x000d
    (APPNOTE 4.5.7), read back by zipformat, kept by copy_raw with new metadata."""
    archive = tmp_path / "dev.zip"
    devices = {
        "dev/null": (stat.S_IFCHR | 0o666, os.makedev(1, 3)),
        "dev/sda1": (stat.S_IFBLK | 0o660, os.makedev(8, 1)),
        "dev/wide": (stat.S_IFCHR | 0o600, os.makedev(4000, 1_000_000)),
    }

    def fill(w: ZipWriter) -> None:
        for name, (mode, rdev) in devices.items():
            m = meta(name, mode, uid=70000)  # wider than the 16-bit uid of 0x000d
            m.rdev = rdev
            w.add_special(m)

    write_zip(archive, fill)
    check_with_tools(archive)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            mode, rdev = devices[info.filename]
            assert info.external_attr >> 16 == mode and info.file_size == 0
            for extra in (info.extra, local_extra(archive, info)):
                field = extra_fields(extra)[0x000D]  # parsed here, independently
                atime, mtime, uid, gid, major, minor = struct.unpack("<IIHHII", field)
                assert (major, minor) == (os.major(rdev), os.minor(rdev))
                assert mtime == NOW_NS // 10**9 and (uid, gid) == (0xFFFF, 5678)
    entries = read_entries(archive)
    assert {n: (e.mode, e.rdev, e.uid) for n, e in entries.items()} == {
        n: (mode, rdev, 70000) for n, (mode, rdev) in devices.items()
    }
    # copy_raw with new metadata (chmod, rename on a mount) writes a fresh 0x000d
    renamed = tmp_path / "renamed.zip"
    src_fd = os.open(archive, os.O_RDONLY)
    try:

        def copy(w: ZipWriter) -> None:
            for e in entries.values():
                m = meta("moved/" + e.name, e.mode | 0o4000)
                m.rdev = e.rdev
                w.copy_raw(src_fd, e, local_data_offset(src_fd, e), m)

        write_zip(renamed, copy)
    finally:
        os.close(src_fd)
    check_with_tools(renamed)
    moved = read_entries(renamed)
    assert {n: (e.mode, e.rdev) for n, e in moved.items()} == {
        "moved/" + n: (mode | 0o4000, rdev) for n, (mode, rdev) in devices.items()
    }
    # a device entry without the field (another writer) reads as rdev 0, not an error
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        info = zipfile.ZipInfo("null")
        info.create_system = 3
        info.external_attr = (stat.S_IFCHR | 0o666) << 16
        zf.writestr(info, b"")
    assert read_entries(plain)["null"].rdev == 0
    assert stat.S_ISCHR(read_entries(plain)["null"].mode)
