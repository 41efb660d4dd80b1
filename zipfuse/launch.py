"""Starting a mount: check everything in the command's process, then hand over to the daemon.

``prepare`` does everything that can fail with a useful message before anything is mounted
(archive readable and parseable, mountpoint usable, /dev/fuse present). ``spawn`` forks the
daemon first thing: the child imports the daemon's modules (trio, pyfuse3, the FUSE handlers:
a quarter of a second) while this process runs ``prepare`` (reading the central directory);
``Spawned.hand_over`` then passes the result (pickled, with the archive's descriptor) and waits
on the same socket until the child reports that the mount is up or why it is not. On the
machines zipfuse runs on there are two cores or more, so the two overlap, and the command's
process never imports trio or pyfuse3 at all. No fork ever happens inside a running trio loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import pickle
import select
import signal
import socket
import stat
import struct
import time
from collections.abc import Iterator

from . import oldversions, registry
from .errors import ZipfuseError
from .zipformat import MAX_DEPTH, CentralDirectory, ZipFormatError, read_central_directory


@dataclasses.dataclass
class Config:
    archive: str
    mountpoint: str
    read_only: bool = False
    spill_dir: str | None = None
    fuse_options: tuple[str, ...] = ()
    level: int = 6
    foreground: bool = False
    debug: bool = False
    restore: bool = False  # mount with an interrupted session's changes instead of committing
    nonempty: bool = False  # allow mounting over a directory that has files (they are hidden)


@dataclasses.dataclass
class Prepared:
    config: Config
    archive_fd: int | None
    cd: CentralDirectory | None
    notes: list[str] = dataclasses.field(default_factory=list)  # what recovery did


def prepare(config: Config) -> Prepared:
    """Validate and open everything in the caller's process; raise ZipfuseError with why not."""
    # one identity per archive: a symlink to it shares its lock, spill area and registry key,
    # and the commit replaces the real file (the symlink stays a symlink)
    config.archive = os.path.realpath(config.archive)
    config.mountpoint = os.path.abspath(config.mountpoint)
    if not os.path.exists("/dev/fuse"):
        raise ZipfuseError("/dev/fuse is missing: FUSE is not available on this machine")
    if not os.path.isdir(config.mountpoint):
        what = "does not exist" if not os.path.exists(config.mountpoint) else "is not a directory"
        raise ZipfuseError(f"mountpoint {config.mountpoint} {what}")
    if os.path.ismount(config.mountpoint) or config.mountpoint in registry.fuse_mounts():
        raise ZipfuseError(f"mountpoint {config.mountpoint} is already a mount point (busy)")
    if not config.nonempty and _has_entries(config.mountpoint):
        raise ZipfuseError(
            f"mountpoint {config.mountpoint} is not empty (the mount would hide its files); "
            "use an empty directory, or --nonempty to mount over it anyway"
        )
    writers = [
        r
        for r in registry.records()
        if not r["dead"] and _same_archive(r["archive"], config.archive) and not r["read_only"]
    ]
    if writers and not config.read_only:
        raise ZipfuseError(
            f"{config.archive} is already mounted read-write at {writers[0]['mountpoint']}"
        )
    notes: list[str] = []
    if not config.read_only:
        parent = os.path.dirname(config.archive)
        if not os.path.isdir(parent):
            raise ZipfuseError(f"directory {parent} for the archive does not exist")
        notes = _recover_first(config)
    if not os.path.exists(config.archive):
        if config.read_only:
            raise ZipfuseError(f"archive {config.archive} does not exist")
        return Prepared(config, None, None, notes)
    kind = os.stat(config.archive).st_mode
    if not stat.S_ISREG(kind):
        what = "a directory" if stat.S_ISDIR(kind) else "not a regular file"
        raise ZipfuseError(f"archive {config.archive} is {what}")
    try:
        fd = oldversions.open_current(config.archive)  # with the readers' shared lock
    except OSError as exc:
        raise ZipfuseError(f"cannot open {config.archive}: {exc.strerror}") from None
    oldversions.collect(config.archive)
    try:
        with no_gc():
            cd = read_central_directory(fd, keep_names=True, max_depth=MAX_DEPTH)
            cd.detach(fd)  # free it before the fork: records are re-read when listed
    except ZipFormatError as exc:
        os.close(fd)
        raise ZipfuseError(f"{config.archive}: {exc}") from None
    return Prepared(config, fd, cd, notes)


def _same_archive(a: str, b: str) -> bool:
    """Same path, or the same file (device and inode) reached through another name."""
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _has_entries(path: str) -> bool:
    """Whether the directory lists anything (unreadable counts as empty: FUSE will tell)."""
    try:
        with os.scandir(path) as it:
            return next(it, None) is not None
    except OSError:
        return False


def _recover_first(config: Config) -> list[str]:
    """Before a read-write mount: take the lock, and finish an interrupted session if any."""
    from . import recovery  # the commit path: a read-only mount never imports it
    from .lock import ArchiveLock

    lock = ArchiveLock(config.archive)
    lock.acquire()
    try:
        if config.restore and recovery.pending(config.archive, config.spill_dir):
            return ["changes of an interrupted session are restored into the mount (not yet "
                    "committed)"]  # fmt: skip
        note = recovery.recover(config.archive, config.spill_dir, level=config.level)
        return [note] if note else []
    finally:
        lock.release()


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Building 100k long-lived objects triggers many useless cyclic-gc passes; skip them."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


_HEADER = struct.Struct("<Q")  # length of the pickled ``Prepared`` that follows


class Spawned:
    """A daemon process forked before ``prepare``, waiting for what it prepared."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    def abandon(self) -> None:
        """``prepare`` failed (or was interrupted): the child has done nothing but imports."""
        self.sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    def hand_over(self, prepared: Prepared, timeout: float = 60.0) -> int:
        """Give the daemon what ``prepare`` made; return its pid once the mount is ready, or
        raise with its reason."""
        data = pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL)
        fds = [] if prepared.archive_fd is None else [prepared.archive_fd]
        try:
            socket.send_fds(self.sock, [_HEADER.pack(len(data))], fds)
            self.sock.sendall(data)
        except OSError:  # the child died (its reason, if any, is in the socket)
            pass
        del data
        deadline = time.monotonic() + timeout
        buf = b""
        with self.sock:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ZipfuseError(f"the mount did not become ready within {timeout:.0f} s")
                ready, _, _ = select.select([self.sock], [], [], left)
                if not ready:
                    continue
                try:
                    chunk = self.sock.recv(4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode(errors="replace")
        if line == "ok":
            return self.pid
        os.waitpid(self.pid, 0)
        raise ZipfuseError(line or "the mount daemon exited before the mount was ready")


def spawn() -> Spawned:
    """Fork the daemon now; it imports its modules, then waits for ``Spawned.hand_over``."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        parent.close()
        code = 1
        try:
            os.setsid()
            code = _child(child)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    child.close()
    return Spawned(pid, parent)


def _child(sock: socket.socket) -> int:
    """The daemon process: imports first (they overlap the parent's ``prepare``), then mount."""
    try:
        from . import daemon
    except Exception as exc:  # e.g. pyfuse3 missing or broken
        sock.sendall(f"cannot start the mount daemon: {exc}\n".encode())
        return 1
    prepared = _receive(sock)
    if prepared is None:  # abandoned: prepare failed in the parent, which said why
        return 0
    return daemon._daemon_main(prepared, sock.detach())


def _receive(sock: socket.socket) -> Prepared | None:
    head, fds, _, _ = socket.recv_fds(sock, _HEADER.size, 1)
    while head and len(head) < _HEADER.size:
        more = sock.recv(_HEADER.size - len(head))
        if not more:
            break
        head += more
    if len(head) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(head)
    data = bytearray(size)
    view = memoryview(data)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            return None
        got += n
    del view
    with no_gc():
        prepared = pickle.loads(data)
    assert isinstance(prepared, Prepared)
    if prepared.archive_fd is not None:  # its number here is the one received
        prepared.archive_fd = fds[0]
        if prepared.cd is not None:
            prepared.cd.detach(fds[0])
    return prepared
