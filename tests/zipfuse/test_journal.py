"""The journal's records: written by hand-made formatting, they must be the very lines the JSON
encoder gave before (old journals and new ones replay alike), for any name a file can have.

Each record is checked three ways: byte for byte against ``json.dumps`` of the record as it was
built before (a dict, compact separators, ASCII escapes), through ``json.loads`` back to the
same content, and by replaying the journal onto an empty tree, which must give the same tree.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_tmpfs
from zipfuse import journal
from zipfuse.journal import Journal
from zipfuse.namespace import RENAME_NOREPLACE, Namespace, Node

UID, GID = os.getuid(), os.getgid()

# names a file can have: non-ASCII, undecodable bytes (surrogate-escaped by fsdecode), JSON's
# specials, control characters, a character outside the BMP (a surrogate pair in \u escapes)
AWKWARD = [
    b"plain.py",
    "caf\u00e9-\u00fcber-\u65e5\u672c".encode(),
    b"bad-\xff\xfe-utf8",
    b'say "hi"',
    b"back\\slash\\",
    b"new\nline\r\n",
    b"tab\tbell\x07nul-less\x1f\x7f",
    "emoji-\U0001f600".encode(),
    b"\xed\xa0\x80-encoded-surrogate",
    b"<script>&'<\\u0041",  # and a literal backslash-u
]


def old_line(record: dict) -> bytes:
    """How a record was written before: json.dumps of the dict, compact, ASCII only."""
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def old_meta(node: Node) -> dict:
    meta = {
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "atime": node.atime_ns,
        "mtime": node.mtime_ns,
    }
    if node.rdev:
        meta["rdev"] = node.rdev
    return meta


def lines_of(area: Path, name: str = journal.JOURNAL) -> list[bytes]:
    return (area / name).read_bytes().splitlines(keepends=True)


@pytest.fixture
def area(tmp_path: Path) -> Path:
    path = tmp_path / "area"
    path.mkdir(mode=0o700)
    return path


def tree_with(names: list[bytes]) -> tuple[Namespace, list[Node]]:
    """A directory per awkward name, each holding a file, a symlink and a device of that name."""
    ns = Namespace(UID, GID, 1_600_000_000_123_456_789)
    made = []
    for i, name in enumerate(names):
        top = ns.create(ns.root, name, stat.S_IFDIR | 0o750, UID, GID, 1_000 + i)
        made.append(top)
        made.append(ns.create(top, name, stat.S_IFREG | 0o640, UID, GID, 2_000 + i))
        link = ns.create(top, name + b".lnk", stat.S_IFLNK | 0o777, UID, GID, 3_000 + i)
        link.target = b"../" + name
        link.size = len(link.target)
        made.append(link)
        dev = ns.create(top, name + b".dev", stat.S_IFCHR | 0o600, UID, GID, 4_000 + i)
        dev.rdev = os.makedev(1, 3 + i)
        made.append(dev)
    return ns, made


def test_records_are_the_bytes_the_json_encoder_wrote(area: Path) -> None:
    ns, nodes = tree_with(AWKWARD)
    jr = Journal(str(area), "archive.zip")
    expected = []
    for node in nodes:
        path = ns.path(node)
        assert path is not None
        jr.make(path, node)
        rec = {"op": "make", "path": path, **old_meta(node)}
        if node.target is not None:
            rec["target"] = os.fsdecode(node.target)
        expected.append(rec)
        if stat.S_ISREG(node.mode):
            node.spill = str(area / f"spill-{node.ino}")
            node.size = 12345678901
            jr.data(path, node)
            expected.append(
                {"op": "data", "path": path, "spill": f"spill-{node.ino}",
                 "size": 12345678901, "mtime": node.mtime_ns}
            )  # fmt: skip
        node.mode = stat.S_IFMT(node.mode) | 0o4755
        node.uid, node.gid, node.atime_ns = 65534, 2**31 + 7, 2**62 + 1
        jr.attr(path, node)
        expected.append({"op": "attr", "path": path, **old_meta(node)})
    first, second = ns.path(nodes[0]), ns.path(nodes[-1])
    assert first is not None and second is not None
    jr.link(first, second)
    jr.rename(first, second, RENAME_NOREPLACE)
    jr.remove(second)
    expected += [
        {"op": "link", "src": first, "dst": second},
        {"op": "rename", "src": first, "dst": second, "flags": RENAME_NOREPLACE},
        {"op": "remove", "path": second},
    ]
    jr.close()
    got = lines_of(area)
    assert got == [old_line(r) for r in expected]
    for line, rec in zip(got, expected, strict=True):
        assert line.isascii() and line.count(b"\n") == 1  # one line per record, always
        assert json.loads(line) == rec
    assert journal.read_records(str(area)) == expected


def test_awkward_names_replay_to_the_same_tree(area: Path) -> None:
    ns, nodes = tree_with(AWKWARD)
    jr = Journal(str(area), "archive.zip")
    for node in nodes:
        path = ns.path(node)
        assert path is not None
        jr.make(path, node)
    jr.close()
    again = Namespace(UID, GID, time.time_ns())
    records = journal.read_records(str(area))
    assert journal.replay(again, records, str(area)) == len(nodes)

    def seen(tree: Namespace) -> dict:  # (a directory's mtime is its last new name's time)
        return {
            path: (node.mode, node.uid, node.gid, node.rdev, node.target)
            + (() if node.is_dir else (node.mtime_ns, node.atime_ns))
            for path, node in tree.walk()
        }

    assert seen(again) == seen(ns)
    assert sorted(os.fsencode(p) for p in seen(again)) == sorted(
        os.fsencode(ns.path(n) or "") for n in nodes
    )
    for name in AWKWARD:  # the raw bytes of every name come back, undecodable ones too
        assert name in again.root.kids


def test_several_records_of_one_request_are_one_write_and_all_counted(area: Path) -> None:
    ns, nodes = tree_with([b"a"])
    node = nodes[1]
    node.spill = str(area / "s1")
    jr = Journal(str(area), "archive.zip")
    jr.start("base-1", fresh=True)
    jr.write(journal.data_line("a/a", node), journal.attr_line("a/a", node))
    assert jr.appended == 2 and jr.unsynced
    mark = jr.capture()
    jr.write(journal.make_line("a/a.lnk", nodes[2]), journal.attr_line("a/a", node))
    assert jr.tail is not None and len(jr.tail) == 2  # both become the next journal's
    jr.switch("base-2", [])
    assert [r["op"] for r in journal.read_records(str(area))] == ["make", "attr"]
    assert jr.appended == 2 and jr.size == len((area / jr.name).read_bytes())
    jr.sync()
    assert not jr.unsynced
    jr.close()
    assert mark > 0


def test_a_journal_written_by_the_old_encoder_still_replays(area: Path) -> None:
    """Old lines: the dict encoder's (and any key order or spacing json accepts)."""
    (area / "s7").write_bytes(b"seven bytes"[:7])
    old = [
        {"op": "make", "path": "d\udcff\u00e9", "mode": stat.S_IFDIR | 0o700, "uid": UID,
         "gid": GID, "atime": 5, "mtime": 6},
        {"op": "make", "path": "d\udcff\u00e9/f\n\"", "mode": stat.S_IFREG | 0o600,
         "uid": UID, "gid": GID, "atime": 7, "mtime": 8},
        {"op": "data", "path": "d\udcff\u00e9/f\n\"", "spill": "s7", "size": 7, "mtime": 9},
    ]  # fmt: skip
    text = b"".join(old_line(r) for r in old)
    shuffled = {"mtime": 10, "path": "d\udcff\u00e9", "op": "attr", "mode": 0o40755,
                "gid": GID, "uid": UID, "atime": 11}  # fmt: skip
    text += json.dumps(shuffled).encode() + b"\n"  # default separators: spaces
    (area / journal.JOURNAL).write_bytes(text)
    ns = Namespace(UID, GID, time.time_ns())
    assert journal.replay(ns, journal.read_records(str(area)), str(area)) == 4
    top = ns.root.kids[b"d\xff\xc3\xa9"]
    assert stat.S_IMODE(top.mode) == 0o755 and top.mtime_ns == 10
    f = top.kids[b'f\n"']
    assert f.size == 7 and f.spill == str(area / "s7") and f.mtime_ns == 9


@pytest.fixture
def full_area(tmp_path: Path):
    """A spill area on a tmpfs of two pages (disk full comes at a page boundary)."""
    where = tmp_path / "small"
    where.mkdir(mode=0o700)
    with tiny_tmpfs(where, "8k", "mode=0700"):
        yield where


def test_a_full_disk_keeps_the_whole_records_of_a_request_that_fit(full_area: Path) -> None:
    """Two records in one write(2) that the disk cuts short inside the second: the first
    stays (as two writes would have left it), the torn second goes, and the writer is told."""
    ns, nodes = tree_with([b"a"])
    node = nodes[1]
    node.spill = str(full_area / "s1")
    first, second = journal.data_line("a/a", node), journal.attr_line("a/a", node)
    jr = Journal(str(full_area), "archive.zip")
    pad = 4096 - len(first) - 20  # the first page ends 20 bytes into the second record
    jr.write(b"{" + b" " * (pad - 3) + b"}\n")
    (full_area / "filler").write_bytes(b"x" * 4096)  # the only other page
    with pytest.raises(OSError) as err:
        jr.write(first, second)
    assert err.value.errno == errno.ENOSPC
    assert jr.size == 4096 - 20 == os.path.getsize(full_area / journal.JOURNAL)
    assert jr.appended == 2
    records = journal.read_records(str(full_area))
    assert records[-1] == json.loads(first) and len(records) == 2
    with pytest.raises(OSError) as err:  # nothing fits: nothing is kept, nothing counted
        jr.write(second)
    assert err.value.errno == errno.ENOSPC and jr.appended == 2
    assert os.path.getsize(full_area / journal.JOURNAL) == jr.size
    jr.close()
