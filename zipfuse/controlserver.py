"""The daemon's side of the control channel (see ``control``): listen, one task per connection.

Kept apart from ``control`` so the CLI's requests never import trio.
"""

from __future__ import annotations

import json
import os
import socket

import trio

from .control import Handler, addressable


async def serve(path: str, handler: Handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``path`` until cancelled; one task per connection."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with addressable(path) as address:
        await sock.bind(address)
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def connection(stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            while b"\n" not in buf:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk

            async def send(msg: dict) -> None:
                await stream.send_all(json.dumps(msg).encode() + b"\n")

            try:
                request = json.loads(buf.split(b"\n", 1)[0])
                result = await handler(request, send)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            except Exception as exc:  # a bad request must not stop the daemon
                result = {"ok": False, "error": f"control request failed: {exc}"}
            try:
                await send(result)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    task_status.started()
    await trio.serve_listeners(connection, [listener])
