"""The in-memory tree: inodes, directories, link counts, lookup counts and per-file state.

No FUSE and no trio here: every method is synchronous and either succeeds or raises
``OSError(errno)``, so the FUSE adapter only translates. Code in here runs on the trio thread
between awaits, which makes each call atomic with respect to other requests.

Per-file data state:
- clean: ``node.entry`` is set and ``node.spill`` is None: the bytes live in the archive;
- dirty: ``node.spill`` names a file in the spill area holding the full current content;
- new and still empty: neither is set (size 0).
Metadata-only changes (mode, owner, times, name) keep a node clean, so commit can copy the
entry's compressed bytes as they are.

Name rules when loading an archive (see ``names.sanitize``): hostile names are neutralised or
skipped; for duplicate paths the LAST entry in central-directory order wins; when a file and a
directory claim the same path, the directory wins and the file is hidden. Each case is logged.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import stat
from collections.abc import Iterator

from .names import sanitize
from .zipformat import CentralDirectory, ZipEntry

log = logging.getLogger(__name__)

ROOT_INO = 1


class Node:
    """One inode. Directories have ``children``; files may have several names (hard links)."""

    __slots__ = (
        "ino",
        "mode",
        "uid",
        "gid",
        "rdev",
        "size",
        "mtime_ns",
        "atime_ns",
        "ctime_ns",
        "nlink",
        "entry",
        "entry_path",
        "spill",
        "target",
        "children",
        "parent",
        "name",
        "links",
        "lookups",
        "opens",
        "meta_dirty",
        "listing",
    )

    def __init__(self, ino: int, mode: int, uid: int, gid: int, now_ns: int) -> None:
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.rdev = 0
        self.size = 0
        self.mtime_ns = self.atime_ns = self.ctime_ns = now_ns
        self.nlink = 2 if stat.S_ISDIR(mode) else 1
        self.entry: ZipEntry | None = None  # where clean bytes live
        self.entry_path: str | None = None  # the entry's sanitised path, to detect renames
        self.spill: str | None = None  # spill file with the current content (dirty)
        self.target: bytes | None = None  # symlink target, once known
        self.children: dict[bytes, Node] | None = {} if stat.S_ISDIR(mode) else None
        self.parent: Node | None = None  # directory holding ``name`` (None: no name left)
        self.name = b""  # the node's primary name, so its path can be journaled
        self.links: list[tuple[Node, bytes]] | None = None  # further names of a hard link
        self.lookups = 0  # kernel lookup count
        self.opens = 0  # open file handles
        self.meta_dirty = False  # mode/owner/times changed since load or last commit
        self.listing: Listing | None = None  # readdir cookies, once the directory was listed

    @property
    def is_dir(self) -> bool:
        return self.children is not None


class Listing:
    """Stable readdir cookies of one directory.

    Each name gets the next number when it is added; a listing resumes after the last cookie it
    handed out. A name added during a listing may or may not be seen, a removed one is never
    handed out again (as POSIX allows), and a renamed one shows up under its new name only.
    """

    __slots__ = ("order", "cookie", "next")

    def __init__(self, names: Iterator[bytes]) -> None:
        self.order: list[tuple[int, bytes]] = []  # (cookie, name), cookies increasing
        self.cookie: dict[bytes, int] = {}  # live name -> its cookie
        self.next = 1
        for name in names:
            self.add(name)

    def add(self, name: bytes) -> None:
        self.order.append((self.next, name))
        self.cookie[name] = self.next
        self.next += 1

    def remove(self, name: bytes) -> None:
        del self.cookie[name]
        if len(self.order) > 2 * len(self.cookie) + 64:  # drop dead names, keep the cookies
            self.order = [(c, n) for c, n in self.order if self.cookie.get(n) == c]

    def after(self, cookie: int) -> Iterator[tuple[int, bytes]]:
        """Live (cookie, name) pairs past ``cookie``, in cookie order."""
        start = bisect.bisect_right(self.order, cookie, key=lambda pair: pair[0])
        for i in range(start, len(self.order)):
            pair = self.order[i]
            if self.cookie.get(pair[1]) == pair[0]:
                yield pair


class Namespace:
    """The whole tree of one mount plus the bookkeeping that decides when an inode may go."""

    def __init__(self, uid: int, gid: int, now_ns: int) -> None:
        self.uid = uid
        self.gid = gid
        self.nodes: dict[int, Node] = {}
        self._next_ino = ROOT_INO
        self.root = self._new_node(stat.S_IFDIR | 0o755, uid, gid, now_ns)
        self.root.parent = self.root
        self.root.lookups = 1  # the kernel holds the root for the whole mount
        self.changes = 0  # bumped by every mutation; commit compares it
        self.on_drop: list = []  # callbacks(node) when an inode disappears (spill cleanup)

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_archive(
        cls, cd: CentralDirectory | None, uid: int, gid: int, now_ns: int
    ) -> Namespace:
        """Build the tree from a central directory (None: a new, empty archive)."""
        ns = cls(uid, gid, now_ns)
        if cd is None:
            return ns
        dirs: dict[str, Node] = {"": ns.root}  # path -> directory, so each entry costs one lookup
        for entry in cd.entries:
            name = entry.name
            if _plain(name):
                path = name[:-1] if name.endswith("/") else name
            else:
                parts = sanitize(name)
                if parts is None:
                    log.warning("skipping entry with unsafe name %r", name)
                    continue
                path = "/".join(parts)
            if path:
                ns._load_entry(entry, path, dirs, now_ns)
        ns.changes = 0
        return ns

    def _dir_at(self, path: str, dirs: dict[str, Node], now_ns: int) -> Node:
        """The directory at ``path``, creating implicit parents (they have no entry)."""
        node = dirs.get(path)
        if node is not None:
            return node
        missing = []  # walk up to the nearest known directory, without recursion
        while node is None:
            missing.append(path)
            path = path.rpartition("/")[0]
            node = dirs.get(path)
        for path in reversed(missing):
            name = _enc(path.rpartition("/")[2])
            existing = node.children.get(name)
            if existing is not None and existing.is_dir:
                child = existing
            else:
                if existing is not None:
                    log.warning("%r: a directory hides the file of the same name", path)
                    self._detach(node, name, existing)
                child = self._new_node(stat.S_IFDIR | 0o755, self.uid, self.gid, now_ns)
                self._attach(node, name, child)
            dirs[path] = node = child
        return node

    def _load_entry(self, entry: ZipEntry, path: str, dirs: dict[str, Node], now_ns: int) -> None:
        if entry.is_dir:
            node = self._dir_at(path, dirs, now_ns)
        else:
            head, _, tail = path.rpartition("/")
            parent = self._dir_at(head, dirs, now_ns)
            name = _enc(tail)
            existing = parent.children.get(name)
            if existing is not None:
                if existing.is_dir:
                    log.warning("%r: hidden by a directory of the same name", entry.name)
                    return
                log.warning("%r: duplicate name, the later entry wins", entry.name)
                self._detach(parent, name, existing)
            node = self._new_node(entry.mode, self.uid, self.gid, now_ns)
            node.size = entry.file_size
            self._attach(parent, name, node)
        node.mode = entry.mode
        node.rdev = entry.rdev
        node.uid = self.uid if entry.uid is None else entry.uid
        node.gid = self.gid if entry.gid is None else entry.gid
        node.mtime_ns = node.ctime_ns = entry.mtime_ns
        node.atime_ns = entry.mtime_ns if entry.atime_ns is None else entry.atime_ns
        node.entry = entry
        node.entry_path = path

    # ----------------------------------------------------------------------------- basics
    def _new_node(self, mode: int, uid: int, gid: int, now_ns: int) -> Node:
        node = Node(self._next_ino, mode, uid, gid, now_ns)
        self._next_ino += 1
        self.nodes[node.ino] = node
        return node

    def _attach(self, parent: Node, name: bytes, node: Node) -> None:
        parent.children[name] = node
        if parent.listing is not None:
            parent.listing.add(name)
        if node.parent is None or node.is_dir:
            node.parent, node.name = parent, name
        else:
            node.links = [*(node.links or ()), (parent, name)]
        if node.is_dir:
            parent.nlink += 1

    def _unname(self, parent: Node, name: bytes, node: Node) -> None:
        """Remove one name of ``node`` from the directory and from the node's own records."""
        del parent.children[name]
        if parent.listing is not None:
            parent.listing.remove(name)
        if node.parent is parent and node.name == name:
            node.parent, node.name = node.links.pop() if node.links else (None, b"")
        elif node.links:
            node.links.remove((parent, name))
        if node.is_dir:
            parent.nlink -= 1

    def _detach(self, parent: Node, name: bytes, node: Node) -> None:
        self._unname(parent, name, node)
        node.nlink = 0 if node.is_dir else node.nlink - 1
        self.maybe_drop(node)

    def path(self, node: Node) -> str | None:
        """The node's current path (its primary name), or None once it has no name."""
        parts = []
        while node is not self.root:
            if node.parent is None:
                return None
            parts.append(node.name)
            node = node.parent
        return os.fsdecode(b"/".join(reversed(parts)))

    def resolve(self, path: str) -> Node | None:
        node: Node | None = self.root
        for comp in path.split("/") if path else ():
            if node is None or node.children is None:
                return None
            node = node.children.get(os.fsencode(comp))
        return node

    def get(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise OSError(errno.ENOENT, "no such inode")
        return node

    def dir(self, ino: int) -> Node:
        node = self.get(ino)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        return node

    def child(self, parent: Node, name: bytes) -> Node | None:
        if name == b".":
            return parent
        if name == b"..":
            return parent.parent
        return parent.children.get(name)

    def listing(self, directory: Node) -> Listing:
        if directory.listing is None:
            directory.listing = Listing(iter(directory.children))
        return directory.listing

    def maybe_drop(self, node: Node) -> None:
        """Forget an inode once no name, no kernel reference and no open handle keeps it."""
        if node.nlink > 0 or node.lookups > 0 or node.opens > 0 or node.ino == ROOT_INO:
            return
        if self.nodes.pop(node.ino, None) is not None:
            for callback in self.on_drop:
                callback(node)

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is not None:
            node.lookups -= count
            self.maybe_drop(node)

    def touch(self, node: Node, now_ns: int) -> None:
        node.mtime_ns = node.ctime_ns = now_ns
        node.meta_dirty = True  # the stored mtime must follow
        self.changes += 1

    # ----------------------------------------------------------------------------- mutations
    def _check_name(self, parent: Node, name: bytes) -> None:
        if len(name) > 255:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        if name in (b".", b"..") or b"/" in name or not name:
            raise OSError(errno.EINVAL, "invalid name")
        if name in parent.children:
            raise OSError(errno.EEXIST, "exists")
        if parent.nlink <= 0:
            raise OSError(errno.ENOENT, "directory was removed")

    def create(self, parent: Node, name: bytes, mode: int, uid: int, gid: int, now_ns: int) -> Node:
        """Make a new file, directory, symlink or special file under ``parent``."""
        self._check_name(parent, name)
        node = self._new_node(mode, uid, gid, now_ns)
        if parent.mode & stat.S_ISGID:
            node.gid = parent.gid
            if node.is_dir:
                node.mode |= stat.S_ISGID
        node.meta_dirty = True
        self._attach(parent, name, node)
        self.touch(parent, now_ns)
        return node

    def link(self, node: Node, parent: Node, name: bytes, now_ns: int) -> None:
        if node.is_dir:
            raise OSError(errno.EPERM, "hard links to directories are not allowed")
        self._check_name(parent, name)
        self._attach(parent, name, node)
        node.nlink += 1
        node.ctime_ns = now_ns
        self.touch(parent, now_ns)

    def unlink(self, parent: Node, name: bytes, now_ns: int) -> Node:
        node = parent.children.get(name)
        if node is None:
            raise OSError(errno.ENOENT, "no such file")
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a directory")
        node.ctime_ns = now_ns
        self._detach(parent, name, node)
        self.touch(parent, now_ns)
        return node

    def rmdir(self, parent: Node, name: bytes, now_ns: int) -> Node:
        node = parent.children.get(name)
        if node is None:
            raise OSError(errno.ENOENT, "no such directory")
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        if node.children:
            raise OSError(errno.ENOTEMPTY, "directory not empty")
        self._detach(parent, name, node)
        self.touch(parent, now_ns)
        return node

    def _is_ancestor(self, maybe_ancestor: Node, node: Node) -> bool:
        while True:
            if node is maybe_ancestor:
                return True
            if node.parent is node or node.parent is None:
                return False
            node = node.parent

    def rename(
        self,
        old_parent: Node,
        old: bytes,
        new_parent: Node,
        new: bytes,
        flags: int,
        now_ns: int,
    ) -> Node | None:
        """rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE; returns a replaced node."""
        node = old_parent.children.get(old)
        if node is None:
            raise OSError(errno.ENOENT, "no such file")
        if len(new) > 255:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        target = new_parent.children.get(new)
        if node.is_dir and self._is_ancestor(node, new_parent):
            raise OSError(errno.EINVAL, "cannot move a directory into itself")
        if target is node:  # the same inode under both names: rename(2) does nothing
            return None
        if flags & RENAME_EXCHANGE:
            if target is None:
                raise OSError(errno.ENOENT, "no such file")
            if target.is_dir and self._is_ancestor(target, old_parent):
                raise OSError(errno.EINVAL, "cannot move a directory into itself")
            self._swap(old_parent, old, new_parent, new, node, target)
            node.ctime_ns = target.ctime_ns = now_ns
            self.touch(old_parent, now_ns)
            self.touch(new_parent, now_ns)
            return None
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise OSError(errno.EEXIST, "target exists")
            if node.is_dir and not target.is_dir:
                raise OSError(errno.ENOTDIR, "target is not a directory")
            if not node.is_dir and target.is_dir:
                raise OSError(errno.EISDIR, "target is a directory")
            if target.is_dir and target.children:
                raise OSError(errno.ENOTEMPTY, "target directory not empty")
            target.ctime_ns = now_ns
            self._detach(new_parent, new, target)
        self._unname(old_parent, old, node)
        self._attach(new_parent, new, node)
        node.ctime_ns = now_ns
        self.touch(old_parent, now_ns)
        self.touch(new_parent, now_ns)
        return target

    def _swap(self, p1: Node, n1: bytes, p2: Node, n2: bytes, a: Node, b: Node) -> None:
        self._unname(p1, n1, a)
        self._unname(p2, n2, b)
        self._attach(p1, n1, b)
        self._attach(p2, n2, a)

    # ----------------------------------------------------------------------------- walking
    def walk(self) -> Iterator[tuple[str, Node]]:
        """Every (path, node) below the root, depth first, parents first, in each directory's
        insertion order (deterministic: archive order, then creation order)."""
        stack = [("", iter(self.root.children.items()))]
        while stack:
            prefix, it = stack[-1]
            for name, child in it:
                path = prefix + name.decode("utf-8", "surrogateescape")
                yield path, child
                if child.children is not None:
                    stack.append((path + "/", iter(child.children.items())))
                    break
            else:
                stack.pop()

    def count(self) -> int:
        return len(self.nodes)


def _enc(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _plain(name: str) -> bool:
    """True when ``sanitize`` would only strip a trailing '/': the common case, checked fast."""
    return (
        name.isascii()
        and len(name) <= 255
        and "\0" not in name
        and ".." not in name
        and "//" not in name
        and "/./" not in name
        and not name.startswith(("/", "./"))
        and not name.endswith("/.")
        and name != "."
    )


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
