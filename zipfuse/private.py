"""Directories and files of our own under shared parents (/tmp, $TMPDIR, a group project dir).

On a shared login node another user can create ``/tmp/zipfuse-spill-UID`` (or plant a symlink
there) before our first mount. Whatever zipfuse keeps state in is therefore created 0700 without
following symlinks and then checked on an open descriptor: a directory, owned by us, writable by
nobody else. A directory that fails is refused with one line naming it and why, before anything
is read from it. Files inside are created with O_EXCL|O_NOFOLLOW, mode 0600.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat

from .errors import ZipfuseError

NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def user_name(uid: int) -> str:
    """``name`` for a uid, or ``uid N`` when it has no name."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def private_dir(path: str, what: str, hint: str) -> str:
    """Create ``path`` (mode 0700) or reuse it if it is ours and private; return it.

    ``what`` names the directory in the refusal ("spill directory"), ``hint`` says what the
    user can do instead. Parents are not created here (they belong to someone else).
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ZipfuseError(f"cannot create {what} {path}: {exc.strerror}") from None
    try:
        fd = os.open(path, NOFOLLOW_DIR)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symlink" if os.path.islink(path) else "not a directory"
            raise ZipfuseError(f"refusing {what} {path}: it is {kind}; {hint}") from None
        raise ZipfuseError(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise ZipfuseError(
                f"refusing {what} {path}: it is owned by {user_name(st.st_uid)}, not by you; {hint}"
            )
        if st.st_mode & 0o022:
            raise ZipfuseError(
                f"refusing {what} {path}: others can write to it (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); {hint}"
            )
        if st.st_mode & 0o077:  # ours and safe, but readable: nobody needs to see our pids
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def checked_existing(path: str, what: str, hint: str) -> bool:
    """Whether ``path`` exists, after checking it like ``private_dir`` (never creating it)."""
    if not os.path.lexists(path):
        return False
    private_dir(path, what, hint)
    return True


def user_root(path: str, what: str) -> str:
    """A directory the user named (``--spill-dir``): created 0700 if missing; if it exists,
    others must not be able to rename our subdirectories in it (writable only by its owner, or
    sticky like /tmp). Returns its real path."""
    path = os.path.realpath(path)
    if not os.path.exists(path):
        try:
            os.makedirs(path, mode=0o700)
        except OSError as exc:
            raise ZipfuseError(f"cannot create {what} {path}: {exc.strerror}") from None
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ZipfuseError(f"cannot use {what} {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ZipfuseError(f"cannot use {what} {path}: not a directory")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise ZipfuseError(
            f"refusing {what} {path}: others can write to it (mode "
            f"{stat.S_IMODE(st.st_mode):04o}) and could replace what zipfuse keeps there; "
            "use a directory only you can write to"
        )
    return path


def create_file(path: str, flags: int = os.O_RDWR) -> int:
    """A new file of our own (0600): never an existing file, never through a symlink."""
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def replace_file(path: str, data: bytes, *, durable: bool = False, tmp: str | None = None) -> None:
    """Write ``data`` to a fresh ``path.tmp`` (or ``tmp``: one per process where several may
    write ``path`` at once) and rename it over ``path`` (atomic)."""
    tmp = tmp or path + ".tmp"
    try:
        os.unlink(tmp)  # a leftover of a crash (only we can write here)
    except FileNotFoundError:
        pass
    fd = create_file(tmp, os.O_WRONLY)
    try:
        write_all(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    """Write every byte or raise: a short write (disk full) becomes ENOSPC, never silence."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        if offset is None:
            n = os.write(fd, view[done:])
        else:
            n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += n


def open_nofollow(path: str, flags: int = os.O_RDONLY) -> int:
    """Open an existing file of ours without following a symlink."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
