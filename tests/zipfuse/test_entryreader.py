"""Tests for zipfuse.entryreader: random access, strategies, concurrency and error reporting."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import random
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_zip import CD_CRC, CD_METHOD, patch_central, patch_local, text_data

from zipfuse import entryreader
from zipfuse.entryreader import EntryReader, EntryReadError, supported_method
from zipfuse.zipformat import ZipEntry, local_data_offset, read_central_directory

BIG = 20 << 20


@pytest.fixture(scope="module")
def big_data() -> bytes:
    return text_data(BIG, seed=7)


@pytest.fixture(scope="module")
def big_zip(tmp_path_factory: pytest.TempPathFactory, big_data: bytes) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("big.txt", big_data)
        zf.writestr("mid.txt", big_data[: 3 << 20])
    return path


class Archive:
    """An open archive fd plus readers that are closed at the end of the test."""

    def __init__(self, path: Path, cache_dir: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.entries = {e.name: e for e in read_central_directory(self.fd).entries}
        self.cache_dir = cache_dir
        self.readers: list[EntryReader] = []

    def reader(self, name: str) -> EntryReader:
        r = EntryReader(self.fd, self.entries[name], str(self.cache_dir))
        self.readers.append(r)
        return r

    def close(self) -> None:
        for r in self.readers:
            r.close()
        os.close(self.fd)


@pytest.fixture
def open_archive(tmp_path: Path) -> Iterator:
    opened: list[Archive] = []

    def opener(path: Path) -> Archive:
        cache = tmp_path / "cache"
        cache.mkdir(exist_ok=True)
        opened.append(Archive(path, cache))
        return opened[-1]

    yield opener
    for a in opened:
        a.close()


def test_random_preads_big_deflated_entry(big_zip: Path, big_data: bytes, open_archive) -> None:
    arc = open_archive(big_zip)
    reader = arc.reader("big.txt")
    rnd = random.Random(42)
    for _ in range(300):
        offset = rnd.randrange(BIG + 1000)
        size = rnd.choice([1, 4096, 131072, rnd.randrange(1 << 20)])
        assert reader.read(offset, size) == big_data[offset : offset + size]
    assert reader.strategy == "file"  # random access switched to the cache file
    # The cache file is unlinked: nothing is visible in the cache directory.
    assert os.listdir(arc.cache_dir) == []


def test_sequential_reads_slightly_out_of_order_stay_streaming(
    big_zip: Path, big_data: bytes, open_archive
) -> None:
    reader = open_archive(big_zip).reader("big.txt")
    chunk = 128 << 10
    offsets = list(range(0, BIG, chunk))
    # Swap neighbours pairwise, as two concurrent readahead requests might arrive.
    for i in range(0, len(offsets) - 1, 2):
        offsets[i], offsets[i + 1] = offsets[i + 1], offsets[i]
    for off in offsets:
        assert reader.read(off, chunk) == big_data[off : off + chunk]
        assert len(reader._window) <= entryreader.WINDOW  # bounded memory
    assert reader.strategy == "stream"
    assert reader.read(BIG - 10, 100) == big_data[-10:]  # short read at the end
    assert reader.read(BIG, 100) == b""
    assert reader.read(BIG + 5000, 1) == b""
    assert reader.strategy == "stream"


def test_forward_skips_decode_and_discard_until_the_limit(
    big_zip: Path, big_data: bytes, open_archive
) -> None:
    reader = open_archive(big_zip).reader("big.txt")
    assert reader.read(0, 10) == big_data[:10]
    off = 5 << 20  # within FORWARD_SKIP_LIMIT of the decoder position
    assert reader.read(off, 100) == big_data[off : off + 100]
    assert reader.strategy == "stream"
    assert reader._stream is not None
    off = reader._stream.pos + entryreader.FORWARD_SKIP_LIMIT + 1  # too far: go to a file
    assert reader.read(off, 100) == big_data[off : off + 100]
    assert reader.strategy == "file"


def test_small_entry_is_decoded_into_memory(big_zip: Path, big_data: bytes, open_archive) -> None:
    reader = open_archive(big_zip).reader("mid.txt")
    assert reader.strategy == "idle"
    assert reader.read(1000, 10) == big_data[1000:1010]
    assert reader.strategy == "memory"
    assert reader.read(0, 10) == big_data[:10]
    reader.close()
    assert reader.strategy == "idle"
    with pytest.raises(EntryReadError) as exc:
        reader.read(0, 1)
    assert exc.value.errno == errno.EBADF


def test_concurrent_reads(big_zip: Path, big_data: bytes, open_archive) -> None:
    arc = open_archive(big_zip)
    shared = arc.reader("big.txt")
    mid = arc.reader("mid.txt")

    def work(seed: int) -> int:
        rnd = random.Random(seed)
        # Each thread walks forward in 128 KiB steps (like readahead) with occasional jumps.
        reader = shared if seed % 2 else mid
        size = arc.entries["big.txt" if seed % 2 else "mid.txt"].file_size
        off = rnd.randrange(size // 2)
        checked = 0
        for _ in range(60):
            n = rnd.choice([4096, 131072])
            assert reader.read(off, n) == big_data[off : off + n][: max(0, size - off)]
            checked += 1
            off = off + n if rnd.random() < 0.9 else rnd.randrange(size)
        return checked

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(work, range(4))) == 240


@pytest.mark.parametrize(
    "method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
)
@pytest.mark.parametrize("size", [0, 1, 100_000, 900_000])
def test_methods_round_trip(
    tmp_path: Path, open_archive, monkeypatch: pytest.MonkeyPatch, method: int, size: int
) -> None:
    # Shrink the thresholds so that every strategy is exercised without huge fixtures.
    monkeypatch.setattr(entryreader, "SMALL_ENTRY", 200_000)
    monkeypatch.setattr(entryreader, "WINDOW", 64 << 10)
    monkeypatch.setattr(entryreader, "OUTPUT_CHUNK", 32 << 10)
    monkeypatch.setattr(entryreader, "INPUT_CHUNK", 16 << 10)
    data = text_data(size, seed=size)
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w", method) as zf:
        zf.writestr("x", data)
    reader = open_archive(path).reader("x")
    assert supported_method(method)
    step = 131072
    got = b"".join(reader.read(off, step) for off in range(0, size + step, step))
    assert got == data
    expected = {0: "direct", 1: "memory", 100_000: "memory", 900_000: "stream"}[size]
    if method == zipfile.ZIP_STORED:
        expected = "direct"
    elif size == 0:
        expected = "idle"  # nothing to decode
    assert reader.strategy == expected
    if size:
        assert reader.read(size // 3, 777) == data[size // 3 : size // 3 + 777]
        if expected == "stream":
            assert reader.strategy == "file"  # went backwards past the window


def copy_with(tmp_path: Path, src: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copyfile(src, dst)
    return dst


@pytest.mark.parametrize("name", ["big.txt", "mid.txt"])  # streaming and memory strategies
def test_crc_mismatch(
    tmp_path: Path, big_zip: Path, big_data: bytes, open_archive, name: str
) -> None:
    bad = copy_with(tmp_path, big_zip, "badcrc.zip")
    index = 0 if name == "big.txt" else 1
    with zipfile.ZipFile(bad) as zf:
        crc = zf.infolist()[index].CRC
    patch_central(bad, index, CD_CRC, "<L", crc ^ 0xDEADBEEF)
    reader = open_archive(bad).reader(name)
    size = reader.entry.file_size
    with pytest.raises(EntryReadError, match="CRC mismatch") as exc:
        # A streamed entry serves its beginning before the end is checked; a small entry is
        # decoded (and checked) completely on the first read.
        assert reader.read(0, 4096) == big_data[:4096]
        assert name == "big.txt"
        for off in range(0, size, 1 << 20):
            reader.read(off, 1 << 20)
    assert exc.value.errno == errno.EIO
    with pytest.raises(EntryReadError) as again:  # the verdict sticks
        reader.read(0, 10)
    assert again.value.errno == errno.EIO


def test_crc_mismatch_when_decoding_to_cache_file(
    tmp_path: Path, big_zip: Path, open_archive
) -> None:
    bad = copy_with(tmp_path, big_zip, "badcrc2.zip")
    patch_central(bad, 0, CD_CRC, "<L", 0)
    reader = open_archive(bad).reader("big.txt")
    with pytest.raises(EntryReadError, match="CRC mismatch") as exc:
        reader.read(BIG - 100, 10)  # far forward jump: whole entry goes to the cache file
    assert exc.value.errno == errno.EIO


def test_bit_flipped_deflate_data(tmp_path: Path, open_archive) -> None:
    data = text_data(200_000, seed=3)
    path = tmp_path / "flip.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x", data)
    clean = path.read_bytes()
    rnd = random.Random(11)
    failures = 0
    for i in range(30):
        mutated = bytearray(clean)
        pos = rnd.randrange(60, 60 + 20_000)  # inside the compressed stream
        mutated[pos] ^= 1 << rnd.randrange(8)
        flipped = tmp_path / f"flip{i}.zip"
        flipped.write_bytes(bytes(mutated))
        reader = open_archive(flipped).reader("x")
        with pytest.raises(EntryReadError) as exc:
            reader.read(0, len(data))
        assert exc.value.errno == errno.EIO
        failures += 1
    assert failures == 30


@pytest.mark.skipif(shutil.which("zip") is None, reason="Info-ZIP zip not installed")
def test_encrypted_entry(tmp_path: Path, open_archive) -> None:
    (tmp_path / "secret.txt").write_bytes(b"top secret\n" * 100)
    path = tmp_path / "enc.zip"
    subprocess.run(["zip", "-q", "-P", "secret", str(path), "secret.txt"], cwd=tmp_path, check=True)
    arc = open_archive(path)  # listing works
    entry: ZipEntry = arc.entries["secret.txt"]
    assert entry.encrypted and entry.file_size == 1100
    reader = arc.reader("secret.txt")  # constructing works too
    with pytest.raises(EntryReadError, match="encrypted") as exc:
        reader.read(0, 10)
    assert exc.value.errno == errno.EACCES


def test_unknown_method(tmp_path: Path, open_archive) -> None:
    path = tmp_path / "m99.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x", b"payload" * 100)
    patch_central(path, 0, CD_METHOD, "<H", 99)
    patch_local(path, 0, CD_METHOD, "<H", 99)
    arc = open_archive(path)
    assert arc.entries["x"].method == 99
    assert not supported_method(99)
    reader = arc.reader("x")
    with pytest.raises(EntryReadError, match="compression method 99 not supported") as exc:
        reader.read(0, 10)
    assert exc.value.errno == errno.EOPNOTSUPP


def test_zstd_support_matches_availability() -> None:
    try:
        from compression import zstd  # noqa: F401

        available = True
    except ImportError:
        try:
            import zstandard  # noqa: F401

            available = True
        except ImportError:
            available = False
    assert supported_method(93) == available


def test_truncated_archive_data(tmp_path: Path, open_archive) -> None:
    """Central directory intact but the entry's data is cut short: EIO, not garbage."""
    data = text_data(300_000, seed=5)
    path = tmp_path / "t.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x", data)
    arc = open_archive(path)
    entry = arc.entries["x"]
    entry.compressed_size //= 2  # pretend the stream ends early
    reader = EntryReader(arc.fd, entry, str(arc.cache_dir))
    with pytest.raises(EntryReadError) as exc:
        reader.read(0, len(data))
    assert exc.value.errno == errno.EIO
    reader.close()


def test_stored_entry_with_inconsistent_sizes(tmp_path: Path, open_archive) -> None:
    path = tmp_path / "stored.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("x", b"0123456789")
        zf.writestr("y", b"neighbour")
    patch_central(path, 0, 24, "<L", 1000)  # uncompressed size: would run into entry "y"
    arc = open_archive(path)
    with pytest.raises(EntryReadError, match="sizes disagree") as exc:
        arc.reader("x").read(0, 100)
    assert exc.value.errno == errno.EIO
    assert arc.reader("y").read(0, 100) == b"neighbour"


def test_unwritable_cache_dir_falls_back_to_restarting(
    tmp_path: Path, big_zip: Path, big_data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    fd = os.open(big_zip, os.O_RDONLY)
    entry = next(e for e in read_central_directory(fd).entries if e.name == "big.txt")
    reader = EntryReader(fd, entry, str(tmp_path / "does-not-exist"))
    try:
        assert reader.read(BIG - 1000, 1000) == big_data[-1000:]
        assert reader.read(10, 100) == big_data[10:110]  # backwards: decode again from 0
        assert reader.strategy == "stream"
        assert "decoding from the start instead" in caplog.text
    finally:
        reader.close()
        os.close(fd)


def test_read_ready_answers_only_what_needs_no_decoding(
    big_zip: Path, big_data: bytes, open_archive
) -> None:
    reader = open_archive(big_zip).reader("big.txt")
    chunk = 128 << 10
    assert reader.read_ready(0, chunk) is None  # nothing decoded yet
    assert reader.read(0, chunk) == big_data[:chunk]
    assert reader.read_ready(0, chunk) == big_data[:chunk]  # still in the window
    ahead = reader.read_ready(chunk, chunk)  # decoded in bigger pieces: may already be there
    assert ahead is None or ahead == big_data[chunk : 2 * chunk]
    assert reader.read_ready(8 * chunk, chunk) is None  # ahead of the decoder: needs work
    assert reader.read_ready(BIG + 10, 5) == b""  # past the end
    assert reader.strategy == "stream"


# --- read_whole: the one-pread path for the first READ of a small file ----------------------


@pytest.fixture
def small_zip(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    files = {
        "d.txt": text_data(100_000, seed=21),
        "s.bin": text_data(5_000, seed=22),
        "b.txt": text_data(7_000, seed=23),
        "empty": b"",
    }
    path = tmp_path / "small.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("d.txt", files["d.txt"], zipfile.ZIP_DEFLATED)
        zf.writestr("s.bin", files["s.bin"], zipfile.ZIP_STORED)
        zf.writestr("b.txt", files["b.txt"], zipfile.ZIP_BZIP2)
        zf.writestr("empty", b"", zipfile.ZIP_DEFLATED)
    return path, files


def test_read_whole_gives_what_the_reader_gives(small_zip, open_archive) -> None:
    path, files = small_zip
    arc = open_archive(path)
    for name in ("d.txt", "s.bin"):
        assert entryreader.read_whole(arc.fd, arc.entries[name]) == files[name]
    # other methods and empty entries take the general path
    assert entryreader.read_whole(arc.fd, arc.entries["b.txt"]) is None
    assert entryreader.read_whole(arc.fd, arc.entries["empty"]) is None


@pytest.mark.parametrize("name", ["d.txt", "s.bin"])
def test_read_whole_crc_mismatch(tmp_path: Path, small_zip, open_archive, name: str) -> None:
    path, _ = small_zip
    index = ["d.txt", "s.bin"].index(name)
    with zipfile.ZipFile(path) as zf:
        crc = zf.infolist()[index].CRC
    patch_central(path, index, CD_CRC, "<L", crc ^ 1)
    arc = open_archive(path)
    with pytest.raises(EntryReadError, match="CRC mismatch") as exc:
        entryreader.read_whole(arc.fd, arc.entries[name])
    assert exc.value.errno == errno.EIO


def test_read_whole_corrupt_or_truncated_data(tmp_path: Path, small_zip) -> None:
    """Every damaged copy fails with EIO: in read_whole itself, or in the general path it
    leaves the case to (returning None); never with wrong bytes."""
    path, _ = small_zip
    clean = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        entry = next(e for e in read_central_directory(fd).entries if e.name == "d.txt")
        start = local_data_offset(fd, entry)
    finally:
        os.close(fd)
    end = start + entry.compressed_size
    rnd = random.Random(4)
    copies = [clean[: rnd.randrange(start, end)] for _ in range(5)]  # truncated in the data
    for _ in range(25):
        mutated = bytearray(clean)
        mutated[rnd.randrange(start, end)] ^= 1 << rnd.randrange(8)
        copies.append(bytes(mutated))
    for i, data in enumerate(copies):
        broken = tmp_path / f"broken{i}.zip"
        broken.write_bytes(data)
        fd = os.open(broken, os.O_RDONLY)
        try:
            try:
                got = entryreader.read_whole(fd, entry)
            except EntryReadError as exc:
                assert exc.errno == errno.EIO
                continue
            assert got is None, f"copy {i}: bytes handed out"
            reader = EntryReader(fd, entry, str(tmp_path))
            try:
                with pytest.raises(EntryReadError) as exc2:
                    reader.read(0, entry.file_size)
            finally:
                reader.close()
            assert exc2.value.errno == errno.EIO
        finally:
            os.close(fd)
