"""The overlay without FUSE: every mutation through its one protocol, checked after each step.

The invariant checker verifies lookup/open counts, names and link counts, that every dirty node
has its spill file (and every spill file a dirty node, a file of the ready pool or one queued for
deletion), and that the journal replays onto the archive's tree to the same tree. A paused commit
is raced by every kind of mutation; afterwards the archive holds every change.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import threading
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import trio

from tests.zipfuse.writehelp import BASE_MTIME, base_archive, check_archive
from zipfuse import commit, journal, recovery
from zipfuse.journal import Journal
from zipfuse.namespace import RENAME_EXCHANGE, RENAME_NOREPLACE, Namespace, Node
from zipfuse.overlay import AttrChange, Overlay
from zipfuse.spill import SpillArea
from zipfuse.zipformat import read_central_directory

UID, GID = os.getuid(), os.getgid()


def open_overlay(archive: Path, spill_root: Path) -> Overlay:
    """What the daemon does at mount time, minus FUSE."""
    fd = os.open(archive, os.O_RDONLY) if archive.exists() else None
    cd = read_central_directory(fd) if fd is not None else None
    spill = SpillArea(str(spill_root), str(archive))
    base = journal.fingerprint(str(archive))
    jr = Journal(spill.path, str(archive))
    jr.start(base, fresh=True)
    ns = Namespace.from_archive(cd, UID, GID, time.time_ns())
    return Overlay(
        ns, spill, archive=str(archive), archive_fd=fd, cd=cd, read_only=False, journal=jr,
        base=base,
    )  # fmt: skip


def shape(ns: Namespace, *, data: bool = True) -> dict[str, tuple]:
    """What a user sees of a tree (paths, kinds, modes, owners, sizes, which spill file holds
    the data). Not which entry: a hard link committed is two entries, reloaded as two files;
    not symlink targets, which a tree loaded from an archive reads only when asked."""
    out = {}
    for path, node in ns.walk():
        item: tuple = (stat.S_IFMT(node.mode), stat.S_IMODE(node.mode), node.uid, node.gid)
        if not node.is_dir:
            # an archive keeps times at 100 ns (NTFS extra field)
            item += (node.size, node.mtime_ns // 100, node.rdev)
            if data:
                item += (node.spill,)
        out[path] = item
    return out


async def contents(ov: Overlay) -> dict[str, tuple]:
    """shape() plus each file's bytes (hashed) and symlink's target, read through the overlay."""
    out = shape(ov.ns, data=False)
    for path, node in ov.ns.walk():
        if stat.S_ISREG(node.mode):
            body = await ov.read(node, 0, node.size + 1)
            assert len(body) == node.size, path
            out[path] += (hashlib.sha256(body).hexdigest(),)
            if node.opens <= 0:
                ov.data.close(node)
        elif stat.S_ISLNK(node.mode):
            out[path] += (await ov.readlink(node),)
    return out


async def check_invariants(ov: Overlay) -> None:
    ns, data = ov.ns, ov.data
    while data._emptying or data._refilling:  # let background spill work settle
        await trio.sleep(0.005)
    names: dict[int, int] = {}
    subdirs: dict[int, int] = {}
    for _path, node in ns.walk():
        names[node.ino] = names.get(node.ino, 0) + 1
        if node.is_dir:
            subdirs[node.parent.ino] = subdirs.get(node.parent.ino, 0) + 1
    for ino, node in ns.nodes.items():
        assert node.ino == ino
        assert node.lookups >= 0 and node.opens >= 0, node
        assert (node.spill is not None) == (ino in data.dirty), ino
        if node.spill is not None:
            assert os.path.getsize(node.spill) == node.size, ino
        if node.parent is not None and node is not ns.root:
            assert node.parent.children.get(node.name) is node
        if node.is_dir and ino in names or node is ns.root:
            assert node.nlink == 2 + subdirs.get(ino, 0), ino
        elif ino in names:
            assert node.nlink == names[ino], ino
        else:  # no name left: only a kernel reference or an open handle keeps it
            assert node.nlink == 0 and (node.lookups > 0 or node.opens > 0), ino
    for ino in data.dirty:
        assert ino in ns.nodes
    on_disk = {
        os.path.join(ov.spill.path, f)
        for f in os.listdir(ov.spill.path)
        if not journal.is_journal_file(f) and f != journal.STATE
    }
    known = {n.spill for n in data.dirty.values()} | {p for p, _ in data._pool}
    assert on_disk == known | (on_disk & set(data._trash))
    check_plans(ov)
    if ov.cd is not None:  # worked out by the parse or the append, not by a pass over spans
        assert ov.cd.used_bytes() == sum(ov.cd.spans())
    # the journal replayed onto the archive's tree gives the same tree
    if not ov.unlogged:
        replayed = Namespace.from_archive(ov.cd, UID, GID, time.time_ns())
        journal.replay(replayed, journal.read_records(ov.spill.path), ov.spill.path)
        assert shape(replayed) == shape(ov.ns)


def check_plans(ov: Overlay) -> None:
    """Where a commit may plan from the touched nodes alone, that plan and the whole-tree plan
    give the same archive: the same names, and the same nodes written anew."""
    ns, cd = ov.ns, ov.cd
    if cd is None or ns.linked or not ns.unambiguous:
        return
    changes = commit.plan_changes(ns, cd, ns.touched, ns.moved)
    assert len(set(changes.kept)) == len(changes.kept)
    assert not set(changes.kept) & set(changes.dropped)
    assert len(changes.kept) + len(changes.dropped) == len(cd)
    kept = {e.name: None for e in cd.entries_at(changes.kept)}
    written = {i.meta.name: (i.node.ino, i.kind) for i in changes.items if i.meta is not None}
    whole = {
        i.meta.name if i.meta is not None else i.entry.name: (
            None if i.kind == commit.RAW else (i.node.ino, i.kind)
        )
        for i in commit.plan(ns)
    }
    assert len(kept) == len(changes.kept) and len(written) == len(changes.items)
    assert kept | written == whole


async def new_file(ov: Overlay, parent: Node, name: bytes, body: bytes) -> Node:
    node = await ov.create(parent.ino, name, 0o644, UID, GID)
    if body:
        await ov.write(node, 0, body)
    await ov.release(node)
    return node


def no_op(*_args) -> None:
    pass


async def commit_all(ov: Overlay) -> dict[str, tuple]:
    """What the live tree holds; then commit it and check the invariants."""
    seen = await contents(ov)
    await ov.commit(no_op, no_op)
    await check_invariants(ov)
    return seen


async def reloaded_contents(archive: Path, tmp_path: Path) -> dict[str, tuple]:
    """contents() of a fresh overlay on the archive as committed."""
    again = open_overlay(archive, tmp_path / "spill2")
    try:
        return await contents(again)
    finally:
        await again.close(destroy_spill=True)


async def random_step(
    ov: Overlay, rng: random.Random, step: int, *, commits: bool = True, links: bool = True
) -> None:
    """One random mutation; an OSError is the answer a program would get and is fine."""
    entries = list(ov.ns.walk())
    dirs = [ov.ns.root] + [n for _, n in entries if n.is_dir]
    files = [n for _, n in entries if stat.S_ISREG(n.mode)]
    any_path = [(n.parent, n.name) for _, n in entries if n.parent is not None]
    name = rng.choice([b"a", b"b", b"c", b"d%d" % step])
    op = rng.choice(
        ["file", "file", "mkdir", "symlink", "fifo", "write", "write", "truncate", "chmod",
         "utime", "unlink", "rmdir", "rename", "rename", "otrunc"]
        + (["commit"] if commits else [])
        + (["link"] if links else [])
    )  # fmt: skip
    try:
        if op == "file":
            await new_file(ov, rng.choice(dirs), name, os.urandom(rng.randrange(0, 5000)))
        elif op == "mkdir":
            await ov.make(rng.choice(dirs).ino, name, stat.S_IFDIR | 0o755, UID, GID)
        elif op == "symlink":
            await ov.make(rng.choice(dirs).ino, name, stat.S_IFLNK | 0o777, UID, GID, target=b"x")
        elif op == "fifo":
            await ov.make(rng.choice(dirs).ino, name, stat.S_IFIFO | 0o600, UID, GID)
        elif op in ("write", "truncate", "chmod", "utime", "otrunc") and files:
            node = rng.choice(files)
            if op == "write":
                await ov.open(node, os.O_RDWR)
                await ov.write(node, rng.randrange(0, 3000), os.urandom(rng.randrange(1, 3000)))
                await ov.release(node)
            elif op == "truncate":
                await ov.setattr(node, AttrChange(size=rng.randrange(0, 4000)))
            elif op == "chmod":
                await ov.setattr(node, AttrChange(mode=rng.choice([0o600, 0o755, 0o444])))
            elif op == "utime":
                t = rng.randrange(10**9, 2 * 10**9) * 10**9
                await ov.setattr(node, AttrChange(atime_ns=t, mtime_ns=t))
            else:
                await ov.open(node, os.O_WRONLY | os.O_TRUNC)
                await ov.release(node)
        elif op == "link" and files:
            await ov.link(rng.choice(files).ino, rng.choice(dirs).ino, name)
        elif op == "unlink" and any_path:
            parent, nm = rng.choice(any_path)
            await ov.unlink(parent.ino, nm)
        elif op == "rmdir" and any_path:
            parent, nm = rng.choice(any_path)
            await ov.rmdir(parent.ino, nm)
        elif op == "rename" and any_path:
            parent, nm = rng.choice(any_path)
            flags = rng.choice([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])
            await ov.rename(parent.ino, nm, rng.choice(dirs).ino, name, flags)
        elif op == "commit":
            await ov.commit(no_op, no_op)
    except OSError as exc:
        assert exc.errno in {
            errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY,
            errno.EINVAL, errno.EPERM,
        }, (op, exc)  # fmt: skip


SEEDS = range(int(os.environ.get("ZIPFUSE_OVERLAY_SEEDS", "6")))


@pytest.fixture(params=["rewrite", "append"])
def how(request, monkeypatch) -> str:
    """Commit by rewriting the archive, or by appending in place (planned from the touched
    nodes: no hard links then, which that plan leaves to the whole-tree one)."""
    if request.param == "append":
        monkeypatch.setattr(commit, "APPEND_MIN", 0)  # the test archives are small
        monkeypatch.setattr(commit, "DEAD_LIMIT", 100.0)  # and never compacted
    return request.param


@pytest.mark.parametrize("seed", SEEDS)
def test_random_mutations_keep_invariants_and_commit_what_the_tree_shows(tmp_path, seed, how):
    _, archive = base_archive(tmp_path)

    async def main() -> tuple[dict, dict]:
        ov = open_overlay(archive, tmp_path / "spill")
        rng = random.Random(seed)
        try:
            for step in range(120):
                await random_step(ov, rng, step, links=how == "rewrite")
                await check_invariants(ov)
            seen = await commit_all(ov)
        finally:
            await ov.close(destroy_spill=False)
        return seen, await reloaded_contents(archive, tmp_path)

    seen, reloaded = trio.run(main)
    assert seen == reloaded
    check_archive(archive)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_mutations_during_commits_are_all_kept(tmp_path, seed, how):
    """Commits paused while random mutations run (copy-on-write of frozen spill files, records
    that become the next journal): after each commit the invariants hold and the journal
    replays onto the new archive to the live tree; the last archive is the live tree."""
    _, archive = base_archive(tmp_path)
    reached, resume = threading.Event(), threading.Event()

    def pause(stage: str) -> None:
        reached.set()
        assert resume.wait(60)

    async def main() -> tuple[dict, dict]:
        ov = open_overlay(archive, tmp_path / "spill")
        rng = random.Random(1000 + seed)
        step = 0
        try:
            for _round in range(4):
                for _ in range(25):
                    step += 1
                    await random_step(ov, rng, step, commits=False, links=how == "rewrite")
                reached.clear()
                resume.clear()
                ov.test_hook = pause
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ov.commit, no_op, no_op)
                    assert await trio.to_thread.run_sync(reached.wait, 60)
                    for _ in range(25):
                        step += 1
                        await random_step(ov, rng, step, commits=False, links=how == "rewrite")
                    resume.set()
                ov.test_hook = None
                await ov.flush()
                await check_invariants(ov)
            seen = await commit_all(ov)
        finally:
            resume.set()
            await ov.close(destroy_spill=False)
        return seen, await reloaded_contents(archive, tmp_path)

    seen, reloaded = trio.run(main)
    assert seen == reloaded
    check_archive(archive)


def test_mutations_go_on_during_a_paused_commit_and_the_next_commit_keeps_them_all(tmp_path):
    """Each mutation kind completes while the commit writes (writers wait only for the
    snapshot and the adoption); the commit stores the snapshot, nothing of what came later
    (the chmod/utime lost during a sync, before the gate), and the next commit stores all."""
    _, archive = base_archive(tmp_path)
    reached, resume = threading.Event(), threading.Event()
    t_new = 1_000_000_000 * 10**9

    def pause(stage: str) -> None:
        reached.set()
        assert resume.wait(60)

    async def main() -> None:
        ov = open_overlay(archive, tmp_path / "spill")
        ns = ov.ns
        await new_file(ov, ns.root, b"before.txt", b"made before the commit\n")
        await new_file(ov, ns.root, b"gone.txt", b"deleted while the commit runs\n")
        await new_file(ov, ns.root, b"emptied.txt", b"emptied while the commit runs\n")
        ov.test_hook = pause
        done: list[str] = []
        root = ns.root.ino
        dir_ino = ns.resolve("dir").ino

        async def write_at_start(path: str, data: bytes) -> None:
            node = ns.resolve(path)
            await ov.open(node, os.O_RDWR)
            await ov.write(node, 0, data)
            await ov.release(node)

        async def otrunc(path: str) -> None:
            node = ns.resolve(path)
            await ov.open(node, os.O_WRONLY | os.O_TRUNC)
            await ov.release(node)

        mutations = {
            # before.txt is dirty at the snapshot: copied, then written
            "rewrite frozen": lambda: write_at_start("before.txt", b"MADE"),
            "unlink frozen": lambda: ov.unlink(root, b"gone.txt"),
            "O_TRUNC frozen": lambda: otrunc("emptied.txt"),
            "create": lambda: new_file(ov, ns.root, b"new.txt", b"new\n"),
            "mkdir": lambda: ov.make(root, b"newdir", stat.S_IFDIR | 0o750, UID, GID),
            "fifo": lambda: ov.make(root, b"fifo", stat.S_IFIFO | 0o600, UID, GID),
            "symlink": lambda: ov.make(
                root, b"sym", stat.S_IFLNK | 0o777, UID, GID, target=b"hello.txt"
            ),
            "link": lambda: ov.link(ns.resolve("dir/sub/b.txt").ino, root, b"b-link"),
            "unlink": lambda: ov.unlink(root, b"link"),
            "rmdir": lambda: ov.rmdir(root, b"emptydir"),
            "rename": lambda: ov.rename(root, b"text.txt", dir_ino, b"text2.txt", 0),
            "chmod+utime": lambda: ov.setattr(
                ns.resolve("hello.txt"), AttrChange(mode=0o600, atime_ns=t_new, mtime_ns=t_new)
            ),
            "truncate": lambda: ov.setattr(ns.resolve("dir/sub/b.txt"), AttrChange(size=10)),
            "write": lambda: write_at_start("big.bin", b"XYZ"),
            "O_TRUNC": lambda: otrunc("dir/a.txt"),
        }

        async def run(name: str) -> None:
            await mutations[name]()
            done.append(name)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ov.commit, no_op, no_op)
                assert await trio.to_thread.run_sync(reached.wait, 60)
                for name in mutations:
                    nursery.start_soon(run, name)
                with trio.fail_after(30):
                    while len(done) < len(mutations):
                        await trio.sleep(0.01)
                assert not resume.is_set(), "the commit went on before the mutations ended"
                resume.set()
            assert sorted(done) == sorted(mutations)
            ov.test_hook = None
            await check_invariants(ov)
            with zipfile.ZipFile(archive) as z:  # the snapshot: before.txt, nothing later
                names = set(z.namelist())
                assert {"link", "emptydir/", "text.txt"} <= names
                assert z.read("before.txt") == b"made before the commit\n"
                assert z.read("gone.txt") == b"deleted while the commit runs\n"
                assert z.read("emptied.txt") == b"emptied while the commit runs\n"
                assert not {"new.txt", "newdir/", "fifo", "sym", "b-link"} & names
                assert z.read("big.bin")[:3] != b"XYZ" and z.read("dir/a.txt") != b""
                assert stat.S_IMODE(z.getinfo("hello.txt").external_attr >> 16) != 0o600
            assert ov.needs_commit()
            assert await ov.commit(no_op, no_op) is not None
            await check_invariants(ov)
        finally:
            resume.set()
            await ov.close(destroy_spill=True)

    trio.run(main)
    check_archive(archive)
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        assert {"before.txt", "new.txt", "newdir/", "fifo", "sym", "b-link"} <= names
        assert not {"link", "emptydir/", "text.txt", "gone.txt"} & names
        assert z.read("before.txt") == b"MADE before the commit\n"
        assert z.read("emptied.txt") == b""
        assert z.read("dir/text2.txt").startswith(b"line 0 of")
        assert z.read("b-link") == z.read("dir/sub/b.txt") == b"bbbb\nbbbb\n"
        assert z.read("big.bin")[:3] == b"XYZ" and z.getinfo("big.bin").file_size == 1 << 20
        assert z.read("dir/a.txt") == b""
        assert z.read("new.txt") == b"new\n"
        assert stat.S_IMODE(z.getinfo("hello.txt").external_attr >> 16) == 0o600
    fd = os.open(archive, os.O_RDONLY)
    try:
        ns = Namespace.from_archive(read_central_directory(fd), UID, GID, 0)
    finally:
        os.close(fd)
    hello = ns.resolve("hello.txt")
    assert hello.mtime_ns == t_new and stat.S_IMODE(hello.mode) == 0o600
    assert stat.S_ISFIFO(ns.resolve("fifo").mode)
    assert stat.S_IMODE(ns.resolve("newdir").mode) == 0o750
    assert ns.resolve("dir/a.txt").mtime_ns != BASE_MTIME * 10**9


def test_listing_is_live_with_stable_cookies(tmp_path):
    _, archive = base_archive(tmp_path)

    async def main() -> None:
        ov = open_overlay(archive, tmp_path / "spill")
        try:
            d = await ov.make(1, b"big", stat.S_IFDIR | 0o755, UID, GID)
            for i in range(300):
                await new_file(ov, d, b"f%03d" % i, b"")
            first = list(ov.listing(d, 0))
            assert [n for _, n, _ in first] == [b"f%03d" % i for i in range(300)]
            mid = first[99][0]  # a listing stopped after 100 entries
            await ov.rename(d.ino, b"f299", d.ino, b"renamed", 0)
            await ov.unlink(d.ino, b"f200")
            await ov.unlink(d.ino, b"f050")  # already handed out: no effect on the rest
            rest = [n for _, n, _ in ov.listing(d, mid)]
            assert b"f299" not in rest and b"f200" not in rest
            assert rest[0] == b"f100" and rest[-1] == b"renamed"
            assert len(rest) == 300 - 100 - 1
            for i in range(250):  # compaction of dead names keeps the cookies
                await ov.unlink(d.ino, b"f%03d" % i) if i not in (50, 200) else None
            cookies = {n: c for c, n, _ in ov.listing(d, 0)}
            assert cookies.pop(b"renamed") > first[-1][0]
            assert cookies == {n: c for c, n, _ in first if n in cookies}
            assert len(cookies) == 300 - 250 - 1
            assert len(d.listing.order) < 150  # the dead names were dropped
        finally:
            await ov.close(destroy_spill=True)

    trio.run(main)


def test_setattr_journals_the_data_written_since_and_the_change_together(tmp_path):
    """The journal as a kill -9 leaves it after each step of cp -p of a file written in two
    WRITEs: every answered change is in it, the data record before the attr record (recovery
    takes the times of the last one), and an fchmod to the mode it has adds nothing."""
    _, archive = base_archive(tmp_path)

    async def main() -> None:
        ov = open_overlay(archive, tmp_path / "spill")
        assert ov.journal is not None
        try:
            d = await ov.make(1, "dir \u00e9\n".encode(), stat.S_IFDIR | 0o755, UID, GID)
            node = await ov.make(d.ino, b'f "\xff"', stat.S_IFREG | 0o600, UID, GID)
            await ov.write(node, 0, b"a" * 5000)  # names the spill file at once
            await ov.write(node, 5000, b"b" * 3000)  # not journaled until a later step
            before = ov.journal.appended
            t = 1_234_567_890_123_456_789
            await ov.setattr(node, AttrChange(atime_ns=t, mtime_ns=t))
            assert ov.journal.appended == before + 2
            records = journal.read_records(ov.spill.path)
            path = 'dir \u00e9\n/f "\udcff"'
            assert [(r["op"], r["path"]) for r in records[-2:]] == [("data", path), ("attr", path)]
            assert records[-2]["size"] == 8000 and records[-1]["mtime"] == t
            await ov.setattr(node, AttrChange(mode=0o644))
            assert ov.journal.appended == before + 3
            await ov.setattr(node, AttrChange(mode=0o644))  # cp -p's fchmod, nothing new
            assert ov.journal.appended == before + 3
            replayed = Namespace.from_archive(ov.cd, UID, GID, time.time_ns())
            journal.replay(replayed, journal.read_records(ov.spill.path), ov.spill.path)
            again = replayed.resolve(path)
            assert again is not None and again.spill == node.spill
            assert (again.size, again.mtime_ns, again.mode) == (8000, t, stat.S_IFREG | 0o644)
            assert shape(replayed) == shape(ov.ns)
            await check_invariants(ov)
        finally:
            await ov.close(destroy_spill=True)

    trio.run(main)


def test_background_failure_switches_to_failsafe_read_only(tmp_path):
    _, archive = base_archive(tmp_path)

    async def main() -> None:
        ov = open_overlay(archive, tmp_path / "spill")
        try:
            await new_file(ov, ov.ns.root, b"kept.txt", b"kept\n")

            async def broken() -> None:
                raise RuntimeError("simulated bug in background work")

            ov.spawn("test task", broken)
            await trio.sleep(0.05)
            assert ov.failed and "simulated bug" in ov.failed
            with pytest.raises(OSError) as exc:
                await ov.make(1, b"more", stat.S_IFDIR | 0o755, UID, GID)
            assert exc.value.errno == errno.EROFS
            node = ov.ns.resolve("kept.txt")
            assert await ov.read(node, 0, 100) == b"kept\n"  # reads go on
        finally:
            await ov.close(destroy_spill=False)
        records = journal.read_records(ov.spill.path)
        assert any(r["op"] == "data" and r["path"] == "kept.txt" for r in records)

    trio.run(main)


def test_replaced_versions_close_when_their_last_reader_goes(tmp_path):
    _, archive = base_archive(tmp_path)

    def archive_fds() -> int:
        real = os.path.realpath(archive)
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            count += target.startswith(real)
        return count

    async def main() -> None:
        ov = open_overlay(archive, tmp_path / "spill")
        try:
            held = ov.ns.resolve("text.txt")
            await ov.open(held, os.O_RDONLY)
            assert (await ov.read(held, 0, 7)) == b"line 0 "
            for i in range(4):
                await new_file(ov, ov.ns.root, b"n%d" % i, b"x")
                await ov.commit(no_op, no_op)
            assert archive_fds() == 2  # the current version + the one the open reader uses
            await ov.release(held)
            assert archive_fds() == 1
        finally:
            await ov.close(destroy_spill=True)
        assert archive_fds() == 0

    trio.run(main)


def test_a_journal_switch_that_fails_keeps_the_commit_and_the_later_changes(tmp_path):
    """The new archive is in place when the journal switch runs: if that fails (disk full in
    the spill area), the commit still succeeded, the old journal goes on, and a crash later is
    recovered from the records after the commit's mark."""
    _, archive = base_archive(tmp_path)

    def refuse(*_args) -> None:
        raise OSError(errno.ENOSPC, "no space for a new journal")

    async def main() -> None:
        ov = open_overlay(archive, tmp_path / "spill")
        await new_file(ov, ov.ns.root, b"first.txt", b"in the commit\n")
        assert ov.journal is not None
        switch, ov.journal.switch = ov.journal.switch, refuse  # type: ignore[method-assign]
        done = await ov.commit(no_op, no_op)
        assert done is not None
        ov.journal.switch = switch  # type: ignore[method-assign]
        await new_file(ov, ov.ns.root, b"later.txt", b"after the commit\n")
        await ov.fsync(None)
        await ov.close(destroy_spill=False)  # the daemon dies here

    trio.run(main)
    with zipfile.ZipFile(archive) as z:
        assert z.read("first.txt") == b"in the commit\n" and "later.txt" not in z.namelist()
    note = recovery.recover(str(archive), str(tmp_path / "spill"))
    assert note is not None and "recovered" in note
    with zipfile.ZipFile(archive) as z:
        assert z.read("first.txt") == b"in the commit\n"
        assert z.read("later.txt") == b"after the commit\n"
    check_archive(archive)


def _layered_archive(path: Path) -> dict[str, bytes]:
    """A top-level file first (entry 0: changing it renumbers every later entry), then three
    directories nobody has listed when the first commit runs."""
    files = {"top.txt": b"top\n"}
    files.update({f"{d}/f{i}.txt": f"{d} {i}\n".encode() for d in "abc" for i in range(5)})
    files.update({f"c/deep/g{i}.txt": f"deep {i}\n".encode() for i in range(3)})
    with zipfile.ZipFile(path, "w") as z:
        for name, body in files.items():
            z.writestr(name, body)
    return files


def test_a_small_commit_plans_only_the_change_and_unlisted_directories_read_right(
    tmp_path, monkeypatch
):
    """An append planned from the touched nodes: directories never listed stay unlisted
    across it (their entries renumbered), and read the right bytes afterwards."""
    monkeypatch.setattr(commit, "APPEND_MIN", 0)
    monkeypatch.setattr(commit, "DEAD_LIMIT", 100.0)
    archive = tmp_path / "layered.zip"
    files = _layered_archive(archive)

    async def main() -> dict:
        ov = open_overlay(archive, tmp_path / "spill")
        try:
            top = ov.ns.resolve("top.txt")
            await ov.open(top, os.O_RDWR)
            await ov.write(top, 0, b"TOP")
            await ov.release(top)
            await ov.make(ov.ns.root.ino, b"new", stat.S_IFDIR | 0o755, UID, GID)
            done = await ov.commit(no_op, no_op)
            assert done is not None and done.how == "append"
            for d in (b"b", b"c"):  # still not listed, entries renumbered
                assert ov.ns.root.kids[d].pending is not None
            seen = await contents(ov)
            await check_invariants(ov)
            node = ov.ns.resolve("c/deep/g1.txt")  # a second append after listing them all
            await ov.unlink(node.parent.ino, node.name)
            assert (await ov.commit(no_op, no_op)).how == "append"
            seen2 = await contents(ov)
        finally:
            await ov.close(destroy_spill=False)
        assert {p: v[-1] for p, v in seen.items() if p in files} == {
            p: hashlib.sha256(b"TOP\n" if p == "top.txt" else b).hexdigest()
            for p, b in files.items()
        }
        assert await reloaded_contents(archive, tmp_path) == seen2
        return seen2

    seen2 = trio.run(main)
    assert "c/deep/g1.txt" not in seen2 and "new" in seen2
    check_archive(archive)


def test_a_file_deleted_while_open_is_dropped_once_across_appends(tmp_path, monkeypatch):
    """Deleted but open at one commit (it keeps reading the old archive), written during the
    next and closed (gone); another file kept by that commit and deleted while it ran: no
    later commit takes their old entries' indices for other entries."""
    monkeypatch.setattr(commit, "APPEND_MIN", 0)
    monkeypatch.setattr(commit, "DEAD_LIMIT", 100.0)
    archive = tmp_path / "layered.zip"
    files = _layered_archive(archive)
    reached, resume = threading.Event(), threading.Event()

    def pause(stage: str) -> None:
        reached.set()
        assert resume.wait(60)

    async def main() -> dict:
        ov = open_overlay(archive, tmp_path / "spill")
        try:
            doomed = ov.ns.resolve("a/f2.txt")
            await ov.open(doomed, os.O_RDWR)
            await ov.unlink(doomed.parent.ino, doomed.name)
            assert (await ov.commit(no_op, no_op)).how == "append"
            assert await ov.read(doomed, 0, 100) == files["a/f2.txt"]
            other = ov.ns.resolve("b/f1.txt")
            await ov.setattr(other, AttrChange(mode=0o600))
            ov.test_hook = pause
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ov.commit, no_op, no_op)
                assert await trio.to_thread.run_sync(reached.wait, 60)
                await ov.write(doomed, 0, b"gone")
                await ov.release(doomed)  # the last reference: the node goes
                # kept as it is by this commit, renumbered (b/f1 is dropped before it), gone
                await ov.unlink(other.parent.ino, b"f3.txt")
                resume.set()
            ov.test_hook = None
            assert ov.ns.nodes.get(doomed.ino) is None
            await ov.setattr(ov.ns.resolve("c/f0.txt"), AttrChange(mode=0o640))
            assert (await ov.commit(no_op, no_op)).how == "append"
            await check_invariants(ov)
            return await contents(ov)
        finally:
            resume.set()
            await ov.close(destroy_spill=False)

    seen = trio.run(main)
    gone = {"a/f2.txt", "b/f3.txt"}
    assert set(seen) == {p for p in files if p not in gone} | {"a", "b", "c", "c/deep"}
    assert trio.run(reloaded_contents, archive, tmp_path) == seen
    check_archive(archive)


@pytest.mark.parametrize("layout", ["duplicate", "file-under-directory", "plain"])
def test_a_commit_never_uncovers_an_entry_the_mount_hid(tmp_path, monkeypatch, layout):
    """Duplicate names (the last one wins) and a file where a directory is (hidden): the
    mount hides entries, so dropping the visible one must drop them too; the plan from the
    touched nodes, which keeps every entry it is not told about, is used only without them."""
    monkeypatch.setattr(commit, "APPEND_MIN", 0)
    monkeypatch.setattr(commit, "DEAD_LIMIT", 100.0)
    archive = tmp_path / "hidden.zip"
    with zipfile.ZipFile(archive, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        z.writestr("keep.txt", b"keep\n")
        z.writestr("x", b"first x\n" if layout == "duplicate" else b"file x\n")
        if layout == "duplicate":
            z.writestr("x", b"second x\n")
        elif layout == "file-under-directory":
            z.writestr("x/y", b"y\n")

    async def main() -> dict:
        ov = open_overlay(archive, tmp_path / "spill")
        try:
            assert ov.ns.unambiguous is (layout == "plain")
            node = ov.ns.resolve("x/y" if layout == "file-under-directory" else "x")
            await ov.unlink(node.parent.ino, node.name)
            if layout == "file-under-directory":  # the directory goes too: not the file
                await ov.rmdir(ov.ns.root.ino, b"x")
            assert (await ov.commit(no_op, no_op)).how == "append"
            assert ov.ns.unambiguous  # what was written is
            return await contents(ov)
        finally:
            await ov.close(destroy_spill=False)

    seen = trio.run(main)
    assert set(seen) == {"keep.txt"}
    assert trio.run(reloaded_contents, archive, tmp_path) == seen
    check_archive(archive)


def test_a_flush_syncs_exactly_the_spill_files_changed_since_the_last_one(tmp_path, monkeypatch):
    """The periodic flush fdatasyncs the spill files written, truncated, copied up or made
    since the previous flush (then the spill folder and the journal), not the whole filesystem
    (syncfs would write out every other user's dirty data on a shared /tmp); above
    TARGETED_SYNC_LIMIT files one syncfs does it; a failed flush keeps its files for the next."""
    from zipfuse import osutil, overlay

    _, archive = base_archive(tmp_path)
    synced: list[str] = []
    syncfs: list[str] = []
    real_fdatasync, real_syncfs = osutil.fdatasync_path, osutil.syncfs
    fail = [False]

    def fdatasync(path: str) -> None:
        if fail[0]:
            raise OSError(errno.EIO, "injected")
        synced.append(path)
        real_fdatasync(path)

    def whole_fs(path: str) -> None:
        syncfs.append(path)
        real_syncfs(path)

    monkeypatch.setattr(osutil, "fdatasync_path", fdatasync)
    monkeypatch.setattr(osutil, "syncfs", whole_fs)

    async def main() -> None:
        ov = open_overlay(archive, tmp_path / "spill")
        try:
            root = ov.ns.get(1)
            new = await new_file(ov, root, b"new.txt", b"fresh bytes")
            empty = await new_file(ov, root, b"empty.txt", b"")
            hello = ov.lookup(1, b"hello.txt")
            text = ov.lookup(1, b"text.txt")
            assert hello is not None and text is not None
            await ov.write(hello, 0, b"HELLO")  # copy-up of a clean entry, then a write
            await ov.setattr(text, AttrChange(size=10))  # copy-up by truncation
            # an empty new file needs no spill file (it has no bytes to keep)
            changed = {n.spill for n in (new, empty, hello, text) if n.spill is not None}
            assert len(changed) == 3 and set(ov.data.unsynced) == changed

            await ov.flush()
            assert set(synced) == changed and len(synced) == len(changed) and not syncfs
            assert not ov.data.unsynced and ov.journal is not None and not ov.journal.unsynced

            synced.clear()
            await ov.write(new, 0, b"again")  # only this one changed since
            fail[0] = True
            with pytest.raises(OSError):
                await ov.flush()
            assert set(ov.data.unsynced) == {new.spill}  # kept for the next flush
            fail[0] = False
            await ov.flush()
            assert synced == [new.spill] and not syncfs

            monkeypatch.setattr(overlay, "TARGETED_SYNC_LIMIT", 1)
            synced.clear()
            await ov.write(new, 0, b"x")
            await ov.write(hello, 0, b"y")
            await ov.flush()
            assert syncfs == [ov.spill.path] and not synced
            assert not ov.data.unsynced
            assert await ov.read(new, 0, 100) == b"xgain bytes"
        finally:
            await ov.close(destroy_spill=False)

    trio.run(main)
