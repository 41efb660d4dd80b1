"""Pathological sizes: deep nesting and many entries cost work linear in the archive.

The big numbers (1M entries, 15,000 levels, RSS and times) are benchmark figures
(``python -m benchmarks.mountcost``), not asserts; these tests check behaviour on real mounts.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ZIPFUSE_CMD, force_cleanup, mounted
from zipfuse import registry

pytestmark = pytest.mark.usefixtures("fuse")


def _deep_zip(path: Path, depth: int) -> str:
    """One file ``depth`` directories deep; the directories are only implied by its name."""
    name = "d/" * depth + "f"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name, b"deep\n")
        z.writestr("top.txt", b"top\n")
    return name


@pytest.mark.parametrize("read_only", [True, False])
def test_too_deep_archive_is_refused_in_one_line(tmp_path: Path, read_only: bool) -> None:
    archive = tmp_path / "deep.zip"
    _deep_zip(archive, 15_000)
    before = hashlib.sha256(archive.read_bytes()).hexdigest()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cmd = [*ZIPFUSE_CMD, "mount", *(["--read-only"] if read_only else []), str(archive), str(mnt)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        force_cleanup(str(mnt))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "nested 15001 levels deep" in lines[0] and "deeper than 1000 levels" in lines[0]
    assert str(archive) in lines[0]
    assert os.path.realpath(mnt) not in registry.fuse_mounts()
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == before


def test_deep_archive_commits_without_growing(tmp_path: Path) -> None:
    """999 implied directories: a commit keeps them implied (before, each became an entry
    holding its full path: ~1 MB of names for a 4 KB archive); the depth limit holds for new
    directories too."""
    archive = tmp_path / "deep.zip"
    name = _deep_zip(archive, 999)
    mnt = tmp_path / "mnt"
    bottom = os.path.dirname(name)
    with mounted(archive, mnt):
        assert (mnt / name).read_bytes() == b"deep\n"
        (mnt / bottom / "new").write_bytes(b"new\n")
        os.mkdir(mnt / bottom / "x")  # level 1000: allowed
        with pytest.raises(OSError) as err:
            os.mkdir(mnt / bottom / "x" / "y")  # level 1001
        assert err.value.errno == errno.ENAMETOOLONG
    assert archive.stat().st_size < 50_000
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
        names = set(z.namelist())
        assert z.read(name) == b"deep\n"
        assert z.read(bottom + "/new") == b"new\n"
    assert {name, bottom + "/new", bottom + "/x/", "top.txt"} <= names
    assert len(names) <= 5  # the touched bottom directory may be stored; nothing above it
    with mounted(archive, mnt, read_only=True):
        assert (mnt / bottom / "new").read_bytes() == b"new\n"
        assert sorted(os.listdir(mnt / bottom)) == ["f", "new", "x"]


def _many_zip(path: Path, dirs: int, per_dir: int) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for d in range(dirs):
            if d % 2:
                z.writestr(f"pkg{d:03d}/", b"")  # half the directories are explicit
            for f in range(per_dir):
                z.writestr(f"pkg{d:03d}/mod{f:04d}.py", f"{d}:{f}\n".encode())
        z.writestr("pkg000/sub/deeper/leaf.txt", b"leaf\n")


def test_many_entries_mount_and_list(tmp_path: Path) -> None:
    archive = tmp_path / "many.zip"
    _many_zip(archive, 50, 1000)
    mnt = tmp_path / "mnt"
    with mounted(archive, mnt, read_only=True):
        # statfs counts every entry before any directory is listed
        assert os.statvfs(mnt).f_files >= 50_001
        assert os.stat(mnt).st_nlink == 2 + 50
        assert (mnt / "pkg042" / "mod0999.py").read_bytes() == b"42:999\n"
        files = dirs = 0
        for _, dnames, fnames in os.walk(mnt):
            files += len(fnames)
            dirs += len(dnames)
        assert (files, dirs) == (50_001, 52)
        assert sorted(os.listdir(mnt / "pkg000"))[:2] == ["mod0000.py", "mod0001.py"]
        assert len(os.listdir(mnt / "pkg007")) == 1000
        for d, f in ((0, 0), (1, 500), (49, 999), (17, 3)):
            assert (mnt / f"pkg{d:03d}" / f"mod{f:04d}.py").read_text() == f"{d}:{f}\n"
        assert (mnt / "pkg000/sub/deeper/leaf.txt").read_bytes() == b"leaf\n"
        assert os.stat(mnt / "pkg000").st_nlink == 3


def test_rename_before_listing_then_commit(tmp_path: Path) -> None:
    """Directories moved before anyone listed them keep their whole content under the new
    name in the committed archive (checked by zipfile and unzip -t)."""
    archive = tmp_path / "r.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/", b"")
        for i in range(20):
            z.writestr(f"a/f{i}", f"a{i}".encode())
            z.writestr(f"b/sub/g{i}", f"b{i}".encode())  # b and b/sub are implied
        z.writestr("keep/k", b"k")
    mnt = tmp_path / "mnt"
    with mounted(archive, mnt):
        os.rename(mnt / "a", mnt / "a2")
        os.rename(mnt / "b" / "sub", mnt / "moved")
        assert sorted(os.listdir(mnt / "b")) == []
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
        names = set(z.namelist())
        for i in range(20):
            assert z.read(f"a2/f{i}") == f"a{i}".encode()
            assert z.read(f"moved/g{i}") == f"b{i}".encode()
        assert not any(n.startswith(("a/", "b/sub")) for n in names)
        assert "b/" in names and z.read("keep/k") == b"k"
    r = subprocess.run(["unzip", "-tq", str(archive)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_moving_a_deep_directory_deeper_is_refused(tmp_path: Path) -> None:
    """A rename takes the whole subtree along: moving a directory whose tree is 3 levels deep
    under level 998 would put files at level 1002, which no mount would accept again."""
    archive = tmp_path / "deep.zip"
    name = _deep_zip(archive, 997)
    mnt = tmp_path / "mnt"
    bottom = os.path.dirname(name)
    with mounted(archive, mnt):
        os.makedirs(mnt / "t" / "a" / "b")
        (mnt / "t" / "a" / "b" / "f").write_bytes(b"3 levels below t\n")
        with pytest.raises(OSError) as err:
            os.rename(mnt / "t", mnt / bottom / "t")
        assert err.value.errno == errno.ENAMETOOLONG
        assert (mnt / "t" / "a" / "b" / "f").exists()
        os.rename(mnt / "t" / "a" / "b", mnt / bottom / "b")  # b/f ends at level 999: fine
    with zipfile.ZipFile(archive) as z:
        assert z.read(bottom + "/b/f") == b"3 levels below t\n"
    with mounted(archive, mnt, read_only=True):  # and it still mounts
        assert (mnt / bottom / "b" / "f").read_bytes() == b"3 levels below t\n"
