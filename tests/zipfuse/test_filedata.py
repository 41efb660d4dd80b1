"""File contents through a real mount: resources stay bounded however many files are written."""

from __future__ import annotations

import os
import zipfile

import pytest

from tests.conftest import mounted
from zipfuse.filedata import MAX_IDLE_FDS, POOL_BATCH, POOL_LOW

pytestmark = pytest.mark.usefixtures("fuse")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_many_new_files_keep_descriptors_bounded(tmp_path):
    """Copying many new files in (cp -a of an environment) must not hold one spill descriptor
    per file: in kernel-cache mode no RELEASE closes them, and 20k files hit EMFILE."""
    archive, mnt = tmp_path / "new.zip", tmp_path / "mnt"
    count = 3 * MAX_IDLE_FDS
    with mounted(archive, mnt) as info:
        baseline = open_fds(info.pid)
        for i in range(count):
            with open(mnt / f"f{i:04d}.txt", "wb") as f:
                f.write(b"%d\n" % i)
        os.sync()  # the kernel's cached pages reach the daemon
        held = open_fds(info.pid) - baseline
        assert held <= MAX_IDLE_FDS + POOL_LOW + POOL_BATCH, held
        assert (mnt / "f0000.txt").read_bytes() == b"0\n"  # a trimmed descriptor reopens
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
        got = {n: z.read(n) for n in z.namelist()}
    assert got == {f"f{i:04d}.txt": b"%d\n" % i for i in range(count)}
