"""Where live mounts register themselves, so any shell of the user can find and reach them.

Each daemon writes ``<runtime>/mounts/<pid>.json`` (archive, mountpoint, pid, process start
time, control socket, log file) and removes it when it exits. Readers check that the pid still
belongs to the same process (start time), so a reused pid is never mistaken for a daemon.
Nobody scans ``ps`` or matches process names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile

from .private import open_nofollow, private_dir, replace_file

_RUNTIME_HINT = "set ZIPFUSE_RUNTIME_DIR to a directory of your own"
_checked: set[str] = set()  # runtime dirs verified by this process


def runtime_dir() -> str:
    """Per-user directory for registrations, sockets and logs (independent of $TMPDIR).

    It and its subdirectories are private (0700, ours, not a symlink): another user who created
    ``/tmp/zipfuse-UID`` first could otherwise read our registry or replace a control socket.
    """
    path = os.environ.get("ZIPFUSE_RUNTIME_DIR")
    if path:
        path = os.path.abspath(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
    else:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
            path = os.path.join(xdg, "zipfuse")
        else:
            path = os.path.join(
                "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), f"zipfuse-{os.getuid()}"
            )
    if path not in _checked:
        private_dir(path, "runtime directory", _RUNTIME_HINT)
        for sub in ("mounts", "logs", "spill"):
            private_dir(os.path.join(path, sub), "runtime directory", _RUNTIME_HINT)
        _checked.add(path)
    return path


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    fields = data[data.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X") and not _threads_left(pid):  # exited, not yet reaped
        return None
    return int(fields[19])


def _threads_left(pid: int) -> bool:
    """A killed process's main thread turns zombie before its other threads have finished
    exiting; until they have, it still holds its files and locks."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        if data[data.rfind(b")") + 2 :][:1] not in (b"Z", b"X"):
            return True
    return False


def alive(record: dict) -> bool:
    start = process_start_time(int(record["pid"]))
    return start is not None and start == record.get("start_time")


def socket_path(pid: int) -> str:
    return os.path.join(runtime_dir(), f"{pid}.sock")


def log_path(pid: int) -> str:
    return os.path.join(runtime_dir(), "logs", f"{pid}.log")


def register(record: dict) -> str:
    path = os.path.join(runtime_dir(), "mounts", f"{record['pid']}.json")
    replace_file(path, json.dumps(record).encode())
    return path


def unregister(pid: int) -> None:
    for path in (os.path.join(runtime_dir(), "mounts", f"{pid}.json"), socket_path(pid)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def records() -> list[dict]:
    """Registrations of live daemons; entries of dead ones are returned with ``dead=True``."""
    out = []
    mounts = os.path.join(runtime_dir(), "mounts")
    for name in sorted(os.listdir(mounts)):
        if not name.endswith(".json"):
            continue
        try:
            record = _load(os.path.join(mounts, name))
        except (OSError, ValueError):
            continue
        record["dead"] = not alive(record)
        out.append(record)
    return out


def fuse_mounts() -> dict[str, str]:
    """Mountpoint -> fsname of every FUSE mount in this mount namespace."""
    out = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2].startswith("fuse"):
                out[_unescape(parts[1])] = _unescape(parts[0])
    return out


def fuse_mount_owner(mountpoint: str) -> int | None:
    """The uid that mounted the FUSE mount at ``mountpoint`` (its ``user_id=`` option)."""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 4 or not parts[2].startswith("fuse"):
                continue
            if _unescape(parts[1]) == mountpoint:
                for opt in parts[3].split(","):
                    if opt.startswith("user_id="):
                        return int(opt[len("user_id=") :])
    return None


def _unescape(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def _load(path: str) -> dict:
    fd = open_nofollow(path)
    with os.fdopen(fd, "rb") as f:
        return json.loads(f.read())


# ---------------------------------------------------------------- remembered spill directories
# A mount with --spill-dir leaves its journal there; if its daemon dies, ``zipfuse recover
# ARCHIVE`` (or the next mount) must find it without being told again.


def _spill_note(archive: str) -> str:
    digest = hashlib.sha256(archive.encode()).hexdigest()[:16]
    return os.path.join(runtime_dir(), "spill", f"{digest}.json")


def remember_spill(archive: str, root: str) -> None:
    """Note that ``archive``'s session keeps its changes under spill root ``root``."""
    replace_file(_spill_note(archive), json.dumps({"archive": archive, "root": root}).encode())


def remembered_spill(archive: str) -> str | None:
    """The spill root a session of ``archive`` used, if it was not the default one."""
    try:
        note = _load(_spill_note(archive))
    except (OSError, ValueError):
        return None
    return note.get("root") if note.get("archive") == archive else None


def forget_spill(archive: str, root: str) -> None:
    if remembered_spill(archive) == root:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_spill_note(archive))
