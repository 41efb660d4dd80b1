"""POSIX semantics of every write operation on a read-write mount, before and after a commit."""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import stat
import subprocess
import sys
import time
import zipfile

import pytest

from tests.conftest import mounted, tree_state
from tests.zipfuse.writehelp import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    base_archive,
    check_archive,
    dirty_bytes,
    full_state,
    guarded_sync,
    remount_state,
    renameat2,
    status_of,
    zipfile_read,
)
from zipfuse import api

pytestmark = pytest.mark.usefixtures("fuse")


@pytest.fixture
def base(tmp_path):
    src, archive = base_archive(tmp_path)
    return src, archive, tmp_path / "mnt"


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def expect_errno(code: int, fn, *args, **kwargs) -> None:
    with pytest.raises(OSError) as exc:
        fn(*args, **kwargs)
    assert exc.value.errno == code, f"expected {errno.errorcode[code]}, got {exc.value!r}"


# ------------------------------------------------------------------------------- data


def test_create_write_read_and_sparse_extension(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        p = mnt / "new.txt"
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        try:
            assert os.write(fd, b"first ") == 6
            assert os.write(fd, b"second") == 6
            assert os.pread(fd, 100, 0) == b"first second"
            os.pwrite(fd, b"Z", 20)  # past EOF: the gap reads as zeros
            assert os.fstat(fd).st_size == 21
        finally:
            os.close(fd)
        assert read(p) == b"first second" + b"\0" * 8 + b"Z"
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644
        expect_errno(errno.EEXIST, os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        # overwrite inside an archived (clean) file
        with open(mnt / "dir" / "a.txt", "r+b") as f:
            f.seek(2)
            f.write(b"XY")
        assert read(mnt / "dir" / "a.txt") == b"aaXY\n" + b"aaaa\n" * 99
    check_archive(archive)
    assert zipfile_read(archive, "new.txt") == b"first second" + b"\0" * 8 + b"Z"
    assert zipfile_read(archive, "dir/a.txt") == b"aaXY\n" + b"aaaa\n" * 99


def test_o_trunc_does_not_copy_the_old_bytes(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        assert os.path.getsize(mnt / "big.bin") == 1 << 20
        fd = os.open(mnt / "big.bin", os.O_WRONLY | os.O_TRUNC)
        try:
            assert os.fstat(fd).st_size == 0
            os.write(fd, b"small")
        finally:
            os.close(fd)
        assert read(mnt / "big.bin") == b"small"
        assert dirty_bytes(mnt) == 5  # the 1 MiB of old content was never copied to spill
    assert zipfile_read(archive, "big.bin") == b"small"


def test_truncate_shrink_and_grow(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        f = mnt / "dir" / "sub" / "b.txt"
        os.truncate(f, 7)
        assert read(f) == b"bbbb\nbb"
        os.truncate(f, 20)
        assert read(f) == b"bbbb\nbb" + b"\0" * 13
        fd = os.open(mnt / "hello.txt", os.O_RDWR)
        try:
            os.ftruncate(fd, 5)
            assert os.pread(fd, 100, 0) == b"hello"
            os.ftruncate(fd, 8)
            assert os.pread(fd, 100, 0) == b"hello\0\0\0"
            assert os.fstat(fd).st_size == 8
        finally:
            os.close(fd)
        os.truncate(mnt / "text.txt", 0)
        assert os.path.getsize(mnt / "text.txt") == 0
        expect_errno(errno.EISDIR, os.truncate, mnt / "dir", 0)
    assert zipfile_read(archive, "dir/sub/b.txt") == b"bbbb\nbb" + b"\0" * 13
    assert zipfile_read(archive, "hello.txt") == b"hello\0\0\0"
    assert zipfile_read(archive, "text.txt") == b""


def test_o_append(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        for _ in range(2):
            fd = os.open(mnt / "hello.txt", os.O_WRONLY | os.O_APPEND)
            try:
                os.lseek(fd, 0, os.SEEK_SET)  # O_APPEND ignores the position
                os.write(fd, b"more\n")
            finally:
                os.close(fd)
        with open(mnt / "fresh", "ab") as f:
            f.write(b"1")
            f.write(b"2")
        assert read(mnt / "hello.txt") == b"hello world\nmore\nmore\n"
        assert read(mnt / "fresh") == b"12"
    assert zipfile_read(archive, "hello.txt") == b"hello world\nmore\nmore\n"


# ------------------------------------------------------------------------------- names


def test_mkdir_rmdir(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        os.mkdir(mnt / "d1", 0o700)
        os.mkdir(mnt / "d1" / "d2")
        assert stat.S_IMODE(os.stat(mnt / "d1").st_mode) == 0o700
        assert os.stat(mnt / "d1").st_nlink == 3
        expect_errno(errno.EEXIST, os.mkdir, mnt / "d1")
        expect_errno(errno.ENOTEMPTY, os.rmdir, mnt / "d1")
        expect_errno(errno.ENOTEMPTY, os.rmdir, mnt / "dir")
        expect_errno(errno.ENOTDIR, os.rmdir, mnt / "hello.txt")
        expect_errno(errno.ENOENT, os.rmdir, mnt / "nope")
        expect_errno(errno.ENOENT, os.mkdir, mnt / "nope" / "x")
        os.rmdir(mnt / "d1" / "d2")
        assert os.stat(mnt / "d1").st_nlink == 2
        assert os.listdir(mnt / "d1") == []
        os.rmdir(mnt / "emptydir")
        os.mkdir(mnt / "keep", 0o751)
    names = set(zipfile.ZipFile(archive).namelist())
    assert "emptydir/" not in names
    assert {"d1/", "keep/"} <= names
    with mounted(archive, mnt, read_only=True):
        assert stat.S_IMODE(os.stat(mnt / "keep").st_mode) == 0o751
        assert stat.S_IMODE(os.stat(mnt / "d1").st_mode) == 0o700
        assert not os.path.exists(mnt / "emptydir")


def test_unlinked_open_file_stays_usable_until_close(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        fd_clean = os.open(mnt / "dir" / "a.txt", os.O_RDWR)  # archived, never written
        fd_new = os.open(mnt / "tmpfile", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            os.write(fd_new, b"scratch")
            os.unlink(mnt / "dir" / "a.txt")
            os.unlink(mnt / "tmpfile")
            assert not os.path.exists(mnt / "dir" / "a.txt")
            assert not os.path.exists(mnt / "tmpfile")
            assert os.fstat(fd_clean).st_nlink == 0
            assert os.pread(fd_clean, 10, 0) == b"aaaa\naaaa\n"
            os.pwrite(fd_clean, b"ZZ", 0)
            assert os.pread(fd_clean, 5, 0) == b"ZZaa\n"
            assert os.pread(fd_new, 100, 0) == b"scratch"
            os.pwrite(fd_new, b"!", 7)
            os.fsync(fd_new)
            assert os.pread(fd_new, 100, 0) == b"scratch!"
            # a new file under the old name is a different file
            (mnt / "tmpfile").write_bytes(b"other")
            assert os.pread(fd_new, 100, 0) == b"scratch!"
        finally:
            os.close(fd_clean)
            os.close(fd_new)
        assert read(mnt / "tmpfile") == b"other"
    names = zipfile.ZipFile(archive).namelist()
    assert "dir/a.txt" not in names
    assert zipfile_read(archive, "tmpfile") == b"other"
    check_archive(archive)


def test_unlinked_open_file_survives_a_sync(base):
    """A commit does not store an unlinked file, but its open descriptors keep working."""
    _, archive, mnt = base
    with mounted(archive, mnt):
        fd_clean = os.open(mnt / "dir" / "sub" / "b.txt", os.O_RDWR)  # archived, never read
        fd_dirty = os.open(mnt / "hello.txt", os.O_RDWR)
        try:
            os.pwrite(fd_dirty, b"HELLO", 0)
            os.fsync(fd_dirty)
            os.unlink(mnt / "dir" / "sub" / "b.txt")
            os.unlink(mnt / "hello.txt")
            (mnt / "other").write_bytes(b"shifts the archive layout")
            assert api.sync(str(mnt))["committed"]
            assert os.pread(fd_clean, 10, 0) == b"bbbb\nbbbb\n"
            assert os.pread(fd_dirty, 100, 0) == b"HELLO world\n"
            os.pwrite(fd_clean, b"Z", 0)
            assert os.pread(fd_clean, 6, 0) == b"Zbbb\nb"
            assert os.fstat(fd_clean).st_size == 5000
        finally:
            os.close(fd_clean)
            os.close(fd_dirty)
    names = zipfile.ZipFile(archive).namelist()
    assert "dir/sub/b.txt" not in names and "hello.txt" not in names
    assert zipfile_read(archive, "other") == b"shifts the archive layout"


def test_rename_replace_file_and_empty_dir(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        ino = os.stat(mnt / "hello.txt").st_ino
        os.rename(mnt / "hello.txt", mnt / "dir" / "a.txt")  # replaces a file
        assert not os.path.exists(mnt / "hello.txt")
        assert read(mnt / "dir" / "a.txt") == b"hello world\n"
        assert os.stat(mnt / "dir" / "a.txt").st_ino == ino
        os.mkdir(mnt / "newdir")
        (mnt / "newdir" / "f").write_bytes(b"in newdir")
        os.rename(mnt / "newdir", mnt / "emptydir")  # replaces an empty directory
        assert read(mnt / "emptydir" / "f") == b"in newdir"
        assert not os.path.exists(mnt / "newdir")
        expect_errno(errno.ENOTEMPTY, os.rename, mnt / "emptydir", mnt / "dir")
        expect_errno(errno.EISDIR, os.rename, mnt / "text.txt", mnt / "dir")
        expect_errno(errno.ENOTDIR, os.rename, mnt / "dir", mnt / "text.txt")
        expect_errno(errno.EINVAL, os.rename, mnt / "dir", mnt / "dir" / "sub" / "inside")
        expect_errno(errno.ENOENT, os.rename, mnt / "missing", mnt / "x")
        # directory moved to another parent: its content follows, link counts update
        os.rename(mnt / "dir" / "sub", mnt / "emptydir" / "sub2")
        assert read(mnt / "emptydir" / "sub2" / "b.txt") == b"bbbb\n" * 1000
        assert os.stat(mnt / "dir").st_nlink == 2
        assert os.stat(mnt / "emptydir").st_nlink == 3
        assert os.listdir(mnt / "dir") == ["a.txt"]
        before = full_state(mnt)
    check_archive(archive)
    assert remount_state(archive, mnt) == before
    names = set(zipfile.ZipFile(archive).namelist())
    assert "hello.txt" not in names and "newdir/" not in names and "dir/sub/b.txt" not in names
    assert zipfile_read(archive, "emptydir/sub2/b.txt") == b"bbbb\n" * 1000


def test_rename_noreplace_and_exchange(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        expect_errno(errno.EEXIST, renameat2, mnt / "hello.txt", mnt / "text.txt", RENAME_NOREPLACE)
        assert read(mnt / "hello.txt") == b"hello world\n"
        renameat2(mnt / "hello.txt", mnt / "hello2.txt", RENAME_NOREPLACE)
        assert read(mnt / "hello2.txt") == b"hello world\n"
        # exchange two files
        renameat2(mnt / "hello2.txt", mnt / "dir" / "a.txt", RENAME_EXCHANGE)
        assert read(mnt / "hello2.txt") == b"aaaa\n" * 100
        assert read(mnt / "dir" / "a.txt") == b"hello world\n"
        # exchange a file with a directory in another parent
        renameat2(mnt / "text.txt", mnt / "dir" / "sub", RENAME_EXCHANGE)
        assert os.path.isdir(mnt / "text.txt")
        assert read(mnt / "text.txt" / "b.txt") == b"bbbb\n" * 1000
        assert os.path.isfile(mnt / "dir" / "sub")
        assert os.stat(mnt / "dir").st_nlink == 2
        expect_errno(errno.ENOENT, renameat2, mnt / "hello2.txt", mnt / "nothere", RENAME_EXCHANGE)
        before = full_state(mnt)
    check_archive(archive)
    assert remount_state(archive, mnt) == before


def test_symlink_readlink(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        os.symlink("hello.txt", mnt / "s1")
        os.symlink("../nowhere/at all", mnt / "dir" / "dangling")
        assert os.readlink(mnt / "s1") == "hello.txt"
        assert read(mnt / "s1") == b"hello world\n"
        assert os.readlink(mnt / "dir" / "dangling") == "../nowhere/at all"
        assert os.readlink(mnt / "link") == "dir/a.txt"  # archived symlink
        assert os.lstat(mnt / "s1").st_size == len("hello.txt")
        expect_errno(errno.EEXIST, os.symlink, "x", mnt / "s1")
        expect_errno(errno.EINVAL, os.readlink, mnt / "hello.txt")
        os.rename(mnt / "s1", mnt / "dir" / "s1moved")
        assert os.readlink(mnt / "dir" / "s1moved") == "hello.txt"
    with mounted(archive, mnt, read_only=True):
        assert os.readlink(mnt / "dir" / "s1moved") == "hello.txt"
        assert os.readlink(mnt / "dir" / "dangling") == "../nowhere/at all"
        assert os.readlink(mnt / "link") == "dir/a.txt"
        assert stat.S_ISLNK(os.lstat(mnt / "dir" / "dangling").st_mode)


def test_hard_links(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        (mnt / "orig").write_bytes(b"shared content")
        os.link(mnt / "orig", mnt / "dir" / "alias")
        os.link(mnt / "dir" / "a.txt", mnt / "a-alias")  # link to an archived file
        s1, s2 = os.stat(mnt / "orig"), os.stat(mnt / "dir" / "alias")
        assert s1.st_ino == s2.st_ino
        assert s1.st_nlink == s2.st_nlink == 2
        assert os.stat(mnt / "a-alias").st_nlink == 2
        with open(mnt / "dir" / "alias", "r+b") as f:
            f.write(b"SHARED")
        assert read(mnt / "orig") == b"SHARED content"
        with open(mnt / "a-alias", "ab") as f:
            f.write(b"tail\n")
        assert read(mnt / "dir" / "a.txt").endswith(b"aaaa\ntail\n")
        os.unlink(mnt / "orig")
        assert os.stat(mnt / "dir" / "alias").st_nlink == 1
        os.link(mnt / "dir" / "alias", mnt / "orig")
        assert os.stat(mnt / "orig").st_nlink == 2
        expect_errno(errno.EPERM, os.link, mnt / "dir", mnt / "dirlink")
    check_archive(archive)
    a_content = b"aaaa\n" * 100 + b"tail\n"
    with mounted(archive, mnt):
        assert read(mnt / "orig") == read(mnt / "dir" / "alias") == b"SHARED content"
        assert read(mnt / "a-alias") == read(mnt / "dir" / "a.txt") == a_content
        s1, s2 = os.stat(mnt / "orig"), os.stat(mnt / "dir" / "alias")
        assert s1.st_ino != s2.st_ino  # stored as separate entries
        assert s1.st_nlink == s2.st_nlink == 1
        with open(mnt / "orig", "r+b") as f:
            f.write(b"s")
        assert read(mnt / "dir" / "alias") == b"SHARED content"


def test_chmod_chown_utime_ns(base):
    _, archive, mnt = base
    mtime_ns = 1_234_567_890_123_456_789
    atime_ns = 1_300_000_000_987_654_321
    with mounted(archive, mnt):
        (mnt / "new").write_bytes(b"n")
        for name in ("hello.txt", "new", "dir", "emptydir"):
            p = mnt / name
            os.chown(p, 1234, 5678)  # before chmod: chown clears set-user-ID
            os.chmod(p, 0o4751 if name == "new" else 0o701)
            os.utime(p, ns=(atime_ns, mtime_ns))
            st = os.stat(p)
            assert stat.S_IMODE(st.st_mode) == (0o4751 if name == "new" else 0o701)
            assert (st.st_uid, st.st_gid) == (1234, 5678)
            assert st.st_mtime_ns == mtime_ns
            assert st.st_atime_ns == atime_ns
        os.chown(mnt / "link", 42, 43, follow_symlinks=False)
        assert os.lstat(mnt / "link")[4:6] == (42, 43)
        os.utime(mnt / "text.txt", (0, 0))  # the epoch itself
        assert os.stat(mnt / "text.txt").st_mtime == 0
        before = full_state(mnt)
    with mounted(archive, mnt, read_only=True):
        assert full_state(mnt) == before
        for name in ("hello.txt", "new", "dir", "emptydir"):
            st = os.stat(mnt / name)
            assert st.st_mtime_ns // 100 == mtime_ns // 100  # NTFS extra: 100 ns units
        assert os.lstat(mnt / "link")[4:6] == (42, 43)


def test_mtime_shown_in_the_mount_is_the_mtime_committed(base):
    """Whatever mtime a program saw before the unmount is what the remount shows (to the
    second): make, rsync and Python's .pyc checks depend on it."""
    _, archive, mnt = base

    def fresh(name: str, size: int = 5000):
        p = mnt / name
        p.write_bytes(b"y" * size)
        os.utime(p, (1, 1_000_000_000))
        return p

    def with_fd(p, fn, flags=os.O_RDWR) -> None:
        fd = os.open(p, flags)
        try:
            fn(fd)
        finally:
            os.close(fd)

    with mounted(archive, mnt):
        os.truncate(fresh("truncate-same-size"), 5000)
        os.truncate(fresh("truncate-grow"), 6000)
        os.truncate(fresh("truncate-shrink"), 10)
        with_fd(fresh("ftruncate-same-size"), lambda fd: os.ftruncate(fd, 5000))
        with_fd(fresh("write-nothing"), lambda fd: os.pwrite(fd, b"", 10))
        with_fd(fresh("write"), lambda fd: os.pwrite(fd, b"abc", 10))
        with_fd(fresh("o-trunc"), lambda fd: None, os.O_RDWR | os.O_TRUNC)
        p = fresh("utime-while-open")
        with_fd(p, lambda fd: (os.pwrite(fd, b"abc", 10), os.utime(p, (1, 1_100_000_000))))
        time.sleep(1.1)  # let 'now' move on, so a later time stamp would show
        shown = {name: int(os.stat(mnt / name).st_mtime) for name in os.listdir(mnt)}
        assert shown["utime-while-open"] == 1_100_000_000
        assert shown["write-nothing"] == 1_000_000_000
    with mounted(archive, mnt, read_only=True):
        stored = {name: int(os.stat(mnt / name).st_mtime) for name in os.listdir(mnt)}
    assert stored == shown, {
        k: (shown[k], stored.get(k)) for k in shown if shown[k] != stored.get(k)
    }


def test_mkfifo_survives_commit(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        os.mkfifo(mnt / "pipe", 0o600)
        os.chmod(mnt / "pipe", 0o620)  # not limited by the umask
        os.mkfifo(mnt / "dir" / "pipe2", 0o600)
        assert stat.S_IMODE(os.lstat(mnt / "dir" / "pipe2").st_mode) == 0o600
        st = os.lstat(mnt / "pipe")
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620
    check_archive(archive)
    with mounted(archive, mnt, read_only=True):
        st = os.lstat(mnt / "pipe")
        assert stat.S_ISFIFO(st.st_mode), oct(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o620
        assert stat.S_ISFIFO(os.lstat(mnt / "dir" / "pipe2").st_mode)


def _devices(root) -> dict[str, tuple[int, int, int, int]]:
    """name -> (file type, permission bits, major, minor) of the device nodes under root."""
    out = {}
    for rel in ("null", "disk", "dir/big"):
        st = os.lstat(root / rel)
        out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                    os.major(st.st_rdev), os.minor(st.st_rdev))  # fmt: skip
    return out


def test_device_nodes_round_trip(base):
    """mknod of character and block devices: st_rdev survives commits, remounts and renames."""
    _, archive, mnt = base
    made = {
        "null": (stat.S_IFCHR, 0o640, 1, 3),
        "disk": (stat.S_IFBLK, 0o600, 8, 1),
        "dir/big": (stat.S_IFCHR, 0o604, 300, 70000),  # beyond the old 8-bit encodings
    }
    with mounted(archive, mnt):
        for rel, (kind, perm, major, minor) in made.items():
            os.mknod(mnt / rel, kind | perm, os.makedev(major, minor))
            os.chmod(mnt / rel, perm)  # not limited by the umask
        assert _devices(mnt) == made
    check_archive(archive)  # zipfile, unzip -t and 7z accept the 0x000d extra field
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("dir/big")
        assert (info.external_attr >> 16) == stat.S_IFCHR | 0o604
        assert zf.read("dir/big") == b""
    assert _devices_after(archive, mnt) == made
    # metadata-only changes rewrite the entry's headers: the device number must stay
    with mounted(archive, mnt):
        os.chmod(mnt / "disk", 0o660)
        os.rename(mnt / "null", mnt / "dir" / "null")
        os.rename(mnt / "dir" / "null", mnt / "null")
    made["disk"] = (stat.S_IFBLK, 0o660, 8, 1)
    check_archive(archive)
    assert _devices_after(archive, mnt) == made


def _devices_after(archive, mnt) -> dict[str, tuple[int, int, int, int]]:
    with mounted(archive, mnt, read_only=True):
        return _devices(mnt)


def test_lookup_of_too_long_name_is_enametoolong(base):
    """Names of 256..1024 bytes reach the daemon (the kernel's FUSE limit is 1024)."""
    _, archive, mnt = base
    with mounted(archive, mnt, read_only=True):
        expect_errno(errno.ENAMETOOLONG, os.stat, mnt / ("x" * 256))
        expect_errno(errno.ENAMETOOLONG, os.lstat, mnt / "dir" / ("y" * 1000))
        expect_errno(errno.ENAMETOOLONG, os.open, mnt / ("z" * 300), os.O_RDONLY)
        expect_errno(errno.ENOENT, os.stat, mnt / ("x" * 255))  # the longest legal name


def test_utime_now_never_goes_back_after_create(base):
    """One clock for new files and utime(NULL): 200 tries, the mtime never decreases."""
    _, archive, mnt = base
    backwards = []
    with mounted(archive, mnt):
        for i in range(200):
            p = mnt / f"t{i}"
            with open(p, "wb"):
                pass
            created = os.stat(p).st_mtime_ns
            os.utime(p, None)
            touched = os.stat(p).st_mtime_ns
            if touched < created:
                backwards.append((i, created - touched))
        assert not backwards, f"{len(backwards)}/200 went back in time: {backwards[:5]}"


def test_fsync_fsyncdir_statvfs(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        fd = os.open(mnt / "synced", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"durable")
            os.fsync(fd)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        dfd = os.open(mnt / "dir", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        sv = os.statvfs(mnt)
        assert sv.f_ffree > 0 and sv.f_favail > 0
        assert sv.f_bavail > 0 and sv.f_bsize > 0
        assert sv.f_namemax >= 255
        assert read(mnt / "synced") == b"durable"
    assert zipfile_read(archive, "synced") == b"durable"


def test_xattrs_are_not_supported(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        for p in (mnt / "hello.txt", mnt / "dir"):
            expect_errno(errno.ENOTSUP, os.setxattr, p, "user.test", b"v")
            expect_errno(errno.ENOTSUP, os.getxattr, p, "user.test")
        assert errno.ENOTSUP == 95
        (mnt / "still-works").write_bytes(b"ok")
    assert zipfile_read(archive, "still-works") == b"ok"


def test_mmap_shared_write_survives_commit(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        with open(mnt / "text.txt", "r+b") as f:
            with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED) as m:
                m[0:8] = b"MMAPPED!"
                m[-4:] = b"END\n"
                m.flush()
        p = mnt / "fresh.bin"
        with open(p, "w+b") as f:
            f.truncate(8192)
            with mmap.mmap(f.fileno(), 8192, flags=mmap.MAP_SHARED) as m:
                m[4096:4100] = b"page"
                m.flush()
        data = read(mnt / "text.txt")
        assert data.startswith(b"MMAPPED!") and data.endswith(b"END\n")
    text = zipfile_read(archive, "text.txt")
    assert text.startswith(b"MMAPPED!") and text.endswith(b"END\n")
    assert len(text) == len(data)
    assert zipfile_read(archive, "fresh.bin") == b"\0" * 4096 + b"page" + b"\0" * 4092


def test_sync_then_more_changes_committed_by_unmount(base):
    _, archive, mnt = base
    with mounted(archive, mnt):
        (mnt / "one").write_bytes(b"first")
        os.unlink(mnt / "hello.txt")
        res = api.sync(str(mnt))
        assert res["ok"] and res["committed"]
        assert status_of(mnt).state == "mounted"
        assert dirty_bytes(mnt) == 0
        check_archive(archive)
        names = zipfile.ZipFile(archive).namelist()
        assert "hello.txt" not in names
        assert zipfile_read(archive, "one") == b"first"
        # the mount goes on: reads of committed and clean data, then new writes
        assert read(mnt / "one") == b"first"
        assert read(mnt / "dir" / "sub" / "b.txt") == b"bbbb\n" * 1000
        with open(mnt / "one", "ab") as f:
            f.write(b" second")
        (mnt / "two").write_bytes(b"2")
        assert read(mnt / "one") == b"first second"
        again = api.sync(str(mnt))
        assert again["committed"]
        assert api.sync(str(mnt))["committed"] is False  # nothing new since
        os.rename(mnt / "two", mnt / "dir" / "two")
        before = full_state(mnt)
    check_archive(archive)
    assert zipfile_read(archive, "one") == b"first second"
    assert zipfile_read(archive, "dir/two") == b"2"
    assert remount_state(archive, mnt) == before


WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644)
os.write(fd, b"line 1\\n" * 1000)  # stays in the kernel's page cache (writeback cache)
print("ready", flush=True)
sys.stdin.readline()
os.write(fd, b"line 2\\n")
os.close(fd)
print("closed", flush=True)
"""


def test_sync_while_a_file_is_open_with_unwritten_data(base):
    """sync must push the kernel's cached writes of open files into the archive, and return.

    The open file lives in a child process: if the daemon deadlocks, only the child hangs, and
    guarded_sync aborts the FUSE connection to free it.
    """
    _, archive, mnt = base
    with mounted(archive, mnt):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(mnt / "open.log")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout.readline() == "ready\n"
            res = guarded_sync(mnt, timeout=30)
            assert res["ok"]
            assert zipfile_read(archive, "open.log") == b"line 1\n" * 1000
            out, _ = writer.communicate("go\n", timeout=60)
            assert out == "closed\n"
        finally:
            if writer.poll() is None:
                writer.kill()
            writer.wait(timeout=60)
        assert read(mnt / "open.log") == b"line 1\n" * 1000 + b"line 2\n"
    assert zipfile_read(archive, "open.log") == b"line 1\n" * 1000 + b"line 2\n"


PROBE = """
import errno, os, sys
root = sys.argv[1]
def code(fn):
    try:
        fn()
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "ok"
def write(path):
    with open(path, "ab") as f:
        f.write(b"x")
def read(path):
    with open(path, "rb") as f:
        f.read()
print(code(lambda: read(os.path.join(root, "public.txt"))),
      code(lambda: write(os.path.join(root, "public.txt"))),
      code(lambda: read(os.path.join(root, "private.txt"))),
      code(lambda: write(os.path.join(root, "open-dir", "new"))),
      code(lambda: write(os.path.join(root, "closed-dir", "new"))),
      code(lambda: os.unlink(os.path.join(root, "closed-dir", "f"))),
      code(lambda: os.chmod(os.path.join(root, "public.txt"), 0o777)),
      code(lambda: os.utime(os.path.join(root, "mine.txt"), (1, 1))))
"""


def test_permission_checks_for_another_user(base):
    """With allow_other, a non-root user gets the access a local disk would give."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    _, archive, mnt = base
    with mounted(archive, mnt, fuse_options=("allow_other",)):
        (mnt / "public.txt").write_bytes(b"p")
        os.chmod(mnt / "public.txt", 0o644)
        (mnt / "private.txt").write_bytes(b"secret")
        os.chmod(mnt / "private.txt", 0o600)
        os.mkdir(mnt / "open-dir", 0o777)
        os.chmod(mnt / "open-dir", 0o777)
        os.mkdir(mnt / "closed-dir", 0o755)
        (mnt / "closed-dir" / "f").write_bytes(b"f")
        (mnt / "mine.txt").write_bytes(b"m")
        os.chown(mnt / "mine.txt", 65534, 65534)
        out = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-c",
                PROBE,
                ".",  # relative to the cwd: the test's own directories are closed to others
            ],
            cwd=mnt,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [
            "ok",
            "EACCES",
            "EACCES",
            "ok",
            "EACCES",
            "EACCES",
            "EPERM",
            "ok",
        ]
        assert (mnt / "open-dir" / "new").stat().st_uid == 65534
        assert (mnt / "public.txt").read_bytes() == b"p"


def test_read_only_mount_refuses_every_write(base):
    _, archive, mnt = base
    before = os.stat(archive)
    with mounted(archive, mnt, read_only=True):
        actions = [
            lambda: os.open(mnt / "new", os.O_CREAT | os.O_WRONLY),
            lambda: os.open(mnt / "hello.txt", os.O_WRONLY),
            lambda: os.open(mnt / "hello.txt", os.O_RDWR | os.O_TRUNC),
            lambda: os.truncate(mnt / "hello.txt", 1),
            lambda: os.mkdir(mnt / "d"),
            lambda: os.rmdir(mnt / "emptydir"),
            lambda: os.unlink(mnt / "hello.txt"),
            lambda: os.rename(mnt / "hello.txt", mnt / "x"),
            lambda: os.symlink("a", mnt / "s"),
            lambda: os.link(mnt / "hello.txt", mnt / "h"),
            lambda: os.chmod(mnt / "hello.txt", 0o600),
            lambda: os.chown(mnt / "hello.txt", 1, 1),
            lambda: os.utime(mnt / "hello.txt", (1, 1)),
            lambda: os.mkfifo(mnt / "f"),
        ]
        for action in actions:
            expect_errno(errno.EROFS, action)
        assert read(mnt / "hello.txt") == b"hello world\n"
    after = os.stat(archive)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_nothing_changed_nothing_written(base):
    src, archive, mnt = base
    before = os.stat(archive)
    content = archive.read_bytes()
    with mounted(archive, mnt):
        assert tree_state(mnt) == tree_state(src)  # reads every file
        os.listdir(mnt / "dir")
        assert api.sync(str(mnt))["committed"] is False
    after = os.stat(archive)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    assert archive.read_bytes() == content
    assert sorted(os.listdir(archive.parent)) == sorted(["src", "base.zip", "mnt"])


def test_clean_files_are_not_copied_to_spill(base):
    src, archive, mnt = base
    old = {i.filename: i for i in zipfile.ZipFile(archive).infolist()}
    with mounted(archive, mnt) as info:
        for name in ("big.bin", "text.txt", "dir/a.txt"):
            with open(mnt / name, "rb") as f:
                assert f.read() == (src / name).read_bytes()
        fd = os.open(mnt / "hello.txt", os.O_RDWR)  # opened for writing but never written
        os.close(fd)
        assert dirty_bytes(mnt) == 0
        os.chmod(mnt / "big.bin", 0o600)
        os.utime(mnt / "text.txt", (5, 1_500_000_000))
        os.rename(mnt / "text.txt", mnt / "dir" / "moved.txt")
        os.rename(mnt / "dir" / "sub", mnt / "sub-moved")
        assert dirty_bytes(mnt) == 0
        assert status_of(mnt).state == "mounted"
        # only the journal and its state: no data file was made
        assert info.spill_dir and set(os.listdir(info.spill_dir)) <= {"journal", "state.json"}
        before = full_state(mnt)
    check_archive(archive)
    new = {i.filename: i for i in zipfile.ZipFile(archive).infolist()}
    # metadata-only changes keep the compressed bytes as they were
    for old_name, new_name in [
        ("big.bin", "big.bin"),
        ("text.txt", "dir/moved.txt"),
        ("dir/sub/b.txt", "sub-moved/b.txt"),
    ]:
        o, n = old[old_name], new[new_name]
        assert (n.CRC, n.compress_type, n.compress_size, n.file_size) == (
            o.CRC,
            o.compress_type,
            o.compress_size,
            o.file_size,
        )
    assert (new["big.bin"].external_attr >> 16) & 0o7777 == 0o600
    assert remount_state(archive, mnt) == before
