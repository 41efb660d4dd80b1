"""Model-based random test: the same random operations on a mount and on a plain directory.

After every step both trees must look the same (types, modes, sizes, contents, link targets, and
mtimes wherever they were set explicitly and not changed since), and every operation must fail
with the same errno on both. Then the mount is committed (unmount), remounted, and the remount
must show exactly what the mount showed (mtimes included) and still match the plain directory.

``ZIPFUSE_MODEL_SEEDS=N`` runs N seeds instead of the default 10 (starting at
``ZIPFUSE_MODEL_FIRST_SEED``, default 0); ``ZIPFUSE_MODEL_STEPS`` changes the sequence length
(default 60).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat

import pytest

from tests.conftest import mounted, tree_state
from tests.zipfuse.writehelp import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    check_archive,
    full_state,
    guarded_sync,
    renameat2,
    zip_tree,
)

pytestmark = pytest.mark.usefixtures("fuse")

SEEDS = int(os.environ.get("ZIPFUSE_MODEL_SEEDS", "10"))
FIRST_SEED = int(os.environ.get("ZIPFUSE_MODEL_FIRST_SEED", "0"))
STEPS = int(os.environ.get("ZIPFUSE_MODEL_STEPS", "60"))
NAMES = ["a", "b", "c", "d", "e", "f", "g", "h"]
MODES = [0o644, 0o600, 0o755, 0o700, 0o444, 0o640, 0o000, 0o751]


def make_initial_tree(root, rng: random.Random) -> None:
    os.makedirs(root / "a" / "b")
    os.makedirs(root / "c")
    for rel in ("f", "a/g", "a/b/h", "c/d"):
        n = rng.choice([0, 10, 5000, 70000])
        (root / rel).write_bytes(rng.randbytes(n) if rng.random() < 0.5 else b"x" * n)
    os.symlink("f", root / "e")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames:
            os.utime(
                os.path.join(dirpath, name),
                ns=(1_500_000_000 * 10**9, rng.randrange(1_000_000_000, 1_700_000_000) * 10**9),
                follow_symlinks=False,
            )


class Runner:
    """Applies one random operation to the reference tree and to the mount, compares the errno."""

    def __init__(self, rng: random.Random, ref, mnt) -> None:
        self.rng = rng
        self.ref = str(ref)
        self.mnt = str(mnt)
        self.explicit: set[int] = set()  # reference inodes whose mtime was set by utime
        self.log: list[str] = []
        self.fds: list[tuple[int, int, str]] = []  # (reference fd, mount fd, path when opened)

    # ----------------------------------------------------------------- picking paths
    def _entries(self) -> tuple[list[str], list[str]]:
        dirs, others = [""], []
        for dirpath, dirnames, filenames in os.walk(self.ref):
            rel = os.path.relpath(dirpath, self.ref)
            rel = "" if rel == "." else rel
            for d in dirnames:
                dirs.append(os.path.join(rel, d))
            for f in filenames:
                others.append(os.path.join(rel, f))  # files, symlinks (also to dirs), fifos
        dirs.sort()
        others.sort()
        return dirs, others

    def any_path(self) -> str:
        dirs, others = self._entries()
        pool = dirs[1:] + others
        if not pool or self.rng.random() < 0.1:
            return self.new_path()
        return self.rng.choice(pool)

    def file_path(self) -> str:
        _, others = self._entries()
        if not others or self.rng.random() < 0.15:
            return self.new_path()
        return self.rng.choice(others)

    def dir_path(self) -> str:
        dirs, _ = self._entries()
        return self.rng.choice(dirs[1:] or dirs)

    def new_path(self) -> str:
        dirs, _ = self._entries()
        return os.path.join(self.rng.choice(dirs), self.rng.choice(NAMES))

    # ----------------------------------------------------------------- running
    def both(self, desc: str, fn) -> None:
        """Run fn(root) on the reference, then on the mount; errnos must agree."""
        self.log.append(desc)

        def attempt(root: str):
            try:
                fn(root)
            except OSError as exc:
                return exc.errno
            return None

        before = self._mtimes()
        want = attempt(self.ref)
        got = attempt(self.mnt)
        name = lambda e: errno.errorcode.get(e, e) if e else "ok"  # noqa: E731
        assert got == want, (
            f"{desc}: mount gave {name(got)}, plain directory gave {name(want)}\n" + self.history()
        )
        after = self._mtimes()
        for ino in list(self.explicit):
            if before.get(ino) != after.get(ino):
                self.explicit.discard(ino)

    def _mtimes(self) -> dict[int, int]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.ref):
            for name in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, name))
                out[st.st_ino] = st.st_mtime_ns
        return out

    def step(self) -> None:
        rng = self.rng
        op = rng.choices(
            [
                "write",
                "truncate",
                "mkdir",
                "rmdir",
                "unlink",
                "rename",
                "symlink",
                "chmod",
                "utime",
                "link",
                "sync",
                "open",
                "fdwrite",
                "fdread",
                "close",
            ],
            weights=[20, 6, 8, 5, 7, 12, 5, 6, 8, 4, 1, 4, 5, 3, 3],
        )[0]
        getattr(self, "op_" + op)()

    def op_write(self) -> None:
        rng = self.rng
        rel = self.file_path()
        flags = os.O_WRONLY | os.O_CREAT
        if rng.random() < 0.2:
            flags |= os.O_TRUNC
        append = rng.random() < 0.15
        if append:
            flags |= os.O_APPEND
        size = rng.choice([0, 1, 100, 4096, 5000, 65536, 200_000])
        data = rng.randbytes(size) if rng.random() < 0.5 else bytes([rng.randrange(256)]) * size
        offset = rng.choice([0, 1, 4095, 4096, 10_000, 100_000, 300_000])
        mode = rng.choice([0o644, 0o600, 0o755])

        def fn(root: str) -> None:
            fd = os.open(os.path.join(root, rel), flags, mode)
            try:
                if append:
                    os.write(fd, data)
                else:
                    os.pwrite(fd, data, offset)
            finally:
                os.close(fd)

        self.both(f"write {rel} flags={flags:#o} off={offset} len={size} append={append}", fn)

    def op_truncate(self) -> None:
        rel = self.file_path()
        size = self.rng.choice([0, 1, 3000, 4096, 70_000, 250_000])
        self.both(f"truncate {rel} {size}", lambda r: os.truncate(os.path.join(r, rel), size))

    def op_mkdir(self) -> None:
        rel = self.new_path()
        mode = self.rng.choice([0o755, 0o700, 0o750])
        self.both(f"mkdir {rel} {mode:#o}", lambda r: os.mkdir(os.path.join(r, rel), mode))

    def op_rmdir(self) -> None:
        rel = self.any_path() if self.rng.random() < 0.3 else self.dir_path()
        self.both(f"rmdir {rel}", lambda r: os.rmdir(os.path.join(r, rel)))

    def op_unlink(self) -> None:
        rel = self.any_path()
        self.both(f"unlink {rel}", lambda r: os.unlink(os.path.join(r, rel)))

    def op_rename(self) -> None:
        rng = self.rng
        src = self.any_path()
        dst = self.any_path() if rng.random() < 0.5 else self.new_path()
        flags = rng.choices([0, RENAME_NOREPLACE, RENAME_EXCHANGE], weights=[6, 2, 2])[0]

        def fn(root: str) -> None:
            a, b = os.path.join(root, src), os.path.join(root, dst)
            if flags:
                renameat2(a, b, flags)
            else:
                os.rename(a, b)

        self.both(f"rename {src} -> {dst} flags={flags}", fn)

    def op_symlink(self) -> None:
        rel = self.new_path()
        target = self.rng.choice(NAMES + ["a/b", "c/d", "missing", "a/g"])
        self.both(f"symlink {rel} -> {target}", lambda r: os.symlink(target, os.path.join(r, rel)))

    def op_chmod(self) -> None:
        rel = self.any_path()
        mode = self.rng.choice(MODES)
        self.both(f"chmod {rel} {mode:#o}", lambda r: os.chmod(os.path.join(r, rel), mode))

    def op_utime(self) -> None:
        rng = self.rng
        rel = self.any_path()
        mtime = rng.randrange(1_000_000_000, 2_000_000_000) * 10**9 + rng.randrange(10**9)
        atime = rng.randrange(1_000_000_000, 2_000_000_000) * 10**9
        self.both(
            f"utime {rel} {mtime}", lambda r: os.utime(os.path.join(r, rel), ns=(atime, mtime))
        )
        try:
            st = os.stat(os.path.join(self.ref, rel))
        except OSError:
            return
        if st.st_mtime_ns == mtime:
            self.explicit.add(st.st_ino)

    def op_link(self) -> None:
        src = self.file_path()
        dst = self.new_path()
        self.both(
            f"link {src} -> {dst}",
            lambda r: os.link(os.path.join(r, src), os.path.join(r, dst), follow_symlinks=False),
        )

    def op_sync(self) -> None:
        self.log.append(f"sync ({len(self.fds)} files open)")
        res = guarded_sync(self.mnt, timeout=60)
        assert res["ok"]

    def op_open(self) -> None:
        """Keep a descriptor open across later operations (unlink, rename, commit...)."""
        rel = self.file_path()
        if len(self.fds) >= 6:
            return self.op_close()
        flags = os.O_RDWR | (os.O_CREAT if self.rng.random() < 0.3 else 0)
        self.log.append(f"open {rel} flags={flags:#o}")
        fds = []
        for root in (self.ref, self.mnt):
            try:
                fds.append(os.open(os.path.join(root, rel), flags, 0o644))
            except OSError as exc:
                fds.append(-exc.errno)
        if (fds[0] < 0) != (fds[1] < 0) or min(fds) < 0 and fds[0] != fds[1]:
            for fd in fds:
                if fd >= 0:
                    os.close(fd)
            pytest.fail(f"open {rel}: plain gave {fds[0]}, mount gave {fds[1]}\n" + self.history())
        if fds[0] >= 0:
            self.fds.append((fds[0], fds[1], rel))

    def _pick_fd(self):
        return self.rng.choice(self.fds) if self.fds else None

    def op_fdwrite(self) -> None:
        pair = self._pick_fd()
        if pair is None:
            return self.op_open()
        size = self.rng.choice([1, 512, 4096, 70_000])
        offset = self.rng.choice([0, 100, 4096, 50_000, 123_457])
        data = self.rng.randbytes(size)
        self.log.append(f"pwrite fd({pair[2]}) off={offset} len={size}")
        before = self._mtimes()
        assert os.pwrite(pair[0], data, offset) == size
        assert os.pwrite(pair[1], data, offset) == size
        after = self._mtimes()
        for ino in list(self.explicit):
            if before.get(ino) != after.get(ino):
                self.explicit.discard(ino)
        if self.rng.random() < 0.2:
            os.ftruncate(pair[0], offset)
            os.ftruncate(pair[1], offset)
            self.log.append(f"ftruncate fd({pair[2]}) {offset}")
            for ino in list(self.explicit):
                if after.get(ino) != self._mtimes().get(ino):
                    self.explicit.discard(ino)

    def op_fdread(self) -> None:
        pair = self._pick_fd()
        if pair is None:
            return
        self.log.append(f"pread+fstat fd({pair[2]})")
        a, b = os.fstat(pair[0]), os.fstat(pair[1])
        assert (a.st_size, a.st_nlink, stat.S_IMODE(a.st_mode)) == (
            b.st_size,
            b.st_nlink,
            stat.S_IMODE(b.st_mode),
        ), f"fstat of fd opened at {pair[2]}\n" + self.history()
        assert os.pread(pair[1], a.st_size + 10, 0) == os.pread(pair[0], a.st_size + 10, 0), (
            f"content through fd opened at {pair[2]}\n" + self.history()
        )

    def op_close(self) -> None:
        if not self.fds:
            return
        pair = self.fds.pop(self.rng.randrange(len(self.fds)))
        self.log.append(f"close fd({pair[2]})")
        try:
            self.op_fdread_pair(pair)
        finally:
            os.close(pair[0])
            try:
                os.close(pair[1])
            except OSError as exc:
                pytest.fail(f"close of fd opened at {pair[2]} failed: {exc!r}\n" + self.history())

    def op_fdread_pair(self, pair) -> None:
        a = os.pread(pair[0], 1 << 22, 0)
        b = os.pread(pair[1], 1 << 22, 0)
        assert a == b, f"content through fd opened at {pair[2]}\n" + self.history()

    def close_all(self, *, quiet: bool = False) -> None:
        """Close every descriptor (the unmount must not find files open with cached writes).

        ``quiet``: a failure is already on its way; only release the descriptors.
        """
        if not quiet:
            while self.fds:
                self.op_close()
        while self.fds:
            a, b, _ = self.fds.pop()
            for fd in (a, b):
                try:
                    os.close(fd)
                except OSError:
                    pass

    # ----------------------------------------------------------------- comparing
    def history(self) -> str:
        return "operations so far:\n  " + "\n  ".join(self.log)

    def compare(self) -> None:
        got = tree_state(self.mnt, mtime=False)
        want = tree_state(self.ref, mtime=False)
        if got != want:
            diff = {
                k: (got.get(k), want.get(k))
                for k in sorted(set(got) | set(want))
                if got.get(k) != want.get(k)
            }
            pytest.fail(
                f"mount differs from the plain directory after {self.log[-1]}: {diff}\n"
                + self.history()
            )
        got_links, want_links = _link_groups(self.mnt), _link_groups(self.ref)
        assert got_links == want_links, (
            f"hard-link groups differ after {self.log[-1]}: mount {got_links}, "
            f"plain {want_links}\n" + self.history()
        )
        for rel in want:
            rst = os.lstat(os.path.join(self.ref, rel))
            if rst.st_ino in self.explicit and not stat.S_ISLNK(rst.st_mode):
                mst = os.lstat(os.path.join(self.mnt, rel))
                assert int(mst.st_mtime) == int(rst.st_mtime), (
                    f"mtime of {rel} after {self.log[-1]}: mount {mst.st_mtime_ns}, "
                    f"plain {rst.st_mtime_ns}"
                )


def _link_groups(root: str) -> list[list[str]]:
    """Paths that share one inode (hard links), as sorted groups."""
    by_ino: dict[int, list[str]] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            by_ino.setdefault(os.lstat(path).st_ino, []).append(os.path.relpath(path, root))
    return sorted(sorted(g) for g in by_ino.values() if len(g) > 1)


def _split_hard_links(root: str) -> None:
    """Turn every extra name of a hard-linked file into an independent copy (same metadata)."""
    for group in _link_groups(root):
        for rel in group[1:]:
            path = os.path.join(root, rel)
            parent = os.stat(os.path.dirname(path))
            tmp = path + ".split"
            shutil.copy2(path, tmp, follow_symlinks=False)
            os.replace(tmp, path)
            # the split is bookkeeping, not a change the parent directory should show
            os.utime(os.path.dirname(path), ns=(parent.st_atime_ns, parent.st_mtime_ns))


def _diff(a: dict, b: dict) -> dict:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + SEEDS))
def test_random_operations_match_a_plain_directory(tmp_path, seed):
    rng = random.Random(seed)
    src, ref, mnt = tmp_path / "src", tmp_path / "ref", tmp_path / "mnt"
    src.mkdir()
    make_initial_tree(src, rng)
    archive = tmp_path / "model.zip"
    zip_tree(src, archive)
    shutil.copytree(src, ref, symlinks=True)
    runner = Runner(rng, ref, mnt)
    with mounted(archive, mnt):
        runner.compare()
        try:
            for _ in range(STEPS):
                runner.step()
                runner.compare()
        except BaseException:
            runner.close_all(quiet=True)
            raise
        runner.close_all()
        runner.compare()
        before = full_state(mnt)
    check_archive(archive)
    with mounted(archive, mnt):
        after = full_state(mnt)
        assert tree_state(mnt, mtime=False) == tree_state(ref, mtime=False), runner.log
        assert after == before, (
            f"remount differs (now, before unmount): {_diff(after, before)}\n" + runner.history()
        )
        _split_hard_links(str(ref))  # the archive stores every name of a file as its own entry
        runner.compare()
        # the remount keeps working: one more round of random operations
        try:
            for _ in range(10):
                runner.step()
                runner.compare()
        except BaseException:
            runner.close_all(quiet=True)
            raise
        runner.close_all()
        runner.compare()
