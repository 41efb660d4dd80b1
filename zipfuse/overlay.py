"""The overlay: the archive's tree plus every change made through the mount, and its commit.

One object owns the namespace, the file data, the journal, the gate and the archive versions,
and every mutation is ONE method here that follows one protocol:

    take the gate -> change the tree (and data) -> write the journal record -> leave the gate

so the FUSE layer (ops.py) only looks up inodes and handles and translates arguments and errors.

Concurrency rules
- Everything here runs on the trio thread; code between two awaits is atomic with respect to
  other requests. Awaits sit only where data moves (copy-up, large inflates, fsync) or at the
  gate; never between a tree change and its journal record.
- Worker threads do: decompression of large entries and copy-up (``FileData``, behind its
  limiter), fsync of spill files and of the journal (``Journal.sync`` is safe against appends
  made meanwhile), deleting spill files, and the archive rewrite of a commit. A worker never
  touches the tree.
- The gate: mutations hold it while they run; a commit closes it twice, briefly: to snapshot
  the tree (plan, freeze the spill files it names, mark the journal) and to adopt the new
  archive (clean what did not change since, switch the journal). Between the two the archive
  is written on a worker while mutations go on: the first write to a frozen spill file copies
  it (``FileData``), and the records made meanwhile become the next journal. Reads never take
  the gate.
- ``_flush_lock`` serialises the background flush (the changed spill files, then the journal,
  fsynced on a worker) with closing the journal.
- Background work (spill file pool, deletions, periodic flush) runs through ``spawn``: any
  exception there is logged once and switches the mount to failsafe read-only (writes answer
  EROFS, ``zipfuse status`` says why); everything journaled so far stays recoverable.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import itertools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, cast

import trio

from . import journal, osutil
from .filedata import FileData
from .journal import Journal
from .namespace import RENAME_EXCHANGE, RENAME_NOREPLACE, Namespace, Node
from .osutil import now_ns
from .spill import SpillArea
from .versions import ArchiveVersion
from .zipformat import CentralDirectory, ZipEntry

if TYPE_CHECKING:
    from .commit import Changes, Item

log = logging.getLogger(__name__)

# A flush syncs up to this many changed spill files one by one; more take one syncfs.
TARGETED_SYNC_LIMIT = 200


class Gate:
    """Lets a commit wait for in-flight mutations and hold new ones back while it runs."""

    def __init__(self) -> None:
        self.busy = 0
        self.closed = False
        self._idle = trio.Event()
        self._open = trio.Event()
        self._open.set()

    def leave(self) -> None:
        self.busy -= 1
        if self.busy == 0:
            self._idle.set()

    async def close(self) -> None:
        while self.closed:  # one commit at a time
            await self._open.wait()
        self.closed = True
        self._open = trio.Event()
        while self.busy:
            self._idle = trio.Event()
            await self._idle.wait()

    def open(self) -> None:
        self.closed = False
        self._open.set()

    async def __aenter__(self) -> None:
        while self.closed:
            await self._open.wait()
        self.busy += 1

    async def __aexit__(self, *exc: object) -> None:
        self.leave()


@dataclasses.dataclass
class AttrChange:
    """What a setattr asks for; None leaves a field alone."""

    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None


@dataclasses.dataclass
class _Snapshot:
    items: list[Item]  # every entry of a rewrite; the entries to add of an append
    links: list[dict]  # the snapshot's hard links, as journal records
    changes: int  # ns.changes at the snapshot
    append: Changes | None  # small enough to append in place: what stays, goes and comes
    touched: set[Node]  # Namespace.touched and .moved at the snapshot (kept for the next
    moved: set[Node]  # commit if this one fails)


@dataclasses.dataclass
class Committed:
    entries: int
    archive_size: int
    seconds: float
    how: str = "rewrite"  # or "append" (in place)


def _journaled_meta(node: Node) -> tuple[int, int, int, int, int, int]:
    """What an attr record of ``node`` holds."""
    return (node.mode, node.uid, node.gid, node.atime_ns, node.mtime_ns, node.rdev)


class Overlay:
    """The mutable view of one archive; knows nothing about FUSE."""

    def __init__(
        self,
        ns: Namespace,
        spill: SpillArea,
        *,
        archive: str,
        archive_fd: int | None,
        cd: CentralDirectory | None,
        read_only: bool,
        journal: Journal | None = None,
        base: str = "none",
        level: int = 6,
    ) -> None:
        self.ns = ns
        self.spill = spill
        self.archive = archive
        self.cd = cd
        self.read_only = read_only
        self.journal = journal
        self.base = base  # fingerprint of the archive version the overlay applies to
        self.level = level
        version = (
            None
            if archive_fd is None
            else ArchiveVersion(archive_fd, cd.archive_size if cd else None)
        )
        self.data = FileData(version, spill, spawn=self.spawn)
        for node in ns.nodes.values():
            if node.spill is not None:
                self.data.dirty[node.ino] = node
        ns.on_drop.append(self.data.drop)
        self.gate = Gate()
        self.unlogged: set[int] = set()  # inodes written since their last journal data record
        self.named: set[int] = set()  # inodes whose current spill file the journal names
        self.committed_changes = 0
        self.failed: str | None = None  # why the mount went failsafe read-only
        self.test_hook: Callable[[str], None] | None = None  # tests pause a commit here
        self.force_rewrite = False  # the next commit rewrites the whole archive (compact)
        self._flush_lock = trio.Lock()
        self._commit_lock = trio.Lock()  # one commit at a time
        self._tail: dict | None = None  # the running commit's journal mark, for recovery

    # ------------------------------------------------------------------ background work
    def spawn(self, what: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Run background work inside the error boundary."""
        trio.lowlevel.spawn_system_task(self.guarded, what, fn, name=what)

    async def guarded(self, what: str, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except Exception as exc:  # Cancelled is a BaseException and passes through
            log.exception("%s failed", what)
            self.fail(f"{what} failed: {exc}")

    def fail(self, reason: str) -> None:
        """Stop accepting changes; what is journaled stays recoverable."""
        if self.failed is None:
            self.failed = reason
            log.error("switching to failsafe read-only mode: %s", reason)

    def _writable(self) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, "read-only mount")
        if self.failed is not None:
            raise OSError(errno.EROFS, f"failsafe read-only: {self.failed}")

    async def flush(self) -> None:
        """Journal what was written since, and make it durable (the periodic flush)."""
        async with self._flush_lock:
            for ino in list(self.unlogged):
                node = self.ns.nodes.get(ino)
                if node is not None:
                    self._log_data(node)
            if self.journal is not None and self.journal.unsynced:
                paths = self.data.take_unsynced()
                try:
                    await trio.to_thread.run_sync(self._flush_now, paths)
                except BaseException:
                    self.data.unsynced.update(paths)  # the next flush tries them again
                    raise

    def _flush_now(self, paths: list[str]) -> None:
        """The spill files written since the last flush, then the journal that names them.

        A few files are synced one by one, plus the spill folder for their names: syncfs
        would also write out every other user's dirty data on that filesystem (a shared /tmp),
        and a commit's own fsyncs would then queue behind it. Many files (a copy-in) are
        cheaper in one syncfs."""
        if len(paths) > TARGETED_SYNC_LIMIT:
            osutil.syncfs(self.spill.path)
        else:
            for path in paths:
                osutil.fdatasync_path(path)
            journal.fsync_dir(self.spill.path)
        if self.journal is not None:
            self.journal.sync()

    async def close(self, *, destroy_spill: bool) -> None:
        """End of the mount: release descriptors; ``destroy_spill`` once all is committed."""
        async with self._flush_lock:
            self.data.close_all()
            if self.journal is not None:
                self.journal.close()
                self.journal = None
                if destroy_spill:
                    self.spill.destroy()

    # ------------------------------------------------------------------ lookups and reads
    def node(self, ino: int) -> Node:
        return self.ns.get(ino)

    def directory(self, ino: int) -> Node:
        return self.ns.dir(ino)

    def lookup(self, parent_ino: int, name: bytes) -> Node | None:
        if len(name) > 255:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        return self.ns.child(self.ns.dir(parent_ino), name)

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped references; an inode it no longer knows and no handle holds
        keeps no descriptor or decoder (kernel-cache mode has no RELEASE to do it)."""
        self.ns.forget(ino, count)
        node = self.ns.nodes.get(ino)
        if node is not None and node.lookups <= 0 and node.opens <= 0:
            self._log_data(node)
            self.data.close(node)

    def listing(self, directory: Node, after: int) -> Iterator[tuple[int, bytes, Node]]:
        """The directory's live entries past cookie ``after``: (cookie, name, node)."""
        children = directory.kids
        return self.ns.listing(directory).entries(after, children)

    async def readlink(self, node: Node) -> bytes:
        if not stat.S_ISLNK(node.mode):
            raise OSError(errno.EINVAL, "not a symlink")
        if node.target is None:
            node.target = await self.data.read_all(node)
        return node.target

    async def read(self, node: Node, off: int, size: int) -> bytes:
        return await self.data.read(node, off, size)

    def path(self, node: Node) -> str | None:
        return self.ns.path(node)

    # ------------------------------------------------------------------ journal helpers
    def _log_data(self, node: Node) -> None:
        """Record in the journal which spill file now holds the node's content."""
        line = self._data_line(node)
        if line is not None and self.journal is not None:
            self.journal.write(line)

    def _data_line(self, node: Node, path: str | None = None) -> bytes | None:
        """The data record due for ``node`` (written since its last one), or None; from now
        on the node counts as logged. ``path``: the node's path, when already known."""
        if node.ino not in self.unlogged or self.journal is None:
            return None
        self.unlogged.discard(node.ino)
        if path is None:
            path = self.ns.path(node)
        if path is None or node.spill is None:
            return None
        return journal.data_line(path, node)

    def _child_path(self, parent: Node, name: bytes) -> str | None:
        head = self.ns.path(parent)
        if head is None:
            return None
        return os.fsdecode(name) if not head else f"{head}/{os.fsdecode(name)}"

    def _journal(self, record: Callable[[Journal], None]) -> None:
        if self.journal is not None:
            record(self.journal)

    # ------------------------------------------------------------------ mutations
    async def make(
        self,
        parent_ino: int,
        name: bytes,
        mode: int,
        uid: int,
        gid: int,
        *,
        target: bytes | None = None,
        rdev: int = 0,
    ) -> Node:
        """create, mkdir, mknod and symlink: a new node under ``parent_ino``."""
        self._writable()
        async with self.gate:
            parent = self.ns.dir(parent_ino)
            node = self.ns.create(parent, name, mode, uid, gid, now_ns())
            node.rdev = rdev
            if target is not None:
                node.target = target
                node.size = len(target)
            path = self.ns.path(node)
            if path is not None:
                self._journal(lambda j: j.make(path, node))
        return node

    async def link(self, ino: int, parent_ino: int, name: bytes) -> Node:
        self._writable()
        async with self.gate:
            node = self.ns.get(ino)
            parent = self.ns.dir(parent_ino)
            src = self.ns.path(node)
            self.ns.link(node, parent, name, now_ns())
            dst = self._child_path(parent, name)
            if src is not None and dst is not None:
                self._journal(lambda j: j.link(src, dst))
        return node

    async def unlink(self, parent_ino: int, name: bytes) -> None:
        self._writable()
        async with self.gate:
            parent = self.ns.dir(parent_ino)
            path = self._child_path(parent, name)
            node = self.ns.unlink(parent, name, now_ns())
            if node.nlink > 0 and node.parent is not None:
                self.unlogged.add(node.ino)  # its primary path may have changed
            if path is not None:
                self._journal(lambda j: j.remove(path))

    async def rmdir(self, parent_ino: int, name: bytes) -> None:
        self._writable()
        async with self.gate:
            parent = self.ns.dir(parent_ino)
            path = self._child_path(parent, name)
            self.ns.rmdir(parent, name, now_ns())
            if path is not None:
                self._journal(lambda j: j.remove(path))

    async def rename(
        self, old_parent_ino: int, old: bytes, new_parent_ino: int, new: bytes, flags: int
    ) -> None:
        self._writable()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise OSError(errno.EINVAL, "unsupported rename flags")
        async with self.gate:
            old_parent = self.ns.dir(old_parent_ino)
            new_parent = self.ns.dir(new_parent_ino)
            src = self._child_path(old_parent, old)
            dst = self._child_path(new_parent, new)
            self.ns.rename(old_parent, old, new_parent, new, flags, now_ns())
            if src is not None and dst is not None:
                self._journal(lambda j: j.rename(src, dst, flags))

    async def setattr(self, node: Node, change: AttrChange) -> None:
        """chmod, chown, utimens and truncate: all under the gate, so a commit never adopts
        over a change it did not write (a lost chmod during a sync, before)."""
        self._writable()
        now = now_ns()
        async with self.gate:
            before = _journaled_meta(node)
            if change.size is not None:
                if node.is_dir:
                    raise OSError(errno.EISDIR, "is a directory")
                changed = change.size != node.size
                await self.data.truncate(node, change.size)
                if changed:  # the kernel keeps showing the old mtime for a same-size truncate
                    node.mtime_ns = now
                self.unlogged.add(node.ino)
            if change.mode is not None:
                node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(change.mode)
            if change.uid is not None:
                node.uid = change.uid
            if change.gid is not None:
                node.gid = change.gid
            if change.atime_ns is not None:
                node.atime_ns = change.atime_ns
            if change.mtime_ns is not None:
                node.mtime_ns = change.mtime_ns
            node.ctime_ns = now if change.ctime_ns is None else change.ctime_ns
            self.ns.changed(node, meta=True)
            path = self.ns.path(node)
            if path is not None and self.journal is not None:
                data = self._data_line(node, path)
                lines = [] if data is None else [data]
                # cp -p's fchmod to the mode the file already has: nothing to record (a file's
                # journaled times and mode match memory once its data record is written; a
                # directory's mtime does not, so directories always get their record)
                if not stat.S_ISREG(node.mode) or _journaled_meta(node) != before:
                    lines.append(journal.attr_line(path, node))
                if lines:
                    self.journal.write(*lines)  # one write(2) for both records

    async def open(self, node: Node, flags: int) -> None:
        """A new handle on ``node``; O_TRUNC empties it without copying the old bytes."""
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable or flags & os.O_TRUNC:
            self._writable()
        if flags & os.O_TRUNC:
            if not writable:
                raise OSError(errno.EINVAL, "O_TRUNC on a read-only open")
            async with self.gate:
                self.data.truncate_to_empty(node)
                self.ns.touch(node, now_ns())
                self.unlogged.add(node.ino)
                self._log_data(node)  # the spill file shrank: recovery must know it
        node.opens += 1

    async def create(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int) -> Node:
        """A new regular file, opened."""
        node = await self.make(parent_ino, name, stat.S_IFREG | stat.S_IMODE(mode), uid, gid)
        node.opens += 1
        return node

    async def write(self, node: Node, off: int, buf: bytes) -> int:
        self._writable()
        async with self.gate:
            try:
                await self.data.write(node, off, buf)
            finally:  # even a failed write (disk full) may have stored part of buf: keep it
                node.mtime_ns = node.ctime_ns = now_ns()
                self.ns.changed(node)
                self.unlogged.add(node.ino)
                if node.ino not in self.named and node.spill is not None:
                    # name the spill file now: a kill -9 right after close() (or after a
                    # write that stored only part of its bytes) must not lose it, and in
                    # kernel-cache mode no RELEASE comes at all; later writes mark it unlogged
                    self.named.add(node.ino)
                    self._log_data(node)
        return len(buf)

    async def release(self, node: Node) -> None:
        """Last step of a handle: its data record is journaled even if that fails."""
        node.opens -= 1
        try:
            self._log_data(node)
        finally:
            if node.opens <= 0:
                self.data.close(node)
            self.ns.maybe_drop(node)

    async def fsync(self, node: Node | None) -> None:
        """fsync of a file (its spill file and the journal) or of a directory (the journal)."""
        if node is not None:
            self._log_data(node)
            await self.data.fsync(node)
        if self.journal is not None and self.journal.unsynced:
            await trio.to_thread.run_sync(self.journal.sync)

    # ------------------------------------------------------------------ commit
    def needs_commit(self) -> bool:
        return not self.read_only and self.ns.changes != self.committed_changes

    async def commit(
        self,
        begin: Callable[[int, int], None],
        progress: Callable[[int, int], None],
        *,
        adopt: bool = True,
    ) -> Committed | None:
        """Write the new archive and adopt it; None when there was nothing to commit.
        ``adopt=False`` (the commit after the unmount, before the overlay is closed) skips
        the adoption: pointing every node at the new archive would only cost time and memory.

        Writers wait only for the two short steps under the closed gate: the snapshot (plan,
        freeze the spill files it names, mark the journal) and the adoption (point nodes at
        the new archive, switch the journal). While the archive is written, mutations go on:
        a write to a frozen spill file copies it first, and their journal records become the
        next journal. ``begin(entries, bytes)`` is told the totals once planned; ``progress``
        runs on the commit thread.
        """
        async with self._commit_lock:
            await self.gate.close()
            try:
                if not self.needs_commit() and not (self.force_rewrite and not self.read_only):
                    return None
                snap = self._snapshot()
            finally:
                self.gate.open()
            try:
                return await self._write_and_adopt(snap, begin, progress, adopt)
            except BaseException:
                self.ns.touched |= snap.touched  # not in the archive: the next commit's job
                self.ns.moved |= snap.moved
                raise
            finally:
                self._tail = None
                if self.journal is not None and self.journal.tail is not None:
                    self.journal.release()
                    # the old journal goes on and names frozen files: durable before they go
                    await self.flush()
                self.data.thaw()

    def _snapshot(self) -> _Snapshot:
        """Under the closed gate: the entries of the new archive, as the tree is now.

        A small change to an archive that can be appended to is planned from the nodes
        touched since the last commit (``commit.plan_changes``: the cost of the change);
        anything else from the whole tree.
        """
        from . import commit  # the write path: a read-only mount never imports it

        ns, cd, fd = self.ns, self.cd, self.data.archive_fd
        touched, moved = ns.touched, ns.moved
        ns.touched, ns.moved = set(), set()
        append: Changes | None = None
        items: list[Item] = []
        if not self.force_rewrite and cd is not None and fd is not None:
            if not ns.linked and ns.unambiguous:
                append = commit.plan_changes(ns, cd, touched, moved)
                items = append.items
                if commit.append_cost(append, cd, fd) is None:
                    append = None
            if append is None:
                items = commit.plan(ns)
                append = commit.changes_of(items, cd)
                if commit.append_cost(append, cd, fd) is None:
                    append = None
                else:
                    items = append.items
        else:
            items = commit.plan(ns)
        links = []
        for node in ns.nodes.values() if ns.linked else ():  # each name is its own entry
            if node.links and node.parent is not None:
                src = ns.path(node)
                for parent, name in node.links:
                    dst = self._child_path(parent, name)
                    if src is not None and dst is not None:
                        links.append(journal.link_record(src, dst))
        self.data.freeze([i.spill for i in items if i.spill is not None])
        mark = self.journal.capture() if self.journal is not None else 0
        self._tail = {"offset": mark, "links": links}
        self.named.clear()  # the next write of a file names its (copied) spill file again
        self.force_rewrite = False
        return _Snapshot(items, links, ns.changes, append, touched, moved)

    async def _write_and_adopt(
        self,
        snap: _Snapshot,
        begin: Callable[[int, int], None],
        progress: Callable[[int, int], None],
        adopt: bool = True,
    ) -> Committed:
        from . import commit

        items = snap.items
        count = len(items) + (snap.append.kept_count if snap.append is not None else 0)
        begin(count, commit.bytes_total(items))
        started = time.monotonic()
        source_fd = self.data.archive_fd
        source_cd = self.cd
        how = "rewrite"

        def write() -> tuple[int, CentralDirectory] | BaseException:
            nonlocal how
            try:
                if self.test_hook is not None:
                    self.test_hook("writing")
                if snap.append is not None and source_fd is not None and source_cd is not None:
                    if journal.fingerprint(self.archive) != self.base:  # someone else's now
                        commit.keep_conflict(snap.append, source_fd, source_cd, self.archive)
                    how = "append"
                    return commit.append_archive(
                        snap.append,
                        source_fd,
                        self.archive,
                        level=self.level,
                        comment=source_cd.comment,
                        progress=progress,
                        source=source_cd,
                        before_write=self._before_append,
                        after_sync=self._after_append,
                    )
                return commit.write_archive(
                    items,
                    source_fd,
                    self.archive,
                    level=self.level,
                    comment=source_cd.comment if source_cd else b"",
                    progress=progress,
                    source=source_cd,
                    expect=self.base,
                    before_replace=self._before_replace,
                )
            except Exception as exc:  # re-raised on the trio thread
                return exc

        outcome = await trio.to_thread.run_sync(write)
        if isinstance(outcome, BaseException):
            raise outcome
        fd, cd = outcome
        size = os.fstat(fd).st_size
        if not adopt:
            os.close(fd)
            if self.journal is not None:  # nothing follows: no new journal, no flush either
                self.journal.release()
            self.committed_changes = snap.changes
            self.base = journal.fingerprint(self.archive)
            log.info("final commit (%s): %d entries, archive %d bytes", how, count, size)
            return Committed(count, size, time.monotonic() - started, how)
        await self.gate.close()
        try:
            self._adopt(fd, cd, snap)
            self.committed_changes = snap.changes
            self.base = journal.fingerprint(self.archive)
            if self.journal is not None:
                try:
                    self.journal.switch(self.base, snap.links)
                except OSError as exc:  # the archive is committed: not a failed commit
                    # state.json names this archive as pending with the mark, so the old
                    # journal stays valid: a recovery replays what follows the mark
                    log.warning("could not start a new journal (%s); the old one goes on", exc)
                self.unlogged.update(self.data.dirty)  # files still dirty: named again
        finally:
            self.gate.open()
        log.info("commit (%s): %d entries, archive %d bytes", how, count, size)
        return Committed(count, size, time.monotonic() - started, how)

    def _before_replace(self, tmp: str) -> None:
        """Runs on the commit thread: name the archive about to be installed, for recovery."""
        state = journal.read_state(self.spill.path) or {}
        state["pending"] = journal.fingerprint(tmp)
        state["tail"] = self._tail
        journal.write_state(self.spill.path, state)

    def _before_append(self, st: os.stat_result) -> None:
        """Runs on the commit thread before an append in place touches the archive: what
        recovery needs to cut the file back to this version (length, times, inode)."""
        state = journal.read_state(self.spill.path) or {}
        state["append"] = {
            "size": st.st_size,
            "mtime": st.st_mtime_ns,
            "atime": st.st_atime_ns,
            "ino": st.st_ino,
        }
        journal.write_state(self.spill.path, state)

    def _after_append(self) -> None:
        """The appended end is durable: name the new version, like ``_before_replace``."""
        state = journal.read_state(self.spill.path) or {}
        state["pending"] = journal.fingerprint(self.archive)
        state["tail"] = self._tail
        journal.write_state(self.spill.path, state)

    def _adopt(self, fd: int, cd: CentralDirectory, snap: _Snapshot) -> None:
        """Point the snapshot's nodes at the new archive; what changed since the snapshot
        stays dirty (a spill file other than the frozen one, metadata other than the entry's),
        the rest is clean and its spill copy goes. Nodes left out of the new archive (deleted
        but still open) keep reading the old one; their ``entry_path`` goes to None, which
        says that their entry is not in the current archive.
        """
        self.cd = cd
        self.ns.unambiguous = True  # written from the tree: one entry per name
        nodes = self.ns.nodes
        # nodes deleted and gone during the commit may still be named by the next one's plan
        gone = [n for n in self.ns.touched if nodes.get(n.ino) is not n]
        if snap.append is None:
            seen = self._point(cast("list[Item | None]", snap.items), cd.iter_entries())
            orphans = [
                n
                for n in itertools.chain(nodes.values(), gone)
                if n.entry is not None and n.ino not in seen
            ]
            self.ns.drop_records()  # every entry is decoded now (see Namespace.walk)
        else:
            orphans = self._renumber(cd, snap.append, gone)
            kept = snap.append.kept_count
            # unchanged entries keep their ZipEntry (same record and offset, new index): only
            # the new records are decoded (the adoption is a pause for writers)
            self._point(cast("list[Item | None]", snap.items), cd.entries_at(range(kept, len(cd))))
        for node in orphans:
            node.entry_path = None
        stay = [n for n in orphans if nodes.get(n.ino) is n]
        self.data.adopt(ArchiveVersion(fd, cd.archive_size), stay)
        cd.detach(fd)  # records are re-read from the archive when needed, as after a mount

    def _point(self, items: list[Item | None], entries: Iterable[ZipEntry]) -> set[int]:
        """Give each item's node its new entry; return the nodes seen (by inode). Each item
        is dropped from ``items`` once used: with the entries decoded piece by piece, the
        snapshot's memory goes while the new entries' comes (a commit's peak)."""
        from .commit import FILE

        seen: set[int] = set()
        used = 0
        for entry in entries:
            item = items[used] if used < len(items) else None
            if item is None:
                raise OSError(errno.EIO, "the new archive lists more entries than were written")
            items[used] = None
            used += 1
            node = item.node
            if node.ino in seen:  # a hard link's second name: keep the first entry
                continue
            seen.add(node.ino)
            node.entry = entry
            self.data.unpin(node)
            meta = item.meta
            if meta is None:  # RAW: unchanged at the snapshot; a change since set meta_dirty
                continue
            node.entry_path = entry.name.rstrip("/")  # the entry's string: one copy
            if (node.mode, node.uid, node.gid, node.mtime_ns, node.atime_ns, node.rdev) == (
                meta.mode, meta.uid, meta.gid, meta.mtime_ns, meta.atime_ns, meta.rdev
            ):  # fmt: skip
                node.meta_dirty = False
            if item.kind == FILE and node.spill == item.spill:
                self.data.mark_clean(node)
        if used != len(items):
            raise OSError(errno.EIO, "the new archive lists fewer entries than were written")
        return seen

    def _renumber(self, cd: CentralDirectory, changes: Changes, gone: list[Node]) -> list[Node]:
        """After an append in place: the kept entries' new indices (every node's entry and the
        directories not listed yet); return the nodes whose entry was dropped without a new
        one (deleted since the last commit)."""
        dropped = changes.dropped
        self.ns.renumber(cd, dropped)
        if not len(dropped):  # only new entries, after the old ones: same indices
            return []
        written = {i.node.ino for i in changes.items}
        orphans = []
        first = dropped[0]
        for node in itertools.chain(self.ns.nodes.values(), gone):
            entry = node.decoded_entry  # one not decoded yet is not dropped (Namespace.renumber)
            if entry is None or node.entry_path is None or entry.index < first:
                continue  # none, an older archive's, or before the first dropped one
            below = bisect.bisect_left(dropped, entry.index)
            if below < len(dropped) and dropped[below] == entry.index:
                if node.ino not in written:
                    orphans.append(node)
            else:
                entry.index -= below
        return orphans
