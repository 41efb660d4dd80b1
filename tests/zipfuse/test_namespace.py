"""Loading an archive's names into the lazy tree (namespace._Loader): the run-at-a-time scan
places every entry exactly where placing the entries one at a time does."""

from __future__ import annotations

import array
import errno
import itertools
import os
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.zipfuse import hostile_zip
from zipfuse.names import sanitize
from zipfuse.namespace import Listing, Namespace, _Loader, _odd_names
from zipfuse.zipformat import MAX_DEPTH, read_central_directory

# components that make runs, implicit folders, duplicates, file/folder clashes and names
# that need sanitising ("..", ".", empty components, a leading '/', non-ASCII)
_PART = st.sampled_from(["a", "b", "c", "dup", ".", "..", "", "é", ".hidden", "x y"])
_NAME = st.builds(
    lambda parts, lead, trail: ("/" if lead else "") + "/".join(parts) + ("/" if trail else ""),
    st.lists(_PART, min_size=1, max_size=4),
    st.booleans(),
    st.booleans(),
)


def _one_at_a_time(cd) -> tuple[list[bytes], list[list[int]], list[int]]:
    """What the scan must produce: every entry through _Loader._place, in directory order."""
    ref = _Loader.__new__(_Loader)
    ref.names, ref.kids, ref.dir_entry = [b""], [array.array("l")], array.array("l", [-1])
    ref._parents, ref._subdirs, ref._last = {b"": 0}, [{}], (b"", 0)
    ref._odd_keys = {}
    names = cd.take_names()
    odd = set(_odd_names(names))
    for index, key in enumerate(names):
        ref._place(cd, index, key, index in odd)
    return ref.names, [list(k) for k in ref.kids], list(ref.dir_entry)


def _unambiguous(cd) -> bool:
    """What _Loader.unambiguous must say, from every entry's sanitised path: no path twice,
    no file at the path of a folder (its own entry or one its entries imply)."""
    paths = []
    for entry in cd.entries:
        parts = sanitize(entry.name)
        if parts:  # None or []: skipped
            paths.append(("/".join(parts), entry.is_dir))
    files = [p for p, is_dir in paths if not is_dir]
    dirs = [p for p, is_dir in paths if is_dir]
    implied = {p.rsplit("/", i)[0] for p, _ in paths for i in range(1, p.count("/") + 1)}
    if len(set(files)) != len(files) or len(set(dirs)) != len(dirs):
        return False
    return not set(files) & (set(dirs) | implied)


def _load(path: Path, names: list[str]) -> tuple[object, object]:
    hostile_zip.write(
        path,
        [
            hostile_zip.directory(name) if name.endswith("/") else hostile_zip.stored(name, b"x")
            for name in names
        ],
    )
    fd = os.open(path, os.O_RDONLY)
    try:
        loader = Namespace.from_archive(
            read_central_directory(fd, keep_names=True, max_depth=MAX_DEPTH), 0, 0, 0
        )._loader
        assert loader is not None
        got = (loader.names, [list(k) for k in loader.kids], list(loader.dir_entry))
        cd = read_central_directory(fd)
        assert loader.unambiguous == _unambiguous(cd), [e.name for e in cd.entries]
        want = _one_at_a_time(read_central_directory(fd, keep_names=True, max_depth=MAX_DEPTH))
    finally:
        os.close(fd)
    return got, want


@settings(max_examples=150, deadline=None)
@given(names=st.lists(_NAME, min_size=1, max_size=40))
@example(names=[""])  # an empty name is skipped, not a second root (found by hypothesis)
@example(names=["", "", "a", "a/b"])
def test_scan_places_entries_like_one_at_a_time(tmp_path_factory, names: list[str]) -> None:
    path = tmp_path_factory.mktemp("scan") / "a.zip"
    got, want = _load(path, names)
    assert got == want


def test_scan_usual_layouts(tmp_path: Path) -> None:
    """Folder entries before, between and after their files; files of one folder split by a
    subfolder; implicit folders; an empty name; a later duplicate."""
    names = [
        "top/", "top/f1", "top/sub/", "top/sub/g", "top/f2", "top/f3",
        "late/x", "late/", "imp/l1/l2/file", "", "top/f1", "top/sub/",
    ]  # fmt: skip
    got, want = _load(tmp_path / "u.zip", names)
    assert got == want
    dirs, kids, dir_entry = got
    top = dirs.index(b"top")
    sub = dirs.index(b"sub")
    assert kids[top] == [1, -sub, 4, 5, 10]  # first-appearance order, the duplicate appended
    assert dir_entry[top] == 0 and dir_entry[sub] == 11  # the last entry of a folder wins
    assert dir_entry[dirs.index(b"late")] == 7 and kids[dirs.index(b"late")] == [6]
    assert dir_entry[dirs.index(b"l2")] == -1  # implicit
    assert 9 not in [i for k in kids for i in k]  # the empty name is skipped


def _tree(ns: Namespace) -> list[tuple]:
    """Every node below the root as the tree shows it: path, children in order, metadata,
    the entry it comes from and its links to its parent."""
    out = []
    for path, node in ns.walk():
        entry = node.entry
        out.append((
            path, node.mode, node.uid, node.gid, node.size, node.mtime_ns, node.atime_ns,
            node.ctime_ns, node.nlink, node.rdev, node.entry_path,
            None if entry is None else (entry.index, entry.name, entry.header_offset),
            ns.path(node.parent) if node.parent is not None else None, node.name,
            list(node.children) if node.is_dir else None, node.lookups,
        ))  # fmt: skip
    return out


def _both_ways(path: Path) -> tuple[list[tuple], list[tuple], bool]:
    """The tree of an archive built as a mount lists it, and built with every directory
    taking the general path (duplicates, clashes, names to sanitise)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        trees = []
        for general in (False, True):
            cd = read_central_directory(fd, keep_names=True, max_depth=MAX_DEPTH)
            cd.detach(fd)  # as a mount does: records re-read when a directory is listed
            ns = Namespace.from_archive(cd, 0, 0, 0)
            assert ns._loader is not None
            unambiguous = ns._loader.unambiguous
            if general:
                ns._loader.unambiguous = False
            trees.append(_tree(ns))
    finally:
        os.close(fd)
    return trees[0], trees[1], unambiguous


@settings(max_examples=100, deadline=None)
@given(names=st.lists(_NAME, min_size=1, max_size=30))
@example(names=["a", "b/", "b/c", "a/"])  # a file where a directory is: the general path
@example(names=["a/b", "a/", "c", "a/d/"])
def test_listing_one_pass_builds_what_the_general_path_builds(
    tmp_path_factory, names: list[str]
) -> None:
    path = tmp_path_factory.mktemp("load") / "a.zip"
    hostile_zip.write(
        path,
        [
            hostile_zip.directory(name) if name.endswith("/") else hostile_zip.stored(name, b"x")
            for name in names
        ],
    )
    fast, general, _ = _both_ways(path)
    assert fast == general


def test_listing_an_info_zip_archive(tmp_path: Path) -> None:
    """An archive of Info-ZIP's zip (the usual layout, decoded inline) builds the same tree
    one pass at a time as the general way, with the metadata of the files it was made of."""
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "f.txt").write_bytes(b"hello")
    (src / "d" / "e" / "g").write_bytes(b"x" * 5000)
    (src / "top").write_bytes(b"")
    os.symlink("d/f.txt", src / "link")
    os.chmod(src / "top", 0o751)
    for p in (src / "d" / "f.txt", src / "top", src / "d" / "e"):
        os.utime(p, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    archive = tmp_path / "a.zip"
    subprocess.run(["zip", "-q", "-r", "-y", str(archive), "."], cwd=src, check=True, timeout=60)
    fast, general, unambiguous = _both_ways(archive)
    assert unambiguous and fast == general
    by_path = {row[0]: row for row in fast}
    assert set(by_path) == {"d", "d/e", "d/f.txt", "d/e/g", "top", "link"}
    for rel, row in by_path.items():
        st_ = os.lstat(src / rel)
        assert row[1] == st_.st_mode, rel
        assert row[5] == int(st_.st_mtime) * 10**9, rel  # whole seconds in the 'UT' field
        if not os.path.isdir(src / rel) or os.path.islink(src / rel):
            assert row[4] == st_.st_size, rel
    assert by_path["d"][14] == [b"e", b"f.txt"] or by_path["d"][14] == [b"f.txt", b"e"]
    assert by_path["d"][8] == 3  # itself, "." and one subdirectory


class _Cookies:
    """The cookie rules, plainly: each name gets the next number when it is added; a listing
    past a cookie gives the live names with a larger one, in order."""

    def __init__(self, names: list[bytes]) -> None:
        self.cookie = {name: i + 1 for i, name in enumerate(names)}
        self.next = len(names) + 1

    def add(self, name: bytes) -> None:
        self.cookie[name] = self.next
        self.next += 1

    def remove(self, name: bytes) -> None:
        del self.cookie[name]

    def after(self, cookie: int) -> list[tuple[int, bytes]]:
        return sorted((c, n) for n, c in self.cookie.items() if c > cookie)


_OPS = st.lists(
    st.tuples(st.sampled_from(["add", "remove", "list"]), st.integers(0, 10**6)), max_size=300
)


@settings(max_examples=200, deadline=None)
@given(initial=st.integers(0, 120), ops=_OPS)
@example(initial=100, ops=[("remove", i) for i in range(90)] + [("list", 5)])  # compaction
def test_listing_cookies_follow_the_rules(initial: int, ops: list[tuple[str, int]]) -> None:
    """Listing (positions, holes, compaction into a cookie array) hands out exactly the cookies
    and names of the plain rules, through any mix of adds, removes and listings; the nodes
    come from the directory's children."""
    names = [b"n%d" % i for i in range(initial)]
    listing, model = Listing(names), _Cookies(names)
    children = {name: object() for name in names}
    fresh = iter(range(initial, 10**9))
    for op, arg in ops:
        live = list(model.cookie)
        if op == "add" or (op == "remove" and not live):
            name = b"n%d" % next(fresh) if arg % 4 else b"n%d" % (arg % (initial + 1))
            if name in children:  # a name is removed before it comes back
                listing.remove(name)
                model.remove(name)
            listing.add(name)
            model.add(name)
            children[name] = object()
        elif op == "remove":
            name = live[arg % len(live)]
            listing.remove(name)
            model.remove(name)
            del children[name]
        else:
            cookie = arg % (model.next + 2) - 1  # -1 up to past the last cookie
            want = model.after(cookie)
            assert list(listing.after(cookie)) == want
            got = list(listing.entries(cookie, children))  # type: ignore[arg-type]
            assert got == [(c, n, children[n]) for c, n in want]
    assert list(listing.after(0)) == model.after(0)
    assert len(listing.order) <= 2 * len(model.cookie) + 34  # holes are dropped


def test_listing_during_changes_reports_every_name_once() -> None:
    """A listing read a few names at a time while names are removed (enough to drop the holes)
    and added: no name twice, no removed name after its removal, every untouched name once."""
    names = [b"f%04d" % i for i in range(1000)]
    listing = Listing(names)
    children = {name: name for name in names}
    seen: list[bytes] = []
    cookie = 0
    step = 0
    while True:
        batch = list(itertools.islice(listing.entries(cookie, children), 7))  # type: ignore[arg-type]
        if not batch:
            break
        for c, name, node in batch:
            assert name in children and node == name  # live when handed out
            seen.append(name)
            cookie = c
        step += 1
        for k in range(6):  # names not listed yet, and some listed already
            name = b"f%04d" % ((step * 37 + k * 101) % 1000)
            if name in children:
                listing.remove(name)
                del children[name]
        if step <= 100:
            new = b"new%04d" % step
            listing.add(new)
            children[new] = new
    assert len(seen) == len(set(seen))
    untouched = [n for n in names if n in children]
    assert set(untouched) <= set(seen)
    assert set(seen) - set(names) <= {b"new%04d" % i for i in range(1, 101)}
    assert listing.cookies is not None  # the holes were dropped on the way


def _zipfuse_archive(path: Path, names: list[str]) -> None:
    """An archive as zipfuse's writer makes it ('UT' + 'ux' + NTFS times: decoded inline)."""
    from zipfuse.zipwrite import EntryMeta, ZipWriter

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with ZipWriter(fd, level=1) as w:
            for i, name in enumerate(names):
                t = 1_700_000_000_000_000_100 + i * 1_000_000_007
                if name.endswith("/"):
                    w.add_directory(EntryMeta(name, stat.S_IFDIR | 0o750, 1000, 100, t, t + 5))
                elif name.endswith("@"):
                    meta = EntryMeta(name[:-1], stat.S_IFLNK | 0o777, 0, 0, t, t)
                    w.add_symlink(meta, b"target")
                else:
                    meta = EntryMeta(name, stat.S_IFREG | 0o640, 1000 + i, 100, t, t + 3)
                    w.add_bytes(meta, name.encode() * (i % 3))
            w.finish()
    finally:
        os.close(fd)


_LAYOUT_NAMES = [
    "top/", "top/f1", "top/sub/", "top/sub/g", "top/f2", "top/l@", "late/x", "late/",
    "imp/l1/l2/file", "a", "b/c/d",
]  # fmt: skip


def _by_lookups(ns: Namespace) -> list[tuple]:
    """The tree of ``ns`` with every directory first looked into by name (a lookup decodes
    the entries with the nodes), in the order ``_tree`` gives."""
    ns.child(ns.root, b"no such name")
    stack = [ns.root]
    while stack:
        top = stack.pop()
        for child in list(top.kids.values()):
            if child.is_dir:
                ns.child(child, b"no such name")  # the first look into it: a lookup
                stack.append(child)
    return _tree(ns)


def _fresh(fd: int) -> Namespace:
    cd = read_central_directory(fd, keep_names=True, max_depth=MAX_DEPTH)
    cd.detach(fd)
    return Namespace.from_archive(cd, 0, 0, 0)


def test_listed_entries_are_decoded_when_first_needed(tmp_path: Path) -> None:
    """Listing a directory of an archive in a usual layout makes nodes from the records' stats
    and decodes no entry; the first file asked for decodes its directory's entries (not
    others'); the entries, paths and metadata equal those of a tree whose directories were
    first looked into by name (entries decoded with the nodes) and of the general path."""
    path = tmp_path / "zf.zip"
    _zipfuse_archive(path, _LAYOUT_NAMES)
    fd = os.open(path, os.O_RDONLY)
    try:
        ns = _fresh(fd)
        top = ns.root.kids[b"top"]
        files = [top.kids[n] for n in (b"f1", b"f2", b"l")]
        sub = top.kids[b"sub"]
        late = ns.root.kids[b"late"]
        late.kids  # noqa: B018  # listed
        assert all(n.decoded_entry is None for n in [*files, sub, late, *late.kids.values()])
        assert top.kids[b"f1"].size == len(b"top/f1") and top.kids[b"f2"].size == len(b"top/f2")
        entry = files[1].entry
        assert entry is not None and entry.name == "top/f2"
        assert [n.decoded_entry is not None for n in [*files, sub]] == [False, True, False, False]
        assert files[0].entry_path == "top/f1"  # a second one: with its directory's others
        assert all(n.decoded_entry is not None for n in [*files, sub])
        assert all(n.decoded_entry is None for n in late.kids.values())  # not another's
        lazy = _tree(ns)
        eager = _by_lookups(_fresh(fd))
        general = _fresh(fd)
        assert general._loader is not None
        general._loader.unambiguous = False
        assert lazy == eager == _tree(general)
        by_path = {row[0]: row for row in lazy}
        t = 1_700_000_001_000_000_100  # entry 1's time, to the 100 ns of NTFS times
        assert by_path["top/f1"][1:8] == (stat.S_IFREG | 0o640, 1001, 100, 6, t, t, t)
        assert by_path["top/sub"][10] == "top/sub" and by_path["late"][1] == stat.S_IFDIR | 0o750
    finally:
        os.close(fd)


def _record_at(path: Path, index: int) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        cd = read_central_directory(fd)
        return cd.cd_offset + cd.record_span(index)[0]
    finally:
        os.close(fd)


def _break_record(path: Path, at: int) -> None:
    """Overwrite the signature of the central record at ``at`` in place (the archive changed
    under the mount after it was read)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, b"XX\x01\x02", at)
    finally:
        os.close(fd)


def test_a_bad_record_fails_its_own_entry_only(tmp_path: Path) -> None:
    """A record the archive can no longer give (overwritten after the mount read it) fails the
    node asking for it with EIO, when it is asked for; its siblings still decode."""
    path = tmp_path / "zf.zip"
    _zipfuse_archive(path, ["d/", "d/a", "d/b", "d/c", "e"])
    b_at, e_at = _record_at(path, 2), _record_at(path, 4)
    fd = os.open(path, os.O_RDONLY)
    try:
        ns = _fresh(fd)
        d = ns.root.kids[b"d"]
        a, b, c = (d.kids[n] for n in (b"a", b"b", b"c"))
        _break_record(path, b_at)  # d/b
        with pytest.raises(OSError) as exc:
            b.entry  # noqa: B018
        assert exc.value.errno == errno.EIO
        assert a.entry is not None and a.entry.name == "d/a"
        assert c.entry_path == "d/c"
        with pytest.raises(OSError):
            b.entry_path  # noqa: B018
        assert b.decoded_entry is None and b.mode == stat.S_IFREG | 0o640  # still listed
        _break_record(path, e_at)  # e, in the root (listed, its entry not decoded yet)
        with pytest.raises(OSError) as exc:
            ns.child(ns.root, b"e").entry  # type: ignore[union-attr]  # noqa: B018
        assert exc.value.errno == errno.EIO
        assert ns.child(ns.root, b"d") is d  # the tree goes on
    finally:
        os.close(fd)
