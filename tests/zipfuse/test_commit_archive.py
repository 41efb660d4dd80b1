"""Archives written by a commit: other readers accept them, metadata round-trips, full disks.

Every committed archive must pass ``unzip -tq``, ``7z t`` and ``zipfile.testzip`` (a missing tool
fails under $CI), fuse-zip must see the same tree as a zipfuse remount, and the remount must show
exactly what the mount showed before the unmount.
"""

from __future__ import annotations

import os
import random
import stat
import threading
import time
import zipfile

import pytest

from tests.conftest import mounted, tiny_tmpfs
from tests.zipfuse.writehelp import (
    base_archive,
    check_archive,
    dirty_bytes,
    full_state,
    fuse_zip_mounted,
    kinds_sizes_contents,
    remount_state,
    status_of,
    zipfile_read,
)
from zipfuse import api
from zipfuse.api import ZipfuseError

pytestmark = pytest.mark.usefixtures("fuse")


def words(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    vocab = [bytes(rng.choices(b"abcdefghijklmnop", k=rng.randint(2, 9))) for _ in range(300)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(vocab, k=4096)) + b"\n"
    return bytes(out[:size])


def populate(root) -> None:
    """Every kind of entry a commit must write, with explicit metadata."""
    root = os.fspath(root)
    j = lambda *p: os.path.join(root, *p)  # noqa: E731
    os.makedirs(j("deep", "a", "b", "c", "d"))
    os.makedirs(j("empty-700"), mode=0o700)
    os.makedirs(j("empty-755"))
    os.chmod(j("empty-700"), 0o700)
    with open(j("deep", "a", "b", "c", "d", "leaf.txt"), "wb") as f:
        f.write(b"leaf\n")
    with open(j("empty.bin"), "wb"):
        pass
    with open(j("small.txt"), "wb") as f:
        f.write(b"small text\n" * 3)
    with open(j("split.txt"), "wb") as f:  # above the writer's parallel-block threshold
        f.write(words(10 << 20, 1))
    with open(j("random.bin"), "wb") as f:  # incompressible: stored
        f.write(random.Random(2).randbytes(3 << 20))
    with open(j("ünïcödé name ✓.txt"), "wb") as f:
        f.write(b"unicode\n")
    with open(j("tool.sh"), "wb") as f:
        f.write(b"#!/bin/sh\necho ok\n")
    os.chmod(j("tool.sh"), 0o755)
    with open(j("setgid-file"), "wb") as f:
        f.write(b"x")
    os.chmod(j("setgid-file"), 0o2750)
    os.symlink("deep/a/b/c/d/leaf.txt", j("leaf-link"))
    os.symlink("../../nowhere", j("deep", "dangling"))
    os.symlink("deep", j("dir-link"))
    os.link(j("small.txt"), j("deep", "hard-small"))
    os.mkfifo(j("fifo"))
    os.chmod(j("fifo"), 0o640)
    os.chown(j("small.txt"), 1000, 100)
    os.chown(j("empty-700"), 4242, 4343)
    os.chown(j("leaf-link"), 7, 8, follow_symlinks=False)
    for i, name in enumerate(sorted(os.listdir(j("deep")))):
        os.utime(j("deep", name), (1_000_000_000, 1_111_111_111 + i), follow_symlinks=False)
    os.utime(j("empty-755"), ns=(0, 1_234_567_891_987_654_321))
    os.utime(j("random.bin"), (1, 315_532_801))  # 1980-01-01, the DOS epoch
    os.utime(j("small.txt"), (1, 4_102_444_800))  # 2100-01-01: beyond 32-bit time


def test_committed_archives_pass_every_reader(tmp_path):
    archive, mnt = tmp_path / "all.zip", tmp_path / "mnt"
    with mounted(archive, mnt):
        populate(mnt)
        api.sync(str(mnt))
        check_archive(archive)
        os.chmod(archive, 0o640)
        # a second commit: raw copies, metadata-only changes, new data, deletions
        with open(mnt / "split.txt", "r+b") as f:
            f.seek(5 << 20)
            f.write(b"CHANGED IN THE MIDDLE")
        os.chmod(mnt / "random.bin", 0o600)
        os.rename(mnt / "tool.sh", mnt / "deep" / "tool.sh")
        os.unlink(mnt / "empty.bin")
        (mnt / "later.txt").write_bytes(b"later\n")
        before = full_state(mnt)
    check_archive(archive)
    assert stat.S_IMODE(os.stat(archive).st_mode) == 0o640  # the archive's permissions are kept
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert len(names) == len(set(names)), "duplicate entries"
        assert zf.read("split.txt")[5 << 20 :][:21] == b"CHANGED IN THE MIDDLE"
        info = zf.getinfo("random.bin")
        assert info.compress_type == zipfile.ZIP_STORED
        assert zf.getinfo("split.txt").compress_type == zipfile.ZIP_DEFLATED
    with mounted(archive, mnt, read_only=True):
        after = full_state(mnt)
        zipfuse_view = kinds_sizes_contents(mnt)
        assert os.stat(mnt / "empty-755").st_mtime_ns // 100 == 1_234_567_891_987_654_321 // 100
        assert os.readlink(mnt / "deep" / "dangling") == "../../nowhere"
        assert stat.S_ISFIFO(os.lstat(mnt / "fifo").st_mode)
    with fuse_zip_mounted(archive, tmp_path / "fz") as fz:
        fusezip_view = kinds_sizes_contents(fz)
    assert fusezip_view == zipfuse_view, {
        k: (zipfuse_view.get(k), fusezip_view.get(k))
        for k in set(zipfuse_view) | set(fusezip_view)
        if zipfuse_view.get(k) != fusezip_view.get(k)
    }
    assert after == before, {
        k: (before.get(k), after.get(k)) for k in before if before.get(k) != after.get(k)
    }


def test_commit_of_an_info_zip_archive_keeps_its_entries_readable(tmp_path):
    src, archive = base_archive(tmp_path)
    with mounted(archive, tmp_path / "mnt"):
        mnt = tmp_path / "mnt"
        (mnt / "added").write_bytes(b"new")
        os.utime(mnt / "hello.txt", (1, 1_700_000_000))
        before = full_state(mnt)
    check_archive(archive)
    assert remount_state(archive, tmp_path / "mnt") == before
    with fuse_zip_mounted(archive, tmp_path / "fz") as fz:
        with open(os.path.join(fz, "added"), "rb") as f:
            assert f.read() == b"new"
        assert kinds_sizes_contents(fz) == {
            k: v for k, v in kinds_sizes_contents_of_state(before).items()
        }


def kinds_sizes_contents_of_state(state: dict) -> dict:
    out = {}
    for rel, row in state.items():
        kind = row[0]
        if stat.S_ISDIR(kind):
            out[rel] = (kind,)
        elif stat.S_ISLNK(kind):
            out[rel] = (kind, row[2])
        else:
            out[rel] = (kind, row[2], row[3])
    return out


# ------------------------------------------------------------------------------- full disk


def _fill(path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(b"\0" * size)


def test_sync_on_a_full_disk_fails_cleanly_and_retry_succeeds(tmp_path):
    disk = tmp_path / "disk"
    mnt = tmp_path / "mnt"
    payload = random.Random(5).randbytes(1200 * 1024)  # incompressible
    with tiny_tmpfs(disk):
        archive = disk / "a.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("old.txt", b"old content\n")
        _fill(disk / "filler", 1024 * 1024)
        old_bytes = archive.read_bytes()
        old_stat = os.stat(archive)
        with mounted(archive, mnt, spill_dir=str(tmp_path / "spill")):
            (mnt / "payload.bin").write_bytes(payload)
            with pytest.raises(ZipfuseError) as exc:
                api.sync(str(mnt))
            msg = str(exc.value)
            assert "space" in msg.lower(), msg
            assert "\n" not in msg
            assert archive.read_bytes() == old_bytes
            st = os.stat(archive)
            assert (st.st_ino, st.st_mtime_ns) == (old_stat.st_ino, old_stat.st_mtime_ns)
            # no temp file left (the writer's lock file is expected while mounted)
            assert sorted(os.listdir(disk)) == [".a.zip.zipfuse-lock", "a.zip", "filler"]
            # the mount is still up and serves the data
            assert status_of(mnt).state == "mounted"
            assert (mnt / "payload.bin").read_bytes() == payload
            assert (mnt / "old.txt").read_bytes() == b"old content\n"
            assert dirty_bytes(mnt) == len(payload)
            (mnt / "more.txt").write_bytes(b"written after the failure")
            os.unlink(disk / "filler")
            res = api.sync(str(mnt))
            assert res["ok"] and res["committed"]
            assert zipfile_read(archive, "payload.bin") == payload
            check_archive(archive)
            assert (mnt / "payload.bin").read_bytes() == payload
        assert zipfile_read(archive, "more.txt") == b"written after the failure"
        assert zipfile_read(archive, "old.txt") == b"old content\n"


def test_unmount_on_a_full_disk_fails_and_keeps_everything(tmp_path):
    disk = tmp_path / "disk"
    mnt = tmp_path / "mnt"
    spill_root = tmp_path / "spill"
    payload = random.Random(6).randbytes(1500 * 1024)
    with tiny_tmpfs(disk):
        archive = disk / "a.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("old.txt", b"old\n")
        _fill(disk / "filler", 1024 * 1024)
        old_bytes = archive.read_bytes()
        with mounted(archive, mnt, spill_dir=str(spill_root)):
            (mnt / "payload.bin").write_bytes(payload)
            with pytest.raises(ZipfuseError) as exc:
                api.unmount(str(mnt), timeout=120)
            msg = str(exc.value)
            assert "space" in msg.lower(), msg
            assert archive.read_bytes() == old_bytes
            assert sorted(os.listdir(disk)) == [".a.zip.zipfuse-lock", "a.zip", "filler"]
            # nothing is lost: the data is on disk in the spill area and the mount still serves it
            kept = [os.path.join(d, f) for d, _, fs in os.walk(spill_root) for f in fs]
            assert any(_read(p) == payload for p in kept), kept
            assert status_of(mnt).state == "mounted"
            assert (mnt / "payload.bin").read_bytes() == payload
            os.unlink(disk / "filler")
        # the context manager's unmount, after space was freed, commits
        assert zipfile_read(archive, "payload.bin") == payload
        assert zipfile_read(archive, "old.txt") == b"old\n"
        assert sorted(os.listdir(disk)) == ["a.zip"]
    # no spill file left behind (the archive's mount index, kept between mounts, is no spill)
    index = os.path.join(spill_root, "index")
    assert not [f for d, _, fs in os.walk(spill_root) for f in fs if d != index]


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------- memory


def _vmhwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@pytest.mark.slow
def test_copying_a_gigabyte_in_keeps_the_daemon_small(tmp_path):
    mnt = tmp_path / "mnt"
    archive = tmp_path / "big.zip"
    rng = random.Random(9)
    noise = rng.randbytes(64 << 20)
    text = words(8 << 20, 3)
    total = 0
    limit_kib = 200 * 1024
    with mounted(archive, mnt) as info:
        pid = info.pid
        i = 0
        while total < (1 << 30) + (16 << 20):
            i += 1
            d = mnt / f"d{i % 7}"
            d.mkdir(exist_ok=True)
            if i % 3 == 0:  # compressible: many copies of shifted text
                size = rng.choice([1 << 20, 8 << 20, 20 << 20])
                with open(d / f"t{i}.txt", "wb") as f:
                    left = size
                    while left:
                        off = rng.randrange(len(text) // 2)
                        chunk = text[off : off + min(left, len(text) - off)]
                        f.write(chunk)
                        left -= len(chunk)
            else:  # random: slices of one random buffer at different offsets
                size = rng.choice([4096, 300_000, 4 << 20, 48 << 20])
                off = rng.randrange(len(noise) - size)
                with open(d / f"r{i}.bin", "wb") as f:
                    f.write(noise[off : off + size])
            total += size
        pid_now = next(m.pid for m in api.status() if m.mountpoint == str(mnt))
        assert pid_now == pid
        before_unmount = _vmhwm_kib(pid)
        assert before_unmount is not None
        peak = [before_unmount]
        stop = threading.Event()

        def watch() -> None:  # VmHWM only grows: its last value is the peak of the commit
            while not stop.is_set():
                v = _vmhwm_kib(pid)
                if v is None:
                    return
                peak[0] = max(peak[0], v)
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            assert before_unmount < limit_kib, f"VmHWM {before_unmount} KiB before unmount"
        except AssertionError:
            stop.set()
            raise
    stop.set()
    watcher.join(10)
    print(f"daemon VmHWM: {before_unmount} KiB before unmount, {peak[0]} KiB at the end")
    assert peak[0] < limit_kib, f"VmHWM {peak[0]} KiB during the commit"
    with zipfile.ZipFile(archive) as zf:
        assert sum(i.file_size for i in zf.infolist()) == total
