"""Regressions on a real mount for the four bugs the overlay's single mutation protocol fixed."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
import zipfile

import pytest

from tests.conftest import ZIPFUSE_CMD, mounted
from tests.zipfuse.writehelp import (
    PAUSE_WRITTEN,
    base_archive,
    check_archive,
    paused_sync,
    status_of,
)
from zipfuse import spill
from zipfuse.namespace import Namespace
from zipfuse.zipformat import read_central_directory

pytestmark = pytest.mark.usefixtures("fuse")


def stored_node(archive, path: str):
    fd = os.open(archive, os.O_RDONLY)
    try:
        return Namespace.from_archive(read_central_directory(fd), 0, 0, 0).resolve(path)
    finally:
        os.close(fd)


def test_writers_keep_going_during_a_paused_sync_and_every_change_is_committed(
    tmp_path, monkeypatch
):
    """While a sync writes the archive (paused there), chmod, utime, a write to a file the
    sync is storing (copied on write) and a new file all complete; the sync stores the
    snapshot, the unmount everything after it (chmod/utime were once lost during a sync)."""
    _, archive = base_archive(tmp_path)
    mnt = tmp_path / "mnt"
    marker = tmp_path / "paused"
    dirty = os.urandom(4 << 20)
    monkeypatch.setenv("ZIPFUSE_TEST_PAUSE", f"{PAUSE_WRITTEN}:{marker}")  # daemon inherits it
    with mounted(archive, mnt):
        monkeypatch.delenv("ZIPFUSE_TEST_PAUSE")
        (mnt / "dirty.bin").write_bytes(dirty)
        try:
            with paused_sync(mnt, marker) as syncer:
                assert status_of(mnt).state == "committing"

                def change() -> None:
                    os.chmod(mnt / "hello.txt", 0o600)
                    os.utime(mnt / "hello.txt", (1_000_000_000, 1_000_000_000))
                    with open(mnt / "dirty.bin", "r+b") as f:
                        f.write(b"CHANGED")
                        os.fsync(f.fileno())
                    (mnt / "during.txt").write_text("made during the sync\n")

                worker = threading.Thread(target=change)
                worker.start()
                worker.join(60)
                assert not worker.is_alive(), "a writer waited for the commit"
                assert marker.exists(), "the commit went on before the writer ended"
                assert (mnt / "dirty.bin").read_bytes()[:7] == b"CHANGED"
                marker.unlink()  # let the commit finish
                assert syncer.wait(60) == 0, syncer.stderr.read()
        finally:
            if marker.exists():
                marker.unlink()
        check_archive(archive)
        with zipfile.ZipFile(archive) as z:  # the sync stored its snapshot, no later change
            assert z.read("dirty.bin") == dirty and "during.txt" not in z.namelist()
            assert stat.S_IMODE(z.getinfo("hello.txt").external_attr >> 16) != 0o600
        st = os.stat(mnt / "hello.txt")
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime == 1_000_000_000
        assert status_of(mnt).dirty_bytes >= 4 << 20  # dirty.bin (copied) and during.txt
    check_archive(archive)
    with zipfile.ZipFile(archive) as z:
        assert stat.S_IMODE(z.getinfo("hello.txt").external_attr >> 16) == 0o600
        assert z.read("dirty.bin") == b"CHANGED" + dirty[7:]
        assert z.read("during.txt") == b"made during the sync\n"
    node = stored_node(archive, "hello.txt")
    assert node.mtime_ns == 1_000_000_000 * 10**9 and stat.S_IMODE(node.mode) == 0o600


def deleted_archive_fds(pid: int, archive) -> int:
    real = os.path.realpath(archive)
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(real) and target.endswith("(deleted)")
    return count


def test_syncs_do_not_keep_replaced_archives_open(tmp_path):
    _, archive = base_archive(tmp_path)
    mnt = tmp_path / "mnt"
    with mounted(archive, mnt) as info:
        assert (mnt / "text.txt").read_bytes()[:7] == b"line 0 "
        with open(mnt / "dir" / "a.txt", "rb") as held:
            for i in range(4):
                (mnt / f"n{i}.txt").write_text(f"{i}\n")
                subprocess.run([*ZIPFUSE_CMD, "sync", str(mnt)], check=True, timeout=60)
            assert deleted_archive_fds(info.pid, archive) <= 1  # the version `held` reads
            assert held.read() == b"aaaa\n" * 100
        os.stat(mnt)  # a request after the release, so it has been handled
        assert deleted_archive_fds(info.pid, archive) == 0


def test_rename_during_a_listing_leaves_no_stale_name(tmp_path):
    src = tmp_path / "src"
    big = src / "big"
    big.mkdir(parents=True)
    for i in range(20000):
        (big / f"f{i:05d}").touch()
    archive = tmp_path / "big.zip"
    subprocess.run(["zip", "-q", "-r", str(archive), "."], cwd=src, check=True, timeout=300)
    mnt = tmp_path / "mnt"
    with mounted(archive, mnt):
        listed = []
        with os.scandir(mnt / "big") as it:
            for entry in it:
                listed.append(entry.name)
                if len(listed) == 100:
                    os.rename(mnt / "big" / "f19999", mnt / "big" / "renamed")
        assert "f19999" not in listed
        assert len(listed) in (19999, 20000)  # the new name may or may not be seen
        assert not os.path.exists(mnt / "big" / "f19999")
        assert os.path.exists(mnt / "big" / "renamed")
        assert sorted(os.listdir(mnt / "big"))[-1] == "renamed"


def test_removes_and_creates_during_a_listing(tmp_path):
    """A directory of the archive listed a few pages at a time while most of the names it has
    not reached yet are removed (enough for the daemon to compact its cookie list) and new ones are
    made: no name twice, none after its removal, every untouched name once."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    names = [f"f{i:04d}" for i in range(2000)]
    for name in names:
        (src / "d" / name).touch()
    archive = tmp_path / "d.zip"
    subprocess.run(["zip", "-q", "-r", str(archive), "."], cwd=src, check=True, timeout=300)
    with zipfile.ZipFile(archive) as z:  # a listing follows the archive's order
        names = [n[2:] for n in z.namelist() if n.startswith("d/") and n != "d/"]
    assert len(names) == 2000
    mnt = tmp_path / "mnt"
    with mounted(archive, mnt):
        d = mnt / "d"
        listed: list[str] = []
        removed: set[str] = set()
        with os.scandir(d) as it:
            for entry in it:
                assert entry.name not in removed
                listed.append(entry.name)
                if len(listed) == 100:
                    for name in names[700:1900]:  # not fetched yet (~300 a getdents)
                        os.unlink(d / name)
                        removed.add(name)
                    for i in range(5):
                        (d / f"new{i}").touch()
                    os.unlink(d / names[0])  # handed out already
                    removed.add(names[0])
        assert len(listed) == len(set(listed))
        assert not removed.intersection(listed[100:])
        untouched = set(names) - removed
        assert untouched <= set(listed)
        assert set(listed) - set(names) <= {f"new{i}" for i in range(5)}
        assert sorted(os.listdir(d)) == sorted(untouched | {f"new{i}" for i in range(5)})


def test_spill_files_that_cannot_be_deleted_do_not_kill_the_mount(tmp_path):
    _, archive = base_archive(tmp_path)
    mnt = tmp_path / "mnt"
    area = spill.area_path(None, str(archive))
    locked: list[str] = []
    try:
        with mounted(archive, mnt):
            (mnt / "one.txt").write_text("one\n")
            (mnt / "hello.txt").write_text("changed\n")
            os.sync()
            for name in os.listdir(area):  # the data of the two files (not the empty pool)
                path = os.path.join(area, name)
                if name not in ("journal", "state.json") and os.path.getsize(path):
                    subprocess.run(["chattr", "+i", path], check=True, timeout=30)
                    locked.append(path)
            assert locked
            proc = subprocess.run(
                [*ZIPFUSE_CMD, "sync", str(mnt)], capture_output=True, text=True, timeout=60
            )
            assert proc.returncode == 0, proc.stderr
            time.sleep(0.5)  # the deletions run in the background after the sync
            (mnt / "two.txt").write_text("two\n")  # the mount is alive and writable
            assert status_of(mnt).failed is None
            assert (mnt / "one.txt").read_text() == "one\n"
    finally:
        for path in locked:
            for candidate in (path, *_moved(path)):
                subprocess.run(["chattr", "-i", candidate], capture_output=True, timeout=30)
    check_archive(archive)
    with zipfile.ZipFile(archive) as z:
        assert z.read("one.txt") == b"one\n" and z.read("two.txt") == b"two\n"
        assert z.read("hello.txt") == b"changed\n"


def _moved(path: str) -> list[str]:
    """Where a spill file went when its area was renamed away for removal."""
    area, name = os.path.split(path)
    parent = os.path.dirname(area)
    base = os.path.basename(area)
    return [
        os.path.join(parent, d, name)
        for d in os.listdir(parent)
        if d.startswith(base + ".trash-") and os.path.exists(os.path.join(parent, d, name))
    ]
