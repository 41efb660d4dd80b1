"""Bringing back the changes of a session whose daemon died (kill -9, OOM, reboot).

The spill area of an archive keeps the journal and the data files until a commit has made them
part of the archive. ``recover`` replays them onto the archive version they belong to and
commits the result; it is run by ``zipfuse recover`` and automatically before a read-write
mount of an archive with leftover state.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time

from . import commit, journal, registry
from .errors import ZipfuseError
from .namespace import Namespace
from .spill import SpillArea, existing_area
from .zipformat import ZipFormatError, read_central_directory

log = logging.getLogger(__name__)


def remove_stale_temps(archive: str) -> list[str]:
    """Delete temp files of commits whose process is gone (named .NAME.zipfuse-tmp-PID)."""
    removed = []
    head, tail = os.path.split(archive)
    for path in glob.glob(os.path.join(glob.escape(head), f".{glob.escape(tail)}.zipfuse-tmp-*")):
        pid = path.rsplit("-", 1)[-1]
        if pid.isdigit() and registry.process_start_time(int(pid)) is not None:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed


def pending(archive: str, spill_root: str | None) -> bool:
    """Whether the archive has state from an unfinished session."""
    path = existing_area(spill_root, archive)
    if path is None:
        return False
    return journal.leftover(path) or journal.read_state(path) is not None


def recover(archive: str, spill_root: str | None, *, level: int = 6) -> str | None:
    """Commit an interrupted session's changes into ``archive``; return what was done.

    The caller holds the archive's write lock. Returns None when there was nothing to do.
    """
    archive = os.path.realpath(archive)
    temps = remove_stale_temps(archive)
    path = existing_area(spill_root, archive)
    state = None if path is None else journal.read_state(path)
    if state is None:
        if temps:
            return f"removed {len(temps)} temp file(s) of an interrupted commit"
        return None
    spill = SpillArea(spill_root, archive)
    assert path is not None
    current = journal.fingerprint(archive)
    who = f"pid {state.get('pid')} on {state.get('host')}"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(state.get("started", 0)))
    cut = False
    appended = state.get("append")
    if appended and state.get("pending") != current:
        # an append in place was interrupted: the file gets back its old length and times
        cut = commit.restore_appended(
            archive, appended["size"], appended["mtime"], appended["atime"], appended["ino"]
        )
        if cut:
            current = journal.fingerprint(archive)
    if state.get("pending") == current:
        # the snapshot is in the archive; what was changed while it was written follows the
        # mark in the old journal (with the snapshot's hard links, which the archive split)
        tail = state.get("tail") or {}
        records = (
            journal.read_records(path, journal.current_name(path, state), tail["offset"])
            if tail
            else []
        )
        if not records:
            spill.destroy()
            return f"the commit of an interrupted session ({who}, {when}) had completed"
        applied = _apply_and_commit(archive, current, tail["links"] + records, spill, path, level)
        return (
            f"the commit of an interrupted session ({who}, {when}) had completed; recovered "
            f"{applied} later change(s) into {archive}"
        )
    records = journal.read_records(path, journal.current_name(path, state))
    if state.get("base") != current:
        kept = spill.move_aside("orphaned")
        raise ZipfuseError(
            f"{archive} changed since the session of {who} ({when}) wrote its changes; "
            f"they were not applied and are kept in {kept}"
        )
    if not records:
        spill.destroy()
        return "cut back an interrupted append in place" if cut else None
    applied = _apply_and_commit(archive, current, records, spill, path, level)
    return (
        f"recovered {applied} change(s) from an interrupted session ({who}, {when}) into {archive}"
    )


def _apply_and_commit(
    archive: str, current: str, records: list[dict], spill: SpillArea, path: str, level: int
) -> int:
    """Replay ``records`` onto the archive version ``current`` and commit the result; the
    spill area goes once the archive holds it. Returns how many records changed something."""
    fd = None
    cd = None
    if current != "none":
        fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
        try:
            cd = read_central_directory(fd)
        except ZipFormatError as exc:
            os.close(fd)
            raise ZipfuseError(f"{archive}: {exc}") from None
    try:
        ns = Namespace.from_archive(cd, os.getuid(), os.getgid(), time.time_ns())
        applied = journal.replay(ns, records, path)
        items = commit.plan(ns)
        try:
            new_fd, _ = commit.write_archive(
                items, fd, archive, level=level, comment=cd.comment if cd else b"",
                source=cd, expect=current,
            )  # fmt: skip
        except OSError as exc:
            raise ZipfuseError(
                f"recovering {archive} failed: {exc.strerror or exc}; "
                f"the changes stay in {path} (retry with 'zipfuse recover')"
            ) from None
        except commit.CommitConflict as exc:
            raise ZipfuseError(str(exc)) from None
        os.close(new_fd)
    finally:
        if fd is not None:
            os.close(fd)
    spill.destroy()
    return applied
