"""Fuzzing the format layer (and, for a few seeded cases, a real mount) with mutated archives.

The contract under test:

- ``read_central_directory`` either raises ``ZipFormatError`` with a one-line message, or returns
  entries whose local data do not overlap each other or the central directory;
- every ``EntryReader.read`` of such an entry raises nothing but ``EntryReadError`` (an OSError
  with an errno) and never hands out more than the entry's declared ``file_size`` in total;
- ``names.sanitize`` never returns a component that is empty, ``.``, ``..``, longer than
  255 bytes, or contains ``/`` or NUL.

CI runs a bounded, derandomized number of examples (well under a minute). For a longer search:

    ZIPFUSE_FUZZ_EXAMPLES=20000 pytest tests/zipfuse/test_fuzz.py -k "not mount"

which also makes hypothesis random (and remembers failures in .hypothesis/).
"""

from __future__ import annotations

import bz2
import errno
import io
import lzma
import os
import random
import stat
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import mounted
from tests.zipfuse import hostile_zip as hz
from tests.zipfuse.test_hostile import assert_mount_fails
from zipfuse import registry
from zipfuse.entryreader import EntryReader, EntryReadError, supported_method
from zipfuse.names import NAME_MAX, sanitize
from zipfuse.zipformat import ZipFormatError, read_central_directory

LONG_RUN = "ZIPFUSE_FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("ZIPFUSE_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG_RUN,
    database=None if not LONG_RUN else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
READ_LIMIT = 16 << 20  # plaintext read per entry at most (mutated sizes can be huge)
READ_PIECE = 64 << 10


# ------------------------------------------------------------------------------ seed archives
def _python_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("stored.txt", b"plain stored bytes\n" * 20, zipfile.ZIP_STORED)
        zf.writestr("dir/deflated.txt", b"deflate me " * 400, zipfile.ZIP_DEFLATED)
        zf.writestr("dir/bzip2.bin", bytes(range(256)) * 30, zipfile.ZIP_BZIP2)
        zf.writestr("lzma.txt", b"lzma " * 300, zipfile.ZIP_LZMA)
        zf.writestr("empty/", b"")
        zf.writestr("zero.bin", b"")
        zf.comment = b"archive comment"
    return buf.getvalue()


def _zip64() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", allowZip64=True) as zf:
        for i in range(3):
            with zf.open(f"f{i}.txt", "w", force_zip64=True) as f:
                f.write(b"zip64 entry %d\n" % i * 50)
    return buf.getvalue()


def _crafted() -> bytes:
    """Our own writer: symlink, Deflate64 bomb-ish stream, zstd when available, a dir."""
    d64, size = hz.deflate64_zero_bomb(3)
    members = [
        hz.deflated("a/b.txt", b"crafted " * 200),
        hz.symlink("a/link", b"b.txt"),
        hz.directory("a/d/"),
        hz.Member(b"d64.bin", d64, 9, hz.zero_crc(size), size),
        hz.stored("tail", b"the end"),
    ]
    if supported_method(93):
        import zstandard

        data = b"zstd data " * 500
        members.append(
            hz.Member(b"z.zst", zstandard.ZstdCompressor().compress(data), 93, zlib.crc32(data),
                      len(data))
        )  # fmt: skip
    return hz.build(members)


def _bombish() -> bytes:
    """Small archive whose entries inflate a lot: mutations of sizes/CRCs hit the caps."""
    zeros = hz.zero_deflate_stream(8 << 20)
    bz = bz2.compress(bytes(4 << 20))
    members = [
        hz.Member(b"zeros", zeros, 8, hz.zero_crc(8 << 20), 8 << 20),
        hz.Member(b"zeros.bz2", bz, 12, hz.zero_crc(4 << 20), 4 << 20),
        hz.Member(b"small", zeros, 8, hz.zero_crc(1000), 1000),
    ]
    return hz.build(members)


SEEDS: dict[str, bytes] = {
    "python": _python_zip(),
    "zip64": _zip64(),
    "crafted": _crafted(),
    "bombish": _bombish(),
}


# ------------------------------------------------------------------------------ mutations
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]
SIGNATURES = (b"PK\x01\x02", b"PK\x03\x04", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07")


def _records(data: bytes | bytearray) -> list[int]:
    """Offsets of everything that looks like a zip record signature."""
    out = []
    for sig in SIGNATURES:
        pos = data.find(sig)
        while pos >= 0:
            out.append(pos)
            pos = data.find(sig, pos + 1)
    return sorted(out)


def _central_len(data: bytes | bytearray, pos: int) -> int:
    if pos + 46 > len(data):
        return len(data) - pos
    nlen, elen, clen = struct.unpack_from("<3H", data, pos + 28)
    return min(46 + nlen + elen + clen, len(data) - pos)


@st.composite
def mutants(draw) -> tuple[str, bytes]:
    seed = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[seed])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(
                ["truncate", "flip", "insert", "delete", "dup_record", "count", "field", "size"]
            )
        )
        records = _records(data)
        if kind == "truncate":
            del data[draw(st.integers(0, max(len(data) - 1, 0))) :]
        elif kind == "flip" and data:
            # most flips near the end, where the central directory lives
            back = draw(st.integers(0, len(data) - 1))
            pos = len(data) - 1 - back if draw(st.booleans()) else back
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            pos = draw(st.integers(0, len(data)))
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete" and data:
            pos = draw(st.integers(0, len(data) - 1))
            del data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "dup_record" and records:
            cds = [p for p in records if data[p : p + 4] == b"PK\x01\x02"] or records
            pos = draw(st.sampled_from(cds))
            rec = data[pos : pos + _central_len(data, pos)]
            data[pos:pos] = rec
            if draw(st.booleans()):  # keep the end record consistent with the extra record
                end = data.rfind(b"PK\x05\x06")
                if end >= 0 and end + 22 <= len(data):
                    n, size = struct.unpack_from("<H4xL", data, end + 10)
                    struct.pack_into("<HHL", data, end + 8, (n + 1) & 0xFFFF, (n + 1) & 0xFFFF,
                                     (size + len(rec)) & 0xFFFFFFFF)  # fmt: skip
        elif kind == "count":
            end = data.rfind(b"PK\x05\x06")
            if end >= 0 and end + 12 <= len(data):
                n = draw(st.sampled_from(INTERESTING[:8]))
                struct.pack_into("<HH", data, end + 8, n, n)
        elif kind == "field" and records:
            pos = draw(st.sampled_from(records)) + draw(st.integers(4, 45))
            width = draw(st.sampled_from([2, 4]))
            value = draw(st.sampled_from(INTERESTING)) & (0xFFFF if width == 2 else 0xFFFFFFFF)
            if pos + width <= len(data):
                data[pos : pos + width] = value.to_bytes(width, "little")
        elif kind == "size" and records:
            cds = [p for p in records if data[p : p + 4] == b"PK\x01\x02"]
            if cds:
                pos = draw(st.sampled_from(cds)) + draw(st.sampled_from([20, 24]))
                value = draw(st.sampled_from(INTERESTING + [1 << 20, 100 << 20]))
                if pos + 4 <= len(data):
                    struct.pack_into("<L", data, pos, value & 0xFFFFFFFF)
    return seed, bytes(data)


# ------------------------------------------------------------------------------ the contract
def check_archive(data: bytes, workdir: str) -> str:
    """Parse and read everything; assert the contract. Returns "format", "read" or "ok"."""
    path = os.path.join(workdir, "fuzz.zip")
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDONLY)
    outcome = "ok"
    try:
        try:
            cd = read_central_directory(fd)
        except ZipFormatError as exc:
            msg = str(exc)
            assert msg and "\n" not in msg
            return "format"
        spans = sorted(
            (e.header_offset, e.header_offset + 30 + e.compressed_size) for e in cd.entries
        )
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert end <= start, "overlapping entries were accepted"
        assert not spans or spans[-1][1] <= cd.cd_offset
        for entry in cd.entries:
            assert 0 <= entry.file_size < 2**63 and 0 <= entry.compressed_size < 2**63
            if stat.S_ISLNK(entry.mode):
                assert entry.file_size < 4096
            if not read_entry(fd, entry, workdir):
                outcome = "read"
    finally:
        os.close(fd)
    return outcome


def read_entry(fd: int, entry, workdir: str) -> bool:
    """Read an entry sequentially, then beyond its end, then at a middle offset."""
    reader = EntryReader(fd, entry, workdir)
    ok = True
    try:
        total = 0
        try:
            while total < min(entry.file_size, READ_LIMIT):
                chunk = reader.read(total, READ_PIECE)
                assert isinstance(chunk, bytes)
                assert len(chunk) <= min(READ_PIECE, entry.file_size - total)
                if not chunk:
                    break
                total += len(chunk)
        except EntryReadError as exc:
            assert isinstance(exc.errno, int) and exc.errno > 0
            assert "\n" not in str(exc)
            ok = False
        assert total <= entry.file_size
        for offset, size in ((entry.file_size, 100), (entry.file_size + 12345, 1 << 20)):
            try:
                assert reader.read(offset, size) == b""
            except EntryReadError as exc:
                assert exc.errno > 0
                ok = False
        if entry.file_size:
            mid = min(entry.file_size // 2, READ_LIMIT)
            try:
                got = reader.read(mid, 1000)
                assert len(got) <= min(1000, entry.file_size - mid)
            except EntryReadError as exc:
                assert exc.errno > 0
                ok = False
    finally:
        reader.close()
    return ok


def test_seed_archives_are_valid(tmp_path: Path) -> None:
    for name, data in SEEDS.items():
        # the "small" entry of the bomb seed inflates past its declared size on purpose
        want = "read" if name == "bombish" else "ok"
        assert check_archive(data, str(tmp_path)) == want, name


@FUZZ
@given(mutants())
def test_mutated_archives_keep_the_contract(case: tuple[str, bytes]) -> None:
    _, data = case
    with tempfile.TemporaryDirectory() as workdir:
        check_archive(data, workdir)


@FUZZ
@given(st.binary(max_size=2000), st.binary(max_size=300))
def test_garbage_with_end_record_keeps_the_contract(body: bytes, cd: bytes) -> None:
    """Random bytes behind a plausible end record (pointing at random 'central directory')."""
    data = body + cd + hz.EOCD.pack(b"PK\x05\x06", 0, 0, 1, 1, len(cd), len(body), 0)
    with tempfile.TemporaryDirectory() as workdir:
        check_archive(data, workdir)


# ------------------------------------------------------------------------------ names
name_parts = st.one_of(
    st.sampled_from(["", ".", "..", "...", "/", "//", "\0", "\\", "a", "ü", "\udcff", "\ud800"]),
    st.text(max_size=8),
    st.integers(250, 260).map(lambda n: "x" * n),
    st.integers(120, 130).map(lambda n: "é" * n),  # 2 bytes each in UTF-8
)


@FUZZ
@given(st.one_of(st.lists(name_parts, max_size=8).map("/".join), st.text(), st.binary()))
def test_sanitize_never_returns_an_unsafe_component(name: str | bytes) -> None:
    if isinstance(name, bytes):
        name = name.decode("utf-8", "surrogateescape")
    parts = sanitize(name)
    if parts is None:
        return
    for part in parts:
        assert part not in ("", ".", "..")
        assert "/" not in part and "\0" not in part
        assert len(part.encode("utf-8", "surrogateescape")) <= NAME_MAX
    # sanitising is idempotent: the joined result is already clean
    assert sanitize("/".join(parts)) == parts


# ------------------------------------------------------------------------------ through a mount
def _seeded_mount_cases() -> list[tuple[str, bytes, bool]]:
    """A fixed handful of mutants: some the parser refuses, some it accepts."""
    rnd = random.Random(20261126)
    refused: list[tuple[str, bytes, bool]] = []
    accepted: list[tuple[str, bytes, bool]] = []
    workdir = tempfile.mkdtemp()
    try:
        while len(refused) < 3 or len(accepted) < 5:
            seed = rnd.choice(sorted(SEEDS))
            data = bytearray(SEEDS[seed])
            for _ in range(rnd.randint(1, 3)):
                pos = len(data) - 1 - rnd.randrange(min(len(data), 700))
                if rnd.random() < 0.3:
                    pos = rnd.randrange(len(data))
                data[pos] ^= 1 << rnd.randrange(8)
            data = bytes(data)
            path = os.path.join(workdir, "probe.zip")
            with open(path, "wb") as f:
                f.write(data)
            fd = os.open(path, os.O_RDONLY)
            try:
                read_central_directory(fd)
                parses = True
            except ZipFormatError:
                parses = False
            finally:
                os.close(fd)
            bucket = accepted if parses else refused
            if len(bucket) < (5 if parses else 3):
                bucket.append((f"{seed}-{len(refused) + len(accepted)}", data, parses))
    finally:
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)
    return refused + accepted


MOUNT_CASES = _seeded_mount_cases()
ALLOWED_ERRNOS = {errno.EIO, errno.EACCES, errno.EOPNOTSUPP}


@pytest.mark.usefixtures("fuse")
@pytest.mark.parametrize("name,data,parses", MOUNT_CASES, ids=[c[0] for c in MOUNT_CASES])
def test_mutated_archive_through_a_mount(tmp_path: Path, name: str, data: bytes, parses: bool):
    archive = tmp_path / f"{name}.zip"
    archive.write_bytes(data)
    mnt = tmp_path / "mnt"
    if not parses:
        assert_mount_fails(archive, mnt, archive.name)
        return
    with mounted(archive, mnt, read_only=True):
        for dirpath, _, filenames in os.walk(mnt):
            for fname in filenames:
                full = os.path.join(dirpath, fname)
                if os.path.islink(full):
                    try:
                        os.readlink(full)
                    except OSError as exc:
                        assert exc.errno in ALLOWED_ERRNOS, (full, exc)
                    continue
                size = os.lstat(full).st_size
                try:
                    with open(full, "rb") as f:
                        got = f.read(READ_LIMIT)
                    assert len(got) <= size
                except OSError as exc:
                    assert exc.errno in ALLOWED_ERRNOS, (full, exc)
        assert os.path.realpath(mnt) in registry.fuse_mounts()  # still up after all that


def test_lzma_seed_is_really_lzma() -> None:
    """Guard for the seeds: the python seed covers bzip2 and LZMA (method 12 and 14)."""
    with zipfile.ZipFile(io.BytesIO(SEEDS["python"])) as zf:
        methods = {i.compress_type for i in zf.infolist()}
    assert {0, 8, 12, 14} <= methods
    assert lzma.is_check_supported(lzma.CHECK_NONE)
