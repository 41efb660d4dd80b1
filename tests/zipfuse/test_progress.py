"""Commit progress: the formatter's bounds, and the numbers a real commit reports."""

from __future__ import annotations

import os
import zipfile

import pytest

from tests.conftest import mounted
from zipfuse import api, commit
from zipfuse.api import Progress
from zipfuse.namespace import Namespace
from zipfuse.progress import eta_seconds, format_progress, fraction
from zipfuse.zipformat import read_central_directory


def test_format_progress_bounds():
    # the bad lines of issue 11: done beyond total must not show past 100 % or a negative ETA
    bad = [
        Progress(3158, 3158, 1_409_100_000, 736_800_000),
        Progress(14, 15, 399_900_000, 276_400_000),
    ]
    for p in bad:
        line = format_progress("committing", p, 12.0)
        assert "ETA 0 s" in line and "(100%)" in line and "-" not in line, line
    line = format_progress("committing", Progress(3158, 3158, 1_409_100_000, 736_800_000), 12.0)
    assert "3158/3158 entries, 736.8/736.8 MB (100%)" in line
    half = Progress(5, 10, 50_000_000, 100_000_000)
    assert fraction(half) == 0.5
    assert eta_seconds(half, 4.0) == pytest.approx(4.0)
    assert format_progress("unmounting", half, 4.0) == (
        "unmounting: 5/10 entries, 50.0/100.0 MB (50%), 12.5 MB/s, ETA 4 s"
    )
    # nothing done yet: no rate to estimate from, and no division by zero
    assert format_progress("x", Progress(0, 10, 0, 100), 0.0).endswith("ETA ?")
    # only empty entries (directories, deletions): entries decide
    assert fraction(Progress(1, 4, 0, 0)) == 0.25
    assert "(100%)" in format_progress("x", Progress(0, 0, 0, 0), 1.0)
    assert int(fraction(Progress(999, 1000, 999_999, 1_000_000)) * 100) == 99  # 100 only at end


def _archive(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(50):
            z.writestr(f"d/f{i}.txt", f"line {i}\n" * 2000)  # compresses ~20x
        z.writestr("stored.bin", os.urandom(200_000), compress_type=zipfile.ZIP_STORED)
    return path


def test_commit_reports_done_equal_total(tmp_path):
    """Unchanged, renamed (metadata only) and new entries: done ends exactly at the total."""
    src = _archive(tmp_path)
    fd = os.open(src, os.O_RDONLY)
    try:
        cd = read_central_directory(fd)
        ns = Namespace.from_archive(cd, os.getuid(), os.getgid(), 0)
        ns.rename(ns.resolve("d"), b"f0.txt", ns.root, b"moved.txt", 0, 1)  # RAW_META
        spill = tmp_path / "new.bin"
        spill.write_bytes(b"new data " * 100_000)
        node = ns.create(ns.root, b"new.bin", 0o100644, 0, 0, 1)
        node.spill, node.size = str(spill), spill.stat().st_size
        items = commit.plan(ns)
        total = commit.bytes_total(items)
        seen: list[tuple[int, int]] = []
        new_fd, new_cd = commit.write_archive(
            items, fd, str(tmp_path / "out.zip"), source=cd,
            progress=lambda n, b: seen.append((n, b)),
        )  # fmt: skip
        os.close(new_fd)
    finally:
        os.close(fd)
    compressed = sum(e.compressed_size for e in cd.entries)
    assert total == compressed + node.size  # copies cost compressed bytes, new data plain ones
    assert seen[-1] == (len(items), total)
    assert all(b <= total and n <= len(items) for n, b in seen)
    assert [b for _, b in seen] == sorted(b for _, b in seen)


@pytest.mark.usefixtures("fuse")
def test_sync_progress_through_a_mount(tmp_path):
    """api.sync's records: same units for done and total, the last one at 100 %."""
    archive = _archive(tmp_path)
    mnt = tmp_path / "mnt"
    records: list[Progress] = []
    with mounted(archive, mnt):
        (mnt / "new.txt").write_bytes(b"0123456789" * 300_000)
        os.rename(mnt / "stored.bin", mnt / "renamed.bin")
        result = api.sync(str(mnt), progress=records.append)
        assert result["committed"]
    assert records, "no progress record at all"
    last = records[-1]
    assert (last.entries_done, last.bytes_done) == (last.entries_total, last.bytes_total)
    assert last.entries_total == result["entries"]
    with zipfile.ZipFile(archive) as z:
        expect = sum(i.compress_size for i in z.infolist() if i.filename != "new.txt")
    assert last.bytes_total == expect + 3_000_000
    for p in records:
        assert p.bytes_done <= p.bytes_total and p.entries_done <= p.entries_total
    assert "(100%), " in format_progress("committing", last, 1.0)
