"""Commit: turn the old archive plus the overlay into a new archive, atomically.

``plan`` snapshots the tree on the trio thread (cheap, no I/O). ``write_archive`` runs on a worker
thread: unchanged entries are copied as raw compressed bytes, entries with only metadata changes
get new headers around the same bytes, dirty files are compressed by the writer's thread pool.
The result goes to a temp file beside the archive, which is fsync'd, renamed over the archive,
and the directory fsync'd: until the rename the old archive is untouched.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import time
from collections.abc import Callable

from .journal import fingerprint, fsync_dir
from .namespace import Namespace, Node
from .zipformat import CentralDirectory, ZipEntry, local_data_offset, read_central_directory
from .zipwrite import EntryMeta, ZipWriter

RAW, RAW_META, FILE, SYMLINK, DIR, SPECIAL = range(6)
COMMIT_INFLIGHT = 8 << 20
SMALL_FILE = 1 << 20  # dirty files up to this size are read into memory at commit


@dataclasses.dataclass(slots=True)
class Item:
    """One entry of the new archive, captured while no mutation can run."""

    kind: int
    node: Node
    meta: EntryMeta
    entry: ZipEntry | None = None
    spill: str | None = None
    size: int = 0
    target: bytes | None = None


def plan(ns: Namespace) -> list[Item]:
    """Snapshot the tree as the entries of the new archive.

    A directory the archive only implied (no entry of its own), untouched and not empty, stays
    implied: its children's names carry it. Writing it would add one entry holding its full
    path per level, which makes a deeply nested archive grow quadratically.
    """
    items: list[Item] = []
    for path, node in ns.walk():
        if node.entry is None and not node.meta_dirty and node.is_dir and node.children:
            continue
        name = path + "/" if node.is_dir else path
        # positional: one EntryMeta per entry of the archive, keyword passing costs more here
        meta = EntryMeta(
            name, node.mode, node.uid, node.gid, node.mtime_ns, node.atime_ns, node.rdev
        )
        entry = node.entry
        unchanged = (
            entry is not None
            and not node.meta_dirty
            and node.entry_path == path
            and entry.name.rstrip("/") == path
        )
        if node.is_dir:
            kind = RAW if unchanged else DIR
        elif node.spill is not None:
            kind = FILE
        elif entry is not None:
            kind = RAW if unchanged else RAW_META
        elif stat.S_ISLNK(node.mode):
            kind = SYMLINK
        elif stat.S_ISREG(node.mode):
            kind = FILE  # new and empty
        else:
            kind = SPECIAL
        items.append(
            Item(kind, node, meta, entry, node.spill, node.size if kind == FILE else 0, node.target)
        )
    # Unchanged entries first, in their order in the old archive: long runs of them are then
    # copied with one copy_file_range each (the cost of a small change stays small).
    raw = sorted((i for i in items if i.kind == RAW), key=lambda i: _stored(i).header_offset)
    return raw + [i for i in items if i.kind != RAW]


def _stored(item: Item) -> ZipEntry:
    """The archive entry of an item copied from the archive (RAW, RAW_META)."""
    assert item.entry is not None
    return item.entry


def bytes_total(items: list[Item]) -> int:
    """What the writer's progress counts when it is done (see ZipWriter): plain bytes of new
    data (files, symlink targets), compressed bytes of the entries copied from the archive."""
    total = 0
    for i in items:
        if i.kind == FILE:
            total += i.size
        elif i.kind in (RAW, RAW_META):
            total += _stored(i).compressed_size
        elif i.kind == SYMLINK:
            total += len(i.target or b"")
    return total


def temp_path(archive: str) -> str:
    head, tail = os.path.split(archive)
    return os.path.join(head, f".{tail}.zipfuse-tmp-{os.getpid()}")


def write_archive(
    items: list[Item],
    src_fd: int | None,
    archive: str,
    *,
    level: int = 6,
    comment: bytes = b"",
    progress: Callable[[int, int], None] | None = None,
    source: CentralDirectory | None = None,
    expect: str | None = None,
    before_replace: Callable[[str], None] | None = None,
) -> tuple[int, CentralDirectory]:
    """Write and atomically install the new archive; return its open fd and directory.

    ``source`` is the old archive's directory (it tells where each unchanged entry's bytes
    end, so runs of them are copied verbatim). ``expect`` is the fingerprint the archive on disk
    must still have (else the result is kept beside it as a conflict file and CommitConflict is
    raised); ``before_replace(tmp)`` runs once the temp file is durable, right before the rename.
    """
    try:
        mode = stat.S_IMODE(os.stat(archive).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    tmp = temp_path(archive)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    # 8 MiB in flight keeps 2-4 cores busy and the daemon's peak memory under 200 MB
    writer = ZipWriter(fd, level=level, progress=progress, max_inflight=COMMIT_INFLIGHT)
    src_fds: list[int] = []
    try:
        ends = _entry_ends(source)
        i = 0
        while i < len(items):
            item = items[i]
            if item.kind == RAW and _stored(item).header_offset in ends:
                j = i + 1  # extend the run while the next item starts where this one ends
                while (
                    j < len(items)
                    and items[j].kind == RAW
                    and _stored(items[j]).header_offset
                    == ends.get(_stored(items[j - 1]).header_offset)
                ):
                    j += 1
                start = _stored(item).header_offset
                end = ends[_stored(items[j - 1]).header_offset]
                assert src_fd is not None  # unchanged entries come from an archive
                writer.copy_run(src_fd, start, end, [_stored(it) for it in items[i:j]])
                i = j
                continue
            _add(writer, item, src_fd, src_fds)
            i += 1
        writer.finish(comment)
        os.fchmod(fd, mode)
        os.fsync(fd)
        _test_pause("before-rename")
        if expect is not None and fingerprint(archive) != expect:
            conflict = f"{archive}.conflict-{time.strftime('%Y%m%d-%H%M%S')}"
            os.rename(tmp, conflict)
            raise CommitConflict(
                f"{archive} was changed by someone else since it was mounted; "
                f"your version was written to {conflict}"
            )
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, archive)
        _test_pause("after-rename")
    except BaseException:
        writer.abort()
        os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    finally:
        for sfd in src_fds:
            os.close(sfd)
    fsync_dir(os.path.dirname(archive) or ".")
    cd = read_central_directory(fd)
    if len(cd.entries) != len(items):
        raise OSError(errno.EIO, "the new archive does not list every entry written")
    return fd, cd


def _add(writer: ZipWriter, item: Item, src_fd: int | None, src_fds: list[int]) -> None:
    kind = item.kind
    if kind in (RAW, RAW_META):
        assert src_fd is not None and item.entry is not None
        offset = local_data_offset(src_fd, item.entry)
        writer.copy_raw(src_fd, item.entry, offset, None if kind == RAW else item.meta)
    elif kind == DIR:
        writer.add_directory(item.meta)
    elif kind == SYMLINK:
        writer.add_symlink(item.meta, item.target or b"")
    elif kind == SPECIAL:
        writer.add_special(item.meta)
    elif item.spill is None:
        writer.add_bytes(item.meta, b"")
    else:
        fd = os.open(item.spill, os.O_RDONLY | os.O_CLOEXEC)
        if item.size <= SMALL_FILE:
            # read now and close: a commit of 100k new files must not hold 100k descriptors
            try:
                data = os.pread(fd, item.size, 0)
            finally:
                os.close(fd)
            if len(data) != item.size:
                raise OSError(errno.EIO, f"spill file of {item.meta.name} is shorter than expected")
            writer.add_bytes(item.meta, data)
        else:
            src_fds.append(fd)
            writer.add_file(item.meta, fd, item.size)


def _entry_ends(source: CentralDirectory | None) -> dict[int, int]:
    """Local header offset -> where that entry's bytes end (the next entry or the directory)."""
    if source is None:
        return {}
    offsets = sorted(set(source.header_offsets()))
    ends = dict(zip(offsets, offsets[1:], strict=False))
    if offsets and offsets[-1] < source.cd_offset:
        ends[offsets[-1]] = source.cd_offset
    return ends


class CommitConflict(Exception):
    """The archive changed behind our back; the message says where our version went."""


def _test_pause(stage: str) -> None:
    """Tests stop a commit at a named stage: ZIPFUSE_TEST_PAUSE=stage:marker-file. The commit
    writes the marker and waits (crash tests kill it there); deleting the marker lets it go on,
    and later commits of the process no longer pause."""
    spec = os.environ.get("ZIPFUSE_TEST_PAUSE")
    if spec and spec.split(":", 1)[0] == stage:
        marker = spec.split(":", 1)[1]
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        while os.path.exists(marker):
            time.sleep(0.05)
        os.environ.pop("ZIPFUSE_TEST_PAUSE", None)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
