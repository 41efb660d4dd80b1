"""The archive index kept between mounts (zipfuse/indexcache.py)."""

from __future__ import annotations

import array
import os
import stat
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.conftest import mounted, tree_state
from tests.zipfuse import hostile_zip
from tests.zipfuse.fixtures_zip import patch_central
from tests.zipfuse.test_namespace import _NAME
from zipfuse import indexcache, launch
from zipfuse.namespace import Namespace, Node
from zipfuse.zipformat import MAX_DEPTH, read_central_directory


def _write(path: Path, names: list[str]) -> None:
    hostile_zip.write(
        path,
        [
            hostile_zip.directory(n) if n.endswith("/") else hostile_zip.deflated(n, n.encode() * 3)
            for n in names
        ],
    )


def _everything(ns: Namespace) -> list[tuple]:
    """Every node reachable from the root, listed (which loads every folder)."""
    out: list[tuple] = []

    def walk(node: Node, path: bytes) -> None:
        for name, child in sorted(node.kids.items()):
            entry = child.entry
            out.append(
                (
                    path + name,
                    child.mode,
                    child.size,
                    child.nlink,
                    entry and entry.name,
                    child.mtime_ns,
                )
            )
            if child.is_dir:
                walk(child, path + name + b"/")

    walk(ns.root, b"")
    return out


def _index(path: Path, store: Path) -> None:
    """What a mount that found no index does: parse, build, store."""
    fd = os.open(path, os.O_RDONLY)
    try:
        cd = read_central_directory(fd, keep_names=True, max_depth=MAX_DEPTH)
        key = indexcache.key_for(fd, cd, MAX_DEPTH)
        assert key is not None
        ns = Namespace.from_archive(cd, 0, 0, 0)
        indexcache.save(str(store), key, cd, ns.index_state())
    finally:
        os.close(fd)


def _load(path: Path, store: Path, depth: int = MAX_DEPTH):
    fd = os.open(path, os.O_RDONLY)
    try:
        return indexcache.load(str(store), fd, os.fstat(fd).st_size, depth)
    finally:
        os.close(fd)


@settings(max_examples=60, deadline=None)
@given(names=st.lists(_NAME, min_size=1, max_size=30))
@example(names=["a/", "a", "a/b", "a/b", "/c/./d", "é/f", ""])  # clash, duplicate, odd names
def test_indexed_tree_equals_the_parsed_one(tmp_path_factory, names: list[str]) -> None:
    tmp = tmp_path_factory.mktemp("index")
    archive, store = tmp / "a.zip", tmp / "a.index"
    _write(archive, names)
    _index(archive, store)
    hit = _load(archive, store)
    assert hit is not None
    cd, state = hit
    fd = os.open(archive, os.O_RDONLY)
    try:
        cd.detach(fd)  # as the mount hands it over: records re-read from the archive
        indexed = Namespace.from_archive(cd, 0, 0, 0, state)
        parsed = Namespace.from_archive(
            read_central_directory(fd, keep_names=True, max_depth=MAX_DEPTH), 0, 0, 0
        )
        assert indexed.unambiguous == parsed.unambiguous
        assert indexed.count() == parsed.count()
        assert _everything(indexed) == _everything(parsed)
    finally:
        os.close(fd)


def test_any_change_from_the_directory_on_is_a_miss(tmp_path: Path) -> None:
    archive, store = tmp_path / "a.zip", tmp_path / "a.index"
    _write(archive, ["d/", "d/f", "g"])
    _index(archive, store)
    assert _load(archive, store) is not None
    assert _load(archive, store, depth=MAX_DEPTH - 1) is None  # made under other rules
    # same size, one byte of a central record changed (the first entry's DOS time)
    patch_central(archive, 0, 12, "<H", 0x1234)
    assert _load(archive, store) is None
    _index(archive, store)
    assert _load(archive, store) is not None
    with open(archive, "ab") as f:  # bytes after the end record
        f.write(b"tail")
    assert _load(archive, store) is None


def test_torn_or_foreign_index_is_a_miss(tmp_path: Path) -> None:
    archive, store = tmp_path / "a.zip", tmp_path / "a.index"
    _write(archive, ["d/", "d/f"])
    _index(archive, store)
    whole = store.read_bytes()
    for bad in (whole[: len(whole) // 2], b"", b"not marshal data", whole[:-1]):
        store.write_bytes(bad)
        assert _load(archive, store) is None
    os.unlink(store)
    assert _load(archive, store) is None
    os.symlink(tmp_path / "elsewhere", store)  # never followed
    (tmp_path / "elsewhere").write_bytes(whole)
    assert _load(archive, store) is None


def test_state_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    _write(archive, ["d/", "d/f", "g"])
    fd = os.open(archive, os.O_RDONLY)
    try:
        state = Namespace.from_archive(
            read_central_directory(fd, keep_names=True, max_depth=MAX_DEPTH), 0, 0, 0
        ).index_state()
        names, kids, dir_entry, odd, unambiguous = state
        other = read_central_directory(fd)
        with pytest.raises(ValueError):  # a reference past the last entry
            far = array.array("l", [len(other)]).tobytes()
            Namespace.from_archive(other, 0, 0, 0, (names, [k + far for k in kids], *state[2:]))
        with pytest.raises(ValueError):  # tables of different lengths
            Namespace.from_archive(other, 0, 0, 0, (names + [b"x"], kids, dir_entry, odd, True))
        assert len(kids) == 2 and kids[0] and kids[1]  # the root (d/, g) and d (f)
        for bad in (
            [kids[0], kids[1] + far],  # past the last entry in one directory only
            [kids[0], kids[1] + array.array("l", [-len(names)]).tobytes()],  # no such folder
            [kids[0], kids[1] + b"\0"],  # not a whole number of references
            [kids[0] + kids[1][:4], kids[1][4:]],  # the same bytes, split mid-reference
        ):
            with pytest.raises(ValueError):
                Namespace.from_archive(other, 0, 0, 0, (names, bad, *state[2:]))
        ns = Namespace.from_archive(other, 0, 0, 0, state)  # the control: it fits
        assert ns.index_state() == state
    finally:
        os.close(fd)


def _index_file(archive: Path) -> Path:
    path = indexcache.path_for(None, os.path.realpath(archive))
    assert path is not None
    return Path(path)


@pytest.mark.fuse
def test_second_mount_uses_the_index_and_a_commit_invalidates_it(fuse, tmp_path: Path) -> None:
    archive, mnt = tmp_path / "env.zip", tmp_path / "mnt"
    _write(archive, ["bin/", "bin/python", "lib/", "lib/a.py", "lib/pkg/", "lib/pkg/b.py", "c"])
    with mounted(archive, mnt, read_only=True):
        first = tree_state(mnt)
    store = _index_file(archive)
    st = os.stat(store)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
    assert stat.S_IMODE(os.stat(store.parent).st_mode) == 0o700
    os.utime(store, (0, 0))  # a load marks it used: proves the next mount took it
    with mounted(archive, mnt, read_only=True):
        assert tree_state(mnt) == first
    assert os.stat(store).st_mtime > 0
    with mounted(archive, mnt):
        (mnt / "lib" / "new.py").write_text("x = 1\n")
        os.unlink(mnt / "c")
    os.utime(store, (0, 0))
    with mounted(archive, mnt, read_only=True):
        after = tree_state(mnt)
    assert "lib/new.py" in after and "c" not in after
    assert {k: v for k, v in after.items() if k != "lib/new.py" and k != "lib"} == {
        k: v for k, v in first.items() if k not in ("c", "lib")
    }
    assert os.stat(store).st_mtime > 0  # made anew by that mount (the old one did not fit)


def test_prepare_takes_the_index(tmp_path: Path) -> None:
    """The command's side: a matching index replaces the parse (no names are collected)."""
    archive, mnt = tmp_path / "a.zip", tmp_path / "mnt"
    mnt.mkdir()
    _write(archive, ["d/", "d/f"])
    config = launch.Config(archive=str(archive), mountpoint=str(mnt), read_only=True)
    first = launch.prepare(config)
    assert first.tree is None and first.index_key is not None and first.index_path
    assert first.cd is not None
    fd = os.open(archive, os.O_RDONLY)
    try:
        cd = read_central_directory(fd, keep_names=True, max_depth=MAX_DEPTH)
        indexcache.save(
            first.index_path, first.index_key, cd, Namespace.from_archive(cd, 0, 0, 0).index_state()
        )
    finally:
        os.close(fd)
    second = launch.prepare(
        launch.Config(archive=str(archive), mountpoint=str(mnt), read_only=True)
    )
    assert second.tree is not None and second.index_key is None
    assert second.cd is not None and len(second.cd) == len(first.cd)
    for p in (first, second):
        assert p.archive_fd is not None
        os.close(p.archive_fd)
