"""A lost write lock is detected before a commit touches the archive (an NFSv4 client cut off
past its lease loses its lock silently, and another node may be the writer now).

Here the other node's takeover is simulated as it looks from the first writer: the lock file
rewritten with another holder's text (same file, as a same-user acquire does) or replaced by
a new file (as a different user's acquire does)."""

from __future__ import annotations

import glob
import os
import subprocess

import pytest

from tests.conftest import ZIPFUSE_CMD, force_cleanup
from tests.zipfuse.test_append_commit import _check_standard, big_zip  # noqa: F401
from tests.zipfuse.test_reliability import names
from zipfuse import api
from zipfuse.lock import ArchiveLock, LockLost, check, lock_path

OTHER = "host othernode pid 4242 since 2026-11-29 12:00:00 token 00112233445566ff\n"


def _take_over(archive, how: str) -> None:
    path = lock_path(str(archive))
    if how == "rewrite":
        with open(path, "r+") as f:
            f.truncate(0)
            f.write(OTHER)
    else:
        os.unlink(path)
        with open(path, "w") as f:
            f.write(OTHER)


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("how", ["rewrite", "replace"])
def test_lock_lost_is_detected(tmp_path, how):
    archive = tmp_path / "a.zip"
    lock = ArchiveLock(str(archive))
    lock.acquire()
    try:
        assert lock.lost() is None
        check(str(archive))  # ours: no error
        _take_over(archive, how)
        why = lock.lost()
        assert why is not None and "by host othernode pid 4242" in why and "token" not in why
        with pytest.raises(LockLost) as exc:
            check(str(archive))
        assert "was lost" in str(exc.value) and "archive was not touched" in str(exc.value)
    finally:
        lock.release()
    with open(lock_path(str(archive))) as f:
        assert f.read() == OTHER, "a lost lock's file is the new holder's: never removed"
    check(str(archive))  # released: nothing to check any more


@pytest.mark.usefixtures("fuse")
@pytest.mark.parametrize("how", ["rewrite", "replace"])
def test_commit_refuses_after_the_lock_was_lost(tmp_path, big_zip, how):  # noqa: F811
    """sync (an append) and compact (a rewrite) refuse in one line, the archive stays as it
    was, unmount says the same, and recover brings the changes back once the other writer is
    gone."""
    before = big_zip.read_bytes()
    ino = os.stat(big_zip).st_ino
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    api.mount(str(big_zip), str(mnt))
    try:
        (mnt / "mine.txt").write_text("my change\n")
        _take_over(big_zip, how)
        for op in ("sync", "compact"):
            proc = subprocess.run(
                [*ZIPFUSE_CMD, op, str(mnt)], capture_output=True, text=True, timeout=120
            )
            line = _one_line(proc.stderr)
            assert proc.returncode != 0
            assert f"the write lock on {big_zip} was lost" in line
            assert "by host othernode pid 4242" in line
            assert "the archive was not touched" in line and "changes are kept in" in line
            assert f"zipfuse recover {big_zip}" in line and "unmount" in line
            assert big_zip.read_bytes() == before and os.stat(big_zip).st_ino == ino
        assert (mnt / "mine.txt").read_text() == "my change\n"  # the mount goes on
        proc = subprocess.run(
            [*ZIPFUSE_CMD, "unmount", str(mnt)], capture_output=True, text=True, timeout=120
        )
        line = _one_line(proc.stderr)
        assert proc.returncode != 0 and "was lost" in line and line.count("recover") == 1
    finally:
        force_cleanup(str(mnt))
    assert big_zip.read_bytes() == before
    assert not glob.glob(str(tmp_path / f".{big_zip.name}.zipfuse-*-*")), "no temp, no old version"
    with open(lock_path(str(big_zip))) as f:
        assert f.read() == OTHER  # the other writer's lock file is left alone
    # the other writer is gone (its lock is free): recover commits the kept changes
    note = api.recover(str(big_zip))
    assert note is not None and "recovered" in note
    got = names(big_zip)
    assert got["mine.txt"] == b"my change\n"
    _check_standard(big_zip)
