"""The pyfuse3 kernel-cache patch (patches/README.md), tested on a tiny counting filesystem.

Each test mounts tests/pyfuse3_patch/kcfs.py for real and asserts on the requests the kernel
sent it. They need pyfuse3 built with the patch: they skip without it, except in CI, where
scripts/setup.sh builds it and a missing patch is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import pytest

KCFS = Path(__file__).with_name("kcfs.py")
PATCHED = getattr(pyfuse3, "NO_OPEN_SUPPORT", False) is True
PAYLOAD = (bytes(range(256)) * 4)[:1000]  # what kcfs puts in every dNNNN/fNNNN


@pytest.fixture(autouse=True)
def _needs_patch(fuse) -> None:
    if not PATCHED:
        if os.environ.get("CI"):
            pytest.fail("pyfuse3 lacks the kernel-cache patch in CI: scripts/setup.sh builds it")
        pytest.skip("pyfuse3 lacks the kernel-cache patch (run scripts/setup.sh)")


class Kcfs:
    def __init__(self, mnt: Path, stats_path: Path, proc: subprocess.Popen) -> None:
        self.mnt = mnt
        self.stats_path = stats_path
        self.proc = proc
        self.seq = 0

    def stats(self) -> dict:
        """Ask the daemon for its counters (SIGUSR1) and wait for the fresh dump."""
        self.seq += 1
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                doc = json.loads(self.stats_path.read_text())
                if doc["seq"] >= self.seq:
                    doc["counts"].setdefault("read", 0)
                    return doc
            time.sleep(0.02)
        raise AssertionError("kcfs did not dump its stats within 10 s")

    def count(self, op: str) -> int:
        return self.stats()["counts"].get(op, 0)

    def stats_after(self, op: str, n: int, timeout: float = 10) -> dict:
        """Stats once ``op`` was seen n times: RELEASE(DIR) is sent asynchronously after close."""
        deadline = time.monotonic() + timeout
        while (st := self.stats())["counts"].get(op, 0) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return st


@contextlib.contextmanager
def kcfs(tmp_path: Path, *flags: str) -> Iterator[Kcfs]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    stats = tmp_path / "stats.json"
    with open(tmp_path / "kcfs.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(KCFS), str(mnt), "--stats", str(stats), *flags],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not (os.path.ismount(mnt) and stats.exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"kcfs did not mount: {(tmp_path / 'kcfs.log').read_text()[-2000:]}"
                )
            time.sleep(0.05)
        yield Kcfs(mnt, stats, proc)
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=30)
        assert proc.wait(timeout=30) == 0, (tmp_path / "kcfs.log").read_text()[-2000:]
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def read(path: Path) -> bytes:
    """open + read + close without fstat (Python's open() adds an fstat: one GETATTR per open)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def test_open_and_opendir_enosys_then_no_more_open_requests(tmp_path: Path) -> None:
    with kcfs(tmp_path, "--no-open", "--no-opendir") as fs:
        f = fs.mnt / "d0001" / "f0002"
        assert sorted(os.listdir(fs.mnt / "d0001")) == ["f0000", "f0001", "f0002"]
        assert read(f) == PAYLOAD
        before = fs.stats()["counts"]
        assert before["open"] == 1 and before["opendir"] == 1  # each answered ENOSYS once
        for _ in range(100):
            assert read(f) == PAYLOAD
            assert os.listdir(fs.mnt / "d0001")
        after = fs.stats()["counts"]
    # 100 open+read+close and 100 listings: the kernel answered them itself. (A read or listing
    # marks atime stale on a writable mount, hence one GETATTR may come.)
    for op in ("lookup", "open", "read", "release", "opendir", "readdir", "releasedir"):
        assert after.get(op) == before.get(op), (op, before, after)
    assert sum(after.values()) - sum(before.values()) <= 2, (before, after)


def test_read_and_readdir_without_handle_get_the_inode(tmp_path: Path) -> None:
    with kcfs(tmp_path, "--no-open", "--no-opendir") as fs:
        paths = [fs.mnt / "d0000" / "f0001", fs.mnt / "d0002" / "f0000", fs.mnt / "existing"]
        want = [PAYLOAD, PAYLOAD, b"0123456789" * 10]
        assert [read(p) for p in paths] == want
        os.listdir(fs.mnt / "d0002")
        st = fs.stats()
        inodes = [os.stat(p).st_ino for p in paths]
        dir_ino = os.stat(fs.mnt / "d0002").st_ino
    assert len(set(inodes)) == 3
    assert st["seen"]["read"] == inodes  # one READ per file, each with the file's inode
    assert set(st["seen"]["readdir"]) == {dir_ino}  # READDIR(+PLUS) with the directory's inode
    assert st["counts"].get("release", 0) <= 1  # only the first ENOSYS file may see a RELEASE


def test_opendir_fileinfo_cache_readdir_second_listing_sends_no_readdir(tmp_path: Path) -> None:
    with kcfs(tmp_path, "--cache-dir") as fs:
        first = os.listdir(fs.mnt / "d0001")
        n_readdir = fs.count("readdir")
        assert n_readdir >= 1
        for _ in range(5):
            assert os.listdir(fs.mnt / "d0001") == first
        counts = fs.stats_after("releasedir", 6)["counts"]
    assert sorted(first) == ["f0000", "f0001", "f0002"]
    assert counts["readdir"] == n_readdir  # listings came from the kernel's cache
    assert counts["opendir"] == 6 and counts["releasedir"] == 6  # the handles still work


def test_without_cache_readdir_every_listing_reads_the_directory(tmp_path: Path) -> None:
    """The control for the test above: stock opendir (an int handle) caches nothing."""
    with kcfs(tmp_path) as fs:
        os.listdir(fs.mnt / "d0001")
        n_readdir = fs.count("readdir")
        for _ in range(5):
            os.listdir(fs.mnt / "d0001")
        assert fs.count("readdir") >= n_readdir + 5


def test_no_opendir_caches_listings_and_sees_changes(tmp_path: Path) -> None:
    with kcfs(tmp_path, "--no-open", "--no-opendir", "--no-atomic-trunc") as fs:
        d = fs.mnt / "d0000"
        os.listdir(d)
        n_readdir = fs.count("readdir")
        os.listdir(d)
        assert fs.count("readdir") == n_readdir
        (d / "new").write_bytes(b"x")  # CREATE through the kernel drops the cached listing
        assert sorted(os.listdir(d)) == ["f0000", "f0001", "f0002", "new"]
        assert fs.count("readdir") > n_readdir


def test_cleared_atomic_o_trunc_makes_shell_redirect_truncate(tmp_path: Path) -> None:
    with kcfs(tmp_path, "--no-open", "--no-opendir", "--no-atomic-trunc") as fs:
        target = fs.mnt / "existing"
        assert read(target) == b"0123456789" * 10  # the kernel has it cached
        subprocess.run(["sh", "-c", f"printf short > '{target}'"], check=True, timeout=30)
        st = fs.stats()
        assert read(target) == b"short"
        ino = os.stat(target).st_ino
    assert st["root_files"]["existing"] == "short"  # what the daemon holds, not the page cache
    assert st["truncations"] == [0]  # O_TRUNC became SETATTR(size=0)...
    assert set(st["seen"].get("setattr", [ino])) == {ino}  # ...with the inode if it had a file
    assert st["counts"]["open"] == 1  # the ENOSYS answer of the first open


def test_create_under_no_open_keeps_its_handle_and_gets_no_release(tmp_path: Path) -> None:
    with kcfs(tmp_path, "--no-open", "--no-opendir", "--no-atomic-trunc") as fs:
        assert read(fs.mnt / "existing")  # the first OPEN gets ENOSYS: no_open from here on
        released = fs.stats_after("release", 1, timeout=1)["counts"].get("release", 0)
        new = fs.mnt / "made"
        with open(new, "wb") as f:
            f.write(b"hello" * 100)
            f.flush()
            os.fsync(f.fileno())
        ino = os.stat(new).st_ino
        time.sleep(0.2)  # room for a RELEASE, should one come
        st = fs.stats()
        assert read(new) == b"hello" * 100
    assert st["counts"]["create"] == 1
    assert set(st["seen"]["write"]) == {ino}  # the handle create() returned: the inode
    assert st["seen"]["fsync"] == [ino]
    assert st["root_files"]["made"] == "hello" * 100
    assert st["counts"].get("release", 0) == released  # no RELEASE follows the CREATE


def test_stock_mode_is_unchanged_by_the_patch(tmp_path: Path) -> None:
    """A filesystem that implements open/opendir sees every OPEN/RELEASE and its own handles."""
    with kcfs(tmp_path) as fs:
        f = fs.mnt / "d0000" / "f0000"
        for _ in range(3):
            assert read(f) == PAYLOAD
        os.listdir(fs.mnt / "d0000")
        ino = os.stat(f).st_ino
        st = fs.stats_after("release", 3)
    assert st["counts"]["open"] == 3 and st["counts"]["opendir"] >= 1
    released = st["seen"]["release"]
    assert len(released) == 3 and len(set(released)) == 3  # a fresh handle per open...
    assert ino not in released  # ...the ones open() gave, not the inode
    assert st["seen"]["read"] and set(st["seen"]["read"]) <= set(released)
