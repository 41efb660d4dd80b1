"""Shared fixtures: real FUSE mounts with guaranteed cleanup, and tree comparison helpers.

FUSE tests never skip in CI: if /dev/fuse or fusermount3 is missing while $CI is set, they fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from zipfuse import api, registry

# Our command, never taken from PATH: the README's setup puts nothing there.
ZIPFUSE_CMD = [sys.executable, "-m", "zipfuse"]
MOUNT_TIMEOUT = 60
UNMOUNT_TIMEOUT = 120


def _fuse_problem() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


@pytest.fixture(scope="session")
def fuse() -> None:
    """Depend on this fixture in every test that mounts."""
    problem = _fuse_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"FUSE tests cannot run in CI: {problem}")
        pytest.skip(problem)


@pytest.fixture(autouse=True)
def _private_runtime(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Each test session gets its own registry and spill root (no clash with a user's mounts)."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("ZIPFUSE_RUNTIME_DIR", str(base / "runtime"))
    monkeypatch.setenv("TMPDIR", str(base / "tmp"))
    os.makedirs(base / "tmp", exist_ok=True)


def force_cleanup(mountpoint: str) -> None:
    """Last resort: detach the mount and kill the daemon we started (by its registered pid)."""
    mp = os.path.realpath(mountpoint)
    rec = next((r for r in registry.records() if r["mountpoint"] == mp), None)
    if mp in registry.fuse_mounts():
        subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, timeout=30)
    if rec is not None and registry.alive(rec):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(rec["pid"]), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while registry.alive(rec) and time.monotonic() < deadline:
            time.sleep(0.05)
    if rec is not None:
        registry.unregister(int(rec["pid"]))


@contextlib.contextmanager
def mounted(archive, mountpoint, **kwargs) -> Iterator[api.MountInfo]:
    """Mount for the duration of the block; unmount (commit) and wait for the daemon after."""
    os.makedirs(mountpoint, exist_ok=True)
    info = api.mount(str(archive), str(mountpoint), timeout=MOUNT_TIMEOUT, **kwargs)
    try:
        yield info
    except BaseException:
        with contextlib.suppress(Exception):
            api.unmount(str(mountpoint), timeout=UNMOUNT_TIMEOUT)
        raise
    else:
        api.unmount(str(mountpoint), timeout=UNMOUNT_TIMEOUT)
    finally:
        force_cleanup(str(mountpoint))
    assert os.path.realpath(mountpoint) not in registry.fuse_mounts()


def tree_state(root, *, content: bool = True, mtime: bool = True) -> dict[str, tuple]:
    """Everything a user can see of a tree: type, mode, size, link target, mtime, content hash."""
    out: dict[str, tuple] = {}
    root = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            row: tuple = (kind, stat.S_IMODE(st.st_mode))
            if stat.S_ISLNK(st.st_mode):
                row += (os.readlink(path),)
            elif stat.S_ISREG(st.st_mode):
                row += (st.st_size,)
                if content:
                    with open(path, "rb") as f:
                        row += (hashlib.sha256(f.read()).hexdigest(),)
            if mtime and not stat.S_ISLNK(st.st_mode):
                row += (int(st.st_mtime),)
            out[rel] = row
    return out


@contextlib.contextmanager
def tiny_tmpfs(path, size: str = "2m", options: str = "") -> Iterator:
    """A small tmpfs at ``path`` for the block (a disk that fills up); CI fails without one."""
    os.makedirs(path, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}" + (f",{options}" if options else ""),
         "tmpfs", str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if res.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs: {res.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield path
    finally:
        r = subprocess.run(["umount", str(path)], capture_output=True, timeout=60)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60)
