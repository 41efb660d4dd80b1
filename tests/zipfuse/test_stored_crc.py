"""Stored (method 0) entries are CRC-checked like deflated ones once read to their end."""

from __future__ import annotations

import errno
import os
import random
import zipfile
from pathlib import Path

import pytest
from fixtures_zip import CD_CRC, patch_central, text_data

from zipfuse.entryreader import EntryReader, EntryReadError
from zipfuse.zipformat import read_central_directory

SIZE = 3 << 20


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, bytes]:
    data = text_data(SIZE, seed=3)
    path = tmp_path / "stored.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("s.bin", data)
        zf.writestr("tiny", b"abc")
    return path, data


def reader_for(path: Path, name: str, tmp_path: Path) -> tuple[EntryReader, int]:
    fd = os.open(path, os.O_RDONLY)
    entry = next(e for e in read_central_directory(fd).entries if e.name == name)
    return EntryReader(fd, entry, str(tmp_path)), fd


def bad_crc(path: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        crc = zf.infolist()[0].CRC
    patch_central(path, 0, CD_CRC, "<L", crc ^ 0x5A5A5A5A)


def test_good_stored_entry_reads_in_any_order(stored, tmp_path: Path) -> None:
    path, data = stored
    reader, fd = reader_for(path, "s.bin", tmp_path)
    try:
        offsets = list(range(0, SIZE, 128 << 10))
        random.Random(5).shuffle(offsets)
        for off in offsets:  # random order, the last piece somewhere in the middle
            assert reader.read(off, 128 << 10) == data[off : off + (128 << 10)]
        assert reader.read(0, SIZE) == data
        assert reader.strategy == "direct"
    finally:
        reader.close()
        os.close(fd)


def test_bad_crc_sequential_read_fails_at_the_end(stored, tmp_path: Path) -> None:
    path, data = stored
    bad_crc(path)
    reader, fd = reader_for(path, "s.bin", tmp_path)
    try:
        chunk = 128 << 10
        with pytest.raises(EntryReadError, match="CRC mismatch") as exc:
            for off in range(0, SIZE, chunk):
                got = reader.read(off, chunk)
                assert got == data[off : off + chunk]  # bytes before the end: unverified
        assert exc.value.errno == errno.EIO
        assert off + chunk >= SIZE  # it was the read reaching the end that failed
        with pytest.raises(EntryReadError) as again:  # the verdict sticks
            reader.read(0, 10)
        assert again.value.errno == errno.EIO
    finally:
        reader.close()
        os.close(fd)


def test_bad_crc_found_by_a_jump_to_the_end(stored, tmp_path: Path) -> None:
    path, _ = stored
    bad_crc(path)
    reader, fd = reader_for(path, "s.bin", tmp_path)
    try:
        reader.read(0, 10)  # the data offset is known from now on
        assert reader.read_ready(SIZE - 10, 10) is None  # needs a pass: not on the event loop
        with pytest.raises(EntryReadError, match="CRC mismatch") as exc:
            reader.read(SIZE - 10, 10)
        assert exc.value.errno == errno.EIO
    finally:
        reader.close()
        os.close(fd)


def test_bad_crc_of_a_small_stored_entry(tmp_path: Path) -> None:
    path = tmp_path / "small.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("tiny", b"abc")
    bad_crc(path)
    reader, fd = reader_for(path, "tiny", tmp_path)
    try:
        with pytest.raises(EntryReadError) as exc:
            reader.read(0, 4096)
        assert exc.value.errno == errno.EIO
    finally:
        reader.close()
        os.close(fd)


def test_out_of_order_pieces_need_no_second_pass(stored, tmp_path: Path) -> None:
    """Readahead arrives slightly out of order: the running CRC still covers every byte once
    (a bad CRC is found by the read reaching the end, with no extra pass over the entry)."""
    path, data = stored
    bad_crc(path)
    reader, fd = reader_for(path, "s.bin", tmp_path)
    chunk = 128 << 10
    offsets = list(range(0, SIZE, chunk))
    for i in range(0, len(offsets) - 2, 2):  # swap neighbours, keep the last piece last
        offsets[i], offsets[i + 1] = offsets[i + 1], offsets[i]
    try:
        for off in offsets[:-1]:
            assert reader.read(off, chunk) == data[off : off + chunk]
        assert reader._crc_pos == offsets[-1]  # everything before the last piece is covered
        with pytest.raises(EntryReadError) as exc:
            reader.read(offsets[-1], chunk)
        assert exc.value.errno == errno.EIO
    finally:
        reader.close()
        os.close(fd)
