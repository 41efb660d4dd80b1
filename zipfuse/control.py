"""Control channel between the CLI/API and a mount daemon: JSON lines over a Unix socket.

A request is one JSON object with an ``op``. The daemon answers with zero or more
``{"progress": {...}}`` lines and ends with one ``{"ok": true|false, ...}`` line.
Ops: ``status``, ``sync`` (commit now, stay mounted), ``watch`` (stay connected and receive
the progress and result of the final commit that follows an unmount).

This is the client side, used by every short-lived command: plain blocking sockets, no trio
(importing trio costs more than the rest of such a command). The daemon's listener is in
``controlserver``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable, Iterator

Send = Callable[[dict], Awaitable[None]]
Handler = Callable[[dict, Send], Awaitable[dict]]


_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL


@contextlib.contextmanager
def addressable(path: str) -> Iterator[str]:
    """A name for ``path`` that fits in a socket address. A long runtime directory (a deep
    $XDG_RUNTIME_DIR or ZIPFUSE_RUNTIME_DIR) is reached through /proc/self/fd/N/NAME, with N an
    open descriptor of the directory, which Linux resolves like the full path."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    head, name = os.path.split(path)
    dfd = os.open(head, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dfd}/{name}"
    finally:
        os.close(dfd)


def _send(path: str, msg: dict, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with addressable(path) as address:
            sock.connect(address)
        sock.sendall(json.dumps(msg).encode() + b"\n")
    except BaseException:
        sock.close()
        raise
    return sock


def request(path: str, msg: dict, *, timeout: float | None = 10.0) -> Iterator[dict]:
    """Send one request and yield every reply line; the last one has ``ok``."""
    sock = _send(path, msg, timeout)
    try:
        yield from read_replies(sock, timeout)
    finally:
        sock.close()


def connect_watch(path: str, *, discard: bool = False) -> socket.socket:
    """Open a ``watch`` connection before unmounting, so no progress line is missed."""
    return _send(path, {"op": "watch", "discard": discard}, 10)


def read_replies(sock: socket.socket, timeout: float | None) -> Iterator[dict]:
    """Every reply line up to the one with ``ok``; a connection closed before it is an error."""
    sock.settimeout(timeout)
    with sock.makefile("rb") as f:
        for line in f:
            reply = json.loads(line)
            yield reply
            if "ok" in reply:
                return
    raise ConnectionError("the daemon closed the control connection without an answer")
