"""``zipfuse compact`` of an archive that is not mounted read-write: reclaim the dead space
that appends in place leave (old directories, replaced entries) with the full rewrite, the
atomic temp file + rename of every commit. The caller holds the archive's write lock. The
replaced version stays under a hidden name while mounts (here or on other NFS clients) read
it, and old versions nobody reads any more are removed (see oldversions)."""

from __future__ import annotations

import os
import time

from . import commit, journal, oldversions
from .errors import ZipfuseError
from .namespace import Namespace
from .recovery import pending
from .zipformat import ZipFormatError, read_central_directory


def compact(archive: str, spill_root: str | None = None, *, level: int = 6) -> str:
    """Rewrite ``archive`` without dead space; say what was done."""
    if pending(archive, spill_root):
        raise ZipfuseError(
            f"{archive} has changes of an interrupted session: "
            f"run 'zipfuse recover {archive}' first"
        )
    try:
        fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ZipfuseError(f"cannot open {archive}: {exc.strerror}") from None
    try:
        try:
            cd = read_central_directory(fd)
        except ZipFormatError as exc:
            raise ZipfuseError(f"{archive} is not a usable zip archive: {exc}") from None
        before = cd.archive_size
        expect = journal.fingerprint(archive)
        ns = Namespace.from_archive(cd, os.getuid(), os.getgid(), time.time_ns())
        items = commit.plan(ns)
        try:
            new_fd, _ = commit.write_archive(
                items, fd, archive, level=level, comment=cd.comment, source=cd, expect=expect
            )
        except OSError as exc:
            raise ZipfuseError(
                f"compacting {archive} failed, archive unchanged: {exc.strerror or exc}"
            ) from None
        except commit.CommitConflict as exc:
            raise ZipfuseError(str(exc)) from None
        after = os.fstat(new_fd).st_size
        os.close(new_fd)
    finally:
        os.close(fd)
    removed, kept = oldversions.collect(archive)
    note = f"; {kept} old version(s) kept while mounts read them" if kept else ""
    return f"compacted {archive}: {before} -> {after} bytes{note}"
