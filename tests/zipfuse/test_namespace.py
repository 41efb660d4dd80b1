"""Loading an archive's names into the lazy tree (namespace._Loader): the run-at-a-time scan
places every entry exactly where placing the entries one at a time does."""

from __future__ import annotations

import array
import os
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.zipfuse import hostile_zip
from zipfuse.names import sanitize
from zipfuse.namespace import Namespace, _Loader, _odd_names
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
