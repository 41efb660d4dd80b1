"""Tests for zipfuse.zipformat: end records, central directory, metadata decoding, robustness."""

from __future__ import annotations

import os
import random
import shutil
import stat
import struct
import subprocess
import time
import zipfile
import zlib
from pathlib import Path

import pytest
from fixtures_zip import (
    CD_DOS_DATE,
    CD_DOS_TIME,
    CD_FLAGS,
    SparseZeros,
    patch_central,
    text_data,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from zipfuse import zipspec
from zipfuse.entryreader import EntryReader, EntryReadError
from zipfuse.zipformat import (
    BZIP2,
    DEFLATED,
    LZMA,
    MAX_DEPTH,
    STORED,
    CentralDirectory,
    ZipFormatError,
    _decode_record,
    _decode_records,
    _scan_plain_records,
    _scan_records,
    local_data_offset,
    read_central_directory,
)


def parse(path: Path) -> CentralDirectory:
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_central_directory(fd)
    finally:
        os.close(fd)


def read_entry(path: Path, name: str, cache_dir: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        entry = next(e for e in read_central_directory(fd).entries if e.name == name)
        reader = EntryReader(fd, entry, str(cache_dir))
        try:
            return reader.read(0, entry.file_size + 1)
        finally:
            reader.close()
    finally:
        os.close(fd)


def local_ns(date_time: tuple[int, ...]) -> int:
    return int(time.mktime((*date_time, 0, 0, -1))) * 10**9


# --- archives written by Python's zipfile -------------------------------------------------


@pytest.mark.parametrize("method", [STORED, DEFLATED, BZIP2, LZMA])
def test_python_zipfile_methods(tmp_path: Path, method: int) -> None:
    path = tmp_path / "py.zip"
    contents = {"a.txt": b"hello\n", "dir/b.bin": text_data(50_000, 1), "empty": b""}
    with zipfile.ZipFile(path, "w", method) as zf:
        zf.mkdir("dir") if hasattr(zf, "mkdir") else zf.writestr("dir/", b"")
        for name, data in contents.items():
            zf.writestr(zipfile.ZipInfo(name, (2021, 6, 7, 8, 9, 10)), data, compress_type=method)
        zf.comment = b"archive comment"
    cd = parse(path)
    assert cd.comment == b"archive comment"
    assert not cd.zip64 and cd.prefix_size == 0
    assert cd.archive_size == path.stat().st_size
    by_name = {e.name: e for e in cd.entries}
    assert set(by_name) == {"dir/", *contents}
    assert [e.index for e in cd.entries] == list(range(len(cd.entries)))
    assert by_name["dir/"].is_dir and not by_name["dir/"].is_symlink
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            e = by_name[info.filename]
            assert (e.crc, e.file_size, e.compressed_size) == (
                info.CRC,
                info.file_size,
                info.compress_size,
            )
            assert e.header_offset == info.header_offset
            assert (
                e.dos_date
                == (info.date_time[0] - 1980) << 9 | info.date_time[1] << 5 | info.date_time[2]
            )
    for name, data in contents.items():
        e = by_name[name]
        assert e.method == method
        assert stat.S_ISREG(e.mode) and not e.is_dir
        assert e.uid is None and e.gid is None and e.atime_ns is None
        assert e.mtime_ns == local_ns((2021, 6, 7, 8, 9, 10))  # DOS time is local time
        assert read_entry(path, name, tmp_path) == data


def test_utf8_cp437_and_unicode_path_names(tmp_path: Path) -> None:
    path = tmp_path / "names.zip"
    good = struct.pack("<BL", 1, zlib.crc32(b"plain.txt")) + "Ünïcode.txt".encode()
    stale = struct.pack("<BL", 1, zlib.crc32(b"other.txt")) + b"stale.txt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("\u00e9t\u00e9.txt", b"utf8 flagged")  # non-ASCII: zipfile sets bit 11
        legacy = zipfile.ZipInfo("cp437-\u00e9.txt")
        legacy.create_system = 0  # made on MS-DOS: unflagged names are CP437
        zf.writestr(legacy, b"patched below")
        for name, upath in (("plain.txt", good), ("renamed.txt", stale)):
            info = zipfile.ZipInfo(name)
            info.extra = struct.pack("<HH", 0x7075, len(upath)) + upath
            zf.writestr(info, b"x")
    assert [e.flags & 0x800 for e in parse(path).entries] == [0x800, 0x800, 0, 0]
    # Clear the UTF-8 flag: entry 1 (DOS) becomes CP437; entry 0, made on Unix, stays UTF-8
    # because unflagged Unix names are taken as UTF-8 when they decode (as unzip does).
    patch_central(path, 0, CD_FLAGS, "<H", 0)
    patch_central(path, 1, CD_FLAGS, "<H", 0)
    names = [e.name for e in parse(path).entries]
    assert names[0] == "\u00e9t\u00e9.txt"
    assert names[1] == "cp437-\u00e9.txt".encode().decode("cp437")  # mojibake, as stored
    assert names[2] == "Ünïcode.txt"  # Unicode Path field whose CRC matches the raw name
    assert names[3] == "renamed.txt"  # CRC of a different name: the field is stale, ignored


def test_dos_attributes_and_invalid_dos_date(tmp_path: Path) -> None:
    path = tmp_path / "dos.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, attr in (("ro.txt", 0x01), ("rw.txt", 0x20), ("folder", 0x10)):
            info = zipfile.ZipInfo(name, (2000, 1, 2, 3, 4, 6))
            info.create_system = 0  # MS-DOS: high 16 bits of external_attr mean nothing
            info.external_attr = attr
            zf.writestr(info, b"")
    patch_central(path, 0, CD_DOS_DATE, "<H", 0)  # month 0, day 0: impossible
    patch_central(path, 1, CD_DOS_TIME, "<H", 0xFFFF)  # hour 31
    modes = {e.name: e.mode for e in parse(path).entries}
    assert modes == {
        "ro.txt": stat.S_IFREG | 0o444,
        "rw.txt": stat.S_IFREG | 0o644,
        "folder": stat.S_IFDIR | 0o755,
    }
    epoch_1980 = local_ns((1980, 1, 1, 0, 0, 0))
    assert [e.mtime_ns for e in parse(path).entries] == [
        epoch_1980,
        epoch_1980,
        local_ns((2000, 1, 2, 3, 4, 6)),
    ]


def test_unix_mode_without_type_bits_and_ntfs_times(tmp_path: Path) -> None:
    path = tmp_path / "mode.zip"
    mtime_100ns = 133_000_000_001_234_567  # 2022-06-18 in 100 ns units since 1601
    ntfs = struct.pack("<LHHQQQ", 0, 1, 24, mtime_100ns, mtime_100ns + 10, 0)
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("plain", "dir/"):
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = 0o600 << 16  # permission bits but no S_IFMT bits
            info.extra = struct.pack("<HH", 0x000A, len(ntfs)) + ntfs
            zf.writestr(info, b"")
    plain, folder = parse(path).entries
    assert plain.mode == stat.S_IFREG | 0o600
    assert folder.mode == stat.S_IFDIR | 0o600 and folder.is_dir
    expected = (mtime_100ns - 116_444_736_000_000_000) * 100
    assert plain.mtime_ns == expected and plain.atime_ns == expected + 1000


# --- archives written by Info-ZIP zip and 7-Zip -------------------------------------------


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "sub" / "big.txt").write_bytes(text_data(300_000, 2))
    (root / "sub" / "run.sh").write_bytes(b"#!/bin/sh\n")
    (root / "sub" / "link").symlink_to("../a.txt")
    os.chmod(root / "a.txt", 0o640)
    os.chmod(root / "sub" / "run.sh", 0o751)
    os.chmod(root / "sub" / "deeper", 0o700)
    if os.geteuid() == 0:
        os.chown(root / "a.txt", 1234, 5678)
    for i, p in enumerate(sorted(root.rglob("*"))):
        os.utime(p, (1_600_000_000 + i, 1_700_000_000 + 7 * i), follow_symlinks=False)


def tree_facts(root: Path) -> dict[str, os.stat_result]:
    facts = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root.parent).as_posix()
        st = p.lstat()
        facts[rel + "/" if stat.S_ISDIR(st.st_mode) else rel] = st
    facts[root.name + "/"] = root.lstat()
    return facts


@pytest.mark.skipif(shutil.which("zip") is None, reason="Info-ZIP zip not installed")
def test_infozip_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    os.utime(src, (1_600_000_000, 1_650_000_000))
    path = tmp_path / "iz.zip"
    subprocess.run(["zip", "-q", "-r", "-y", str(path), "src"], cwd=tmp_path, check=True)
    facts = tree_facts(src)
    cd = parse(path)
    assert {e.name for e in cd.entries} == set(facts)
    for e in cd.entries:
        st = facts[e.name]
        assert e.create_system == 3
        assert e.mode == st.st_mode, e.name
        assert e.mtime_ns == int(st.st_mtime) * 10**9, e.name  # from the UT extra field
        assert (e.uid, e.gid) == (st.st_uid, st.st_gid), e.name  # from the 'ux' extra field
        if e.is_symlink:
            assert read_entry(path, e.name, tmp_path) == os.readlink(src.parent / e.name).encode()
        elif not e.is_dir:
            assert e.file_size == st.st_size
            assert read_entry(path, e.name, tmp_path) == (src.parent / e.name).read_bytes()


@pytest.mark.skipif(shutil.which("zip") is None, reason="Info-ZIP zip not installed")
def test_listing_decoder_matches_the_full_decoder(tmp_path: Path) -> None:
    """entries_at decodes the usual Info-ZIP records inline (directory listings); every field
    must be what the general record decoder gives, for Info-ZIP's and for zipfile's records."""
    src = tmp_path / "src"
    make_tree(src)
    infozip = tmp_path / "iz.zip"
    subprocess.run(["zip", "-q", "-r", "-y", str(infozip), "src"], cwd=tmp_path, check=True)
    pyzip = tmp_path / "py.zip"
    with zipfile.ZipFile(pyzip, "w") as zf:
        zf.writestr("a/b.txt", b"x" * 100)
        zf.writestr("a/", b"")
    for path in (infozip, pyzip):
        fd = os.open(path, os.O_RDONLY)
        try:
            cd = read_central_directory(fd)
            buf = os.pread(fd, cd.cd_size, cd.cd_offset)
            n = len(cd)
            fast = cd.entries_at(range(n))
            slow = [_decode_record(buf, cd.record_span(i)[0], i, cd.concat) for i in range(n)]
            assert fast == slow
            assert n >= 2
        finally:
            os.close(fd)


def test_detached_directory_reads_records_near_and_far(tmp_path: Path) -> None:
    """Once detached, entries_at re-reads records from the archive: close ones in one read,
    far apart ones in clusters (a directory's files and its subdirectories' entries); in any
    order, with repeats, the entries equal those of the directory in memory."""
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3000):
            zf.writestr(f"dir{i // 100}/file{i:04d}.txt", b"x" * (i % 7), zipfile.ZIP_STORED)
    fd = os.open(path, os.O_RDONLY)
    try:
        whole = read_central_directory(fd).entries
        rng = random.Random(5)
        picks = [
            [5, 3, 4, 2999, 1500, 1501, 0, 4],  # clusters and lone records, unsorted, repeated
            list(range(200, 260)),  # one run
            [2999, 0],
            rng.sample(range(3000), 300),
            [7],
        ]
        for indices in picks:
            cd = read_central_directory(fd)
            cd.detach(fd)
            assert cd.entries_at(indices) == [whole[i] for i in indices]
    finally:
        os.close(fd)


@pytest.mark.skipif(shutil.which("7z") is None, reason="7z not installed")
def test_7zip_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    path = tmp_path / "7z.zip"
    subprocess.run(
        ["7z", "a", "-tzip", str(path), "src"], cwd=tmp_path, check=True, capture_output=True
    )
    facts = tree_facts(src)
    cd = parse(path)
    assert {e.name for e in cd.entries} <= set(facts) | {n.rstrip("/") for n in facts}
    for e in cd.entries:
        st = facts.get(e.name) or facts[e.name + "/"]
        assert stat.S_IFMT(e.mode) == stat.S_IFMT(st.st_mode), e.name
        if not e.is_dir:
            assert stat.S_IMODE(e.mode) == stat.S_IMODE(st.st_mode), e.name
        assert e.mtime_ns == st.st_mtime_ns // 100 * 100, e.name  # NTFS extra, 100 ns
        if e.is_symlink:
            assert read_entry(path, e.name, tmp_path) == os.readlink(src.parent / e.name).encode()
        elif not e.is_dir:
            assert read_entry(path, e.name, tmp_path) == (src.parent / e.name).read_bytes()


@pytest.mark.skipif(shutil.which("7z") is None, reason="7z not installed")
def test_7zip_deflate64(tmp_path: Path) -> None:
    data = text_data(3_000_000, 3) + bytes(2_000_000)
    (tmp_path / "d.bin").write_bytes(data)
    path = tmp_path / "d64.zip"
    subprocess.run(
        ["7z", "a", "-tzip", "-mm=Deflate64", str(path), "d.bin"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    (entry,) = parse(path).entries
    assert entry.method == 9 and entry.file_size == len(data)
    assert read_entry(path, "d.bin", tmp_path) == data


# --- zip64 ---------------------------------------------------------------------------------


def test_more_than_65535_entries(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    n = 70_000
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(zipfile.ZipInfo(f"d{i % 10}/{i}"), b"")
    cd = parse(path)
    assert cd.zip64
    assert len(cd.entries) == n
    assert cd.entries[-1].name == f"d{(n - 1) % 10}/{n - 1}"
    assert cd.entries[-1].index == n - 1


def test_entry_larger_than_4gib(tmp_path: Path) -> None:
    """A real zipfile-written zip64 entry of 4 GiB + 4 bytes; the zeros are a sparse hole."""
    path = tmp_path / "huge.zip"
    zeros = bytes(64 << 20)
    with open(path, "wb") as raw, zipfile.ZipFile(SparseZeros(raw, zeros), "w") as zf:
        zf.writestr("small", b"before")
        with zf.open("huge", "w", force_zip64=True) as w:
            for _ in range(64):
                w.write(zeros)
            w.write(b"END!")
        zf.writestr("after", b"after the huge one")
    small, huge, after = parse(path).entries
    assert huge.file_size == huge.compressed_size == 2**32 + 4
    assert after.header_offset > 2**32
    fd = os.open(path, os.O_RDONLY)
    try:
        assert local_data_offset(fd, huge) > huge.header_offset
        reader = EntryReader(fd, huge, str(tmp_path))
        assert reader.read(2**32 - 6, 100) == bytes(6) + b"END!"
        assert reader.read(2**32 + 4, 10) == b""
        reader.close()
    finally:
        os.close(fd)
    assert read_entry(path, "after", tmp_path) == b"after the huge one"


# --- prepended data, comments ----------------------------------------------------------------


def small_archive(path: Path) -> dict[str, bytes]:
    contents = {"one.txt": b"first entry\n" * 20, "two/three.bin": bytes(range(256)) * 4}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in contents.items():
            zf.writestr(name, data)
    return contents


def test_self_extracting_prefix(tmp_path: Path) -> None:
    plain = tmp_path / "plain.zip"
    contents = small_archive(plain)
    sfx = tmp_path / "sfx.zip"
    sfx.write_bytes(random.Random(5).randbytes(1000) + plain.read_bytes())
    cd_plain, cd = parse(plain), parse(sfx)
    assert cd.prefix_size == 1000
    assert cd.cd_offset == cd_plain.cd_offset + 1000
    for a, b in zip(cd_plain.entries, cd.entries, strict=True):
        assert b.header_offset == a.header_offset + 1000
    for name, data in contents.items():
        assert read_entry(sfx, name, tmp_path) == data


def test_sfx_prefix_with_zip64_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain64.zip"
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 1)  # makes zipfile write zip64 end records
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("x", b"zip64 entry")
        zf.writestr("y", b"second")
    monkeypatch.undo()
    assert b"PK\x06\x06" in plain.read_bytes() and b"PK\x06\x07" in plain.read_bytes()
    assert parse(plain).zip64 and parse(plain).prefix_size == 0
    sfx = tmp_path / "sfx64.zip"
    sfx.write_bytes(b"#!stub\n" * 100 + plain.read_bytes())
    cd = parse(sfx)
    assert cd.zip64 and cd.prefix_size == 700
    assert [e.header_offset for e in cd.entries] == [
        e.header_offset + 700 for e in parse(plain).entries
    ]
    assert read_entry(sfx, "x", tmp_path) == b"zip64 entry"
    assert read_entry(sfx, "y", tmp_path) == b"second"


def test_comment_containing_fake_end_signature(tmp_path: Path) -> None:
    path = tmp_path / "comment.zip"
    small_archive(path)
    fake = b"PK\x05\x06" + bytes(18)
    with zipfile.ZipFile(path, "a") as zf:
        zf.comment = b"look: " + fake + b" tail"
    cd = parse(path)
    assert cd.comment == b"look: " + fake + b" tail"
    assert len(cd.entries) == 2


def test_empty_archive(tmp_path: Path) -> None:
    path = tmp_path / "empty.zip"
    zipfile.ZipFile(path, "w").close()
    cd = parse(path)
    assert cd.entries == [] and cd.cd_size == 0 and cd.prefix_size == 0


# --- malformed input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"PK", b"not a zip at all" * 100, bytes(22), b"PK\x03\x04" + bytes(100)],
)
def test_not_a_zip(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.zip"
    path.write_bytes(content)
    with pytest.raises(ZipFormatError, match="not a zip archive"):
        parse(path)


def eocd(count: int, cd_size: int, cd_offset: int, comment: bytes = b"") -> bytes:
    return (
        struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset, len(comment))
        + comment
    )


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (eocd(0xFFFF, 100, 0), "does not fit"),  # absurd count for the directory size
        (eocd(1, 10**9, 0), "exceeds the archive"),  # CD bigger than the file
        (eocd(1, 46, 10**9), "beyond"),  # CD offset beyond its real position
    ],
)
def test_bad_end_record(tmp_path: Path, tail: bytes, message: str) -> None:
    path = tmp_path / "bad.zip"
    path.write_bytes(bytes(200) + tail)
    with pytest.raises(ZipFormatError, match=message):
        parse(path)


def test_bad_extra_field_length(tmp_path: Path) -> None:
    path = tmp_path / "extra.zip"
    info = zipfile.ZipInfo("x")
    info.extra = struct.pack("<HH", 0x5455, 200) + b"\x01abcd"  # claims 200 bytes, has 5
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info, b"data")
    with pytest.raises(ZipFormatError, match="extra field 0x5455"):
        parse(path)


def test_zip64_placeholder_without_extra(tmp_path: Path) -> None:
    path = tmp_path / "z64.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x", b"data")
    patch_central(path, 0, 20, "<L", 0xFFFFFFFF)  # compressed size -> "see zip64 extra"
    with pytest.raises(ZipFormatError, match="zip64"):
        parse(path)


def test_bad_local_header(tmp_path: Path) -> None:
    path = tmp_path / "local.zip"
    small_archive(path)
    data = bytearray(path.read_bytes())
    data[0:4] = b"XXXX"
    path.write_bytes(bytes(data))
    cd = parse(path)  # the central directory is intact
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(ZipFormatError, match="local header"):
            local_data_offset(fd, cd.entries[0])
        with pytest.raises(EntryReadError) as exc:
            EntryReader(fd, cd.entries[0], str(tmp_path)).read(0, 10)
        assert exc.value.errno == 5
        assert local_data_offset(fd, cd.entries[1]) > cd.entries[1].header_offset
    finally:
        os.close(fd)


def exercise(path: Path, cache_dir: Path) -> str:
    """Parse and read everything; only the two documented exception types may escape.

    Returns which stage failed ("format", "read") or "ok".
    """
    fd = os.open(path, os.O_RDONLY)
    outcome = "ok"
    try:
        try:
            cd = read_central_directory(fd)
        except ZipFormatError as exc:
            assert "\n" not in str(exc) and str(exc)
            return "format"
        for entry in cd.entries:
            reader = EntryReader(fd, entry, str(cache_dir))
            try:
                reader.read(0, 1 << 16)
            except EntryReadError as exc:
                assert "\n" not in str(exc) and exc.errno
                outcome = "read"
            finally:
                reader.close()
    finally:
        os.close(fd)
    return outcome


def test_every_truncation(tmp_path: Path) -> None:
    full = tmp_path / "full.zip"
    small_archive(full)
    data = full.read_bytes()
    cut = tmp_path / "cut.zip"
    parsed = 0
    for length in range(len(data)):
        cut.write_bytes(data[:length])
        exercise(cut, tmp_path)
        try:
            parse(cut)
            parsed += 1
        except ZipFormatError:
            pass
    assert parsed == 0  # a prefix of a zip never ends with a valid end record


@pytest.mark.parametrize("maker", ["python", "infozip"])
def test_random_bit_flips(tmp_path: Path, maker: str) -> None:
    base = tmp_path / "base.zip"
    if maker == "python":
        small_archive(base)
    else:
        if shutil.which("zip") is None:
            pytest.skip("Info-ZIP zip not installed")
        src = tmp_path / "src"
        make_tree(src)
        subprocess.run(["zip", "-q", "-r", "-y", str(base), "src"], cwd=tmp_path, check=True)
    data = base.read_bytes()
    rnd = random.Random(1234)
    flipped = tmp_path / "flipped.zip"
    outcomes = set()
    for _ in range(400):
        mutated = bytearray(data)
        for _ in range(rnd.randint(1, 4)):
            # Half of the flips land in the last 600 bytes, where the directory lives.
            pos = (
                rnd.randrange(len(mutated))
                if rnd.random() < 0.5
                else len(mutated) - 1 - rnd.randrange(600)
            )
            mutated[pos] ^= 1 << rnd.randrange(8)
        flipped.write_bytes(bytes(mutated))
        outcomes.add(exercise(flipped, tmp_path))
    assert outcomes == {"ok", "format", "read"}  # every stage was reached and survived


def test_random_garbage_never_crashes(tmp_path: Path) -> None:
    rnd = random.Random(99)
    path = tmp_path / "garbage.zip"
    outcomes: list[str] = []
    for _ in range(200):
        body = rnd.randbytes(rnd.randrange(0, 400))
        # Often give it a plausible end record so the deeper parsers get exercised too.
        if rnd.random() < 0.7:
            body += eocd(rnd.randrange(0, 5), rnd.randrange(0, 300), rnd.randrange(0, 300))
        path.write_bytes(body)
        outcomes.append(exercise(path, tmp_path))
    assert "format" in outcomes


def test_data_bounded_by_the_given_archive_size(tmp_path: Path) -> None:
    """local_data_offset and EntryReader take the version's size instead of an fstat per open
    (a round trip on NFS); the bounds check applies to that size."""
    path = tmp_path / "sized.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("a.txt", b"a" * 1000)
        z.writestr("b.txt", b"b" * 10)
    cd = parse(path)
    entry = cd.entries[0]
    fd = os.open(path, os.O_RDONLY)
    try:
        start = local_data_offset(fd, entry, cd.archive_size)
        assert start == local_data_offset(fd, entry)  # the same answer as with an fstat
        assert local_data_offset(fd, entry, start + 1000) == start
        with pytest.raises(ZipFormatError, match="runs past the end"):
            local_data_offset(fd, entry, start + 999)  # the given size is what bounds it
        reader = EntryReader(fd, entry, str(tmp_path), start + 999)
        with pytest.raises(EntryReadError) as exc:
            reader.read(0, 10)
        assert exc.value.errno == 5
        reader = EntryReader(fd, entry, str(tmp_path), cd.archive_size)
        assert reader.read(0, 2000) == b"a" * 1000
    finally:
        os.close(fd)


def _torn(tmp_path: Path, tail: bytes) -> tuple[Path, bytes]:
    """A zip, then what an append in place writes before its end records: local headers and
    data (here one header and ``tail``), no directory yet."""
    path = tmp_path / "torn.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(20):
            z.writestr(f"f{i}.txt", f"file {i}\n" * 50)
    complete = path.read_bytes()
    header = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, len(tail), len(tail), 7, 0)
    path.write_bytes(complete + header + b"new.bin" + tail)
    return path, complete


def test_torn_tail_past_a_megabyte_finds_the_previous_end(tmp_path: Path) -> None:
    """A new mount while a writer appends megabytes: the end records of the version before
    are found further back than the last 64 KiB; end-record look-alikes in the torn tail
    (random data, or a whole zip stored inside it) are not taken."""
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("inner.txt", "not the archive's\n")
    for tail in (
        os.urandom(3 << 20),
        os.urandom(1 << 20) + inner.read_bytes() + os.urandom(200_000),
        inner.read_bytes() + os.urandom(1 << 20),
    ):
        path, complete = _torn(tmp_path, tail)
        cd = parse(path)
        assert cd.end_offset == len(complete) and cd.archive_size == os.path.getsize(path)
        assert sorted(e.name for e in cd.entries) == sorted(f"f{i}.txt" for i in range(20))
        assert read_entry(path, "f7.txt", tmp_path) == b"file 7\n" * 50


def test_no_valid_end_record_anywhere_still_fails(tmp_path: Path) -> None:
    """The scan further back is for files that start like a zip; it never invents an archive,
    and a file that is no zip fails without it."""
    path = tmp_path / "noise.bin"
    path.write_bytes(os.urandom(2 << 20))
    with pytest.raises(ZipFormatError, match="not a zip"):
        parse(path)
    path.write_bytes(b"PK\x03\x04" + os.urandom(2 << 20))
    with pytest.raises(ZipFormatError, match="not a zip"):
        parse(path)
    fake = b"PK\x05\x06" + bytes(4) + struct.pack("<HHLLH", 1, 1, 46, 1000, 0)
    path.write_bytes(b"PK\x03\x04" + os.urandom(954) + b"PK\x01\x02" + os.urandom(42) + fake)
    path.write_bytes(path.read_bytes() + os.urandom(1 << 20))  # a bad directory, far back
    with pytest.raises(ZipFormatError, match="not a zip"):
        parse(path)


@pytest.mark.skipif(shutil.which("zip") is None, reason="Info-ZIP zip not installed")
def test_plain_scan_matches_the_record_by_record_scan(tmp_path: Path) -> None:
    """Mounting scans Info-ZIP directories in C-level passes; the result (record offsets,
    local header offsets, sizes, name keys) must be the record-by-record scan's, and any
    record it cannot be sure about (a signature inside a name) sends it back to that scan."""
    src = tmp_path / "src"
    make_tree(src)
    plain = tmp_path / "plain.zip"
    subprocess.run(["zip", "-q", "-r", "-y", str(plain), "src"], cwd=tmp_path, check=True)
    (src / "PK\x01\x02.txt").write_bytes(b"signature in the name")
    odd = tmp_path / "odd.zip"
    subprocess.run(["zip", "-q", "-r", "-y", str(odd), "src"], cwd=tmp_path, check=True)
    for path, expect_fast in ((plain, True), (odd, False)):
        fd = os.open(path, os.O_RDONLY)
        try:
            cd = read_central_directory(fd, keep_names=True, max_depth=MAX_DEPTH)
            buf = os.pread(fd, cd.cd_size, cd.cd_offset)
        finally:
            os.close(fd)
        fast_names: list[bytes] = []
        fast = _scan_plain_records(buf, cd.concat, len(cd), fast_names, MAX_DEPTH)
        slow_names: list[bytes] = []
        slow = _scan_records(buf, cd.concat, cd.cd_offset, len(cd), slow_names, MAX_DEPTH)
        assert cd.take_names() == slow_names
        if expect_fast:
            assert fast == slow and fast_names == slow_names and len(slow_names) > 5
        else:
            assert fast is None


# --- usual layouts decoded inline, and their stats (listing without a ZipEntry) -----------

_UT = struct.Struct("<HHBi")  # 'UT', its length, flags, mtime
_UX = struct.Struct("<HHBBIBI")  # 'ux', its length, version, uid size, uid, gid size, gid
_NTFS = struct.Struct("<HHIHHQQQ")  # 0x000a, its length, reserved, tag, size, m/a/ctime
_CDH = struct.Struct("<4s2B5H3L5H2L")


def _record(name: bytes, extra: bytes, mode: int, size: int, *, system: int = 3) -> bytes:
    flags = 0 if name.isascii() else 0x800
    fields = (
        b"PK\x01\x02", 30, system, 20, flags, 8, 0, 0x5021, 1234, size // 2, size, len(name),
        len(extra), 0, 0, 0, mode << 16, 77,
    )  # fmt: skip
    return _CDH.pack(*fields) + name + extra


def _stat_of(entry) -> tuple:
    name = entry.name.encode()
    return (
        entry.mode, entry.uid, entry.gid, entry.file_size, entry.mtime_ns,
        entry.mtime_ns if entry.atime_ns is None else entry.atime_ns, name[name.rfind(b"/") + 1 :],
    )  # fmt: skip


_KINDS = [stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777, stat.S_IFIFO | 0o600,
          stat.S_IFCHR | 0o600, 0o644]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    records=st.lists(
        st.tuples(
            st.sampled_from([b"a/b.txt", b"top", b"d/", b"x/y/z", "é/ü".encode(), b"a b"]),
            st.sampled_from(["infozip", "zipfuse", "ut-only", "none"]),
            st.sampled_from(_KINDS),
            st.sampled_from([0, 5, 4095, 4096, 0xFFFFFFFF]),
            st.integers(-(2**31), 2**31 - 1),  # UT mtime
            st.sampled_from([0, 1, 2**63 // 100, 2**64 - 1, zipspec.NTFS_EPOCH_DELTA + 10**15]),
            st.sampled_from([0, zipspec.NTFS_EPOCH_DELTA + 5 * 10**14, 2**64 - 1]),  # atime
            st.sampled_from([0, 1000, 2**32 - 1]),
            st.sampled_from([1, 3]),  # UT flags (1: mtime)
            st.sampled_from([3, 0]),  # made on Unix, or DOS
        ),
        min_size=1,
        max_size=8,
    )
)
def test_inline_and_stats_decoding_match_the_full_decoder(records) -> None:
    """_decode_records decodes the usual layouts (Info-ZIP's 'UT' + 'ux'; zipfuse's 'UT' + 'ux'
    + NTFS) inline, and with ``stats`` gives only what a node shows: for any mix of fields,
    near misses included (other kinds, zip64 placeholders, NTFS times zero or out of range,
    non-ASCII names, DOS records), every entry is exactly what the general decoder gives, and
    every stats tuple is that entry's metadata."""
    buf = b""
    positions = []
    for name, layout, mode, size, mtime, nt_m, nt_a, uid, ut_flags, system in records:
        ut = _UT.pack(0x5455, 5, ut_flags, mtime)
        ux = _UX.pack(0x7875, 11, 1, 4, uid, 4, uid ^ 1)
        ntfs = _NTFS.pack(0x000A, 32, 0, 1, 24, nt_m, nt_a, nt_m)
        extra = {"infozip": ut + ux, "zipfuse": ut + ux + ntfs, "ut-only": ut, "none": b""}
        positions.append(len(buf))
        buf += _record(name, extra[layout], mode, size, system=system)
    indices = list(range(len(records)))
    try:
        full = [_decode_record(buf, p, i, 0) for p, i in zip(positions, indices, strict=True)]
    except ZipFormatError:  # a zip64 placeholder without its extra field: refused both ways
        for as_stats in (False, True):
            with pytest.raises(ZipFormatError):
                _decode_records(buf, positions, indices, 0, as_stats)
        return
    assert _decode_records(buf, positions, indices, 0) == full
    stats = _decode_records(buf, positions, indices, 0, True)
    for got, entry in zip(stats, full, strict=True):
        if isinstance(got, tuple):
            assert got == _stat_of(entry)
            assert entry.name.isascii() and entry.rdev == 0
        else:
            assert got == entry
    usual = [
        i
        for i, (name, layout, mode, size, *_rest, system) in enumerate(records)
        if layout in ("infozip", "zipfuse") and system == 3 and name.isascii()
        and stat.S_IFMT(mode) in (stat.S_IFREG, stat.S_IFDIR) and size != 0xFFFFFFFF
        and (layout == "zipfuse" or records[i][8] & 1) and (layout == "infozip" or records[i][5])
    ]  # fmt: skip
    for i in usual:  # in range when the NTFS times are; else decoded the general way
        nt_ok = layout_ok = records[i][1] == "infozip"
        if not layout_ok:
            m = (records[i][5] - zipspec.NTFS_EPOCH_DELTA) * 100
            a = (records[i][6] - zipspec.NTFS_EPOCH_DELTA) * 100
            nt_ok = -(2**63) <= m < 2**63 and (not records[i][6] or -(2**63) <= a < 2**63)
        assert isinstance(stats[i], tuple) == nt_ok, records[i]


def test_stats_of_detached_directory_near_and_far(tmp_path: Path) -> None:
    """stats_at reads records like entries_at (close ones together, far ones in clusters, in
    any order): a zipfuse-written archive gives stats, each that of the entry."""
    from zipfuse.zipwrite import EntryMeta, ZipWriter

    path = tmp_path / "zf.zip"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with ZipWriter(fd, level=1) as w:
            for i in range(2000):
                t = 1_700_000_000_123_456_700 + i
                meta = EntryMeta(f"d{i // 100}/f{i:04d}", stat.S_IFREG | 0o640, 1000 + i, 7, t, t)
                w.add_bytes(meta, b"y" * (i % 5))
            w.finish()
        whole = read_central_directory(fd).entries
        for indices in ([5, 3, 1999, 1000, 0, 5], list(range(300, 420)), [1234]):
            cd = read_central_directory(fd)
            cd.detach(fd)
            got = cd.stats_at(indices)
            assert got == [_stat_of(whole[i]) for i in indices]
            assert cd.entries_at(indices) == [whole[i] for i in indices]
            assert [cd.entry(i) for i in indices] == [whole[i] for i in indices]
    finally:
        os.close(fd)
