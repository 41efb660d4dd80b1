"""File contents: clean bytes come from the archive, dirty bytes from spill files.

A clean file is copied to the spill area only when it is first written (copy-up), never on an
open for reading, and not at all when it is truncated to zero. Decompression of larger entries
and copy-up run on worker threads behind a limiter, so readers of different files progress in
parallel while the trio thread keeps answering metadata requests.

While a commit reads the spill files of its snapshot, they are frozen: the first write to
such a file after the snapshot copies it to a new spill file first (copy-on-write), and a
frozen file is deleted only once the commit is over (``freeze``/``thaw``).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable

import trio

from .entryreader import EntryReader, read_whole
from .namespace import Node
from .private import create_file, write_all
from .spill import SpillArea
from .versions import ArchiveVersion

INLINE_READ_LIMIT = 256 * 1024  # smaller entries are decoded on the trio thread (no thread hop)
COPY_CHUNK = 1 << 20
POOL_LOW, POOL_BATCH = 32, 64  # empty spill files kept ready for new files
# Descriptors and decoders of files no handle holds (kernel-cache mode sends no RELEASE; a file
# stays known until the kernel forgets it): at most this many are kept, the oldest go first.
MAX_IDLE_FDS = 256
MAX_IDLE_READERS = 64

log = logging.getLogger(__name__)


class FileData:
    """Reads and writes file contents for the FUSE layer; knows nothing about FUSE."""

    def __init__(
        self,
        version: ArchiveVersion | None,
        spill: SpillArea,
        spawn: Callable[[str, Callable[[], Awaitable[None]]], None] | None = None,
    ) -> None:
        """``version``: the archive as it is now (None: no archive yet); ``spawn`` runs
        background work (the overlay's error boundary; a bare system task by default)."""
        self.version = version
        self.pinned: dict[int, ArchiveVersion] = {}  # ino -> older version its entry lives in
        self.spill = spill
        self.spawn = spawn or _spawn_system_task
        self.limiter = trio.CapacityLimiter(max(2, os.cpu_count() or 2))
        self.fds: dict[int, int] = {}  # ino -> open spill fd
        self.readers: dict[int, _Held] = {}  # ino -> decoder of its clean entry, least recent first
        self.locks: dict[int, trio.Lock] = {}
        self.dirty: dict[int, Node] = {}  # ino -> node with a spill file
        self._pool: list[tuple[str, int]] = []  # empty spill files made ahead by a worker
        self._refilling = False
        self._trash: list[str] = []  # spill files to delete, on a worker thread
        self._emptying = False
        self.write_failures = 0  # writes that could not store all their bytes (disk full)
        self.write_errno = 0  # why the last of them failed
        self.frozen: set[str] = set()  # spill files a running commit reads
        self.unsynced: set[str] = set()  # spill files changed since a flush made them durable
        self._deferred: list[str] = []  # frozen files to delete once the commit is over

    @property
    def archive_fd(self) -> int | None:
        return None if self.version is None else self.version.fd

    def adopt(self, version: ArchiveVersion, stay: list[Node]) -> None:
        """A commit installed ``version``; ``stay`` (deleted but still open) keep the old one."""
        old, self.version = self.version, version
        if old is None:
            return
        for node in stay:
            if node.ino not in self.pinned:
                self.pinned[node.ino] = old.acquire()
        for ino, held in list(self.readers.items()):  # idle decoders start over on the new one
            if held.version is old and held.node.opens <= 0 and not held.busy:
                del self.readers[ino]
                held.close()
        old.release()

    def unpin(self, node: Node) -> None:
        version = self.pinned.pop(node.ino, None)
        if version is not None:
            version.release()

    # ------------------------------------------------------------------ reading
    def _held(self, node: Node) -> _Held:
        held = self.readers.pop(node.ino, None)
        if held is not None:  # most recently used last: trimming closes the idle ones first
            self.readers[node.ino] = held  # (a big .so paged in by mmap keeps its decoded copy)
        else:
            version = self.pinned.get(node.ino, self.version)
            assert version is not None and node.entry is not None
            reader = EntryReader(version.fd, node.entry, self.spill.path, version.size)
            held = self.readers[node.ino] = _Held(reader, version.acquire(), node)
            if len(self.readers) > MAX_IDLE_READERS:
                self._trim_readers()
        return held

    def _trim_readers(self) -> None:
        """Close the older half of the decoders that no handle and no running read uses."""
        for ino in list(self.readers)[: len(self.readers) // 2]:
            held = self.readers[ino]
            if held.node.opens <= 0 and not held.busy:
                del self.readers[ino]
                held.close()

    def _spill_fd(self, node: Node) -> int:
        fd = self.fds.get(node.ino)
        if fd is None:
            assert node.spill is not None, "a clean file has no spill descriptor"
            fd = os.open(node.spill, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            self._keep_fd(node, fd)
        return fd

    def _keep_fd(self, node: Node, fd: int) -> None:
        """Remember the node's spill descriptor, keeping the idle ones bounded: in kernel-cache
        mode no RELEASE closes them, and a copy of 60k new files ran out of descriptors."""
        self.fds[node.ino] = fd
        if len(self.fds) > MAX_IDLE_FDS:
            self._trim_fds()

    def _trim_fds(self) -> None:
        """Close the older half of the spill descriptors no handle holds (uses of a spill
        descriptor never await, so none is in use here)."""
        for ino in list(self.fds)[: len(self.fds) // 2]:
            node = self.dirty.get(ino)
            if node is None or node.opens <= 0:
                os.close(self.fds.pop(ino))

    async def read(self, node: Node, off: int, size: int) -> bytes:
        if node.spill is not None:
            return os.pread(self._spill_fd(node), size, off)
        entry = node.entry
        if entry is None:
            return b""
        if (
            off == 0
            and size >= entry.file_size
            and entry.file_size <= INLINE_READ_LIMIT
            and node.ino not in self.readers
        ):  # the usual first (and only) READ of a small file: no reader state to keep
            version = self.pinned.get(node.ino, self.version)
            assert version is not None
            data = read_whole(version.fd, entry)
            if data is not None:
                return data
        held = self._held(node)
        if entry.file_size <= INLINE_READ_LIMIT:
            return held.reader.read(off, size)
        data = held.reader.read_ready(off, size)  # already decoded: no thread hop
        if data is not None:
            return data
        held.busy += 1
        try:
            return await trio.to_thread.run_sync(held.reader.read, off, size, limiter=self.limiter)
        finally:
            held.busy -= 1

    async def read_all(self, node: Node) -> bytes:
        """Whole content of a small file (symlink targets)."""
        data = await self.read(node, 0, max(node.size, 0))
        if node.opens <= 0:
            self.close(node)
        return data

    # ------------------------------------------------------------------ writing
    def freeze(self, paths: list[str]) -> None:
        """A commit's snapshot: these spill files must not change until ``thaw``."""
        self.frozen.update(paths)

    def thaw(self) -> None:
        """The commit is over: frozen files no node uses any more are deleted."""
        self.frozen.clear()
        deferred, self._deferred = self._deferred, []
        used = {n.spill for n in self.dirty.values()}
        for path in deferred:
            if path not in used:
                self._discard(path)

    async def _make_dirty(self, node: Node) -> None:
        """Copy a clean file's bytes into a new spill file (once, under a per-inode lock);
        copy a frozen spill file before its first change since the snapshot."""
        if node.spill is not None and node.spill not in self.frozen:
            return
        if (
            node.spill is None
            and (node.entry is None or node.size == 0)
            and node.ino not in self.locks
        ):
            self._take_spill(node)  # nothing to copy, nothing awaited: no lock (a new file)
            return
        lock = self.locks.setdefault(node.ino, trio.Lock())
        async with lock:
            if node.spill is not None and node.spill not in self.frozen:
                return
            if node.spill is None and (node.entry is None or node.size == 0):
                self._take_spill(node)
            else:
                path = self.spill.new_path()
                if node.spill is not None:  # frozen by a running commit: copied on write
                    await trio.to_thread.run_sync(
                        _copy_file, node.spill, path, limiter=self.limiter
                    )
                    self._leave_frozen(node)
                else:
                    held = self._held(node)
                    held.busy += 1
                    try:
                        await trio.to_thread.run_sync(
                            _copy_entry, held.reader, path, node.size, limiter=self.limiter
                        )
                    finally:
                        held.busy -= 1
                node.spill = path
                self.unsynced.add(path)
                self.dirty[node.ino] = node
        self.locks.pop(node.ino, None)

    async def write(self, node: Node, off: int, buf: bytes) -> None:
        await self._make_dirty(node)
        fd = self._spill_fd(node)
        done = 0
        try:
            while done < len(buf):  # a nearly full disk stores only part of a write
                n = os.pwrite(fd, buf[done:] if done else buf, off + done)
                if n <= 0:
                    raise OSError(errno.ENOSPC, "spill file write stored nothing", self.spill.path)
                done += n
        except OSError as exc:
            self.write_failures += 1
            self.write_errno = exc.errno or errno.EIO
            raise
        finally:
            # the bytes that did land are part of the file, so size and spill file agree;
            # the writer still gets the error for the rest (ENOSPC, EIO), never a success
            if off + done > node.size and done:
                node.size = off + done
            if done:
                self._changed(node)

    def _changed(self, node: Node) -> None:
        if node.spill is not None:
            self.unsynced.add(node.spill)

    def take_unsynced(self) -> list[str]:
        """The spill files changed since the last call: the flush makes exactly these durable
        (and puts them back if it fails)."""
        paths = list(self.unsynced)
        self.unsynced.clear()
        return paths

    def _leave_frozen(self, node: Node) -> None:
        """The node moves off its frozen spill file: close it here; it is deleted once the
        commit reading it is over."""
        fd = self.fds.pop(node.ino, None)
        if fd is not None:
            os.close(fd)
        assert node.spill is not None
        self._discard(node.spill)

    def _take_spill(self, node: Node) -> None:
        """Give the node an empty spill file of its own."""
        path, fd = self._take_empty()
        self._keep_fd(node, fd)
        node.spill = path
        self.unsynced.add(path)  # its name: recovery looks for it
        self.dirty[node.ino] = node

    def truncate_to_empty(self, node: Node) -> None:
        """O_TRUNC: the old bytes are never needed, so nothing is copied."""
        if node.spill is None or node.spill in self.frozen:
            if node.spill is not None:  # frozen: a new empty file instead
                self._leave_frozen(node)
            self._take_spill(node)
        else:
            os.ftruncate(self._spill_fd(node), 0)
            self._changed(node)
        node.size = 0
        self._close_if_unused(node)

    def _take_empty(self) -> tuple[str, int]:
        """An empty spill file and its descriptor, made ahead of time when possible."""
        if len(self._pool) < POOL_LOW and not self._refilling:
            self._refilling = True
            self.spawn("preparing spill files", self._refill)
        if self._pool:
            return self._pool.pop()
        return self.spill.make_empty(1)[0]

    async def _refill(self) -> None:
        try:
            made = await trio.to_thread.run_sync(self.spill.make_empty, POOL_BATCH)
            self._pool.extend(made)
        except OSError as exc:
            log.warning("cannot prepare spill files: %s", exc)
        finally:
            self._refilling = False

    def _discard(self, path: str) -> None:
        """Delete a spill file soon, off the trio thread (unlink is slow on a busy disk)."""
        if path in self.frozen:
            self._deferred.append(path)
            return
        self._trash.append(path)
        if not self._emptying:
            self._emptying = True
            self.spawn("deleting spill files", self._empty_trash)

    async def _empty_trash(self) -> None:
        try:
            while self._trash:
                batch, self._trash = self._trash, []
                await trio.to_thread.run_sync(self.spill.remove_all, batch)
        finally:
            self._emptying = False

    def _close_if_unused(self, node: Node) -> None:
        """Path-based truncates come without an open handle: do not keep their descriptor."""
        if node.opens <= 0:
            self.close(node)

    async def truncate(self, node: Node, size: int) -> None:
        if size < 0:
            raise OSError(errno.EINVAL, "negative size")
        if size == 0:
            self.truncate_to_empty(node)
            return
        await self._make_dirty(node)
        os.ftruncate(self._spill_fd(node), size)
        self._changed(node)
        node.size = size
        self._close_if_unused(node)

    async def fsync(self, node: Node) -> None:
        if node.spill is not None:  # by path: the descriptor may be closed meanwhile
            await trio.to_thread.run_sync(_fsync_path, node.spill)

    # ------------------------------------------------------------------ lifetime
    def close(self, node: Node) -> None:
        """Last handle of ``node`` released: free its descriptors and decoder."""
        fd = self.fds.pop(node.ino, None)
        if fd is not None:
            os.close(fd)
        held = self.readers.pop(node.ino, None)
        if held is not None:
            held.close()

    def drop(self, node: Node) -> None:
        """The inode is gone for good (no name, no handle, no kernel reference)."""
        self.close(node)
        if node.spill is not None:
            self._discard(node.spill)
            node.spill = None
        self.dirty.pop(node.ino, None)
        self.unpin(node)

    def mark_clean(self, node: Node) -> None:
        """After a commit wrote this node's bytes into the archive, drop its spill copy."""
        if node.spill is None or node.opens > 0:
            return
        self.close(node)
        self._discard(node.spill)
        node.spill = None
        self.dirty.pop(node.ino, None)

    def dirty_bytes(self) -> int:
        return sum(n.size for n in self.dirty.values())

    def close_all(self) -> None:
        for ino in list(self.fds):
            os.close(self.fds.pop(ino))
        while self._pool:
            os.close(self._pool.pop()[1])
        for ino in list(self.readers):
            self.readers.pop(ino).close()
        for ino in list(self.pinned):
            self.pinned.pop(ino).release()
        if self.version is not None:
            self.version.release()
            self.version = None


class _Held:
    """A decoder of one clean entry and the archive version it reads."""

    __slots__ = ("reader", "version", "node", "busy")

    def __init__(self, reader: EntryReader, version: ArchiveVersion, node: Node) -> None:
        self.reader = reader
        self.version = version
        self.node = node
        self.busy = 0  # reads running on a worker thread

    def close(self) -> None:
        self.reader.close()
        self.version.release()


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_file(src: str, path: str) -> None:
    """Copy-on-write of a frozen spill file (in the kernel where it can)."""
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd = create_file(path)
        try:
            size = os.fstat(sfd).st_size
            off = 0
            while off < size:
                try:
                    n = os.copy_file_range(sfd, fd, min(COPY_CHUNK * 64, size - off), off, off)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    n = 0
                if n <= 0:  # no copy_file_range here: plain reads and writes
                    chunk = os.pread(sfd, min(COPY_CHUNK, size - off), off)
                    if not chunk:
                        raise OSError(errno.EIO, "spill file ended early during a copy")
                    write_all(fd, chunk, off)
                    n = len(chunk)
                off += n
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
    finally:
        os.close(sfd)


def _copy_entry(reader: EntryReader, path: str, size: int) -> None:
    fd = create_file(path)  # O_EXCL|O_NOFOLLOW: never a file someone else prepared
    try:
        off = 0
        while off < size:
            chunk = reader.read(off, min(COPY_CHUNK, size - off))
            if not chunk:
                raise OSError(errno.EIO, "archive entry ended early during copy-up")
            write_all(fd, chunk, off)
            off += len(chunk)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def _spawn_system_task(what: str, fn: Callable[[], Awaitable[None]]) -> None:
    trio.lowlevel.spawn_system_task(fn, name=what)
