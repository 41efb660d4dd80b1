"""Pack a directory tree into an environment archive (``condafuse import``), without FUSE.

The archive holds one top folder ``NAME/`` with every file, directory and symlink of the source
tree, written by zipfuse's own writer (``zipfuse.zipwrite.ZipWriter``), so entry metadata is
encoded exactly as a zipfuse commit encodes it: symlinks as Unix symlink entries (never
followed), the full mode, uid/gid, and mtime/atime to 100 ns. Hard links become separate
copies; sockets, FIFOs and devices are skipped. The zip is written beside the destination and
renamed into place after an fsync, so a crash never leaves a half-written ``NAME.zip``.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from zipfuse.zipwrite import EntryMeta, ZipWriter

from .errors import CondafuseError

# Files up to this size are read whole (the writer's in-flight budget bounds the memory); bigger
# ones are handed over as descriptors, which must stay open until the writer has finished.
SMALL_FILE = 8 << 20
INFLIGHT = 16 << 20  # bytes the writer may hold in flight (peak memory ~ this + a block/CPU)


@dataclasses.dataclass
class PackProgress:
    entries_done: int
    entries_total: int
    bytes_done: int
    bytes_total: int


def scan(src: Path) -> tuple[list[tuple[str, os.stat_result]], int]:
    """Every entry under ``src`` as (relative path, lstat), parents first; and the byte total."""
    out: list[tuple[str, os.stat_result]] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, src)
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            out.append((rel, st))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return out, total


def _meta(name: str, st: os.stat_result) -> EntryMeta:
    return EntryMeta(name, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_atime_ns)


def _read_all(path: str, size: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(size + 1)
    if len(data) != size:
        raise CondafuseError(f"{path} changed size while it was being packed")
    return data


def pack(
    src: Path,
    dest: Path,
    top: str,
    *,
    level: int = 6,
    progress: Callable[[PackProgress], None] | None = None,
) -> int:
    """Write ``src`` as ``top/...`` into the new zip ``dest``. Returns the number of entries."""
    src = Path(src)
    if not src.is_dir():
        raise CondafuseError(f"{src} is not a directory")
    entries, total = scan(src)
    skipped = sum(
        1
        for _, st in entries
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode))
    )
    n_total = len(entries) + 1 - skipped
    state = {"last": 0.0}

    def on_progress(entries_done: int, bytes_done: int) -> None:  # the writer thread
        now = time.monotonic()
        if progress and now - state["last"] > 0.2:
            state["last"] = now
            progress(PackProgress(entries_done, n_total, bytes_done, total))

    _allow_descriptors(sum(1 for _, st in entries if st.st_size > SMALL_FILE) + 64)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    held: list[int] = []  # descriptors of big files, open until the writer is done with them
    try:
        with ZipWriter(fd, level=level, progress=on_progress, max_inflight=INFLIGHT) as writer:
            writer.add_directory(_meta(top + "/", os.stat(src)))
            for rel, st in entries:
                arc = f"{top}/{rel}"
                full = os.path.join(src, rel)
                if stat.S_ISDIR(st.st_mode):
                    writer.add_directory(_meta(arc + "/", st))
                elif stat.S_ISLNK(st.st_mode):
                    writer.add_symlink(_meta(arc, st), os.fsencode(os.readlink(full)))
                elif stat.S_ISREG(st.st_mode) and st.st_size <= SMALL_FILE:
                    writer.add_bytes(_meta(arc, st), _read_all(full, st.st_size))
                elif stat.S_ISREG(st.st_mode):
                    src_fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC)
                    held.append(src_fd)
                    if os.fstat(src_fd).st_size != st.st_size:
                        raise CondafuseError(f"{full} changed size while it was being packed")
                    writer.add_file(_meta(arc, st), src_fd, st.st_size)
            writer.finish()
        os.fchmod(fd, 0o666 & ~_umask())
        os.fsync(fd)
        os.replace(tmp, dest)
        dfd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        os.close(fd)
        for h in held:
            os.close(h)
    if progress:
        progress(PackProgress(n_total, n_total, total, total))
    if skipped:
        print(
            f"condafuse: skipped {skipped} special files (sockets, FIFOs, devices)", file=sys.stderr
        )
    return n_total


def _allow_descriptors(n: int) -> None:
    """Raise the soft limit on open files towards the hard one if ``n`` more may be needed."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = len(os.listdir("/proc/self/fd")) + n if os.path.isdir("/proc/self/fd") else n
    if soft != resource.RLIM_INFINITY and want > soft:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
