"""The journal: what the overlay holds, written down so a crash loses nothing that was closed.

Each change to the tree is appended as one JSON line to ``journal`` in the spill area, by path,
right when it happens (one write(2): it survives a kill of the daemon); data is recorded when a
written file is closed or fsync'ed, naming the spill file that holds its whole content. ``fsync``
in the mount syncs the spill file and the journal; a background flush makes everything else
durable within a few seconds. ``state.json`` binds the spill area to one version of the archive
(its fingerprint), so a journal is never replayed onto a different or since-changed archive.

Replaying the journal onto the tree built from that archive version gives back the overlay.
A commit resets the journal once the new archive is durable: ``pending`` names the archive
being installed, so a crash between the rename and the reset is recognised on recovery.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import stat
import time

from .namespace import Namespace, Node

log = logging.getLogger(__name__)

JOURNAL = "journal"
STATE = "state.json"


def fingerprint(path: str) -> str:
    """Identity of one archive version: inode, size, mtime and a hash of its tail (the CD end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return "none"
    try:
        st = os.fstat(fd)
        tail = os.pread(fd, 65536, max(0, st.st_size - 65536))
    finally:
        os.close(fd)
    digest = hashlib.sha256(tail).hexdigest()[:16]
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{digest}"


def read_state(spill_path: str) -> dict | None:
    try:
        with open(os.path.join(spill_path, STATE)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def write_state(spill_path: str, state: dict) -> None:
    path = os.path.join(spill_path, STATE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(spill_path)


def read_records(spill_path: str) -> list[dict]:
    """All complete records; a torn last line (crash mid-append) is ignored."""
    try:
        with open(os.path.join(spill_path, JOURNAL), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    records = []
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            log.warning("ignoring a torn journal record (%d bytes)", len(line))
    return records


class Journal:
    """Appends records for one mount; owned by the daemon's trio thread."""

    def __init__(self, spill_path: str, archive: str) -> None:
        self.dir = spill_path
        self.archive = archive
        self.fd = os.open(
            os.path.join(spill_path, JOURNAL), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        self.unsynced = False

    def start(self, base: str, *, fresh: bool) -> None:
        """Bind the area to archive version ``base``; ``fresh`` drops earlier records."""
        if fresh:
            os.ftruncate(self.fd, 0)
        write_state(
            self.dir,
            {
                "archive": self.archive,
                "base": base,
                "pending": None,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": time.time(),
            },
        )
        os.fsync(self.fd)

    def append(self, record: dict) -> None:
        os.write(self.fd, json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self.unsynced = True

    def sync(self) -> None:
        os.fsync(self.fd)
        self.unsynced = False

    def close(self) -> None:
        os.close(self.fd)

    # ----------------------------------------------------------------- records
    def make(self, path: str, node: Node) -> None:
        rec = {"op": "make", "path": path, **_meta(node)}
        if node.rdev:
            rec["rdev"] = node.rdev
        if node.target is not None:
            rec["target"] = os.fsdecode(node.target)
        self.append(rec)

    def link(self, src: str, dst: str) -> None:
        self.append({"op": "link", "src": src, "dst": dst})

    def remove(self, path: str) -> None:
        self.append({"op": "remove", "path": path})

    def rename(self, src: str, dst: str, flags: int) -> None:
        self.append({"op": "rename", "src": src, "dst": dst, "flags": flags})

    def attr(self, path: str, node: Node) -> None:
        self.append({"op": "attr", "path": path, **_meta(node)})

    def data(self, path: str, node: Node) -> None:
        self.append(
            {"op": "data", "path": path, "spill": os.path.basename(node.spill or ""),
             "size": node.size, "mtime": node.mtime_ns}
        )  # fmt: skip


def _meta(node: Node) -> dict:
    return {
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "atime": node.atime_ns,
        "mtime": node.mtime_ns,
    }


def replay(ns: Namespace, records: list[dict], spill_path: str) -> int:
    """Apply journal records to a tree built from the archive version they were made on.

    Returns how many records changed something. A record that no longer applies (its path is
    gone, its spill file was already dropped because the file was deleted) is skipped: later
    records in the same journal explain why.
    """
    applied = 0
    for rec in records:
        try:
            if _apply(ns, rec, spill_path):
                applied += 1
        except (OSError, KeyError, ValueError, TypeError) as exc:
            log.warning("journal record %s not applied: %s", rec.get("op"), exc)
    return applied


def _split(ns: Namespace, path: str) -> tuple[Node, bytes]:
    head, _, tail = path.rpartition("/")
    parent = ns.resolve(head)
    if parent is None or not parent.is_dir:
        raise OSError(2, f"no directory for {path!r}")
    return parent, os.fsencode(tail)


def _set_meta(node: Node, rec: dict) -> None:
    node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(rec["mode"])
    node.uid, node.gid = rec["uid"], rec["gid"]
    node.atime_ns, node.mtime_ns = rec["atime"], rec["mtime"]
    node.ctime_ns = rec["mtime"]
    node.meta_dirty = True


def _apply(ns: Namespace, rec: dict, spill_path: str) -> bool:
    op = rec["op"]
    now = time.time_ns()
    if op == "make":
        parent, name = _split(ns, rec["path"])
        existing = parent.children.get(name)
        if existing is not None:  # replaying onto a tree that already has it: replace
            ns.unlink(parent, name, now) if not existing.is_dir else ns.rmdir(parent, name, now)
        node = ns.create(parent, name, rec["mode"], rec["uid"], rec["gid"], now)
        node.rdev = rec.get("rdev", 0)
        if "target" in rec:
            node.target = os.fsencode(rec["target"])
            node.size = len(node.target)
        _set_meta(node, rec)
    elif op == "link":
        node = ns.resolve(rec["src"])
        if node is None:
            return False
        parent, name = _split(ns, rec["dst"])
        ns.link(node, parent, name, now)
    elif op == "remove":
        parent, name = _split(ns, rec["path"])
        node = parent.children.get(name)
        if node is None:
            return False
        (ns.rmdir if node.is_dir else ns.unlink)(parent, name, now)
    elif op == "rename":
        p1, n1 = _split(ns, rec["src"])
        p2, n2 = _split(ns, rec["dst"])
        ns.rename(p1, n1, p2, n2, rec["flags"], now)
    elif op == "attr":
        node = ns.resolve(rec["path"])
        if node is None:
            return False
        _set_meta(node, rec)
    elif op == "data":
        node = ns.resolve(rec["path"])
        spill = os.path.join(spill_path, rec["spill"])
        if node is None or not rec["spill"] or not os.path.exists(spill):
            return False
        node.spill = spill
        node.size = os.stat(spill).st_size
        node.mtime_ns = node.ctime_ns = rec["mtime"]
    else:
        raise ValueError(f"unknown journal op {op!r}")
    return True


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def leftover(spill_path: str) -> bool:
    """True when the area holds a journal with records (an unfinished session)."""
    with contextlib.suppress(FileNotFoundError):
        return os.path.getsize(os.path.join(spill_path, JOURNAL)) > 0
    return False
