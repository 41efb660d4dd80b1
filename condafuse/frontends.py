"""Which conda frontend creates environments, and which one activates them.

Frontends: ``conda``, ``mamba``, ``micromamba`` (external executables) or ``rattler`` (the
embedded py-rattler backend, extra ``zipfuse[rattler]``). Choice, first match wins:

1. ``--frontend`` on the command line, else ``CONDA_FUSE_FRONTEND``: a kind (``conda``,
   ``mamba``, ``micromamba``, ``rattler``, ``auto``) or the path of an executable;
2. ``$CONDA_EXE`` (set by conda's own shell hook);
3. ``conda``, ``mamba``, ``micromamba`` on ``PATH``, then ``$MAMBA_EXE`` (micromamba's hook);
4. the embedded py-rattler backend if ``rattler`` can be imported.

Activation is delegated to conda only (``conda shell.posix activate``), when a conda executable
exists; otherwise the built-in activator is used. ``CONDA_FUSE_ACTIVATOR`` (``auto``,
``conda``, ``builtin``) overrides that.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import EXIT_USAGE, CondafuseError

KINDS = ("conda", "mamba", "micromamba", "rattler")
EXTERNAL_KINDS = ("conda", "mamba", "micromamba")


@dataclasses.dataclass(frozen=True)
class Frontend:
    kind: str  # one of KINDS
    exe: str | None  # absolute path of the executable; None for the embedded backend
    source: str  # how it was found, for `condafuse paths`

    def describe(self) -> str:
        if self.exe:
            return f"{self.kind} ({self.exe})"
        return f"{self.kind} (embedded py-rattler)"


def rattler_available() -> bool:
    return importlib.util.find_spec("rattler") is not None


def _is_exe(path: str | None) -> bool:
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def _kind_of_exe(path: str) -> str:
    base = os.path.basename(path)
    for kind in ("micromamba", "mamba", "conda"):
        if base.startswith(kind):
            return kind
    return "conda"  # anything else is assumed to speak conda's command line


def _which(name: str, env: Mapping[str, str]) -> str | None:
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    return os.path.abspath(found) if found else None


def _rattler(source: str) -> Frontend:
    if not rattler_available():
        raise CondafuseError(
            "the embedded backend needs py-rattler: pip install 'zipfuse[rattler]' "
            "(or install conda, mamba or micromamba)"
        )
    return Frontend("rattler", None, source)


def discover(choice: str | None = None, env: Mapping[str, str] | None = None) -> Frontend:
    """Find the frontend to use (see the module docstring for the order)."""
    env = os.environ if env is None else env
    source = "--frontend"
    if not choice:
        choice, source = env.get("CONDA_FUSE_FRONTEND") or None, "CONDA_FUSE_FRONTEND"
    if choice and choice != "auto":
        if choice == "rattler":
            return _rattler(source)
        if choice in EXTERNAL_KINDS:
            if choice == "conda" and _is_exe(env.get("CONDA_EXE")):
                return Frontend("conda", os.path.abspath(env["CONDA_EXE"]), source)
            if choice == "micromamba" and _is_exe(env.get("MAMBA_EXE")):
                exe = os.path.abspath(env["MAMBA_EXE"])
                return Frontend("micromamba", exe, source)
            exe = _which(choice, env)
            if not exe:
                raise CondafuseError(
                    f"frontend {choice!r} ({source}) not found on PATH", EXIT_USAGE
                )
            return Frontend(choice, exe, source)
        if "/" in choice:
            if not _is_exe(choice):
                raise CondafuseError(
                    f"frontend {choice!r} ({source}) is not an executable file", EXIT_USAGE
                )
            return Frontend(_kind_of_exe(choice), os.path.abspath(choice), source)
        raise CondafuseError(
            f"unknown frontend {choice!r} ({source}): use auto, {', '.join(KINDS)} "
            "or the path of an executable",
            EXIT_USAGE,
        )
    if _is_exe(env.get("CONDA_EXE")):
        exe = os.path.abspath(env["CONDA_EXE"])
        return Frontend(_kind_of_exe(exe), exe, "CONDA_EXE")
    for kind in EXTERNAL_KINDS:
        exe = _which(kind, env)
        if exe:
            return Frontend(kind, exe, "PATH")
    if _is_exe(env.get("MAMBA_EXE")):
        exe = os.path.abspath(env["MAMBA_EXE"])
        return Frontend(_kind_of_exe(exe), exe, "MAMBA_EXE")
    if rattler_available():
        return Frontend("rattler", None, "no conda, mamba or micromamba found")
    raise CondafuseError(
        "no conda frontend found: install conda, mamba or micromamba, "
        "or the embedded backend with pip install 'zipfuse[rattler]'"
    )


_PREFIX_OPTS = ("-n", "--name", "-p", "--prefix")


def create_command(frontend: Frontend, prefix: str | Path, args: Sequence[str]) -> list[str]:
    """The exact command line that creates the env at ``prefix`` (external frontends).

    ``<exe> create --prefix PREFIX --yes ARGS``: the user's arguments are passed unchanged;
    ``--yes`` is added unless the user already gave ``-y``/``--yes``.
    """
    if frontend.exe is None:
        raise ValueError("the embedded backend has no command line")
    check_create_args(args)
    cmd = [frontend.exe, "create", "--prefix", str(prefix)]
    if not any(a in ("-y", "--yes") for a in args):
        cmd.append("--yes")
    return cmd + list(args)


def change_command(
    frontend: Frontend, op: str, prefix: str | Path, args: Sequence[str]
) -> list[str]:
    """``<exe> OP --prefix PREFIX --yes ARGS`` for OP install, update or remove (an existing
    env, mounted read-write); the user's arguments pass unchanged."""
    if frontend.exe is None:
        raise ValueError("the embedded backend has no command line")
    if op not in ("install", "update", "remove"):
        raise ValueError(op)
    check_create_args(args)
    cmd = [frontend.exe, op, "--prefix", str(prefix)]
    if not any(a in ("-y", "--yes") for a in args):
        cmd.append("--yes")
    return cmd + list(args)


def env_file_command(
    frontend: Frontend, prefix: str | Path, env_file: str, args: Sequence[str]
) -> list[str]:
    """The command that creates the env at ``prefix`` from an environment.yml.

    conda and mamba: ``<exe> env create --prefix PREFIX --file FILE ARGS`` (their
    environment-file command); micromamba: ``<exe> create --prefix PREFIX --file FILE --yes
    ARGS``. The file's ``name:`` and ``prefix:`` are overridden by ``--prefix``."""
    if frontend.exe is None:
        raise ValueError("the embedded backend has no command line")
    check_create_args(args)
    if frontend.kind == "micromamba":
        cmd = [frontend.exe, "create", "--prefix", str(prefix), "--file", env_file]
        if not any(a in ("-y", "--yes") for a in args):
            cmd.append("--yes")
        return cmd + list(args)
    return [frontend.exe, "env", "create", "--prefix", str(prefix), "--file", env_file, *args]


def check_create_args(args: Sequence[str]) -> None:
    for a in args:
        if a == "--":
            break
        if a in _PREFIX_OPTS or any(a.startswith(o + "=") for o in _PREFIX_OPTS if o[1] == "-"):
            raise CondafuseError(
                f"do not pass {a.split('=')[0]}: condafuse chooses the prefix "
                "(MOUNT_ROOT/NAME/NAME) itself",
                EXIT_USAGE,
            )


@dataclasses.dataclass(frozen=True)
class Activator:
    kind: str  # "conda" or "builtin"
    conda_exe: str | None

    def describe(self) -> str:
        return f"conda ({self.conda_exe})" if self.kind == "conda" else "builtin"


def find_activator(env: Mapping[str, str] | None = None) -> Activator:
    """conda's own activation when a conda executable exists, else the built-in one."""
    env = os.environ if env is None else env
    choice = env.get("CONDA_FUSE_ACTIVATOR") or "auto"
    if choice not in ("auto", "conda", "builtin"):
        raise CondafuseError(
            f"unknown CONDA_FUSE_ACTIVATOR {choice!r}: use auto, conda or builtin", EXIT_USAGE
        )
    if choice == "builtin":
        return Activator("builtin", None)
    exe = None
    if _is_exe(env.get("CONDA_EXE")) and _kind_of_exe(env["CONDA_EXE"]) == "conda":
        exe = os.path.abspath(env["CONDA_EXE"])
    else:
        exe = _which("conda", env)
    if exe:
        return Activator("conda", exe)
    if choice == "conda":
        raise CondafuseError("CONDA_FUSE_ACTIVATOR=conda but no conda executable was found")
    return Activator("builtin", None)
