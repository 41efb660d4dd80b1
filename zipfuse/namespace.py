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

Loading is lazy: a mount only sorts the archive's names into per-directory lists (``_Loader``);
a directory's child nodes (and their decoded entries) are made the first time its ``children``
are used (lookup, readdir, a mutation, a commit's walk). Until then it is a ``_LazyDir``, which
has the same attributes (``nlink`` and, with an entry, its metadata are already right).

Entries are lazy too: listing a directory reads from each record in a usual layout only what
its node shows (``CentralDirectory.stats_at``), and the node keeps the record's index; its
``ZipEntry`` is decoded from the archive the first time ``entry`` or ``entry_path`` is asked
for (a read, a copy-up, a commit). A cold walk (``find``, ``ls -lR``) then decodes nothing.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import errno
import functools
import gc
import itertools
import logging
import operator
import os
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

from .names import sanitize
from .zipformat import MAX_DEPTH, CentralDirectory, RecordStat, ZipEntry, ZipFormatError

log = logging.getLogger(__name__)

ROOT_INO = 1
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


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
        "_entry",
        "_path",
        "spill",
        "target",
        "children",
        "parent",
        "name",
        "links",
        "lookups",
        "opens",
        "meta_dirty",
        "pending",
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
        # ``entry`` and ``entry_path``; for an entry not decoded yet, its record's index in the
        # mounted archive and the ``_Records`` it is decoded from
        self._entry: ZipEntry | int | None = None
        self._path: str | _Records | None = None
        self.spill: str | None = None  # spill file with the current content (dirty)
        self.target: bytes | None = None  # symlink target, once known
        self.children: dict[bytes, Node] | None = {} if stat.S_ISDIR(mode) else None
        self.parent: Node | None = None  # directory holding ``name`` (None: no name left)
        self.name = b""  # the node's primary name, so its path can be journaled
        self.links: list[tuple[Node, bytes]] | None = None  # further names of a hard link
        self.lookups = 0  # kernel lookup count
        self.opens = 0  # open file handles
        self.meta_dirty = False  # mode/owner/times changed since load or last commit
        self.pending: tuple[_Loader, int] | None = None  # a directory not listed yet
        self.listing: Listing | None = None  # readdir cookies, once the directory was listed

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    @property
    def entry(self) -> ZipEntry | None:
        """Where the clean bytes live: the archive entry the node was made from or last
        committed as (None: a new node); decoded here the first time (OSError EIO if the
        archive can no longer give it)."""
        entry = self._entry
        if type(entry) is int:
            return self._decode()
        return entry  # type: ignore[return-value]  # not an int

    @entry.setter
    def entry(self, value: ZipEntry | None) -> None:
        if type(self._entry) is int:
            self._decode()  # its path (``entry_path``) stays
        self._entry = value

    @property
    def entry_path(self) -> str | None:
        """The entry's sanitised path, to detect renames; None when the entry is not in the
        current archive (a deleted file still open, reading an older one)."""
        path = self._path
        if type(path) is _Records:
            self._decode()
            path = self._path
        return path  # type: ignore[return-value]  # decoded

    @entry_path.setter
    def entry_path(self, value: str | None) -> None:
        if type(self._entry) is int:
            self._decode()
        self._path = value

    @property
    def decoded_entry(self) -> ZipEntry | None:
        """``entry`` if it is decoded already, else None, without decoding anything (for a
        pass over every node: an entry not decoded yet is still where the node was listed)."""
        entry = self._entry
        return None if type(entry) is int else entry  # type: ignore[return-value]

    def _decode(self) -> ZipEntry:
        """Decode the entry of a node made from a record's stats (see ``_Records``). The
        first one of a directory is decoded alone (an import reads one file of many it
        listed); from the second on, with every sibling not decoded yet (a program reading
        the directory's files: one pass over close records costs a fraction of one each)."""
        records = self._path
        assert isinstance(records, _Records)
        parent = self.parent
        if parent is not None and type(parent) is Node:  # listed (it holds this node)
            kids = parent.kids
            group = [n for n in kids.values() if type(n._entry) is int]
            if len(group) < len(kids):  # not the first (or not only entries here)
                records.decode(group, self)
        if type(self._entry) is int:
            records.decode([self])
        return self._entry  # type: ignore[return-value]  # decoded

    def _set_decoded(self, entry: ZipEntry) -> None:
        self._entry = entry
        name = entry.name
        self._path = name[:-1] if name.endswith("/") else name  # a plain name (see _plain)
        # the values are the entry's: keep one copy of each number
        if self.mode == entry.mode:
            self.mode = entry.mode
        if self.uid == entry.uid:
            self.uid = entry.uid
        if self.gid == entry.gid:
            self.gid = entry.gid
        if self.size == entry.file_size:
            self.size = entry.file_size
        mtime = entry.mtime_ns
        if self.mtime_ns == mtime:
            self.mtime_ns = mtime
        if self.ctime_ns == mtime:
            self.ctime_ns = mtime
        if self.atime_ns == mtime:
            self.atime_ns = mtime

    @property
    def kids(self) -> dict[bytes, Node]:
        """``children`` of a node known to be a directory."""
        children = self.children
        assert children is not None, "not a directory"
        return children


_CHILDREN: Any = Node.children  # type: ignore[misc]  # the slot descriptor, for _LazyDir


class _LazyDir(Node):
    """A directory from the archive whose children are not built yet (same layout as Node).

    The first access to ``children`` builds them from the central directory and turns the
    object into a plain ``Node``, so nothing costs more afterwards.
    """

    __slots__ = ()

    @property  # type: ignore[override]
    def children(self) -> dict[bytes, Node]:
        assert self.pending is not None
        loader, index = self.pending
        loader.load(self, index)
        return _CHILDREN.__get__(self)

    @children.setter
    def children(self, value: dict[bytes, Node] | None) -> None:
        _CHILDREN.__set__(self, value)

    @property
    def is_dir(self) -> bool:
        return True


class Listing:
    """Stable readdir cookies of one directory.

    Each name gets the next number when it is added; a listing resumes after the last cookie it
    handed out. A name added during a listing may or may not be seen, a removed one is never
    handed out again (as POSIX allows), and a renamed one shows up under its new name only.

    A directory nobody changed since it was first listed (the usual case) costs one list of its
    names: a cookie is a position in it (``order[i]`` has cookie ``i + 1``), and a listing is a
    slice of it. The first change makes the name -> position map; a removed name leaves a hole
    (None) in ``order``, and once holes outnumber names they are dropped and the cookies move to
    ``cookies`` (``order[i]`` then has cookie ``cookies[i]``, still increasing).
    """

    __slots__ = ("order", "cookies", "where", "holes", "next")

    def __init__(self, names: Iterable[bytes]) -> None:
        self.order: list[bytes | None] = list(names)  # names in cookie order; None: removed
        self.cookies: array.array | None = None  # cookie of each of ``order``; None: i + 1
        self.where: dict[bytes, int] | None = None  # live name -> its index in ``order``
        self.holes = 0  # Nones in ``order``
        self.next = len(self.order) + 1  # the cookie of the next name added

    def _where(self) -> dict[bytes, int]:
        where = self.where
        if where is None:  # the first change (no holes yet)
            where = self.where = {name: i for i, name in enumerate(self.order) if name is not None}
        return where

    def add(self, name: bytes) -> None:
        where = self._where()
        if name in where:  # not expected (a name is removed first); its old cookie dies
            self.remove(name)
        where[name] = len(self.order)
        self.order.append(name)
        if self.cookies is not None:
            self.cookies.append(self.next)
        self.next += 1

    def remove(self, name: bytes) -> None:
        self.order[self._where().pop(name)] = None
        self.holes += 1
        if self.holes > len(self.order) // 2 + 32:  # drop the holes, keep the cookies
            live = [i for i, name in enumerate(self.order) if name is not None]
            cookies = self.cookies
            numbers = (i + 1 for i in live) if cookies is None else map(cookies.__getitem__, live)
            self.cookies = array.array("q", numbers)
            self.order = [self.order[i] for i in live]
            self.where = {name: i for i, name in enumerate(self.order) if name is not None}
            self.holes = 0

    def _past(self, cookie: int) -> tuple[int, Iterable[int]]:
        """Where in ``order`` the names past ``cookie`` start, and their cookies."""
        cookies, order = self.cookies, self.order
        if cookies is None:
            start = min(max(cookie, 0), len(order))
            return start, range(start + 1, len(order) + 1)
        start = bisect.bisect_right(cookies, cookie)
        return start, itertools.islice(cookies, start, None)

    def after(self, cookie: int) -> Iterator[tuple[int, bytes]]:
        """Live (cookie, name) pairs past ``cookie``, in cookie order."""
        start, numbers = self._past(cookie)
        pairs = zip(numbers, itertools.islice(self.order, start, None), strict=True)
        if self.holes:
            return ((c, name) for c, name in pairs if name is not None)
        return pairs  # type: ignore[return-value]  # no None without holes

    def entries(
        self, cookie: int, children: dict[bytes, Node]
    ) -> Iterator[tuple[int, bytes, Node]]:
        """``after`` with each name's node from ``children`` (the directory's); without holes a
        chain of C iterators, no Python frame per name (a cold walk lists every directory)."""
        if self.holes:
            return ((c, name, children[name]) for c, name in self.after(cookie))
        start, numbers = self._past(cookie)
        names = cast("list[bytes]", self.order)  # no None without holes
        nodes = map(children.__getitem__, itertools.islice(names, start, None))
        return zip(numbers, itertools.islice(names, start, None), nodes, strict=True)


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
        self._loader: _Loader | None = None  # directories of the archive not listed yet
        self._records: _Records | None = None  # where entries not decoded yet come from
        # What a commit must look at (see commit.plan_changes): nodes whose name, metadata or
        # data may differ from their entry, directories moved (their subtrees' paths changed),
        # and whether a hard link was ever made (extra names have no node of their own).
        self.touched: set[Node] = set()
        self.moved: set[Node] = set()
        self.linked = False
        # every entry of the archive gives a node of its own (see _Loader._unambiguous);
        # what a commit writes is, and appends keep it so
        self.unambiguous = True

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_archive(
        cls,
        cd: CentralDirectory | None,
        uid: int,
        gid: int,
        now_ns: int,
        state: tuple | None = None,
    ) -> Namespace:
        """Build the tree from a central directory (None: a new, empty archive).

        Only the directory structure is built here, as compact per-directory lists of entry
        indices; nodes for a directory's children are made when it is first looked into.
        ``state``: that structure as ``index_state`` gave it for this directory before.
        """
        ns = cls(uid, gid, now_ns)
        if cd is None:
            return ns
        ns._loader = _Loader(ns, cd, now_ns, state)
        ns._records = ns._loader.records
        ns._loader.adopt_root(ns.root)
        ns.unambiguous = ns._loader.unambiguous
        ns.changes = 0
        return ns

    def index_state(self) -> tuple | None:
        """The directory structure built from the archive (see ``from_archive``), while no
        directory has been listed; None when there is none (a new archive)."""
        return None if self._loader is None else self._loader.state()

    def renumber(self, cd: CentralDirectory, dropped: Sequence[int]) -> None:
        """The archive was appended to: its directory is now ``cd``, which lists the old
        entries but ``dropped`` (ascending) in their order, then new ones. Directories not
        listed yet and entries not decoded yet keep the indices of the mounted archive (see
        ``_Records``), so a commit does not pay for what nobody looked at (the dropped
        entries are those of touched nodes, whose entries the commit's plan decoded)."""
        if self._records is not None:
            self._records.renumber(cd, dropped)

    def decode_entries(self, nodes: Iterable[Node]) -> None:
        """Decode the entries of ``nodes`` not decoded yet, reading close records together
        (a commit that copies every entry: one read per directory, not one per entry)."""
        lazy = [n for n in nodes if type(n._entry) is int]
        if lazy and self._records is not None:
            self._records.decode(lazy)

    def drop_records(self) -> None:
        """The archive was rewritten and every node's entry is one of the new archive's (or
        was decoded before, for a deleted file still open): the mounted directory goes."""
        if self._records is not None:
            self._records.cd = None
            self._records = None

    # ----------------------------------------------------------------------------- basics
    def _new_node(self, mode: int, uid: int, gid: int, now_ns: int) -> Node:
        node = Node(self._next_ino, mode, uid, gid, now_ns)
        self._next_ino += 1
        self.nodes[node.ino] = node
        return node

    def _attach(self, parent: Node, name: bytes, node: Node) -> None:
        parent.kids[name] = node
        self.touched.add(node)
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
        del parent.kids[name]
        self.touched.add(node)
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
        """The node's current path (its primary name), or None once it has no name.
        (Journal records name nodes by path: this runs for each, so it is kept tight.)"""
        root = self.root
        parts = []
        while node is not root:
            parent = node.parent
            if parent is None:
                return None
            parts.append(node.name)
            node = parent
        parts.reverse()
        return b"/".join(parts).decode(_FS_ENCODING, _FS_ERRORS)  # os.fsdecode, inlined

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
        if type(parent) is _LazyDir:
            # a lookup by name, not a listing, is the first look into it: names are being
            # opened (a program reading files by path), so the entries are decoded with the
            # nodes, in one pass (a listing leaves them to the first read: see Node.entry)
            assert parent.pending is not None
            loader, index = parent.pending
            loader.load(parent, index, entries=True)
        return parent.kids.get(name)

    def listing(self, directory: Node) -> Listing:
        if directory.listing is None:
            directory.listing = Listing(directory.kids)
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
        self.changed(node, meta=True)  # the stored mtime must follow

    def changed(self, node: Node, *, meta: bool = False) -> None:
        """``node``'s data (or, with ``meta``, its metadata) no longer matches its entry: the
        next commit looks at it (``touched``) and is due (``changes``)."""
        if meta:
            node.meta_dirty = True
        self.touched.add(node)
        self.changes += 1

    # ----------------------------------------------------------------------------- mutations
    def _check_name(self, parent: Node, name: bytes) -> None:
        if len(name) > 255:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        if name in (b".", b"..") or b"/" in name or not name:
            raise OSError(errno.EINVAL, "invalid name")
        if name in parent.kids:
            raise OSError(errno.EEXIST, "exists")
        if parent.nlink <= 0:
            raise OSError(errno.ENOENT, "directory was removed")
        self._check_depth(parent)

    def _check_depth(self, parent: Node, below: int = 0) -> None:
        """A new name in ``parent`` (with ``below`` more levels under it) must not be deeper
        than a mount accepts (MAX_DEPTH): the archive would no longer mount."""
        if self._depth(parent) + 1 + below > MAX_DEPTH:
            raise OSError(errno.ENAMETOOLONG, f"more than {MAX_DEPTH} levels deep")

    def _depth(self, node: Node) -> int:
        depth = 0
        while node is not self.root and node.parent is not None:
            depth, node = depth + 1, node.parent
        return depth

    def _check_move(self, node: Node, old_parent: Node, new_parent: Node) -> None:
        """A directory moved deeper takes its whole subtree along: measure it only then (the
        tree was within the limit where it was)."""
        below = 0
        if node.is_dir and self._depth(new_parent) > self._depth(old_parent):
            stack = [(node, 0)]
            while stack:
                top, level = stack.pop()
                for child in top.kids.values():
                    below = max(below, level + 1)
                    if child.is_dir:
                        stack.append((child, level + 1))
        self._check_depth(new_parent, below)

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
        self.linked = True
        self._attach(parent, name, node)
        node.nlink += 1
        node.ctime_ns = now_ns
        self.touch(parent, now_ns)

    def unlink(self, parent: Node, name: bytes, now_ns: int) -> Node:
        node = parent.kids.get(name)
        if node is None:
            raise OSError(errno.ENOENT, "no such file")
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a directory")
        node.ctime_ns = now_ns
        self._detach(parent, name, node)
        self.touch(parent, now_ns)
        return node

    def rmdir(self, parent: Node, name: bytes, now_ns: int) -> Node:
        node = parent.kids.get(name)
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
        node = old_parent.kids.get(old)
        if node is None:
            raise OSError(errno.ENOENT, "no such file")
        if len(new) > 255:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        target = new_parent.kids.get(new)
        if new_parent is not old_parent:
            self._check_move(node, old_parent, new_parent)
            if flags & RENAME_EXCHANGE and target is not None:
                self._check_move(target, new_parent, old_parent)
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
            self.moved.update(n for n in (node, target) if n.is_dir)
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
        if node.is_dir:
            self.moved.add(node)
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
    def walk(self, *, entries: bool = False) -> Iterator[tuple[str, Node]]:
        """Every (path, node) below the root, depth first, parents first, in each directory's
        insertion order (deterministic: archive order, then creation order). ``entries``:
        decode the entries of each directory's children first (``decode_entries``)."""
        kids = self.root.kids
        if entries:
            self.decode_entries(kids.values())
        stack = [("", iter(kids.items()))]
        while stack:
            prefix, it = stack[-1]
            for name, child in it:
                path = prefix + name.decode("utf-8", "surrogateescape")
                yield path, child
                kids = child.children  # type: ignore[assignment]
                if kids is not None:
                    if entries:
                        self.decode_entries(kids.values())
                    stack.append((path + "/", iter(kids.items())))
                    break
            else:
                stack.pop()

    def count(self) -> int:
        """Inodes in use, counting the entries of directories not listed yet."""
        return len(self.nodes) + (self._loader.unlisted if self._loader else 0)


class _Records:
    """Where the entries not decoded yet come from: the mounted archive's directory, followed
    through appends. A node made from a record's stats keeps the record's index in the mounted
    archive; ``renumber`` records what each append dropped, so the index still finds the
    record (a record that is dropped belongs to a node a commit looked at, which decoded it).
    """

    __slots__ = ("cd", "gens")

    def __init__(self, cd: CentralDirectory) -> None:
        self.cd: CentralDirectory | None = cd  # None: replaced by a rewrite (nothing is lazy)
        self.gens: list[Sequence[int]] = []  # entries dropped by each append (see renumber)

    def renumber(self, cd: CentralDirectory, dropped: Sequence[int]) -> None:
        """The archive was appended to: its directory is now ``cd``, which lists the old
        entries but ``dropped`` (ascending) in their order, then new ones."""
        self.cd = cd
        if len(dropped):
            self.gens.append(dropped)

    def now(self, index: int) -> int:
        """The index in the current directory of entry ``index`` of the mounted archive."""
        for dropped in self.gens:
            index -= bisect.bisect_left(dropped, index)
        return index

    def decode(self, nodes: list[Node], asked: Node | None = None) -> None:
        """Decode the entries of ``nodes`` (made from stats: ``_entry`` is a record index),
        close records with one read. If that fails, each node's alone: a record the archive
        can no longer give fails its own node only (logged), with OSError EIO when it is
        ``asked`` (or the only one)."""
        cd = self.cd
        if cd is None:
            log.error("an entry of a replaced archive was asked for")
            raise OSError(errno.EIO, "the archive was replaced")
        indices = [cast(int, n._entry) for n in nodes]
        if self.gens:
            indices = [self.now(i) for i in indices]
        try:
            entries = cd.entries_at(indices) if len(indices) > 1 else [cd.entry(indices[0])]
        except ZipFormatError as exc:
            if len(nodes) == 1:
                log.error("cannot read an entry of the archive: %s", exc)
                raise OSError(errno.EIO, str(exc)) from None
            for node in nodes:
                if node is not asked:
                    with contextlib.suppress(OSError):  # logged
                        self.decode([node])
            if asked is not None and type(asked._entry) is int:
                self.decode([asked])
            return
        for node, entry in zip(nodes, entries, strict=True):
            node._set_decoded(entry)


class _Loader:
    """The archive's directory tree before its nodes exist: per directory, its entries.

    ``kids[d]`` lists the children of directory ``d`` in first-appearance order: an entry
    index (>= 0) for a file, symlink or special file, ``-k`` for subdirectory ``k`` (the root
    is 0). ``names[k]`` is the subdirectory's name and ``dir_entry[k]`` its explicit entry (the
    last one, -1 if none). Built from the names alone, so the memory and time of a mount grow
    with the number of entries and the length of their names, never with depth times names.
    """

    def __init__(
        self, ns: Namespace, cd: CentralDirectory, now_ns: int, state: tuple | None = None
    ) -> None:
        """``state``: what ``state()`` returned for the same directory (``indexcache``): the
        scan is skipped."""
        self.ns = ns
        self.records = _Records(cd)  # the directory (followed through appends)
        self.now_ns = now_ns
        self.names: list[bytes] = [b""]
        self.kids: list[array.array | None] = [array.array("l")]
        self.dir_entry = array.array("l", [-1])
        self.odd: frozenset[int] = frozenset()  # entries whose name needed sanitising
        if state is None:
            self._scan(cd)
        else:
            self._restore(state, len(cd))
        # entries in directories not listed yet (for statfs), directories not listed yet
        self.unlisted = sum(map(len, self.kids))  # type: ignore[arg-type]  # none listed yet
        self.pending_dirs = len(self.names)

    def state(self) -> tuple:
        """The scan's result as plain values (bytes, ints, lists), before any directory is
        listed: ``indexcache`` keeps it so the next mount of the same archive skips the scan."""
        assert self.pending_dirs == len(self.names) and not self.records.gens, "listed already"
        kids = [k.tobytes() for k in self.kids if k is not None]
        return (self.names, kids, self.dir_entry.tobytes(), sorted(self.odd), self.unambiguous)

    def _restore(self, state: tuple, entries: int) -> None:
        """Take a ``state()``; ValueError if it cannot belong to a directory of ``entries``."""
        names, raw_kids, dir_entry, odd, unambiguous = state
        kids = list(map(_refs_from_bytes, raw_kids))
        self.dir_entry = array.array("l")
        self.dir_entry.frombytes(dir_entry)
        dirs = len(names)
        if len(kids) != dirs or len(self.dir_entry) != dirs or not dirs:
            raise ValueError("index: directory tables differ in length")
        every = _refs_from_bytes(b"".join(raw_kids))  # one max and min, not one per directory
        if max(self.dir_entry) >= entries or (
            every and (max(every) >= entries or min(every) <= -dirs)
        ):
            raise ValueError("index: an entry or directory number is out of range")
        self.names = list(names)
        self.kids = list(kids)
        self.odd = frozenset(odd)
        self.unambiguous = bool(unambiguous)

    def _scan(self, cd: CentralDirectory) -> None:
        """Place every entry: runs of names with one parent path (the usual layout: writers
        store a directory's entry and its files together) are placed with one step per run;
        found with a few C-level passes over all names, so Python code runs per run, not per
        name. A directory's own entry ("head/") names the run's directory itself."""
        names = cd.take_names()
        odd = _odd_names(names)  # indices whose key is not a plain path (sorted)
        self.odd = frozenset(odd)
        self._parents: dict[bytes, int] = {b"": 0}  # parent path of some entry -> directory
        self._subdirs: list[dict[bytes, int]] = [{}]  # name -> subdirectory, while scanning
        self._last: tuple[bytes, int] = (b"", 0)
        self._odd_keys: dict[int, bytes] = {}  # sanitised name key of each odd entry
        # entries placed one at a time: a directory's own entry ("head/", or b""), a name to
        # sanitise; a sentinel at the end
        dir_keys = map(
            operator.or_,
            map(bytes.endswith, names, itertools.repeat(b"/")),
            map(operator.not_, names),
        )
        single = list(itertools.compress(itertools.count(), dir_keys))
        if odd:
            single = sorted(self.odd.union(single))
        single.append(len(names))
        kids, dir_entry, dir_at, odd_set = self.kids, self.dir_entry, self._dir_at, self.odd
        k = 0
        nxt = single[0]
        start = 0
        # runs of one parent path, streamed: no per-name object outlives its run (a list of
        # them all would leave the index's memory fragmented for the life of the mount)
        runs = itertools.groupby(map(bytes.rpartition, names, itertools.repeat(b"/")), _HEAD)
        for head, run in runs:
            end = start + len(list(run))
            if nxt >= end:  # files only
                kids[dir_at(head)].extend(range(start, end))  # type: ignore[union-attr]
                start = end
                continue
            pos = start
            while nxt < end:
                if nxt > pos:
                    kids[dir_at(head)].extend(range(pos, nxt))  # type: ignore[union-attr]
                if nxt in odd_set:
                    self._place(cd, nxt, names[nxt], True)
                elif head:  # "head/": the entry of directory head itself
                    dir_entry[dir_at(head)] = nxt
                pos = nxt + 1
                k += 1
                nxt = single[k]
            if pos < end:
                kids[dir_at(head)].extend(range(pos, end))  # type: ignore[union-attr]
            start = end
        self.unambiguous = self._unambiguous(names, odd)
        del self._parents, self._subdirs, self._last, self._odd_keys

    def _place(self, cd: CentralDirectory, index: int, key: bytes, odd: bool) -> None:
        """Place one entry (a directory, or a name that needs sanitising)."""
        if odd:
            entry = cd.entry(index)
            parts = sanitize(entry.name)
            if parts is None:
                log.warning("skipping entry with unsafe name %r", entry.name)
                return
            path, is_dir = _enc("/".join(parts)), entry.is_dir
            if path:
                self._odd_keys[index] = path + b"/" if is_dir else path
        else:
            is_dir = key.endswith(b"/")
            path = key[:-1] if is_dir else key
        if not path:
            return
        head, _, tail = path.rpartition(b"/")
        parent = self._dir_at(head)
        if is_dir:
            self.dir_entry[self._subdir(parent, tail)] = index
        else:
            self.kids[parent].append(index)  # type: ignore[union-attr]

    def _unambiguous(self, names: list[bytes], odd: list[int]) -> bool:
        """True when every entry gives a node of its own: no two entries with the same path,
        no file where a directory is (see ``commit.plan_changes``, which relies on it)."""
        if odd:
            names = names.copy()
            for i in odd:
                names[i] = self._odd_keys.get(i, b"")  # b"": skipped, as unsafe
        keys = set(names)
        empty = names.count(b"")  # skipped: empty, or unsafe (odd); not the root
        if empty:
            keys.discard(b"")
        if len(keys) != len(names) - empty:
            return False
        dirs = set(self._parents)  # every entry's parent path, then their parents
        for head in list(dirs):
            while head:
                head = head.rpartition(b"/")[0]
                if head in dirs:
                    break
                dirs.add(head)
        dirs.update(k[:-1] for k in keys if k.endswith(b"/"))
        return keys.isdisjoint(dirs)

    def _dir_at(self, head: bytes) -> int:
        """The directory at path ``head``, made (with its missing parents) if needed.

        Only the parent paths of entries are remembered (their total length is at most that
        of all names): the directories between are reached by name from the nearest one.
        """
        if head == self._last[0]:
            return self._last[1]
        parents = self._parents
        found = parents.get(head)
        if found is None:
            missing = []
            path = head
            while found is None:
                path, _, name = path.rpartition(b"/")
                missing.append(name)
                found = parents.get(path)
            for name in reversed(missing):
                found = self._subdir(found, name)
            parents[head] = found
        self._last = (head, found)
        return found

    def _subdir(self, parent: int, name: bytes) -> int:
        sub = self._subdirs[parent].get(name)
        if sub is None:
            sub = len(self.names)
            self.names.append(name)
            self.kids.append(array.array("l"))
            self.dir_entry.append(-1)
            self._subdirs.append({})
            self._subdirs[parent][name] = sub
            self.kids[parent].append(-sub)  # type: ignore[union-attr]
        return sub

    def adopt_root(self, root: Node) -> None:
        self._make_lazy(root, 0)

    def _make_lazy(self, node: Node, index: int) -> None:
        kids = self.kids[index]
        assert kids is not None
        node.__class__ = _LazyDir
        node.pending = (self, index)
        node.nlink = 2 + sum(1 for ref in kids if ref < 0)

    def load(self, node: Node, index: int, entries: bool = False) -> None:
        """Make the nodes of directory ``index``'s children; ``node`` becomes a plain Node.
        ``entries``: decode their entries now (else each is decoded when first needed)."""
        collecting = gc.isenabled()
        gc.disable()  # thousands of long-lived objects: no collection pass in the middle
        try:
            self._load(node, index, entries)
        finally:
            if collecting:
                gc.enable()

    def _load(self, node: Node, index: int, entries: bool) -> None:
        refs = self.kids[index]
        records = self.records
        assert refs is not None and records.cd is not None
        want = [ref for ref in refs if ref >= 0]
        files = len(want)
        want += [self.dir_entry[-ref] for ref in refs if ref < 0 and self.dir_entry[-ref] >= 0]
        odd = self.odd
        plain = self.unambiguous and (not odd or odd.isdisjoint(want))
        try:
            # the indices kept here are those of the mounted archive (see _Records)
            now = [records.now(i) for i in want] if records.gens else want
            if plain and not entries:
                got: list[Any] = records.cd.stats_at(now)
            else:
                got = records.cd.entries_at(now)
        except ZipFormatError as exc:
            log.error("cannot list a directory of the archive: %s", exc)
            raise OSError(errno.EIO, str(exc)) from None
        if plain:
            children, subdirs = self._plain_children(node, refs, got, files)
        else:
            children, subdirs = self._chosen_children(node, refs, want, got)
        self.unlisted -= len(refs)
        self.kids[index] = None
        node.__class__ = Node
        node.pending = None
        node.children = children
        node.nlink = 2 + subdirs
        self.pending_dirs -= 1
        if not self.pending_dirs:  # everything is built (the records stay: see _Records)
            self.ns._loader = None

    def _plain_children(
        self,
        node: Node,
        refs: array.array,
        stats: list[RecordStat | ZipEntry],
        files: int,
    ) -> tuple[dict[bytes, Node], int]:
        """The children of a directory whose entries each give a node of their own under
        their name as stored (the archive is ``unambiguous`` and no name here needed
        sanitising): one pass in archive order. ``stats``: what ``stats_at`` gave of the
        records of the ``files`` files in order, then of those of the subdirectories that
        have one (as ``_load`` asks for them)."""
        ns, now_ns, names, dir_entry = self.ns, self.now_ns, self.names, self.dir_entry
        records = self.records
        file_stats = iter(stats)
        dir_stats = iter(stats[files:])
        children: dict[bytes, Node] = {}
        subdirs = 0
        for ref in refs:
            if ref >= 0:
                got = next(file_stats)
                if type(got) is tuple:
                    name = got[6]
                    children[name] = _stat_node(ns, got, ref, records, node, name)
                else:
                    entry = cast(ZipEntry, got)
                    path = entry.name
                    name = _enc(path[path.rfind("/") + 1 :])
                    children[name] = _file_node(ns, entry, path, node, name)
            else:
                name = names[-ref]
                child = ns._new_node(stat.S_IFDIR | 0o755, ns.uid, ns.gid, now_ns)
                self._make_lazy(child, -ref)
                if dir_entry[-ref] >= 0:
                    got = next(dir_stats)
                    if type(got) is tuple:
                        _apply_stat(child, got, dir_entry[-ref], records)
                    else:
                        entry = cast(ZipEntry, got)
                        _apply(child, entry, entry.name[:-1], ns)
                child.parent, child.name = node, name
                children[name] = child
                subdirs += 1
        return children, subdirs

    def _chosen_children(
        self, node: Node, refs: array.array, want: list[int], entries: list[ZipEntry]
    ) -> tuple[dict[bytes, Node], int]:
        """The children of any directory: duplicates (the later entry wins), a file and a
        directory of one name (the directory wins), names to sanitise; each case logged."""
        decoded = dict(zip(want, entries, strict=True))
        chosen: dict[bytes, tuple[ZipEntry, str] | int] = {}
        for ref in refs:
            if ref < 0:
                name = self.names[-ref]
                old = chosen.pop(name, None)
                if isinstance(old, tuple):  # (entry, path) of a file; an int is a directory
                    log.warning("%r: a directory hides the file of the same name", old[0].name)
                chosen[name] = -ref
            else:
                entry = decoded[ref]
                path = _entry_path(entry.name) if ref in self.odd else entry.name
                name = _enc(path.rpartition("/")[2])
                old = chosen.get(name)
                if isinstance(old, int):
                    log.warning("%r: hidden by a directory of the same name", entry.name)
                    continue
                if old is not None:
                    log.warning("%r: duplicate name, the later entry wins", entry.name)
                    del chosen[name]
                chosen[name] = (entry, path)
        ns, now_ns = self.ns, self.now_ns
        children: dict[bytes, Node] = {}
        subdirs = 0
        for name, what in chosen.items():
            if isinstance(what, int):
                child = ns._new_node(stat.S_IFDIR | 0o755, ns.uid, ns.gid, now_ns)
                self._make_lazy(child, what)
                entry_index = self.dir_entry[what]
                if entry_index >= 0:
                    entry = decoded[entry_index]
                    plain = entry_index not in self.odd
                    _apply(child, entry, entry.name[:-1] if plain else _entry_path(entry.name), ns)
                subdirs += 1
                child.parent, child.name = node, name
            else:
                entry, path = what
                child = _file_node(ns, entry, path, node, name)
            children[name] = child
        return children, subdirs


_NEW_NODE = Node.__new__


def _file_node(ns: Namespace, entry: ZipEntry, path: str, parent: Node, name: bytes) -> Node:
    """A new node for a file (symlink, special file) entry named ``name`` in ``parent``:
    ``Namespace._new_node`` plus ``_apply`` in one step (listing a directory makes one per
    entry)."""
    node = _NEW_NODE(Node)
    node.ino = ino = ns._next_ino
    ns._next_ino = ino + 1
    ns.nodes[ino] = node
    node.mode = mode = entry.mode
    node.uid = ns.uid if entry.uid is None else entry.uid
    node.gid = ns.gid if entry.gid is None else entry.gid
    node.rdev = entry.rdev
    node.size = entry.file_size
    node.mtime_ns = node.ctime_ns = mtime = entry.mtime_ns
    node.atime_ns = mtime if entry.atime_ns is None else entry.atime_ns
    is_dir = (mode & 0o170000) == stat.S_IFDIR
    node.nlink = 2 if is_dir else 1
    node._entry = entry
    node._path = path
    node.spill = node.target = node.links = node.pending = node.listing = None
    node.children = {} if is_dir else None
    node.parent = parent
    node.name = name
    node.lookups = node.opens = 0
    node.meta_dirty = False
    return node


def _stat_node(
    ns: Namespace, st: RecordStat, index: int, records: _Records, parent: Node, name: bytes
) -> Node:
    """``_file_node`` for a record's stats (``stats_at``): the entry of record ``index`` is
    decoded from ``records`` when it is first needed."""
    node = _NEW_NODE(Node)
    node.ino = ino = ns._next_ino
    ns._next_ino = ino + 1
    ns.nodes[ino] = node
    node.mode, node.uid, node.gid, node.size, mtime, node.atime_ns, _ = st
    node.mtime_ns = node.ctime_ns = mtime
    node.rdev = 0
    if (node.mode & 0o170000) == stat.S_IFDIR:  # not expected: a plain name ending in '/'
        node.nlink, node.children = 2, {}
    else:
        node.nlink, node.children = 1, None
    node._entry = index
    node._path = records
    node.spill = node.target = node.links = node.pending = node.listing = None
    node.parent = parent
    node.name = name
    node.lookups = node.opens = 0
    node.meta_dirty = False
    return node


def _apply_stat(node: Node, st: RecordStat, index: int, records: _Records) -> None:
    """``_apply`` for a record's stats: the entry is decoded when first needed."""
    node.mode, node.uid, node.gid, _, mtime, node.atime_ns, _ = st
    node.mtime_ns = node.ctime_ns = mtime
    node.rdev = 0
    node._entry = index
    node._path = records


def _apply(node: Node, entry: ZipEntry, path: str, ns: Namespace) -> None:
    """Give a node built from ``entry`` (at sanitised ``path``) the entry's metadata."""
    node.mode = entry.mode
    node.rdev = entry.rdev
    node.uid = ns.uid if entry.uid is None else entry.uid
    node.gid = ns.gid if entry.gid is None else entry.gid
    node.mtime_ns = node.ctime_ns = entry.mtime_ns
    node.atime_ns = entry.mtime_ns if entry.atime_ns is None else entry.atime_ns
    node._entry = entry
    node._path = path


def _entry_path(name: str) -> str:
    """The sanitised path of an entry name ("" if it is skipped)."""
    if _plain(name):
        return name[:-1] if name.endswith("/") else name
    parts = sanitize(name)
    return "" if parts is None else "/".join(parts)


_HEAD = operator.itemgetter(0)
# a table of entry / folder numbers from its bytes (ValueError if their length is not whole)
_refs_from_bytes = functools.partial(array.array, "l")


def _odd_names(names: list[bytes]) -> list[int]:
    """Sorted indices of the name keys that are not plain paths (see ``_plain``).

    A few substring searches over all names joined by newlines; a newline inside a name can
    only add false alarms, which merely send that name down the careful path.
    """
    joined = b"\n".join(names)
    hits: list[int] = [0] if joined.startswith((b"/", b".")) else []
    for pattern, shift in ((b"\0", 0), (b"//", 0), (b"/.", 0), (b"\n/", 1), (b"\n.", 1)):
        pos = joined.find(pattern)
        while pos >= 0:
            hits.append(pos + shift)
            pos = joined.find(pattern, pos + 1)
    odd: set[int] = set()
    if hits:  # name k ends right before ends[k] - 1 (its newline)
        ends = list(itertools.accumulate(map(operator.add, map(len, names), itertools.repeat(1))))
        odd.update(bisect.bisect_right(ends, pos) for pos in hits)
    if names and max(map(len, names)) > 255:
        odd.update(i for i, name in enumerate(names) if len(name) > 255)
    return sorted(odd)


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
