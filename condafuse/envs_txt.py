"""Tell conda about our environments: ``~/.conda/environments.txt``.

conda lists (``conda env list``) and activates by name every prefix written in that file, one
absolute path per line; it registers each prefix it creates there and drops the lines of
prefixes that no longer exist when it lists them. We do the same for MOUNT_ROOT/NAME/NAME:
register on create, import and every mount (conda drops the line while the env is unmounted,
since the prefix then does not exist), unregister on remove.

Like conda: lines are compared after normalising the path, other lines are kept as they are, no
duplicates are written, ``CONDA_REGISTER_ENVS=false`` turns registration off, and a file we
cannot write only warns. Unlike conda's plain append, the file is rewritten atomically (temp file
in ``~/.conda``, fsync, rename) under an flock of the directory, so two condafuse processes (or a
crash) never lose or tear a line. ``~`` is the HOME of the calling user.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

_FALSE = ("0", "false", "no", "off")


def path(env: Mapping[str, str] | None = None) -> Path:
    """``$HOME/.conda/environments.txt`` (the file conda itself reads)."""
    env = os.environ if env is None else env
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".conda" / "environments.txt"


def enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("CONDA_REGISTER_ENVS", "true").strip().lower() not in _FALSE


def read(env: Mapping[str, str] | None = None) -> list[str]:
    """The registered prefixes (comments and blank lines skipped), in file order."""
    try:
        text = path(env).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def register(prefix: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> bool:
    """Add ``prefix`` unless it is already listed. Returns True if the file changed."""
    return _update(os.path.normpath(os.fspath(prefix)), add=True, env=env)


def unregister(prefix: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> bool:
    """Drop every line naming ``prefix``. Returns True if the file changed."""
    return _update(os.path.normpath(os.fspath(prefix)), add=False, env=env)


def _update(prefix: str, *, add: bool, env: Mapping[str, str] | None) -> bool:
    if not enabled(env):
        return False
    file = path(env)
    try:
        if add:
            file.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        elif not file.exists():
            return False
        with _locked(file.parent):
            try:
                lines = file.read_text().splitlines(keepends=True)
                mode = file.stat().st_mode & 0o7777
            except FileNotFoundError:
                lines, mode = [], 0o666 & ~_umask()

            def same(line: str) -> bool:
                s = line.strip()
                return bool(s) and not s.startswith("#") and os.path.normpath(s) == prefix

            if add:
                if any(same(ln) for ln in lines):
                    return False
                if lines and not lines[-1].endswith("\n"):
                    lines[-1] += "\n"
                lines.append(prefix + "\n")
            else:
                kept = [ln for ln in lines if not same(ln)]
                if len(kept) == len(lines):
                    return False
                lines = kept
            _write_atomically(file, "".join(lines), mode)
        return True
    except OSError as exc:  # conda only warns too: the env itself is fine
        what = "register" if add else "unregister"
        print(
            f"condafuse: warning: cannot {what} {prefix} in {file}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return False


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomically(file: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".environments.txt.", dir=file.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(file.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
