"""The journal: what the overlay holds, written down so a crash loses nothing that was closed.

Each change to the tree is appended as one JSON line to ``journal`` in the spill area, by path,
right when it happens (one write(2): it survives a kill of the daemon); data is recorded when a
written file is closed or fsync'ed, naming the spill file that holds its whole content. ``fsync``
in the mount syncs the spill file and the journal; a background flush makes everything else
durable within a few seconds. ``state.json`` binds the spill area to one version of the archive
(its fingerprint), so a journal is never replayed onto a different or since-changed archive.

Replaying the journal onto the tree built from that archive version gives back the overlay.
A commit does not stop writers: it snapshots the tree (``Journal.capture`` marks where the
journal stood), writes the archive while changes go on, then ``Journal.switch`` starts a new
journal file for the new archive holding the records made since the mark, and ``state.json``
names it (``journal``) in the same atomic replace that names the new ``base``. ``pending``
names the archive being installed and ``tail`` where its snapshot's records end, so a crash
between the install and the switch is recovered by replaying only the records after the mark.
An append in place first records ``append`` (the file's old length, times and inode): recovery
cuts an interrupted append back to exactly that version, whose fingerprint is then ``base``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import stat
import threading
import time
from json.encoder import encode_basestring_ascii

from .errors import ZipfuseError
from .namespace import Namespace, Node
from .private import open_nofollow, replace_file

log = logging.getLogger(__name__)

JOURNAL = "journal"
STATE = "state.json"
# one encoder for every record: json.dumps with separators builds a new one per call
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
# The records of each change are formatted by hand (a copy into a mount writes four per file,
# and the encoder above took most of their cost): the same bytes as ``_line`` of the same
# record, strings quoted by the encoder's own C function (ASCII only, \uXXXX escapes, the lone
# surrogates of undecodable names kept); every other field is an int.
_quote = encode_basestring_ascii


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
        with os.fdopen(open_nofollow(os.path.join(spill_path, STATE)), "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return None


def write_state(spill_path: str, state: dict) -> None:
    replace_file(os.path.join(spill_path, STATE), json.dumps(state).encode(), durable=True)
    fsync_dir(spill_path)


def current_name(spill_path: str, state: dict | None = None) -> str:
    """The journal file the area's state names (``journal`` before any switch)."""
    if state is None:
        state = read_state(spill_path)
    name = (state or {}).get("journal") or JOURNAL
    if not is_journal_file(name) or "/" in name:
        raise ZipfuseError(f"{spill_path}: state.json names an invalid journal {name!r}")
    return name


def is_journal_file(name: str) -> bool:
    return name == JOURNAL or (name.startswith(JOURNAL + ".") and name[8:].isdigit())


def read_records(spill_path: str, name: str | None = None, offset: int = 0) -> list[dict]:
    """The complete records of the area's journal (from byte ``offset``); a torn last line
    (crash mid-append) is ignored."""
    try:
        fd = open_nofollow(os.path.join(spill_path, name or current_name(spill_path)))
        with os.fdopen(fd, "rb") as f:
            f.seek(offset)
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
    """Appends records for one mount; owned by the daemon's trio thread.

    ``sync`` may run on a worker thread while the trio thread appends: it makes durable what was
    appended when it started, so a record appended during an fsync is never taken as synced.
    """

    def __init__(self, spill_path: str, archive: str, name: str = JOURNAL) -> None:
        self.dir = spill_path
        self.archive = archive
        self.name = name
        self.fd = os.open(
            os.path.join(spill_path, name),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        self.size = os.fstat(self.fd).st_size  # bytes in the file: marks are offsets
        self.appended = 0  # records appended so far
        self.synced = 0  # of those, known durable
        self.tail: list[bytes] | None = None  # records since the mark of a running commit
        # held around an fsync (worker threads) and the swap of files in ``switch``: a sync
        # never runs on a closed descriptor or counts the old file's records for the new one
        self._fd_lock = threading.Lock()

    @property
    def unsynced(self) -> bool:
        return self.appended != self.synced

    def start(self, base: str, *, fresh: bool) -> None:
        """Bind the area to archive version ``base``; ``fresh`` drops earlier records."""
        if fresh:
            os.ftruncate(self.fd, 0)
            self.size = 0
            for other in os.listdir(self.dir):  # journals of an older session
                if is_journal_file(other) and other != self.name:
                    os.unlink(os.path.join(self.dir, other))
        write_state(self.dir, self._state(base))
        os.fsync(self.fd)

    def _state(self, base: str, name: str | None = None) -> dict:
        return {
            "archive": self.archive,
            "base": base,
            "journal": name or self.name,
            "pending": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
        }

    def capture(self) -> int:
        """A commit snapshots the tree now: keep the records that follow (they become the
        next journal) and return where they start in this file."""
        self.tail = []
        return self.size

    def switch(self, base: str, head: list[dict]) -> None:
        """The archive ``base`` holds the snapshot: continue in a new journal file holding
        ``head`` and the records made since the mark; the state names both in one atomic
        replace, and only then is the old journal removed."""
        assert self.tail is not None, "switch without capture"
        number = int(self.name[8:] or 0) + 1 if self.name != JOURNAL else 1
        name = f"{JOURNAL}.{number}"
        lines = [_line(r) for r in head] + self.tail
        path = os.path.join(self.dir, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a leftover of a switch that crashed before naming it
        fd = os.open(
            path,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        try:
            data = b"".join(lines)
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "the new journal was cut short", self.dir)
            os.fsync(fd)
            write_state(self.dir, self._state(base, name))  # fsyncs the directory too
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        old, self.name = self.name, name
        with self._fd_lock:
            os.close(self.fd)
            self.fd, self.size, self.tail = fd, len(data), None
            self.appended = self.synced = len(lines)
        os.unlink(os.path.join(self.dir, old))

    def release(self) -> None:
        """The commit failed: this journal goes on as before."""
        self.tail = None

    def write(self, *lines: bytes) -> None:
        """Append complete records (``*_line``) in one write(2): the records of one request."""
        data = lines[0] if len(lines) == 1 else b"".join(lines)
        done = os.write(self.fd, data)
        if done != len(data):  # disk full: keep the whole records that fit (as a write of
            # each would have), drop the torn one, say so
            whole = 0
            while whole < len(lines) and len(lines[whole]) <= done:
                done -= len(lines[whole])
                self.size += len(lines[whole])
                whole += 1
            self._counted(lines[:whole])
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            raise OSError(errno.ENOSPC, "journal write was cut short", self.dir)
        self.size += done
        self._counted(lines)

    def _counted(self, lines: tuple[bytes, ...]) -> None:
        self.appended += len(lines)
        if self.tail is not None:
            self.tail.extend(lines)

    def sync(self) -> None:
        with self._fd_lock:
            upto = self.appended
            os.fsync(self.fd)
            self.synced = max(self.synced, upto)

    def close(self) -> None:
        with self._fd_lock:
            os.close(self.fd)

    # ----------------------------------------------------------------- records
    def make(self, path: str, node: Node) -> None:
        self.write(make_line(path, node))

    def link(self, src: str, dst: str) -> None:
        self.write(_line(link_record(src, dst)))  # rare: the one definition of the record

    def remove(self, path: str) -> None:
        self.write(f'{{"op":"remove","path":{_quote(path)}}}\n'.encode())

    def rename(self, src: str, dst: str, flags: int) -> None:
        self.write(
            f'{{"op":"rename","src":{_quote(src)},"dst":{_quote(dst)},"flags":{flags}}}\n'.encode()
        )

    def attr(self, path: str, node: Node) -> None:
        self.write(attr_line(path, node))

    def data(self, path: str, node: Node) -> None:
        self.write(data_line(path, node))


def _line(record: dict) -> bytes:
    return _ENCODE(record).encode() + b"\n"


def link_record(src: str, dst: str) -> dict:
    return {"op": "link", "src": src, "dst": dst}


def _meta(node: Node) -> str:
    """The metadata fields of a make or attr record (all ints)."""
    meta = (
        f'"mode":{node.mode},"uid":{node.uid},"gid":{node.gid},'
        f'"atime":{node.atime_ns},"mtime":{node.mtime_ns}'
    )
    return f'{meta},"rdev":{node.rdev}' if node.rdev else meta


def make_line(path: str, node: Node) -> bytes:
    """The record of a new node: its path, metadata and a symlink's target."""
    head = f'{{"op":"make","path":{_quote(path)},{_meta(node)}'
    if node.target is None:
        return f"{head}}}\n".encode()
    return f'{head},"target":{_quote(os.fsdecode(node.target))}}}\n'.encode()


def attr_line(path: str, node: Node) -> bytes:
    """The record of a change of mode, owner or times."""
    return f'{{"op":"attr","path":{_quote(path)},{_meta(node)}}}\n'.encode()


def data_line(path: str, node: Node) -> bytes:
    """The record naming the spill file that holds the node's whole content."""
    spill = os.path.basename(node.spill or "")
    return (
        f'{{"op":"data","path":{_quote(path)},"spill":{_quote(spill)},'
        f'"size":{node.size},"mtime":{node.mtime_ns}}}\n'.encode()
    )


def replay(ns: Namespace, records: list[dict], spill_path: str) -> int:
    """Apply journal records to a tree built from the archive version they were made on.

    Returns how many records changed something. A record that no longer applies (its path is
    gone, its spill file was already dropped because the file was deleted) is skipped: later
    records in the same journal explain why.
    """
    applied = 0
    expected: dict[str, tuple[int, str]] = {}  # spill file -> size and path of its last record
    for rec in records:
        try:
            if _apply(ns, rec, spill_path):
                applied += 1
        except (OSError, KeyError, ValueError, TypeError) as exc:
            log.warning("journal record %s not applied: %s", rec.get("op"), exc)
        if rec.get("op") == "data" and rec.get("spill"):
            expected[os.path.join(spill_path, rec["spill"])] = (rec.get("size", 0), rec["path"])
    for node in ns.nodes.values():
        want = expected.get(node.spill or "")
        if want is not None and node.size < want[0]:
            raise ZipfuseError(
                f"spill file {node.spill} holds {node.size} bytes but the journal recorded "
                f"{want[0]} for {want[1]}; nothing was applied, the changes stay in {spill_path}"
            )
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
    node.rdev = rec.get("rdev", node.rdev)


def _apply(ns: Namespace, rec: dict, spill_path: str) -> bool:
    op = rec["op"]
    now = time.time_ns()
    node: Node | None
    if op == "make":
        parent, name = _split(ns, rec["path"])
        existing = parent.kids.get(name)
        if existing is not None:  # replaying onto a tree that already has it: replace
            ns.unlink(parent, name, now) if not existing.is_dir else ns.rmdir(parent, name, now)
        node = ns.create(parent, name, rec["mode"], rec["uid"], rec["gid"], now)
        if "target" in rec:
            node.target = os.fsencode(rec["target"])
            node.size = len(node.target)
        _set_meta(node, rec)
    elif op == "link":
        node = ns.resolve(rec["src"])
        if node is None:
            return False
        parent, name = _split(ns, rec["dst"])
        existing = parent.kids.get(name)
        if existing is node:
            return False
        if existing is not None and not existing.is_dir:  # a link stored as its own entry
            ns.unlink(parent, name, now)
        ns.link(node, parent, name, now)
    elif op == "remove":
        parent, name = _split(ns, rec["path"])
        node = parent.kids.get(name)
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
        ns.changed(node, meta=True)
    elif op == "data":
        node = ns.resolve(rec["path"])
        spill = os.path.join(spill_path, rec["spill"])
        if node is None or not rec["spill"] or not os.path.exists(spill):
            return False
        node.spill = spill
        ns.changed(node)
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
    with contextlib.suppress(FileNotFoundError, ZipfuseError):
        return os.path.getsize(os.path.join(spill_path, current_name(spill_path))) > 0
    return False
