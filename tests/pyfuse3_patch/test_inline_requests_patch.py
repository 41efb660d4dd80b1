"""The pyfuse3 inline-requests patch (patches/README.md): requests whose handler needs no waiting
are answered without trips through trio's event loop; handlers that wait still work as before.

Each test mounts tests/pyfuse3_patch/kcfs.py for real. kcfs counts trio task steps with an
instrument, so "no trip through the event loop" is a count, not a timing. Without the patch the
step-count test skips (CI builds the patch, so there it must pass); the tests of waiting handlers
run on any pyfuse3, as the control that the patch keeps stock behaviour.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pyfuse3
import pytest

from tests.pyfuse3_patch.test_kernel_cache_patch import kcfs, read

# The patch adds no public flag; its request loop's helper _pyfuse3._resume is the mark.
PATCHED = callable(getattr(getattr(pyfuse3, "_pyfuse3", None), "_resume", None))


def _needs_patch() -> None:
    if not PATCHED:
        if os.environ.get("CI"):
            pytest.fail("pyfuse3 lacks the inline-requests patch in CI: scripts/setup.sh builds it")
        pytest.skip("pyfuse3 lacks the inline-requests patch (run scripts/setup.sh)")


def test_a_request_that_needs_no_waiting_costs_one_task_step(tmp_path: Path, fuse: None) -> None:
    """Stock pyfuse3 spends two or three task steps per request (read lock, fd wait, the next
    reader task); patched, the only step is the wake-up when the request arrives."""
    _needs_patch()
    with kcfs(tmp_path) as fs:  # stock open/opendir: every listing sends requests
        d = fs.mnt / "d0001"
        os.listdir(d)
        before = fs.stats()
        for _ in range(200):
            assert sorted(os.listdir(d)) == ["f0000", "f0001", "f0002"]
        after = fs.stats_after("releasedir", before["counts"]["releasedir"] + 200)
    requests = sum(after["counts"].values()) - sum(before["counts"].values())
    steps = after["task_steps"] - before["task_steps"]
    assert requests >= 600, (before, after)  # OPENDIR, READDIR(PLUS) and RELEASEDIR each time
    assert steps <= requests + 20, (steps, requests)  # + the steps that dump the stats


def test_a_waiting_handler_does_not_hold_up_other_requests(tmp_path: Path, fuse: None) -> None:
    """READ of ``slow`` waits until a READ of ``go`` was served: another task must read the
    request stream meanwhile, and the waiting handler's reply must arrive intact."""
    with kcfs(tmp_path) as fs:
        got: list[bytes] = []
        waiter = threading.Thread(target=lambda: got.append(read(fs.mnt / "slow")))
        waiter.start()
        for _ in range(20):  # served while READ(slow) waits
            assert read(fs.mnt / "existing") == b"0123456789" * 10
            assert sorted(os.listdir(fs.mnt / "d0002")) == ["f0000", "f0001", "f0002"]
        assert waiter.is_alive()  # still waiting: nothing read ``go`` yet
        assert read(fs.mnt / "go") == b"go"
        waiter.join(timeout=30)
        assert not waiter.is_alive()
        assert got == [b"slow"]
        st = fs.stats()
    assert st["counts"]["read"] >= 3


def test_a_lock_held_by_one_waiting_handler_passes_to_another(tmp_path: Path, fuse: None) -> None:
    """READ(slow) holds a trio.Lock while it waits, READ(queue) waits for the lock: releasing it
    hands it to a suspended worker task, where trio inspects the task's root coroutine (a
    Cython coroutine there fails: it has no cr_suspended). Both replies must arrive."""
    with kcfs(tmp_path) as fs:
        got: dict[str, bytes] = {}

        def reader(name: str) -> threading.Thread:
            t = threading.Thread(target=lambda: got.__setitem__(name, read(fs.mnt / name)))
            t.start()
            return t

        n_read = fs.count("read")
        slow = reader("slow")
        fs.stats_after("read", n_read + 1)  # READ(slow) arrived: its handler holds the lock
        queue = reader("queue")
        fs.stats_after("read", n_read + 2)  # READ(queue) arrived: it waits for the lock
        assert read(fs.mnt / "go") == b"go"
        slow.join(timeout=30)
        queue.join(timeout=30)
        assert got == {"slow": b"slow", "queue": b"queu"}
        assert fs.count("read") == n_read + 3


def test_a_handler_that_fails_after_waiting_returns_its_errno(tmp_path: Path, fuse: None) -> None:
    with kcfs(tmp_path) as fs:
        for _ in range(3):  # the kernel caches nothing of a failed read: three READs
            with pytest.raises(OSError) as exc:
                read(fs.mnt / "fails")
            assert exc.value.errno == errno.EIO
        assert read(fs.mnt / "existing") == b"0123456789" * 10  # the loop goes on
        assert fs.count("read") >= 4
