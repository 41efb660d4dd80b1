"""A tiny in-memory pyfuse3 filesystem that counts its requests (tests of the pyfuse3 patch).

    python kcfs.py MOUNTPOINT --stats FILE [--no-open] [--no-opendir] [--cache-dir]
                   [--no-atomic-trunc] [--ro] [--no-writeback]
                   [--dirs N] [--files N] [--size BYTES]

The tree: ``d0000``..``dNNNN`` in the root, each holding ``f0000``..``fNNNN`` of --size bytes, and
a root file ``existing`` (100 bytes). Files can be created, written, truncated and unlinked.
SIGUSR1 writes the request counters (and what the handlers saw) to --stats as JSON, atomically,
with the number of trio task steps so far (what the request loop costs the event loop).

Handlers that wait (for the request loop of the inline-requests patch): a READ of the root file
``slow`` takes a trio.Lock and, holding it, waits until some READ of ``go`` has arrived, then
returns ``slow`` 's 4 bytes; a READ of ``queue`` takes the same lock (so it waits for ``slow``); a
READ of ``fails`` yields to the event loop once, then fails with EIO.

Modes (the last three need pyfuse3 with patches/pyfuse3-*-kernel-cache.patch):
- default: open/opendir hand out handles, like any pyfuse3 filesystem (stock behaviour);
- --cache-dir: opendir returns a FileInfo with cache_readdir and keep_cache;
- --no-open / --no-opendir: open / opendir raise ENOSYS; handlers get the inode as fh;
- --no-atomic-trunc: clear FUSE_CAP_ATOMIC_O_TRUNC (O_TRUNC arrives as setattr(size=0)).

Known shortcuts: lookup counts are not kept (nothing is freed before unmount except unlinked
names), permissions come from default_permissions, there are no hard links or renames.
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import signal
import stat
import time

import pyfuse3
import trio

TIMEOUT = 86400.0


class Node:
    __slots__ = ("ino", "mode", "data", "children", "mtime_ns")

    def __init__(self, ino: int, mode: int, data: bytes = b"") -> None:
        self.ino = ino
        self.mode = mode
        self.data = bytearray(data)
        self.children: dict[bytes, Node] | None = {} if stat.S_ISDIR(mode) else None
        self.mtime_ns = time.time_ns()


class CountingFS(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.no_open = args.no_open
        self.no_opendir = args.no_opendir
        self.cache_dir = args.cache_dir
        self.enable_atomic_o_trunc = not args.no_atomic_trunc
        self.enable_writeback_cache = not args.no_writeback
        self.counts: collections.Counter[str] = collections.Counter()
        self.seen: dict[str, list[int]] = collections.defaultdict(list)  # fh values per handler
        self.truncations: list[int] = []  # sizes set by setattr
        self.open_flags: list[int] = []
        self.nodes: dict[int, Node] = {}
        self.handles: dict[int, int] = {}  # fh -> inode (stock modes)
        self.next_fh = 1 << 32  # never equal to an inode number
        root = self._new(stat.S_IFDIR | 0o755)
        assert root.ino == pyfuse3.ROOT_INODE
        payload = bytes(range(256)) * (args.size // 256 + 1)
        for d in range(args.dirs):
            dn = self._new(stat.S_IFDIR | 0o755)
            root.children[b"d%04d" % d] = dn
            for f in range(args.files):
                dn.children[b"f%04d" % f] = self._new(stat.S_IFREG | 0o644, payload[: args.size])
        root.children[b"existing"] = self._new(stat.S_IFREG | 0o644, b"0123456789" * 10)
        special = (b"slow", b"go", b"fails", b"queue")
        for name in special:
            root.children[name] = self._new(stat.S_IFREG | 0o644, name[:4])
        self.special = {root.children[n].ino: n for n in special}
        self.go: trio.Event | None = None  # made in the trio run (see read)
        self.lock: trio.Lock | None = None
        self.task_steps = 0

    # -- helpers --------------------------------------------------------------------------

    def _new(self, mode: int, data: bytes = b"") -> Node:
        node = Node(len(self.nodes) + 1, mode, data)
        self.nodes[node.ino] = node
        return node

    def _count(self, op: str, fh: int | None = None) -> None:
        self.counts[op] += 1
        if fh is not None and len(self.seen[op]) < 10000:
            self.seen[op].append(fh)

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.st_mode = node.mode
        a.st_nlink = 2 if node.children is not None else 1
        a.st_size = len(node.data)
        a.st_blksize = 4096
        a.st_blocks = (len(node.data) + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        a.st_uid = os.getuid()
        a.st_gid = os.getgid()
        a.entry_timeout = a.attr_timeout = TIMEOUT
        return a

    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _file(self, fh: int, no_open: bool) -> Node:
        """Under no_open the patched pyfuse3 passes the inode; otherwise fh is our handle."""
        ino = fh if no_open else self.handles.get(fh)
        if ino is None or ino not in self.nodes:
            raise pyfuse3.FUSEError(errno.EBADF)
        return self.nodes[ino]

    def _handle(self, ino: int) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = ino
        return fh

    # -- handlers -------------------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx=None):
        self._count("lookup")
        children = self._node(parent_inode).children
        if children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name == b".":
            return self._attrs(self._node(parent_inode))
        try:
            return self._attrs(children[name])
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    async def getattr(self, inode, ctx=None):
        self._count("getattr")
        return self._attrs(self._node(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        self._count("setattr", fh)
        node = self._node(inode)
        if fields.update_size:
            self.truncations.append(attr.st_size)
            del node.data[attr.st_size :]
            node.data.extend(bytes(attr.st_size - len(node.data)))
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        return self._attrs(node)

    async def forget(self, inode_list):
        self.counts["forget"] += 1

    async def open(self, inode, flags, ctx):
        self._count("open")
        self.open_flags.append(flags)
        if self.no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        node = self._node(inode)
        if flags & os.O_TRUNC:
            del node.data[:]
        return pyfuse3.FileInfo(fh=self._handle(inode), keep_cache=True)

    async def create(self, parent_inode, name, mode, flags, ctx):
        self._count("create")
        parent = self._node(parent_inode)
        if name in parent.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = self._new(mode)
        parent.children[name] = node
        parent.mtime_ns = time.time_ns()
        # Under no_open no release follows a create: the inode is the handle, as for open.
        fh = node.ino if self.no_open else self._handle(node.ino)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._attrs(node)

    async def read(self, fh, off, size):
        self._count("read", fh)
        node = self._file(fh, self.no_open)
        special = self.special.get(node.ino)
        if special is not None:
            if self.go is None or self.lock is None:
                self.go, self.lock = trio.Event(), trio.Lock()
            if special == b"go":
                self.go.set()
            elif special == b"slow":
                async with self.lock:
                    await self.go.wait()  # until a READ of ``go`` is served meanwhile
            elif special == b"queue":
                async with self.lock:  # handed over by ``slow``'s task to this one
                    pass
            else:
                await trio.sleep(0)
                raise pyfuse3.FUSEError(errno.EIO)
        return bytes(node.data[off : off + size])

    async def write(self, fh, off, buf):
        self._count("write", fh)
        node = self._file(fh, self.no_open)
        if len(node.data) < off:
            node.data.extend(bytes(off - len(node.data)))
        node.data[off : off + len(buf)] = buf
        node.mtime_ns = time.time_ns()
        return len(buf)

    async def flush(self, fh):
        self._count("flush", fh)
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh):
        self._count("release", fh)
        if not self.no_open:
            self.handles.pop(fh, None)

    async def fsync(self, fh, datasync):
        self._count("fsync", fh)
        self._file(fh, self.no_open)

    async def opendir(self, inode, ctx):
        self._count("opendir")
        if self.no_opendir:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if self._node(inode).children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._handle(inode)
        if self.cache_dir:
            return pyfuse3.FileInfo(fh=fh, keep_cache=True, cache_readdir=True)
        return fh

    async def readdir(self, fh, start_id, token):
        self._count("readdir", fh)
        node = self._file(fh, self.no_opendir)
        if node.children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        names = list(node.children)
        for i in range(start_id, len(names)):
            child = node.children[names[i]]
            if not pyfuse3.readdir_reply(token, names[i], self._attrs(child), i + 1):
                break

    async def releasedir(self, fh):
        self._count("releasedir", fh)
        if not self.no_opendir:
            self.handles.pop(fh, None)

    async def unlink(self, parent_inode, name, ctx):
        self._count("unlink")
        parent = self._node(parent_inode)
        if name not in parent.children:
            raise pyfuse3.FUSEError(errno.ENOENT)
        del parent.children[name]  # the node stays in self.nodes: reads may still come
        parent.mtime_ns = time.time_ns()

    async def statfs(self, ctx):
        self._count("statfs")
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        return s

    # -- stats ----------------------------------------------------------------------------

    def dump(self, path: str, seq: int) -> None:
        root = self.nodes[pyfuse3.ROOT_INODE]
        doc = {
            "seq": seq,
            "counts": dict(self.counts),
            "seen": dict(self.seen),
            "truncations": self.truncations,
            "open_flags": self.open_flags,
            "task_steps": self.task_steps,
            "root_files": {
                n.decode(): bytes(c.data).decode("latin-1")
                for n, c in root.children.items()
                if c.children is None and len(c.data) <= 4096
            },
        }
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)


class StepCounter(trio.abc.Instrument):
    """Counts trio task steps: each is a trip through the event loop for some task."""

    def __init__(self, ops: CountingFS) -> None:
        self.ops = ops

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.ops.task_steps += 1


async def serve(ops: CountingFS, stats: str) -> None:
    trio.lowlevel.add_instrument(StepCounter(ops))
    async with trio.open_nursery() as nursery:

        async def fuse_loop() -> None:
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

        nursery.start_soon(fuse_loop)
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            seq = 0
            ops.dump(stats, seq)
            async for _ in signals:
                seq += 1
                ops.dump(stats, seq)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mountpoint")
    p.add_argument("--stats", required=True)
    p.add_argument("--no-open", action="store_true")
    p.add_argument("--no-opendir", action="store_true")
    p.add_argument("--cache-dir", action="store_true")
    p.add_argument("--no-atomic-trunc", action="store_true")
    p.add_argument("--ro", action="store_true", help="mount read-only")
    p.add_argument("--no-writeback", action="store_true", help="without the writeback cache")
    p.add_argument("--dirs", type=int, default=3)
    p.add_argument("--files", type=int, default=3)
    p.add_argument("--size", type=int, default=1000)
    args = p.parse_args()
    patched = getattr(pyfuse3, "NO_OPEN_SUPPORT", False)
    if not patched and (args.no_open or args.no_opendir or args.cache_dir or args.no_atomic_trunc):
        p.error("these options need pyfuse3 with the kernel-cache patch")
    ops = CountingFS(args)
    opts = set(pyfuse3.default_options)
    opts.add("fsname=kcfs")
    if args.ro:
        opts.add("ro")
    pyfuse3.init(ops, args.mountpoint, opts)
    try:
        trio.run(serve, ops, args.stats)
    except BaseException:
        pyfuse3.close(unmount=False)
        raise
    pyfuse3.close()


if __name__ == "__main__":
    main()
