"""Read-only mounts of archives made by Info-ZIP: the tree, bytes and metadata match the source."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import threading

import pytest

from tests.conftest import ZIPFUSE_CMD, mounted, tree_state
from zipfuse import api, registry

pytestmark = pytest.mark.usefixtures("fuse")

MTIME = 1_600_000_000


def make_tree(root) -> None:
    rng = random.Random(7)
    os.makedirs(root / "pkg" / "sub")
    os.makedirs(root / "empty")
    os.makedirs(root / "bin")
    (root / "pkg" / "__init__.py").write_text("VALUE = 42\n")
    (root / "pkg" / "sub" / "mod.py").write_text("def f():\n    return 'from mod'\n")
    (root / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    os.chmod(root / "bin" / "tool", 0o755)
    (root / "readonly.txt").write_text("ro\n")
    os.chmod(root / "readonly.txt", 0o444)
    (root / "ünïcode name.txt").write_text("unicode\n")
    (root / "empty.bin").write_bytes(b"")
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    big = b" ".join(rng.choice(words) for _ in range(4_000_000))  # ~20 MB, compressible
    (root / "big.txt").write_bytes(big)
    (root / "random.bin").write_bytes(rng.randbytes(3 << 20))
    os.symlink("pkg/__init__.py", root / "link")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("../bin", root / "pkg" / "bindir")
    src = root / "add.c"
    src.write_text("int add(int a, int b) { return a + b; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(root / "libadd.so"), str(src)], check=True)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            os.utime(path, (MTIME, MTIME + hash(name) % 1000), follow_symlinks=False)


@pytest.fixture(scope="module")
def infozip_archive(tmp_path_factory):
    base = tmp_path_factory.mktemp("infozip")
    src = base / "src"
    src.mkdir()
    make_tree(src)
    archive = base / "tree.zip"
    subprocess.run(["zip", "-q", "-r", "-y", str(archive), "."], cwd=src, check=True)
    return src, archive


def test_tree_and_metadata_match_source(infozip_archive, tmp_path):
    src, archive = infozip_archive
    with mounted(archive, tmp_path / "mnt", read_only=True) as info:
        mnt = tmp_path / "mnt"
        assert tree_state(mnt) == tree_state(src)
        st = os.stat(mnt / "bin" / "tool")
        assert st.st_uid == os.stat(src / "bin" / "tool").st_uid
        assert os.readlink(mnt / "dangling") == "does/not/exist"
        assert os.statvfs(mnt).f_files > 0
        assert info.read_only
    assert not registry.alive(
        {"pid": info.pid, "start_time": registry.process_start_time(info.pid)}
    )
    assert str(tmp_path / "mnt") not in registry.fuse_mounts()


def test_random_preads_in_compressed_file(infozip_archive, tmp_path):
    src, archive = infozip_archive
    want = (src / "big.txt").read_bytes()
    rng = random.Random(1)
    with mounted(archive, tmp_path / "mnt", read_only=True):
        fd = os.open(tmp_path / "mnt" / "big.txt", os.O_RDONLY)
        try:
            for _ in range(300):
                off = rng.randrange(len(want))
                size = rng.choice([1, 4096, 65536, 300_000])
                assert os.pread(fd, size, off) == want[off : off + size]
        finally:
            os.close(fd)
        with open(tmp_path / "mnt" / "random.bin", "rb") as f:
            f.seek(2 << 20)
            assert f.read(4096) == (src / "random.bin").read_bytes()[2 << 20 : (2 << 20) + 4096]


def test_python_import_and_shared_library(infozip_archive, tmp_path):
    _, archive = infozip_archive
    with mounted(archive, tmp_path / "mnt", read_only=True):
        mnt = str(tmp_path / "mnt")
        code = (
            f"import sys, ctypes; sys.path.insert(0, {mnt!r}); import pkg, pkg.sub.mod; "
            f"lib = ctypes.CDLL({mnt!r} + '/libadd.so'); "
            "print(pkg.VALUE, pkg.sub.mod.f(), lib.add(2, 3))"
        )
        out = subprocess.run(
            [sys.executable, "-B", "-c", code], capture_output=True, text=True, timeout=60
        )
        assert out.stdout.split() == ["42", "from", "mod", "5"], out.stderr
        out = subprocess.run([os.path.join(mnt, "bin", "tool")], capture_output=True, text=True)
        assert out.stdout == "tool\n"


def test_two_concurrent_readers(infozip_archive, tmp_path):
    src, archive = infozip_archive
    results: dict[str, bool] = {}

    def read(name: str) -> None:
        with open(tmp_path / "mnt" / name, "rb") as f:
            results[name] = f.read() == (src / name).read_bytes()

    with mounted(archive, tmp_path / "mnt", read_only=True):
        threads = [threading.Thread(target=read, args=(n,)) for n in ("big.txt", "random.bin")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert results == {"big.txt": True, "random.bin": True}


def test_lookups_and_small_reads_go_on_while_big_reads_wait_for_threads(infozip_archive, tmp_path):
    """big.txt and random.bin are read on worker threads (their READ handlers wait); meanwhile
    other requests are answered on the trio thread without waiting. All bytes must match."""
    src, archive = infozip_archive
    mnt = tmp_path / "mnt"
    big = {n: (src / n).read_bytes() for n in ("big.txt", "random.bin")}
    small = {n: (src / n).read_bytes() for n in ("pkg/__init__.py", "pkg/sub/mod.py", "bin/tool")}
    errors: list[str] = []

    def read_big(name: str) -> None:
        for _ in range(3):
            with open(mnt / name, "rb", buffering=0) as f:
                f.seek(len(big[name]) // 3)  # not from the start: no single-shot decode
                if f.read() != big[name][len(big[name]) // 3 :]:
                    errors.append(name)

    with mounted(archive, mnt, read_only=True):
        threads = [threading.Thread(target=read_big, args=(n,)) for n in big]
        for t in threads:
            t.start()
        rounds = 0
        while any(t.is_alive() for t in threads) or rounds < 20:
            for name, data in small.items():
                assert (mnt / name).read_bytes() == data
                assert os.lstat(mnt / name).st_size == len(data)
            assert sorted(os.listdir(mnt / "pkg")) == ["__init__.py", "bindir", "sub"]
            rounds += 1
        for t in threads:
            t.join(120)
    assert errors == []


def test_read_only_mount_refuses_writes(infozip_archive, tmp_path):
    _, archive = infozip_archive
    before = os.stat(archive)
    with mounted(archive, tmp_path / "mnt", read_only=True):
        mnt = tmp_path / "mnt"
        for action in (
            lambda: (mnt / "new").write_text("x"),
            lambda: os.mkdir(mnt / "newdir"),
            lambda: os.unlink(mnt / "readonly.txt"),
            lambda: os.chmod(mnt / "bin" / "tool", 0o700),
        ):
            with pytest.raises(OSError) as exc:
                action()
            assert exc.value.errno == 30  # EROFS
    after = os.stat(archive)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_dead_daemon_is_reported_and_detached(infozip_archive, tmp_path):
    _, archive = infozip_archive
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    info = api.mount(str(archive), str(mnt), read_only=True)
    try:
        os.kill(info.pid, 9)
        rec = {"pid": info.pid, "start_time": registry.process_start_time(info.pid)}
        for _ in range(200):
            if not registry.alive(rec):
                break
            import time

            time.sleep(0.05)
        states = {m.mountpoint: m.state for m in api.status()}
        assert states.get(str(mnt)) == "dead"
        proc = subprocess.run(
            [*ZIPFUSE_CMD, "unmount", str(mnt)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode != 0
        assert "died" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert str(mnt) not in registry.fuse_mounts()
    finally:
        if str(mnt) in registry.fuse_mounts():
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], timeout=30)


def test_sfx_and_copy_of_archive_with_prefix(infozip_archive, tmp_path):
    src, archive = infozip_archive
    sfx = tmp_path / "sfx.zip"
    with open(sfx, "wb") as out:
        out.write(b"#!/bin/sh\necho stub\nexit 0\n" + b"\0" * 1000)
        with open(archive, "rb") as f:
            shutil.copyfileobj(f, out)
    with mounted(sfx, tmp_path / "mnt", read_only=True):
        assert (tmp_path / "mnt" / "pkg" / "__init__.py").read_text() == "VALUE = 42\n"
