"""Public Python API of zipfuse, for programs (condafuse, benchmarks) that drive mounts.

Callers use these functions, never zipfuse's printed output. Every failure is a ``ZipfuseError``
whose message is one line meant for a user.

INTERFACE CONTRACT:

- ``mount(archive, mountpoint, *, read_only=False, spill_dir=None, fuse_options=(),
  level=None, timeout=60, nonempty=False) -> MountInfo``: start a daemon and return once the
  mount is ready. A mountpoint that is not empty is refused unless ``nonempty``.
- ``unmount(mountpoint, *, progress=None, timeout=None) -> dict``: commit (unless read-only),
  unmount, and return once the daemon has exited and the archive is durable. ``progress`` receives
  ``Progress`` records while the commit runs.
- ``sync(mountpoint, *, progress=None) -> dict``: commit now, stay mounted (a read-only mount
  answers ``{"committed": False, "read_only": True, ...}``).
- ``status() -> list[MountInfo]``: every live mount of this user (from the registry; instant).
- ``find_mount(mountpoint_or_archive) -> MountInfo | None``.
"""

from __future__ import annotations

import dataclasses

from .errors import ZipfuseError  # noqa: F401 - callers catch api.ZipfuseError


@dataclasses.dataclass
class MountInfo:
    archive: str  # absolute path
    mountpoint: str  # absolute path
    pid: int
    state: str  # "mounted", "committing", "unmounting"
    read_only: bool
    dirty_bytes: int
    spill_dir: str | None
    failed: str | None = None  # why the mount went failsafe read-only, if it did


@dataclasses.dataclass
class Progress:
    entries_done: int
    entries_total: int
    bytes_done: int
    bytes_total: int


# --------------------------------------------------------------------------- implementation
import errno  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from . import (  # noqa: E402
    control,
    private,  # noqa: E402
    registry,
)

ProgressFn = Callable[[Progress], None]


def _info(record: dict, live: dict | None) -> MountInfo:
    return MountInfo(
        archive=record["archive"],
        mountpoint=record["mountpoint"],
        pid=int(record["pid"]),
        state=(live or {}).get("state", "dead" if record.get("dead") else "unknown"),
        read_only=bool(record["read_only"]),
        dirty_bytes=int((live or {}).get("dirty_bytes", 0)),
        spill_dir=record.get("spill_dir"),
        failed=(live or {}).get("failed"),
    )


def _query(record: dict) -> dict | None:
    try:
        for reply in control.request(record["socket"], {"op": "status"}, timeout=5):
            if reply.get("ok"):
                return reply
    except (OSError, ValueError):
        return None
    return None


def status() -> list[MountInfo]:
    """Every live mount of this user; registrations of dead daemons are cleaned up."""
    out = []
    mounted = registry.fuse_mounts()
    for rec in registry.records():
        if rec["dead"]:
            if rec["mountpoint"] not in mounted:
                registry.unregister(int(rec["pid"]))
            else:
                out.append(_info(rec, None))
            continue
        out.append(_info(rec, _query(rec)))
    return out


def _record_for(path: str) -> dict | None:
    want = os.path.realpath(path)
    for rec in registry.records():
        if rec["mountpoint"] == want or rec["archive"] == want:
            return rec
    return None


def find_mount(mountpoint_or_archive: str) -> MountInfo | None:
    rec = _record_for(mountpoint_or_archive)
    if rec is None:
        return None
    return _info(rec, None if rec["dead"] else _query(rec))


def recover(archive: str, *, spill_dir: str | None = None, level: int = 6) -> str | None:
    """Commit the changes an interrupted session left for ``archive``; say what was done."""
    from .lock import ArchiveLock
    from .recovery import pending
    from .recovery import recover as _recover
    from .zipformat import ZipFormatError, read_central_directory

    archive = os.path.realpath(archive)  # the identity its mounts used
    parent = os.path.dirname(archive)
    if not os.path.isdir(parent):
        raise ZipfuseError(f"directory {parent} does not exist")
    if not os.path.lexists(archive):
        if not pending(archive, spill_dir):  # a session on a new archive may still be pending
            raise ZipfuseError(f"archive {archive} does not exist (nothing to recover)")
    elif not os.path.isfile(archive):
        raise ZipfuseError(f"{archive} is not a regular file")
    else:
        try:
            fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ZipfuseError(f"cannot open {archive}: {exc.strerror}") from None
        try:
            read_central_directory(fd)
        except ZipFormatError as exc:
            raise ZipfuseError(f"{archive} is not a usable zip archive: {exc}") from None
        finally:
            os.close(fd)
    lock = ArchiveLock(archive)
    lock.acquire()
    try:
        return _recover(archive, spill_dir, level=level)
    finally:
        lock.release()


def mount(
    archive: str,
    mountpoint: str,
    *,
    read_only: bool = False,
    spill_dir: str | None = None,
    fuse_options: tuple[str, ...] | list[str] = (),
    level: int | None = None,
    timeout: float = 60,
    nonempty: bool = False,
) -> MountInfo:
    """Mount in a new daemon process; return once the mount answers requests.

    ``nonempty``: mount even over a directory that has files (refused otherwise).
    """
    cmd = [sys.executable, "-m", "zipfuse", "mount"]
    if read_only:
        cmd.append("--read-only")
    if nonempty:
        cmd.append("--nonempty")
    if spill_dir:
        cmd += ["--spill-dir", spill_dir]
    if level is not None:
        cmd += ["--level", str(level)]
    for opt in fuse_options:
        cmd += ["-o", opt]
    cmd += ["--", archive, mountpoint]
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise ZipfuseError(f"mounting {archive} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        msg = lines[-1] if lines else f"zipfuse mount failed (exit {proc.returncode})"
        raise ZipfuseError(msg.removeprefix("zipfuse: "))
    info = find_mount(os.path.abspath(mountpoint))
    if info is None:
        raise ZipfuseError(f"{mountpoint} was mounted but its daemon did not register")
    return info


def _progress(reply: dict, progress: ProgressFn | None) -> None:
    p = reply.get("progress")
    if progress is not None and p:
        progress(Progress(p["entries_done"], p["entries_total"], p["bytes_done"], p["bytes_total"]))


def sync(mountpoint: str, *, progress: ProgressFn | None = None) -> dict:
    """Commit the mount's changes into its archive now; the mount stays up."""
    rec = _live_record(mountpoint)
    if rec["read_only"]:
        return {"ok": True, "committed": False, "read_only": True, "mountpoint": rec["mountpoint"],
                "message": "nothing to commit (read-only mount)"}  # fmt: skip
    result: dict = {}
    try:
        for reply in control.request(rec["socket"], {"op": "sync"}, timeout=None):
            _progress(reply, progress)
            result = reply
    except OSError as exc:
        raise ZipfuseError(f"lost contact with the daemon of {mountpoint}: {exc}") from None
    if not result.get("ok"):
        raise ZipfuseError(result.get("error", "sync failed"))
    return result


def compact(mountpoint_or_archive: str, *, spill_dir: str | None = None) -> str:
    """Rewrite the archive without the dead space appends in place leave: through its
    read-write mount's daemon if it has one, else directly under the archive's lock."""
    from .compact import compact as _compact
    from .lock import ArchiveLock

    path = os.path.realpath(mountpoint_or_archive)
    recs = [r for r in registry.records() if path in (r["mountpoint"], r["archive"])]
    live = [r for r in recs if not r["dead"] and not r["read_only"]]
    if live:
        result: dict = {}
        try:
            for reply in control.request(live[0]["socket"], {"op": "compact"}, timeout=None):
                result = reply
        except OSError as exc:
            raise ZipfuseError(f"lost contact with the daemon of {path}: {exc}") from None
        if not result.get("ok"):
            raise ZipfuseError(result.get("error", "compact failed"))
        return f"compacted {live[0]['archive']}: {result.get('archive_size')} bytes"
    if any(r["mountpoint"] == path for r in recs) or path in registry.fuse_mounts():
        raise ZipfuseError(f"{path} is not a read-write zipfuse mount: give the archive's path")
    if not os.path.isfile(path):
        raise ZipfuseError(f"{path} is neither a read-write zipfuse mount nor an archive")
    lock = ArchiveLock(path)
    lock.acquire()
    try:
        return _compact(path, spill_dir)
    finally:
        lock.release()


def _live_record(mountpoint: str) -> dict:
    mp = os.path.realpath(mountpoint)
    rec = _record_for(mp)
    if rec is not None and not rec["dead"]:
        return rec
    if mp in registry.fuse_mounts():
        not_ours = _not_ours(mp)
        if not_ours:
            raise ZipfuseError(not_ours)
        raise ZipfuseError(
            f"the daemon serving {mp} is gone (the mount is dead); "
            f"run 'zipfuse unmount {mp}' to detach it"
        )
    raise ZipfuseError(f"{mp} is not a zipfuse mount")


def _not_ours(mp: str) -> str | None:
    """Why a FUSE mount missing from our registry must be left alone, or None if it is dead.

    A mount of another user, or one whose daemon registered in another runtime directory
    (another XDG_RUNTIME_DIR), is alive and must never be detached as if its daemon had died.
    """
    owner = registry.fuse_mount_owner(mp)
    if owner is not None and owner != os.getuid():
        who = private.user_name(owner)
        return f"{mp} is mounted by {who}, not by you; only they can sync or unmount it"
    if _answers(mp):
        return (
            f"{mp} is served by a live daemon that is not registered in this shell's runtime "
            f"directory {registry.runtime_dir()} (mounted with another XDG_RUNTIME_DIR or "
            "ZIPFUSE_RUNTIME_DIR?); run 'zipfuse unmount' with that setting"
        )
    return None


def _answers(mp: str, timeout: float = 5.0) -> bool:
    """Whether a daemon still serves ``mp``: a dead one's mount fails with ENOTCONN at once.

    A daemon that does not answer within ``timeout`` counts as alive (busy or stuck).
    """
    outcome: list[bool] = []

    def probe() -> None:
        try:
            os.stat(mp)
            outcome.append(True)
        except OSError as exc:
            outcome.append(exc.errno != errno.ENOTCONN)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else True


def _fusermount(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["fusermount3", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "LC_ALL": "C"},  # its messages are parsed (busy)
    )


def unmount(
    mountpoint: str,
    *,
    progress: ProgressFn | None = None,
    timeout: float | None = None,
    discard: bool = False,
) -> dict:
    """Unmount, wait for the final commit and for the daemon to exit; raise if it failed.

    ``discard``: drop every change not yet committed instead of committing it.
    """
    mp = os.path.realpath(mountpoint)
    rec = _record_for(mp)
    if rec is None or rec["dead"]:
        fsname = registry.fuse_mounts().get(mp)
        if fsname is not None:
            not_ours = _not_ours(mp) if rec is None else None
            if not_ours:
                raise ZipfuseError(not_ours)
            proc = _fusermount(["-u", "-z", mp])
            if rec is not None:
                registry.unregister(int(rec["pid"]))
            if proc.returncode != 0:
                raise ZipfuseError(f"cannot detach dead mount {mp}: {proc.stderr.strip()}")
            # our mounts carry the archive's real path as their fsname
            archive = f" {rec['archive'] if rec is not None else fsname}"
            raise ZipfuseError(
                f"the daemon serving {mp} had died; the dead mount was detached; "
                f"run 'zipfuse recover{archive}' to bring back its changes"
            )
        raise ZipfuseError(f"{mp} is not a zipfuse mount")
    # Commit while still mounted: if it fails (disk full...), the mount stays up and nothing is
    # lost; the user can free space and retry. The commit after the unmount is then usually empty.
    committed = sync(mp, progress=progress) if not rec["read_only"] and not discard else {}
    try:
        sock = control.connect_watch(rec["socket"], discard=discard)
        replies = control.read_replies(sock, timeout)
        first = next(replies)
    except (OSError, StopIteration, ValueError) as exc:
        raise ZipfuseError(f"cannot reach the daemon of {mp}: {exc}") from None
    result: dict = first if "ok" in first else {}
    try:
        if not result:
            proc = _fusermount(["-u", mp])
            if proc.returncode != 0:
                why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
                why = why.removeprefix("fusermount3: ")
                done = "changes are committed, but " if committed.get("committed") else ""
                if "busy" in why.lower():  # EBUSY: fusermount3 runs with LC_ALL=C
                    why = (
                        f"busy: a process has its cwd or a file open inside (see `fuser -vm {mp}`)"
                    )
                    raise ZipfuseError(f"{done}cannot unmount, {why}")
                raise ZipfuseError(f"{done}cannot unmount {mp}: {why}")
            for reply in replies:
                _progress(reply, progress)
                if "ok" in reply:
                    result = reply
    except (OSError, ValueError) as exc:
        raise ZipfuseError(f"lost contact with the daemon of {mp}: {exc}") from None
    finally:
        sock.close()
    _wait_exit(rec, timeout)
    if not result.get("ok"):
        raise ZipfuseError(result.get("error", "unmount failed"))
    return result if result.get("committed") or not committed else committed


def _wait_exit(rec: dict, timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while registry.alive(rec):
        if deadline is not None and time.monotonic() > deadline:
            raise ZipfuseError(f"daemon {rec['pid']} did not exit within {timeout:.0f} s")
        time.sleep(0.02)
