"""Starting the mount daemon early: fork first, hand it the prepared mount later.

``spawn`` forks the daemon first thing: the child imports the daemon's modules (trio, pyfuse3,
the FUSE handlers: a quarter of a second or more) while the command's process runs
``launch.prepare`` (reading the central directory); ``Spawned.hand_over`` then passes the result
(pickled, with the archive's descriptor) and waits on the same socket until the child reports
that the mount is up or why it is not, as one line. On the machines zipfuse runs on there are
two cores or more, so the two overlap, and the command's process never imports trio or pyfuse3.
This module imports nothing heavy, and ``cli`` forks before it even parses the arguments.
No fork ever happens inside a running trio loop.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import struct
import time
from typing import TYPE_CHECKING

from .errors import ZipfuseError

if TYPE_CHECKING:
    from .launch import Prepared

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
        import pickle

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
    # The imports make ~30k container objects that live as long as the daemon (modules,
    # classes, functions). The cyclic gc scanned each of them once, in ~60 young passes during
    # the imports (or in one pass after them if only disabled meanwhile): ~50 M instructions,
    # a tenth of the imports. They go straight to the permanent generation instead, where
    # Daemon.mount puts everything else a moment later (gc.freeze). The price: the ~1,800
    # objects the imports leave in reference cycles (attrs' class builders, ~0.5 MB) stay.
    gc.disable()
    try:
        from . import daemon
    except Exception as exc:  # e.g. pyfuse3 missing or broken
        sock.sendall(f"cannot start the mount daemon: {exc}\n".encode())
        return 1
    finally:
        gc.freeze()
        gc.enable()
    prepared = _receive(sock)
    if prepared is None:  # abandoned: prepare failed in the parent, which said why
        return 0
    return daemon._daemon_main(prepared, sock.detach())


def _receive(sock: socket.socket) -> Prepared | None:
    import pickle

    from .launch import Prepared, no_gc

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
