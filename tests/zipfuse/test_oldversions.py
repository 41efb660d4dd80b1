"""Replaced archive versions stay while a mount reads them (the compaction protocol for shared
filesystems), and go once nobody does.

This machine has no NFS client, so the protocol is tested across separate processes and real
FUSE mounts on the local filesystem: there the kernel would keep an open old inode alive
anyway, so the tests check what makes it survive on NFS: the hidden name that links the
reader's version while its shared lock is held, and the collection once it is not.
"""

from __future__ import annotations

import fcntl
import glob
import os
import subprocess
import sys
import time
import zipfile

import pytest

from tests.conftest import ZIPFUSE_CMD, mounted
from tests.zipfuse.test_append_commit import FILES, _blob, _check_standard, big_zip  # noqa: F401
from tests.zipfuse.test_reliability import names
from zipfuse import api, oldversions

pytestmark = pytest.mark.usefixtures("fuse")


def _hidden(archive) -> list[str]:
    return sorted(glob.glob(str(archive.parent / f".{archive.name}.zipfuse-old-*")))


def _holder(path, *, lock: bool = True) -> subprocess.Popen:
    """Another process that opens ``path`` and (with ``lock``) holds the readers' shared lock
    on it, as a mount on another node would; it says 'ready' once it does."""
    code = (
        "import os, sys; from zipfuse import oldversions\n"
        f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
        f"ok = oldversions.share(fd) if {lock} else True\n"
        "print('ready' if ok else 'nolock', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _end(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(30)


def test_collect_keeps_locked_versions_only(tmp_path):
    archive = tmp_path / "env.zip"
    archive.write_bytes(b"version 1")
    reader = _holder(archive)
    try:
        first = oldversions.keep(str(archive))
        assert first is not None and os.path.samefile(first, archive)
        (tmp_path / "v2").write_bytes(b"version 2")
        os.replace(tmp_path / "v2", archive)  # the rename of a rewrite
        second = oldversions.keep(str(archive))  # nobody locked version 2
        (tmp_path / "v3").write_bytes(b"version 3")
        os.replace(tmp_path / "v3", archive)
        assert _hidden(archive) == sorted([first, second])
        # a process that has version 2 open without the lock does not keep it
        plain = _holder(second, lock=False)
        try:
            assert oldversions.collect(str(archive)) == (1, 1)
        finally:
            _end(plain)
        assert _hidden(archive) == [first]
        with open(first, "rb") as f:
            assert f.read() == b"version 1"
        # a lock held by this very process counts too (the writer's own readers)
        fd = os.open(first, os.O_RDONLY)
        assert oldversions.share(fd)
        _end(reader)
        reader = None
        assert oldversions.collect(str(archive)) == (0, 1)
        os.close(fd)
        assert oldversions.collect(str(archive)) == (1, 0)
        assert _hidden(archive) == []
        assert archive.read_bytes() == b"version 3"
    finally:
        if reader is not None:
            _end(reader)


def test_keep_never_writes_through_a_planted_name(tmp_path):
    """A shared directory: someone made the hidden name first (a symlink to a file of ours).
    keep takes the next name, the planted file is untouched, collect leaves the symlink."""
    archive = tmp_path / "env.zip"
    archive.write_bytes(b"current")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    planted = f"{oldversions.hidden_prefix(str(archive))}{os.stat(archive).st_ino}"
    os.symlink(victim, planted)
    kept = oldversions.keep(str(archive))
    assert kept == planted + ".1" and os.path.samefile(kept, archive)
    assert oldversions.keep(str(archive)) == kept  # an interrupted attempt made it already
    assert victim.read_bytes() == b"precious" and os.path.islink(planted)
    assert oldversions.collect(str(archive)) == (0, 0)  # still the current archive's name
    (tmp_path / "new").write_bytes(b"new")
    os.replace(tmp_path / "new", archive)
    assert oldversions.collect(str(archive)) == (1, 0)
    assert os.path.islink(planted) and victim.read_bytes() == b"precious"
    assert archive.read_bytes() == b"new"


def test_reader_survives_syncs_unmount_and_compact(tmp_path, big_zip):  # noqa: F811
    """One read-only mount reads a held file and opens files it never opened while a writer
    mount syncs 10 times (appends and full rewrites), unmounts, and the archive is compacted:
    0 errors, right contents; the reader's version stays linked under a hidden name while it
    is mounted, the writer keeps none of its own, and all are gone once the reader unmounts."""
    old = names(big_zip)
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    first_ino, first_size = os.stat(big_zip).st_ino, os.path.getsize(big_zip)
    errors: list[str] = []

    def check_reader(held, opened: set[str]) -> None:
        held.seek(0)
        if held.read() != old["lib/f07.bin"]:
            errors.append("held file")
        for i in range(FILES):  # files the reader never opened before, then again
            name = f"lib/f{i:02d}.bin"
            try:
                if (ro / name).read_bytes() != old[name]:
                    errors.append(f"content of {name}")
            except OSError as exc:
                errors.append(f"{name}: {exc}")
            opened.add(name)
        if (ro / "keep.txt").read_text() != "original\n":
            errors.append("keep.txt")

    with mounted(big_zip, ro, read_only=True):
        held = open(ro / "lib" / "f07.bin", "rb")  # noqa: SIM115
        try:
            opened: set[str] = set()
            with mounted(big_zip, rw) as writer:
                for n in range(10):
                    (rw / "keep.txt").write_text(f"writer {n}\n")
                    (rw / f"new{n}.txt").write_text(f"new {n}\n")
                    if n % 3 == 2:  # a full rewrite through the daemon (a new inode)
                        proc = subprocess.run(
                            [*ZIPFUSE_CMD, "compact", str(rw)],
                            capture_output=True, text=True, timeout=120,
                        )  # fmt: skip
                        assert proc.returncode == 0, proc.stderr
                    else:
                        api.sync(str(rw))
                    check_reader(held, opened)
                    # only the reader's version is kept: the writer released its own
                    hidden = _hidden(big_zip)
                    assert len(hidden) <= 1
                    assert all(os.stat(h).st_ino == first_ino for h in hidden)
                    if os.stat(big_zip).st_ino != first_ino:
                        assert len(hidden) == 1, "the reader's version has a hidden name"
                fds = _archive_fds(writer.pid, big_zip)
                assert len(fds) <= 2, f"the writer holds old versions open: {fds}"
            check_reader(held, opened)
            proc = subprocess.run(
                [*ZIPFUSE_CMD, "compact", str(big_zip)], capture_output=True, text=True
            )
            assert proc.returncode == 0 and "1 old version(s) kept" in proc.stderr, proc.stderr
            check_reader(held, opened)
            hidden = _hidden(big_zip)
            assert len(hidden) == 1 and os.stat(hidden[0]).st_ino == first_ino
            # the reader's version: the inode it mounted, later appends after its old end
            with open(hidden[0], "rb") as f:
                (tmp_path / "theirs.zip").write_bytes(f.read(first_size))
            assert names(tmp_path / "theirs.zip") == old
        finally:
            held.close()
    assert errors == []
    assert _hidden(big_zip) == [], "collected at the reader's unmount"
    got = names(big_zip)
    assert got["keep.txt"] == b"writer 9\n" and all(got[f"new{n}.txt"] for n in range(10))
    _check_standard(big_zip)


def _archive_fds(pid: int, archive) -> list[str]:
    """What the daemon's descriptors on the archive's versions point to."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        name = os.path.basename(target).lstrip(".")
        if name.startswith(archive.name) and "zipfuse-lock" not in name:
            out.append(target)
    return out


@pytest.mark.parametrize("stage", ["before-rename", "old-kept", "after-rename"])
def test_kill9_during_compact_leaves_at_most_a_hidden_name(tmp_path, big_zip, stage):  # noqa: F811
    """kill -9 of a compaction at each step around the rename: the archive is the old or the
    new complete one, and a hidden name left behind goes at the next collection (the one of
    the current archive, left before the rename, after the next rewrite)."""
    before = names(big_zip)
    marker = tmp_path / "paused"
    env = {**os.environ, "ZIPFUSE_TEST_PAUSE": f"{stage}:{marker}"}
    proc = subprocess.Popen(
        [*ZIPFUSE_CMD, "compact", str(big_zip)], env=env, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the compaction never reached the pause point"
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert names(big_zip) == before
    hidden = _hidden(big_zip)
    assert len(hidden) == (0 if stage == "before-rename" else 1)
    mnt = tmp_path / "mnt"
    if stage == "old-kept":  # a second name of the current archive: no space, and it stays
        assert os.path.samefile(hidden[0], big_zip)
        with mounted(big_zip, mnt, read_only=True):
            assert (mnt / "keep.txt").read_text() == "original\n"
        assert _hidden(big_zip) == hidden
        proc = subprocess.run([*ZIPFUSE_CMD, "compact", str(big_zip)], capture_output=True)
        assert proc.returncode == 0
    with mounted(big_zip, mnt, read_only=True):  # a mount collects what is left
        assert _hidden(big_zip) == []
        assert (mnt / "keep.txt").read_text() == "original\n"
    assert names(big_zip) == before
    _check_standard(big_zip)


def test_mount_locks_its_version(tmp_path, big_zip):  # noqa: F811
    """Read-only and read-write mounts' daemons hold the shared lock on their archive (seen
    from here as a failed non-blocking exclusive lock); it is gone after unmount."""
    fd = os.open(big_zip, os.O_RDWR)
    try:
        assert _exclusive_free(fd)
        for read_only in (True, False):
            with mounted(big_zip, tmp_path / "mnt", read_only=read_only):
                assert not _exclusive_free(fd)
            assert _exclusive_free(fd)
    finally:
        os.close(fd)
    assert zipfile.is_zipfile(big_zip)


def _exclusive_free(fd: int) -> bool:
    """Try (and drop) an exclusive lock on the whole file, as another node's writer would."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, oldversions._FLOCK.pack(fcntl.F_WRLCK, 0, 0, 0, 0))
    except OSError:
        return False
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, oldversions._FLOCK.pack(fcntl.F_UNLCK, 0, 0, 0, 0))
    return True
