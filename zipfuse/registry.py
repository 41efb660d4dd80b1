"""Where live mounts register themselves, so any shell of the user can find and reach them.

Each daemon writes ``<runtime>/mounts/<pid>.json`` (archive, mountpoint, pid, process start
time, control socket, log file) and removes it when it exits. Readers check that the pid still
belongs to the same process (start time), so a reused pid is never mistaken for a daemon.
Nobody scans ``ps`` or matches process names.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile


def runtime_dir() -> str:
    """Per-user directory for registrations, sockets and logs (independent of $TMPDIR)."""
    path = os.environ.get("ZIPFUSE_RUNTIME_DIR")
    if not path:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
            path = os.path.join(xdg, "zipfuse")
        else:
            path = os.path.join(
                "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), f"zipfuse-{os.getuid()}"
            )
    os.makedirs(os.path.join(path, "mounts"), mode=0o700, exist_ok=True)
    os.makedirs(os.path.join(path, "logs"), mode=0o700, exist_ok=True)
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
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)
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
            with open(os.path.join(mounts, name)) as f:
                record = json.load(f)
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


def _unescape(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )
