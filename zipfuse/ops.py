"""The FUSE adapter: one ``pyfuse3.Operations`` subclass whose handlers stay thin.

Handlers translate between FUSE requests and the namespace (``namespace.py``), the file data
(``filedata.py``) and the commit (``commit.py``). One error boundary (``_guard``) turns OSError
into its errno and any other exception into a logged EIO, so a bug fails one request and never
takes the mount down.

Concurrency: everything runs on the trio thread, so code between two awaits is atomic. Only
decompression of larger entries, copy-up and fsync leave the thread. Mutations that await
register in ``self.gate`` so a commit can wait for them and hold new ones back.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from .filedata import FileData
from .journal import Journal
from .namespace import RENAME_EXCHANGE, RENAME_NOREPLACE, Namespace, Node
from .osutil import now_ns

log = logging.getLogger(__name__)

# Every change goes through this mount, so the kernel may keep names and attributes for long.
CACHE_TIMEOUT = 24 * 3600.0
_LOGGED_ERRNOS = {errno.EIO, errno.EACCES, errno.EOPNOTSUPP, errno.ENOSPC, errno.EDQUOT}

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _guard(fn: F) -> F:
    """Map OSError to its errno, everything unexpected to a logged EIO (never crash the mount)."""

    @functools.wraps(fn)
    async def wrapper(self: ZipOperations, *args: Any) -> Any:
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            code = exc.errno or errno.EIO
            if code in _LOGGED_ERRNOS:
                log.error("%s %s: %s", fn.__name__, self._where(fn.__name__, args), exc)
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            log.exception("unexpected error in %s %s", fn.__name__, self._where(fn.__name__, args))
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


# handlers whose first argument is a file handle, not an inode
_FH_HANDLERS = frozenset({"read", "write", "flush", "release", "fsync"})


class Gate:
    """Lets a commit wait for in-flight mutations and hold new ones back while it runs."""

    def __init__(self) -> None:
        self.busy = 0
        self.closed = False
        self._idle = trio.Event()
        self._open = trio.Event()
        self._open.set()

    async def enter(self) -> None:
        while self.closed:
            await self._open.wait()
        self.busy += 1

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


class ZipOperations(pyfuse3.Operations):
    """No flush handler on purpose: the kernel writes cached pages back before FLUSH either way,
    and once flush answers ENOSYS it stops sending one per close(2) (a round trip per file)."""

    enable_writeback_cache = True
    supports_dot_lookup = True

    def __init__(
        self, ns: Namespace, data: FileData, *, read_only: bool, journal: Journal | None = None
    ) -> None:
        super().__init__()
        self.ns = ns
        self.data = data
        self.read_only = read_only
        self.journal = journal
        self.unlogged: set[int] = set()  # inodes written since their last journal data record
        self.gate = Gate()
        self.handles: dict[int, Node] = {}  # open file handle -> its inode
        self.dir_handles: dict[int, list[tuple[bytes, Node]]] = {}
        self._next_fh = 1
        self._statfs_cache: tuple[float, pyfuse3.StatvfsData] | None = None

    # ------------------------------------------------------------------------ helpers
    def _where(self, handler: str, args: tuple) -> str:
        """The path a failed request was about, for the log (best effort, never raises)."""
        try:
            first = args[0]
            if handler in _FH_HANDLERS:
                node = self.handles[first]
            else:
                node = self.ns.nodes[first]
            path = self.ns.path(node)
            where = "<unlinked>" if path is None else "/" + path
            if len(args) > 1 and isinstance(args[1], bytes):
                where = f"{where.rstrip('/')}/{os.fsdecode(args[1])}"
            return where
        except Exception:
            return repr(args[:2])

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.st_mode = node.mode
        a.st_nlink = max(node.nlink, 0)
        a.st_uid = node.uid
        a.st_gid = node.gid
        a.st_rdev = node.rdev
        a.st_size = node.size
        a.st_blksize = 4096
        a.st_blocks = (node.size + 511) // 512
        a.st_atime_ns = node.atime_ns
        a.st_mtime_ns = node.mtime_ns
        a.st_ctime_ns = node.ctime_ns
        a.entry_timeout = CACHE_TIMEOUT
        a.attr_timeout = CACHE_TIMEOUT
        return a

    def _writable(self) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, "read-only mount")

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        node.lookups += 1
        return self.attrs(node)

    def _child_path(self, parent_inode: int, name: bytes) -> str | None:
        head = self.ns.path(self.ns.get(parent_inode))
        if head is None:
            return None
        return os.fsdecode(name) if not head else f"{head}/{os.fsdecode(name)}"

    def _log_data(self, node: Node) -> None:
        """Record in the journal which spill file now holds the node's content."""
        if node.ino in self.unlogged and self.journal is not None:
            self.unlogged.discard(node.ino)
            path = self.ns.path(node)
            if path is not None and node.spill is not None:
                self.journal.data(path, node)

    # ------------------------------------------------------------------------ lookups
    @_guard
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        if len(name) > 255:  # the kernel passes names up to 1024 bytes
            raise OSError(errno.ENAMETOOLONG, "name too long")
        node = self.ns.child(self.ns.dir(parent_inode), name)
        if node is None:
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = 0  # a negative entry the kernel may cache
            neg.entry_timeout = CACHE_TIMEOUT
            return neg
        return self._entry(node)

    def forget(self, inode_list: list[tuple[int, int]]) -> None:  # type: ignore[override]
        for ino, count in inode_list:
            try:
                self.ns.forget(ino, count)
            except Exception:  # forget must never raise
                log.exception("forget(%d) failed", ino)

    @_guard
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self.attrs(self.ns.get(inode))

    @_guard
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = self.ns.get(inode)
        if not stat.S_ISLNK(node.mode):
            raise OSError(errno.EINVAL, "not a symlink")
        if node.target is None:
            node.target = await self.data.read_all(node)
        return node.target

    @_guard
    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self.ns.dir(inode)
        fh = self._new_fh()
        self.dir_handles[fh] = list(node.children.items())
        return fh

    @_guard
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = self.dir_handles[fh]
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            if node.ino not in self.ns.nodes:
                continue
            if not pyfuse3.readdir_reply(token, name, self.attrs(node), i + 1):
                break
            node.lookups += 1

    @_guard
    async def releasedir(self, fh: int) -> None:
        self.dir_handles.pop(fh, None)

    @_guard
    async def statfs(self, ctx: Any) -> Any:
        now = time.monotonic()
        if self._statfs_cache and now - self._statfs_cache[0] < 5:
            return self._statfs_cache[1]
        sv = os.statvfs(self.data.space_path)
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = sv.f_frsize or 4096
        s.f_blocks = sv.f_blocks
        s.f_bfree = sv.f_bfree
        s.f_bavail = 0 if self.read_only else sv.f_bavail
        used = self.ns.count()
        free = 0 if self.read_only else 1 << 30  # entries cost no inode of the host filesystem
        s.f_files = used + free
        s.f_ffree = s.f_favail = free
        s.f_namemax = 255
        self._statfs_cache = (now, s)
        return s

    # ------------------------------------------------------------------------ data
    @_guard
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        node = self.ns.get(inode)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable or flags & os.O_TRUNC:
            self._writable()
        if flags & os.O_TRUNC:
            if not writable:
                raise OSError(errno.EINVAL, "O_TRUNC on a read-only open")
            await self.gate.enter()
            try:
                self.data.truncate_to_empty(node)
                self.ns.touch(node, now_ns())
                self.unlogged.add(node.ino)
            finally:
                self.gate.leave()
        node.opens += 1
        fh = self._new_fh()
        self.handles[fh] = node
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_guard
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.data.read(self.handles[fh], off, size)

    @_guard
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self.handles[fh]
        await self.gate.enter()
        try:
            await self.data.write(node, off, buf)
        finally:
            self.gate.leave()
        node.mtime_ns = node.ctime_ns = now_ns()
        self.ns.changes += 1
        self.unlogged.add(node.ino)
        return len(buf)

    @_guard
    async def release(self, fh: int) -> None:
        node = self.handles.pop(fh)
        self._log_data(node)
        node.opens -= 1
        if node.opens <= 0:
            self.data.close(node)
        self.ns.maybe_drop(node)

    @_guard
    async def fsync(self, fh: int, datasync: bool) -> None:
        node = self.handles[fh]
        self._log_data(node)
        await self.data.fsync(node)
        await self._sync_journal()

    @_guard
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self._sync_journal()

    async def _sync_journal(self) -> None:
        if self.journal is not None and self.journal.unsynced:
            await trio.to_thread.run_sync(self.journal.sync)

    # ------------------------------------------------------------------------ attributes
    @_guard
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        node = self.ns.get(inode)
        self._writable()
        now = now_ns()
        if fields.update_size:
            if node.is_dir:
                raise OSError(errno.EISDIR, "is a directory")
            changed = attr.st_size != node.size
            await self.gate.enter()
            try:
                await self.data.truncate(node, attr.st_size)
            finally:
                self.gate.leave()
            if changed:  # the kernel keeps showing the old mtime for a same-size truncate
                node.mtime_ns = now
            self.unlogged.add(node.ino)
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        node.ctime_ns = attr.st_ctime_ns if fields.update_ctime else now
        node.meta_dirty = True
        self.ns.changes += 1
        if self.journal is not None:
            path = self.ns.path(node)
            if path is not None:
                self._log_data(node)
                self.journal.attr(path, node)
        return self.attrs(node)

    # ------------------------------------------------------------------------ namespace
    async def _make(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Node:
        self._writable()
        await self.gate.enter()
        try:
            parent = self.ns.dir(parent_inode)
            return self.ns.create(parent, name, mode, ctx.uid, ctx.gid, now_ns())
        finally:
            self.gate.leave()

    def _made(self, node: Node) -> Any:
        """Journal a new node and answer the kernel with its entry."""
        if self.journal is not None:
            path = self.ns.path(node)
            if path is not None:
                self.journal.make(path, node)
        return self._entry(node)

    @_guard
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        node = await self._make(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        node.opens += 1
        fh = self._new_fh()
        self.handles[fh] = node
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._made(node)

    @_guard
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        node = await self._make(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx)
        return self._made(node)

    @_guard
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        kind = stat.S_IFMT(mode)
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise OSError(errno.EINVAL, "not a file type mknod can make")
        node = await self._make(parent_inode, name, mode, ctx)
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            node.rdev = rdev  # stored in the PKWARE Unix extra field (0x000d) at commit
        return self._made(node)

    @_guard
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        node = await self._make(parent_inode, name, stat.S_IFLNK | 0o777, ctx)
        node.target = target
        node.size = len(target)
        return self._made(node)

    @_guard
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        self._writable()
        await self.gate.enter()
        try:
            node = self.ns.get(inode)
            src = self.ns.path(node)
            self.ns.link(node, self.ns.dir(new_parent_inode), new_name, now_ns())
        finally:
            self.gate.leave()
        dst = self._child_path(new_parent_inode, new_name)
        if self.journal is not None and src is not None and dst is not None:
            self.journal.link(src, dst)
        return self._entry(node)

    @_guard
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._writable()
        await self.gate.enter()
        try:
            path = self._child_path(parent_inode, name)
            node = self.ns.unlink(self.ns.dir(parent_inode), name, now_ns())
            if node.nlink > 0 and node.parent is not None:
                self.unlogged.add(node.ino)  # its primary path may have changed
        finally:
            self.gate.leave()
        if self.journal is not None and path is not None:
            self.journal.remove(path)

    @_guard
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._writable()
        await self.gate.enter()
        try:
            path = self._child_path(parent_inode, name)
            self.ns.rmdir(self.ns.dir(parent_inode), name, now_ns())
        finally:
            self.gate.leave()
        if self.journal is not None and path is not None:
            self.journal.remove(path)

    @_guard
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        self._writable()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise OSError(errno.EINVAL, "unsupported rename flags")
        await self.gate.enter()
        try:
            src = self._child_path(parent_inode_old, name_old)
            dst = self._child_path(parent_inode_new, name_new)
            self.ns.rename(
                self.ns.dir(parent_inode_old),
                name_old,
                self.ns.dir(parent_inode_new),
                name_new,
                flags,
                now_ns(),
            )
        finally:
            self.gate.leave()
        if self.journal is not None and src is not None and dst is not None:
            self.journal.rename(src, dst, flags)
