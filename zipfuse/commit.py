"""Commit: turn the old archive plus the overlay into a new archive, atomically.

``plan`` snapshots the tree on the trio thread (cheap, no I/O). ``write_archive`` runs on a worker
thread: unchanged entries are copied as raw compressed bytes, entries with only metadata changes
get new headers around the same bytes, dirty files are compressed by the writer's thread pool.
The result goes to a temp file beside the archive, which is fsync'd, renamed over the archive,
and the directory fsync'd: until the rename the old archive is untouched. Right before, the
old archive gets a hidden name that keeps it for its readers (see oldversions), and the write
lock is checked to still be ours (see lock.check): both paths refuse to touch an archive
whose lock was lost.

When the change is small (``append_cost``), ``append_archive`` instead appends the new and
changed entries, a new directory and end records after the archive's current end, in place:
the commit then costs the change, not the archive, and the inode stays (readers on other NFS
clients keep their file). Dead space is reclaimed by the full rewrite past ``DEAD_LIMIT``.
Such a commit is planned by ``plan_changes`` from the nodes touched since the last one, not by
``plan``'s walk of the whole tree, so folders nobody listed stay unlisted.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import errno
import itertools
import os
import stat
import time
from collections.abc import Callable, Iterable

from . import lock, oldversions, zipspec
from .journal import fingerprint, fsync_dir
from .namespace import Namespace, Node
from .zipformat import (
    CentralDirectory,
    ZipEntry,
    ZipFormatError,
    appended_directory,
    kept_runs,
    local_data_offset,
    read_central_directory,
)
from .zipwrite import EntryMeta, ZipWriter

RAW, RAW_META, FILE, SYMLINK, DIR, SPECIAL = range(6)
COMMIT_INFLIGHT = 8 << 20
WRITEBACK_EVERY = 32 << 20  # see ZipWriter: keeps fsyncs of other files short during a commit
SMALL_FILE = 1 << 20  # dirty files up to this size are read into memory at commit


@dataclasses.dataclass(slots=True)
class Item:
    """One entry of the new archive, captured while no mutation can run."""

    kind: int
    node: Node
    meta: EntryMeta | None  # None for RAW: the entry is copied with its own metadata
    entry: ZipEntry | None = None
    spill: str | None = None
    size: int = 0
    target: bytes | None = None


def plan(ns: Namespace) -> list[Item]:
    """Snapshot the whole tree as the entries of the new archive (every directory is listed:
    a full rewrite, or a tree ``plan_changes`` cannot vouch for)."""
    items: list[Item] = []
    for path, node in ns.walk(entries=True):
        item = _item(path, node)
        if item is not None:
            items.append(item)
    # Unchanged entries first, in their order in the old archive: long runs of them are then
    # copied with one copy_file_range each (the cost of a small change stays small).
    raw = sorted((i for i in items if i.kind == RAW), key=lambda i: _stored(i).header_offset)
    return raw + [i for i in items if i.kind != RAW]


def _item(path: str, node: Node) -> Item | None:
    """The entry of ``node`` at ``path`` in the new archive; None for none.

    A directory the archive only implied (no entry of its own), untouched and not empty, stays
    implied: its children's names carry it. Writing it would add one entry holding its full
    path per level, which makes a deeply nested archive grow quadratically.
    """
    if node.entry is None and not node.meta_dirty and node.is_dir and node.children:
        return None
    entry = node.entry
    unchanged = (
        entry is not None
        and not node.meta_dirty
        and node.entry_path == path
        and entry.name.rstrip("/") == path
    )
    if unchanged and (node.is_dir or node.spill is None):
        return Item(RAW, node, None, entry)  # copied as stored: no new metadata
    name = path + "/" if node.is_dir else path
    # positional: one EntryMeta per entry of the archive, keyword passing costs more here
    meta = EntryMeta(name, node.mode, node.uid, node.gid, node.mtime_ns, node.atime_ns, node.rdev)
    if node.is_dir:
        kind = DIR
    elif node.spill is not None:
        kind = FILE
    elif entry is not None:
        kind = RAW_META
    elif stat.S_ISLNK(node.mode):
        kind = SYMLINK
    elif stat.S_ISREG(node.mode):
        kind = FILE  # new and empty
    else:
        kind = SPECIAL
    return Item(kind, node, meta, entry, node.spill, node.size if kind == FILE else 0, node.target)


@dataclasses.dataclass(slots=True)
class Changes:
    """A commit planned from what changed (``plan_changes``): the old archive's entries that
    stay as they are, by index, and the entries to write."""

    count: int  # entries of the old directory
    items: list[Item]  # no RAW items
    dropped: array.array  # indices of the old entries that go, ascending

    @property
    def kept(self) -> list[int]:
        """Indices of the old entries that stay, ascending."""
        return [i for lo, hi in kept_runs(self.dropped, self.count) for i in range(lo, hi)]

    @property
    def kept_count(self) -> int:
        return self.count - len(self.dropped)


def plan_changes(
    ns: Namespace,
    cd: CentralDirectory,
    touched: Iterable[Node],
    moved: Iterable[Node],
) -> Changes:
    """The new archive as the old one minus the entries of changed nodes plus their new
    entries: only the nodes touched since the last commit (and the subtrees of directories
    moved) are looked at, so the cost follows the change, not the tree; directories nobody
    looked into stay unlisted.

    The caller checks that this is exact (``Namespace.linked`` is False: a hard link's
    extra names have no node to be touched; the archive holds no duplicate or hidden names,
    ``Namespace.unambiguous``). Gives the same entries as ``plan`` except that an unchanged entry is
    not rewritten when its directory's other entries change.
    """
    todo: dict[Node, None] = dict.fromkeys(touched)
    for top in moved:
        if top.is_dir and ns.path(top) is not None:
            stack = [top]
            while stack:  # every path below a moved directory changed
                for child in stack.pop().kids.values():
                    todo[child] = None
                    if child.is_dir:
                        stack.append(child)
    stale: set[int] = set()
    items: list[Item] = []
    todo.pop(ns.root, None)  # never an entry of its own
    ns.decode_entries(todo)  # together: a moved directory's subtree is one read, not one each
    for node in todo:
        entry = node.entry
        if entry is not None and node.entry_path is None:
            entry = None  # an older archive's entry (deleted, still open): not in this one
        path = ns.path(node) if node.nlink > 0 else None
        if path is not None and node.links:
            raise ValueError("plan_changes cannot plan hard links")
        item = _item(path, node) if path is not None else None
        if item is not None and item.kind == RAW:
            continue
        if entry is not None:
            stale.add(entry.index)
        if item is not None:
            items.append(item)
    return Changes(len(cd), items, array.array("q", sorted(stale)))


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
    writer = ZipWriter(
        fd,
        level=level,
        progress=progress,
        max_inflight=COMMIT_INFLIGHT,
        writeback_every=WRITEBACK_EVERY,
    )
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
                    and _stored(items[j]).header_offset in ends
                ):
                    j += 1
                start = _stored(item).header_offset
                end = ends[_stored(items[j - 1]).header_offset]
                assert src_fd is not None  # unchanged entries come from an archive
                writer.copy_run(src_fd, start, end, [_stored(it) for it in items[i:j]])
                i = j
                continue
            _add(writer, item, src_fd, src_fds, source)
            i += 1
        writer.finish(comment)
        os.fchmod(fd, mode)
        os.fsync(fd)
        _test_pause("before-rename")
        lock.check(archive)  # still the writer? (an NFS lease can run out unnoticed)
        if expect is not None and fingerprint(archive) != expect:
            conflict = f"{archive}.conflict-{time.strftime('%Y%m%d-%H%M%S')}"
            os.rename(tmp, conflict)
            raise CommitConflict(
                f"{archive} was changed by someone else since it was mounted; "
                f"your version was written to {conflict}"
            )
        if before_replace is not None:
            before_replace(tmp)
        oldversions.keep(archive)  # its readers (other NFS clients too) keep their inode
        _test_pause("old-kept")
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
    if len(cd) != len(items):
        raise OSError(errno.EIO, "the new archive does not list every entry written")
    return fd, cd


def _add(
    writer: ZipWriter,
    item: Item,
    src_fd: int | None,
    src_fds: list[int],
    source: CentralDirectory | None = None,
) -> None:
    kind = item.kind
    if kind in (RAW, RAW_META):
        assert src_fd is not None and item.entry is not None
        size = None if source is None else source.archive_size  # no fstat per entry
        offset = local_data_offset(src_fd, item.entry, size)
        writer.copy_raw(src_fd, item.entry, offset, item.meta)
        return
    assert item.meta is not None
    if kind == DIR:
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
    """Local header offset -> where that entry's bytes end (the next entry or the directory).

    An entry followed by more bytes than its local header and data descriptor can explain is
    left out: after appends in place, dead space (an old directory, replaced entries) follows
    it, which a compacting rewrite must not copy. Such an entry is copied on its own.
    """
    if source is None:
        return {}
    span_at = dict(zip(source.header_offsets(), source.spans(), strict=True))  # no decoding
    offsets = sorted(span_at)
    nexts = dict(zip(offsets, offsets[1:], strict=False))
    if offsets and offsets[-1] < source.cd_offset:
        nexts[offsets[-1]] = source.cd_offset
    ends = {}
    for start, end in nexts.items():
        if end - start <= span_at[start] + _SLACK:
            ends[start] = end
    return ends


_SLACK = 40  # local extras a little longer than the central ones, a data descriptor


# ------------------------------------------------------------------ append in place
DEAD_LIMIT = 0.25  # share of the file that may be dead space before a commit rewrites it
APPEND_MIN = 1 << 20  # smaller archives are rewritten: that costs little, and is simplest


def dead_space(cd: CentralDirectory) -> int:
    """Bytes of the archive that no entry uses (old directories and replaced entries left by
    appends in place); an estimate good to a few bytes per entry."""
    return max(0, cd.cd_offset - cd.used_bytes())


def changes_of(items: list[Item], cd: CentralDirectory) -> Changes:
    """A whole-tree plan (``plan``) as ``Changes`` against ``cd``, for an append in place."""
    drop = bytearray(b"\1") * len(cd)
    for i in items:
        if i.kind == RAW:
            drop[_stored(i).index] = 0
    dropped = array.array("q", itertools.compress(range(len(cd)), drop))
    return Changes(len(cd), [i for i in items if i.kind != RAW], dropped)


def append_cost(changes: Changes, cd: CentralDirectory | None, fd: int | None) -> int | None:
    """Bytes an append in place to the archive open as ``fd`` would write, or None when a full
    rewrite is the right path: a small archive (under APPEND_MIN), no entries yet, data before
    the first entry (a self-extracting stub) or after the end records, offsets that need
    adjusting, more than DEAD_LIMIT dead space afterwards, or an append that would not be
    smaller than a rewrite."""
    if cd is None or fd is None or not len(cd) or cd.concat:
        return None
    size = cd.archive_size
    if size < APPEND_MIN or cd.end_offset != size or os.fstat(fd).st_size != size:
        return None
    if os.pread(fd, 4, 0) != zipspec.LOCAL_SIG:
        return None
    dropped = sum(cd.spans(changes.dropped))
    kept_bytes = cd.used_bytes() - dropped
    new = 0
    for i in changes.items:
        if i.kind == FILE:
            new += i.size
        elif i.kind == RAW_META:
            new += _stored(i).compressed_size
        elif i.kind == SYMLINK:
            new += len(i.target or b"")
        new += 2 * (len(i.meta.name if i.meta else "") + 100)  # local header and central record
    count = changes.kept_count + len(changes.items)
    directory = cd.cd_size * count // max(len(cd), 1) + 200
    append = new + directory
    rewrite = kept_bytes + new + directory
    dead = dead_space(cd) + (size - cd.cd_offset) + dropped
    if append >= rewrite or dead > DEAD_LIMIT * (size + append):
        return None
    return append


def append_archive(
    changes: Changes,
    src_fd: int,
    archive: str,
    *,
    level: int = 6,
    comment: bytes = b"",
    progress: Callable[[int, int], None] | None = None,
    source: CentralDirectory,
    before_write: Callable[[os.stat_result], None] | None = None,
    after_sync: Callable[[], None] | None = None,
) -> tuple[int, CentralDirectory]:
    """Append the new and changed entries, a new directory and end records to the archive
    IN PLACE (same inode); return a new read-only fd and the new directory: the kept entries
    of ``source`` first (same records, same offsets), then ``changes.items``.

    Nothing before the old end of the file is written: the old directory and end record stay
    as dead space, so the old version is complete (and its readers read on) until the new end
    records are there. ``before_write(stat)`` runs before the file is touched: it must make
    durable the old length and times (recovery truncates back to them). ``after_sync`` runs
    once the new end is durable. On an error the file is cut back to its old length and times.
    """
    fd = os.open(archive, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_ino != os.fstat(src_fd).st_ino or st.st_dev != os.fstat(src_fd).st_dev:
            raise OSError(errno.ESTALE, "the archive was replaced since it was opened")
        lock.check(archive)  # still the writer? (an NFS lease can run out unnoticed)
        if before_write is not None:
            before_write(st)
        _test_pause("append-before-write")
        writer = ZipWriter(
            fd,
            level=level,
            progress=progress,
            max_inflight=COMMIT_INFLIGHT,
            start=st.st_size,
            writeback_every=WRITEBACK_EVERY,
        )
        src_fds: list[int] = []
        try:
            records = _central_records(src_fd, source, changes.dropped)
            writer.keep_central(records, changes.kept_count, 0)
            for item in changes.items:
                _add(writer, item, src_fd, src_fds, source)
            writer.finish(comment, before_end=lambda: _test_pause("append-entries-written"))
            _test_pause("append-before-fsync")
            os.fsync(fd)
        except BaseException:
            writer.abort()
            with contextlib.suppress(OSError):
                os.ftruncate(fd, st.st_size)  # the old end records are the end again
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                os.fsync(fd)
            raise
        finally:
            for sfd in src_fds:
                os.close(sfd)
        if after_sync is not None:
            after_sync()
        _test_pause("append-done")
        rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)
    try:
        cd = appended_directory(rfd, source, changes.dropped, records)
        if cd.cd_offset < st.st_size:
            raise OSError(errno.EIO, "the appended archive does not list every entry written")
    except ZipFormatError as exc:
        os.close(rfd)
        raise OSError(errno.EIO, f"the appended archive does not read back: {exc}") from None
    except BaseException:
        os.close(rfd)
        raise
    return rfd, cd


def keep_conflict(changes: Changes, src_fd: int, source: CentralDirectory, archive: str) -> None:
    """The archive is no longer the version ``changes`` apply to (someone replaced it): write
    ours, whole, beside it as a conflict file and raise CommitConflict (as a rewrite does)."""
    raw = [
        Item(RAW, None, None, e)  # type: ignore[arg-type]  # written, never adopted
        for e in sorted(source.entries_at(changes.kept), key=lambda e: e.header_offset)
    ]
    fd, _ = write_archive(raw + changes.items, src_fd, archive, source=source, expect="")
    os.close(fd)  # not reached: no archive has the fingerprint ""
    raise CommitConflict(f"{archive} was changed by someone else since it was mounted")


def _central_records(fd: int, cd: CentralDirectory, dropped: array.array) -> bytes:
    """The central records of ``cd`` but ``dropped`` (which lists them at their real offsets:
    append_cost refuses a directory that needs adjusting), as stored: one read of the old
    directory, one slice per run of kept records, no re-encoding of tens of thousands."""
    buf = os.pread(fd, cd.cd_size, cd.cd_offset)
    if len(buf) != cd.cd_size:
        raise OSError(errno.EIO, "the archive's central directory could not be read again")
    view = memoryview(buf)
    out = bytearray()
    for lo, hi in kept_runs(dropped, len(cd)):
        at, end = cd.record_span(lo)[0], cd.record_span(hi - 1)[1]
        if view[at : at + 4] != zipspec.CENTRAL_SIG or end > len(buf):
            raise OSError(errno.EIO, "the archive's central directory changed under the commit")
        out += view[at:end]
    return bytes(out)


def restore_appended(archive: str, size: int, mtime_ns: int, atime_ns: int, ino: int) -> bool:
    """Cut an interrupted append in place back to the archive it started from (its old
    length and times, hence its old fingerprint); True if something was cut."""
    try:
        fd = os.open(archive, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        st = os.fstat(fd)
        if st.st_ino != ino or st.st_size <= size:
            return False
        os.ftruncate(fd, size)
        os.utime(fd, ns=(atime_ns, mtime_ns))
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


class CommitConflict(Exception):
    """The archive changed behind our back; the message says where our version went."""


def _test_pause(stage: str) -> None:
    """Tests stop a commit at a named stage: ZIPFUSE_TEST_PAUSE=stage:marker-file. The commit
    writes the marker and waits (crash tests kill it there); deleting the marker lets it go on,
    and later commits of the process no longer pause. ``a,b:marker`` pauses at the first of
    several stages reached (e.g. the same point of a rewrite and of an append in place)."""
    spec = os.environ.get("ZIPFUSE_TEST_PAUSE")
    if spec and stage in spec.split(":", 1)[0].split(","):
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
