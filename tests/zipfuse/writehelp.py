"""Helpers shared by the write-path tests: base trees, archive checks, mount status, full states."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import stat
import subprocess
import time
import zipfile
from collections.abc import Iterator

import pytest

from tests.conftest import ZIPFUSE_CMD, mounted, tree_state
from zipfuse import api, registry

BASE_MTIME = 1_600_000_000

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


# the commit's new archive is written but not installed: a rewrite's temp file before the rename,
# an append in place before its fsync
PAUSE_WRITTEN = "before-rename,append-before-fsync"


def renameat2(old, new, flags: int) -> None:
    """rename(2) with flags, through libc (Python has no wrapper)."""
    res = _libc.renameat2(
        AT_FDCWD, os.fsencode(os.fspath(old)), AT_FDCWD, os.fsencode(os.fspath(new)), flags
    )
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(old))


def make_base_tree(root) -> None:
    """A small tree with files, an empty directory, a symlink and a 1 MiB incompressible file."""
    root = os.fspath(root)
    os.makedirs(os.path.join(root, "dir", "sub"))
    os.makedirs(os.path.join(root, "emptydir"))
    files = {
        "hello.txt": b"hello world\n",
        "dir/a.txt": b"aaaa\n" * 100,
        "dir/sub/b.txt": b"bbbb\n" * 1000,
        "big.bin": os.urandom(1 << 20),
        "text.txt": b"".join(b"line %d of some compressible text\n" % i for i in range(20000)),
    }
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    os.chmod(os.path.join(root, "hello.txt"), 0o640)
    os.chmod(os.path.join(root, "emptydir"), 0o750)
    os.symlink("dir/a.txt", os.path.join(root, "link"))
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for i, name in enumerate(sorted(filenames + dirnames)):
            os.utime(
                os.path.join(dirpath, name), (BASE_MTIME, BASE_MTIME + 7 * i), follow_symlinks=False
            )


def zip_tree(src, archive) -> None:
    """Archive ``src`` with Info-ZIP (symlinks stored as links, Unix metadata kept)."""
    subprocess.run(
        ["zip", "-q", "-r", "-y", os.fspath(archive), "."], cwd=src, check=True, timeout=120
    )


def base_archive(tmp_path, name: str = "base.zip"):
    """(src tree, archive) built fresh under tmp_path."""
    src = tmp_path / "src"
    src.mkdir()
    make_base_tree(src)
    archive = tmp_path / name
    zip_tree(src, archive)
    return src, archive


def status_of(mountpoint) -> api.MountInfo:
    info = api.find_mount(os.path.realpath(mountpoint))
    assert info is not None, f"{mountpoint} is not registered"
    return info


def dirty_bytes(mountpoint) -> int:
    return status_of(mountpoint).dirty_bytes


def full_state(root) -> dict[str, tuple]:
    """tree_state plus uid/gid, ns-free: what a remount must reproduce exactly."""
    state = tree_state(root)
    for rel in state:
        st = os.lstat(os.path.join(root, rel))
        state[rel] = state[rel] + (st.st_uid, st.st_gid)
    return state


def zipfile_read(archive, name: str) -> bytes:
    with zipfile.ZipFile(archive) as zf:
        return zf.read(name)


def _tool(name: str) -> str | None:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed, but CI is set")
        return None
    return path


def check_archive(archive) -> None:
    """The archive passes unzip -tq, 7z t and zipfile.testzip (missing tools fail under CI)."""
    archive = os.fspath(archive)
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
    unzip = _tool("unzip")
    if unzip:
        out = subprocess.run([unzip, "-tq", archive], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"unzip -tq: {out.stdout}{out.stderr}"
    sevenz = _tool("7z") or _tool("7za")
    if sevenz:
        out = subprocess.run(
            [sevenz, "t", "-bd", archive], capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, f"7z t: {out.stdout}{out.stderr}"
        assert "Everything is Ok" in out.stdout, out.stdout


@contextlib.contextmanager
def fuse_zip_mounted(archive, mountpoint) -> Iterator[str]:
    """Mount with fuse-zip -r in the foreground (our own child), unmount and reap it after."""
    exe = _tool("fuse-zip")
    if exe is None:
        pytest.skip("fuse-zip is not installed")
    mp = os.path.realpath(mountpoint)
    os.makedirs(mp, exist_ok=True)
    proc = subprocess.Popen(
        [exe, "-f", "-r", os.fspath(archive), mp],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while mp not in registry.fuse_mounts():
            if proc.poll() is not None:
                out, err = proc.communicate(timeout=10)
                pytest.fail(f"fuse-zip exited with {proc.returncode}: {err.decode()}")
            if time.monotonic() > deadline:
                pytest.fail("fuse-zip did not mount within 60 s")
            time.sleep(0.05)
        yield mp
    finally:
        if mp in registry.fuse_mounts():
            res = subprocess.run(["fusermount3", "-u", mp], capture_output=True, timeout=60)
            if res.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, timeout=60)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def kinds_sizes_contents(root) -> dict[str, tuple]:
    """Names, types, sizes, link targets and content hashes (what fuse-zip must agree on)."""
    out = {}
    for rel, row in tree_state(root, mtime=False).items():
        kind = row[0]
        if stat.S_ISDIR(kind):
            out[rel] = (kind,)
        else:
            out[rel] = (kind,) + row[2:]
    return out


def remount_state(archive, mountpoint) -> dict[str, tuple]:
    """Mount read-only, capture full_state, unmount."""
    with mounted(archive, mountpoint, read_only=True):
        return full_state(mountpoint)


FUSECTL = "/sys/fs/fuse/connections"


def abort_fuse_connection(dev: int) -> bool:
    """Abort a hung FUSE connection through fusectl (mounted for the moment if needed).

    No subprocess here: a forked child would close our descriptors on exec, and closing a file
    of a hung FUSE mount blocks in the kernel for good.
    """
    mounted_here = False
    if not os.path.isdir(os.path.join(FUSECTL, str(dev))):
        mounted_here = _libc.mount(b"none", FUSECTL.encode(), b"fusectl", 0, None) == 0
    try:
        with open(os.path.join(FUSECTL, str(dev), "abort"), "w") as f:
            f.write("1")
        return True
    except OSError:
        return False
    finally:
        if mounted_here:
            _libc.umount2(FUSECTL.encode(), 0)


def guarded_sync(mountpoint, timeout: float = 90) -> dict:
    """api.sync, but a hang (daemon deadlocked in the kernel) fails the test instead of blocking
    it forever: the mount's FUSE connection is aborted so every waiting process gets free."""
    import threading

    dev = os.stat(mountpoint).st_dev
    result: dict = {}

    def work() -> None:
        try:
            result["value"] = api.sync(str(mountpoint))
        except BaseException as exc:  # handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        aborted = abort_fuse_connection(dev)
        pytest.fail(
            f"api.sync({mountpoint}) did not return within {timeout:.0f} s (daemon deadlocked); "
            f"FUSE connection {dev} {'aborted' if aborted else 'could not be aborted'}"
        )
    if "error" in result:
        raise result["error"]
    return result["value"]


@contextlib.contextmanager
def paused_sync(mountpoint, marker) -> Iterator[subprocess.Popen]:
    """``zipfuse sync`` of ``mountpoint``, once its commit has written the pause marker (the
    daemon was started with ZIPFUSE_TEST_PAUSE=STAGE:MARKER); killed if still running after."""
    syncer = subprocess.Popen([*ZIPFUSE_CMD, "sync", str(mountpoint)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(marker), "the commit never reached the pause point"
        yield syncer
    finally:
        if syncer.poll() is None:
            syncer.kill()
        syncer.wait()
