"""The FUSE adapter: one ``pyfuse3.Operations`` subclass whose handlers stay thin.

Handlers look up inodes and handles, translate arguments into calls of the overlay
(``overlay.py``, where every mutation takes the gate and is journaled) and its answers into
FUSE replies. One error boundary (``_guard``) turns OSError into its errno and any other
exception into a logged EIO, so a bug fails one request and never takes the mount down.
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

from .namespace import Node
from .overlay import AttrChange, Overlay

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


def _new_attributes() -> pyfuse3.EntryAttributes:
    """EntryAttributes with what is the same for every node set (``_fill`` sets the rest)."""
    a = pyfuse3.EntryAttributes()
    a.st_blksize = 4096
    a.entry_timeout = CACHE_TIMEOUT
    a.attr_timeout = CACHE_TIMEOUT
    return a


def _fill(a: pyfuse3.EntryAttributes, node: Node) -> None:
    """Set every field of ``a`` that depends on the node."""
    a.st_ino = node.ino
    a.st_mode = node.mode
    a.st_nlink = max(node.nlink, 0)
    a.st_uid = node.uid
    a.st_gid = node.gid
    a.st_rdev = node.rdev
    a.st_size = size = node.size
    a.st_blocks = (size + 511) // 512
    a.st_atime_ns = node.atime_ns
    a.st_mtime_ns = node.mtime_ns
    a.st_ctime_ns = node.ctime_ns


# handlers whose first argument is a file handle, not an inode
_FH_HANDLERS = frozenset({"read", "write", "flush", "release", "fsync"})


class ZipOperations(pyfuse3.Operations):
    """No flush handler on purpose: the kernel writes cached pages back before FLUSH either way,
    and once flush answers ENOSYS it stops sending one per close(2) (a round trip per file)."""

    enable_writeback_cache = False
    supports_dot_lookup = True

    def __init__(self, overlay: Overlay, *, kernel_cache: bool = False) -> None:
        """``kernel_cache`` (needs the patched pyfuse3, see pyfuse3_caps): open and opendir
        answer ENOSYS, so the kernel opens files and directories itself, keeps their pages and
        listings, and sends the inode as the handle; O_TRUNC then comes as a setattr."""
        super().__init__()
        self.overlay = overlay
        self.read_only = overlay.read_only
        self.kernel_cache = kernel_cache
        self.enable_atomic_o_trunc = not kernel_cache
        # No writeback cache, on read-write mounts too. With it the kernel marks st_blocks stale
        # at every close: each later stat (Python's open() does one) costs a GETATTR it could
        # otherwise answer itself; and every written file costs a SETATTR at close (the kernel
        # sends its own mtime/ctime), which cp -a of many small files pays once per file
        # (7 -> 6 requests per new file). Without it each write(2) is one WRITE (cp: 128 KiB,
        # sendfile/copy_file_range: up to 1 MiB) and the bytes are in the spill file when
        # write(2) returns.
        self.enable_writeback_cache = False
        self.handles: dict[int, Node] = {}  # open file handle -> its inode
        self.dir_handles: dict[int, Node] = {}  # open directory handle -> the directory
        self._next_fh = 1
        self._statfs_cache: tuple[float, pyfuse3.StatvfsData] | None = None

    # ------------------------------------------------------------------------ helpers
    def _where(self, handler: str, args: tuple) -> str:
        """The path a failed request was about, for the log (best effort, never raises)."""
        try:
            first = args[0]
            if handler in _FH_HANDLERS and not self.kernel_cache:
                node = self.handles[first]
            else:
                node = self.overlay.node(first)
            path = self.overlay.path(node)
            where = "<unlinked>" if path is None else "/" + path
            if len(args) > 1 and isinstance(args[1], bytes):
                where = f"{where.rstrip('/')}/{os.fsdecode(args[1])}"
            return where
        except Exception:
            return repr(args[:2])

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = _new_attributes()
        _fill(a, node)
        return a

    def _new_fh(self, table: dict[int, Node], node: Node) -> int:
        fh = self._next_fh
        self._next_fh += 1
        table[fh] = node
        return fh

    def _file(self, fh: int) -> Node:
        """The inode a file handle stands for (in kernel-cache mode, the handle IS the inode)."""
        return self.overlay.node(fh) if self.kernel_cache else self.handles[fh]

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        node.lookups += 1
        return self.attrs(node)

    # ------------------------------------------------------------------------ lookups
    @_guard
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        node = self.overlay.lookup(parent_inode, name)
        if node is None:
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = 0  # a negative entry the kernel may cache
            neg.entry_timeout = CACHE_TIMEOUT
            return neg
        return self._entry(node)

    def forget(self, inode_list: list[tuple[int, int]]) -> None:  # type: ignore[override]
        for ino, count in inode_list:
            try:
                self.overlay.forget(ino, count)
            except Exception:  # forget must never raise
                log.exception("forget(%d) failed", ino)

    @_guard
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self.attrs(self.overlay.node(inode))

    @_guard
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return await self.overlay.readlink(self.overlay.node(inode))

    @_guard
    async def opendir(self, inode: int, ctx: Any) -> int:
        if self.kernel_cache:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # the kernel opens and caches listings
        return self._new_fh(self.dir_handles, self.overlay.directory(inode))

    @_guard
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        if self.kernel_cache:
            directory = self.overlay.directory(fh)
        else:
            directory = self.dir_handles[fh]
        a = _new_attributes()  # readdir_reply copies it: one for the whole reply
        reply = pyfuse3.readdir_reply
        for cookie, name, node in self.overlay.listing(directory, start_id):
            _fill(a, node)
            if not reply(token, name, a, cookie):
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
        sv = os.statvfs(self.overlay.spill.path)
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = sv.f_frsize or 4096
        s.f_blocks = sv.f_blocks
        s.f_bfree = sv.f_bfree
        s.f_bavail = 0 if self.read_only else sv.f_bavail
        used = self.overlay.ns.count()
        free = 0 if self.read_only else 1 << 30  # entries cost no inode of the host filesystem
        s.f_files = used + free
        s.f_ffree = s.f_favail = free
        s.f_namemax = 255
        self._statfs_cache = (now, s)
        return s

    # ------------------------------------------------------------------------ data
    @_guard
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        if self.kernel_cache:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # no OPEN/RELEASE from now on
        node = self.overlay.node(inode)
        await self.overlay.open(node, flags)
        return pyfuse3.FileInfo(fh=self._new_fh(self.handles, node), keep_cache=True)

    @_guard
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.overlay.read(self._file(fh), off, size)

    @_guard
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.overlay.write(self._file(fh), off, buf)

    @_guard
    async def release(self, fh: int) -> None:
        if not self.kernel_cache:
            await self.overlay.release(self.handles.pop(fh))

    @_guard
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.overlay.fsync(self._file(fh))

    @_guard
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.overlay.fsync(None)

    # ------------------------------------------------------------------------ attributes
    @_guard
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        node = self.overlay.node(inode)
        change = AttrChange(
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            ctime_ns=attr.st_ctime_ns if fields.update_ctime else None,
        )
        await self.overlay.setattr(node, change)
        return self.attrs(node)

    # ------------------------------------------------------------------------ namespace
    @_guard
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        if self.kernel_cache:
            # The kernel then makes files with MKNOD and opens them itself (OPEN answers ENOSYS):
            # a CREATE would also cost a RELEASE per file, as no_open is only learnt from OPEN.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        node = await self.overlay.create(parent_inode, name, mode, ctx.uid, ctx.gid)
        info = pyfuse3.FileInfo(fh=self._new_fh(self.handles, node), keep_cache=True)
        return info, self._entry(node)

    @_guard
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        mode = stat.S_IFDIR | stat.S_IMODE(mode)
        return self._entry(await self.overlay.make(parent_inode, name, mode, ctx.uid, ctx.gid))

    @_guard
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        kind = stat.S_IFMT(mode)
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise OSError(errno.EINVAL, "not a file type mknod can make")
        if kind not in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = 0  # devices keep theirs in the PKWARE Unix extra field (0x000d)
        node = await self.overlay.make(parent_inode, name, mode, ctx.uid, ctx.gid, rdev=rdev)
        return self._entry(node)

    @_guard
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        mode = stat.S_IFLNK | 0o777
        node = await self.overlay.make(parent_inode, name, mode, ctx.uid, ctx.gid, target=target)
        return self._entry(node)

    @_guard
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        return self._entry(await self.overlay.link(inode, new_parent_inode, new_name))

    @_guard
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.overlay.unlink(parent_inode, name)

    @_guard
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.overlay.rmdir(parent_inode, name)

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
        await self.overlay.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
