"""The fastest filesystem this stack allows: pyfuse3 + trio with every answer in memory.

    python -m benchmarks.floorfs [ARCHIVE] MOUNTPOINT [--ro]

The ``floor`` system of the benchmarks. It preloads ARCHIVE's plaintext into memory (before it
mounts, so no request waits for it; a missing ARCHIVE gives an empty tree), then answers every
request from dicts: no archive format, no journal, no spill files, no decompression, no
durability. It talks to the kernel exactly the way zipfuse does (same pyfuse3, same options:
open/opendir/create answer ENOSYS when pyfuse3 has the kernel-cache patch, no writeback cache,
atomic O_TRUNC off, flush and the xattr calls ENOSYS, 24 h entry and attribute timeouts,
default_permissions, READDIRPLUS), so the number and kind of requests a workload sends are the
same.

What it measures is the part of zipfuse's time that no zipfuse code can remove: the kernel's
requests, pyfuse3's and trio's cost per request, and the workload itself. A workload where
zipfuse is near ``floor`` has nothing left to gain in zipfuse; a target below ``floor`` cannot
be met on pyfuse3 + trio. Writes are kept until unmount and then dropped.
"""

from __future__ import annotations

import argparse
import errno
import gc
import os
import stat
import struct
import sys
import time
import zipfile

import pyfuse3
import trio

TIMEOUT = 24 * 3600.0
KERNEL_CACHE = bool(getattr(pyfuse3, "NO_OPEN_SUPPORT", False))


class Node:
    __slots__ = ("ino", "mode", "data", "kids", "names", "mtime_ns", "nlink")

    def __init__(self, ino: int, mode: int, data: bytes = b"", mtime_ns: int = 0) -> None:
        self.ino = ino
        self.mode = mode
        self.data = data
        self.kids: dict[bytes, Node] | None = {} if stat.S_ISDIR(mode) else None
        self.names: list[bytes] = []  # listing order (readdir cookies are positions)
        self.mtime_ns = mtime_ns or time.time_ns()
        self.nlink = 2 if stat.S_ISDIR(mode) else 1


def _mtime_ns(info: zipfile.ZipInfo) -> int:
    """The Info-ZIP extended timestamp (exact seconds, UTC) when there is one, as zipfuse
    shows it: with the DOS time's 2-second steps, Python would find its .pyc files stale."""
    extra, at = info.extra, 0
    while at + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, at)
        if tag == 0x5455 and size >= 5 and extra[at + 4] & 1:
            return struct.unpack_from("<i", extra, at + 5)[0] * 10**9
        at += 4 + size
    return int(time.mktime(info.date_time + (0, 0, -1)) * 1e9)


class FloorFS(pyfuse3.Operations):
    enable_writeback_cache = False
    supports_dot_lookup = True

    def __init__(self, read_only: bool) -> None:
        super().__init__()
        self.read_only = read_only
        self.enable_atomic_o_trunc = not KERNEL_CACHE
        self.nodes: dict[int, Node] = {}
        self.root = self._new(stat.S_IFDIR | 0o755, pyfuse3.ROOT_INODE)

    # ------------------------------------------------------------------ tree
    def _new(self, mode: int, ino: int | None = None, data: bytes = b"", mtime_ns: int = 0):
        node = Node(ino if ino is not None else len(self.nodes) + 1, mode, data, mtime_ns)
        self.nodes[node.ino] = node
        return node

    def _link(self, parent: Node, name: bytes, node: Node) -> None:
        assert parent.kids is not None
        parent.kids[name] = node
        parent.names.append(name)
        parent.mtime_ns = time.time_ns()

    def _dir_for(self, path: list[bytes]) -> Node:
        d = self.root
        for part in path:
            assert d.kids is not None
            nxt = d.kids.get(part)
            if nxt is None:
                nxt = self._new(stat.S_IFDIR | 0o755)
                self._link(d, part, nxt)
            d = nxt
        return d

    def load(self, archive: str) -> None:
        """Every entry of ``archive`` into memory, plaintext (Python's zipfile reads it)."""
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                parts = [p.encode() for p in info.filename.split("/") if p]
                if not parts:
                    continue
                mode = info.external_attr >> 16
                mtime_ns = _mtime_ns(info)
                if info.is_dir():
                    d = self._dir_for(parts)
                    d.mode = stat.S_IFDIR | (stat.S_IMODE(mode) or 0o755)
                    d.mtime_ns = mtime_ns
                    continue
                parent = self._dir_for(parts[:-1])
                kind = stat.S_IFMT(mode) or stat.S_IFREG
                node = self._new(kind | (stat.S_IMODE(mode) or 0o644), None, z.read(info), mtime_ns)
                self._link(parent, parts[-1], node)

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.st_mode = node.mode
        a.st_nlink = node.nlink
        a.st_uid = os.getuid()
        a.st_gid = os.getgid()
        a.st_size = len(node.data)
        a.st_blksize = 4096
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        a.entry_timeout = a.attr_timeout = TIMEOUT
        a.generation = 0
        return a

    def _writable(self) -> None:
        if self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    # ------------------------------------------------------------------ lookups and reads
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self.nodes[parent_inode]
        if name == b".":
            node = parent
        else:
            assert parent.kids is not None
            node = parent.kids.get(name)
        if node is None:
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = 0
            neg.entry_timeout = TIMEOUT
            return neg
        return self._attrs(node)

    async def getattr(self, inode, ctx=None):
        return self._attrs(self.nodes[inode])

    async def readlink(self, inode, ctx):
        return self.nodes[inode].data

    async def open(self, inode, flags, ctx):
        if KERNEL_CACHE:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if flags & (os.O_WRONLY | os.O_RDWR):
            self._writable()
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def opendir(self, inode, ctx):
        if KERNEL_CACHE:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return inode

    async def read(self, fh, off, size):
        piece = self.nodes[fh].data[off : off + size]
        return piece if type(piece) is bytes else bytes(piece)

    async def readdir(self, fh, start_id, token):
        d = self.nodes[fh]
        assert d.kids is not None
        for i in range(start_id, len(d.names)):
            name = d.names[i]
            node = d.kids.get(name)
            if node is not None and not pyfuse3.readdir_reply(
                token, name, self._attrs(node), i + 1
            ):
                break

    async def flush(self, fh):
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 30
        s.f_files = s.f_ffree = s.f_favail = 1 << 30
        s.f_namemax = 255
        return s

    # ------------------------------------------------------------------ writes
    async def create(self, parent_inode, name, mode, flags, ctx):
        if KERNEL_CACHE:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # as zipfuse: the kernel sends MKNOD
        node = await self.mknod(parent_inode, name, mode, 0, ctx)
        return pyfuse3.FileInfo(fh=node.st_ino, keep_cache=True), node

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._writable()
        node = self._new(mode)
        self._link(self.nodes[parent_inode], name, node)
        return self._attrs(node)

    async def mkdir(self, parent_inode, name, mode, ctx):
        return await self.mknod(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), 0, ctx)

    async def symlink(self, parent_inode, name, target, ctx):
        self._writable()
        node = self._new(stat.S_IFLNK | 0o777, None, target)
        self._link(self.nodes[parent_inode], name, node)
        return self._attrs(node)

    async def write(self, fh, off, buf):
        self._writable()
        node = self.nodes[fh]
        if type(node.data) is not bytearray:
            node.data = bytearray(node.data)
        data = node.data
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off : off + len(buf)] = buf
        node.mtime_ns = time.time_ns()
        return len(buf)

    async def setattr(self, inode, attr, fields, fh, ctx):
        self._writable()
        node = self.nodes[inode]
        if fields.update_size:
            node.data = bytearray(node.data[: attr.st_size].ljust(attr.st_size, b"\0"))
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        return self._attrs(node)

    async def fsync(self, fh, datasync):
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", metavar="[ARCHIVE] MOUNTPOINT")
    ap.add_argument("--ro", action="store_true", help="read-only mount")
    args = ap.parse_args(argv)
    if len(args.paths) > 2:
        ap.error("at most ARCHIVE and MOUNTPOINT")
    *archive, mountpoint = args.paths
    fs = FloorFS(args.ro)
    if archive and os.path.exists(archive[0]):
        fs.load(archive[0])
    gc.collect()
    gc.freeze()  # as zipfuse does after its load: the collector never walks the tree again
    options = set(pyfuse3.default_options)
    options.update(["fsname=floorfs", "subtype=floorfs"] + (["ro"] if args.ro else []))
    pyfuse3.init(fs, mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
