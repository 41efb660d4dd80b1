"""Where things live: archives, mount points, temporary and spill space.

The variable names and defaults are those of the original bash tool (conda-fuse-*), so existing
archives and habits carry over:

- ``CONDA_FUSE_ARCHIVE_PATH`` (default ``~/miniconda_fuse/archives``): ``NAME.zip`` files.
- ``CONDA_FUSE_MOUNT_ROOT`` (default ``~/miniconda_fuse/envs``): ``NAME/`` mount points; the conda
  prefix is ``MOUNT_ROOT/NAME/NAME`` because each archive holds one top folder ``NAME/``.
- ``TMPDIR`` (default ``/tmp``): temporary files. condafuse keeps its scratch space (spill files
  of read-write mounts, package caches) under ``$TMPDIR/condafuse-<uid>/`` unless
  ``CONDA_FUSE_SPILL_DIR`` / ``CONDA_FUSE_PKGS_DIR`` say otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

from .errors import EXIT_USAGE, CondafuseError

DEFAULT_ARCHIVE_PATH = "~/miniconda_fuse/archives"
DEFAULT_MOUNT_ROOT = "~/miniconda_fuse/envs"

# Conda's binary prefix replacement pads to the placeholder (255 chars in conda-forge builds);
# a longer prefix cannot be patched into binaries at all.
MAX_PREFIX_LEN = 250

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")


def _expand(value: str, env: Mapping[str, str]) -> Path:
    # expanduser must honour the HOME given in `env` (tests and sudo-like wrappers change it).
    if value.startswith("~"):
        home = env.get("HOME") or os.path.expanduser("~")
        value = home + value[1:] if value == "~" or value.startswith("~/") else value
    return Path(os.path.expandvars(value)).expanduser().absolute()


@dataclasses.dataclass(frozen=True)
class Paths:
    archive_dir: Path
    mount_root: Path
    tmp_dir: Path
    spill_dir: Path
    pkgs_dir: Path
    scratch: Path | None = None  # $TMPDIR/condafuse-UID when a default location is in use

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Paths:
        env = os.environ if env is None else env
        archive_dir = _expand(env.get("CONDA_FUSE_ARCHIVE_PATH") or DEFAULT_ARCHIVE_PATH, env)
        mount_root = _expand(env.get("CONDA_FUSE_MOUNT_ROOT") or DEFAULT_MOUNT_ROOT, env)
        tmp_dir = _expand(env.get("TMPDIR") or "/tmp", env)
        scratch = tmp_dir / f"condafuse-{os.getuid()}"
        spill = env.get("CONDA_FUSE_SPILL_DIR")
        pkgs = env.get("CONDA_FUSE_PKGS_DIR")
        return cls(
            archive_dir=archive_dir,
            mount_root=mount_root,
            tmp_dir=tmp_dir,
            spill_dir=_expand(spill, env) if spill else scratch / "spill",
            pkgs_dir=_expand(pkgs, env) if pkgs else scratch / "pkgs",
            scratch=None if spill and pkgs else scratch,
        )

    def secure_scratch(self) -> None:
        """Create (or check) the default scratch directories before anything goes in them.

        $TMPDIR is shared on login nodes: another user could create condafuse-UID first and
        read or plant spill files and packages. The directory and its spill/pkgs children must
        be ours, mode 0700, and no symlinks, or nothing is used.
        """
        if self.scratch is None:
            return
        from zipfuse.errors import ZipfuseError
        from zipfuse.private import private_dir

        hint = "set CONDA_FUSE_SPILL_DIR and CONDA_FUSE_PKGS_DIR to directories of your own"
        try:
            private_dir(str(self.scratch), "condafuse scratch directory", hint)
            for sub in (self.spill_dir, self.pkgs_dir):
                if sub.parent == self.scratch:
                    private_dir(str(sub), "condafuse scratch directory", hint)
        except ZipfuseError as exc:
            raise CondafuseError(str(exc)) from None

    # --- per-environment locations -------------------------------------------------------
    def archive(self, name: str) -> Path:
        return self.archive_dir / f"{check_name(name)}.zip"

    def mountpoint(self, name: str) -> Path:
        return self.mount_root / check_name(name)

    def prefix(self, name: str) -> Path:
        return self.mountpoint(name) / name

    def env_spill_dir(self, name: str) -> Path:
        return self.spill_dir / check_name(name)

    def names(self) -> list[str]:
        """Environment names, one per ``*.zip`` in the archive directory (sorted)."""
        try:
            files = sorted(self.archive_dir.glob("*.zip"))
        except OSError:
            return []
        return [f.stem for f in files if _NAME_RE.match(f.stem)]

    def name_for_prefix(self, prefix: str | os.PathLike[str]) -> str | None:
        """The env NAME if ``prefix`` is ``MOUNT_ROOT/NAME/NAME`` (or inside it), else None."""
        try:
            rel = Path(os.path.abspath(prefix)).relative_to(self.mount_root)
        except ValueError:
            return None
        parts = rel.parts
        if len(parts) >= 2 and parts[0] == parts[1]:
            return parts[0]
        return None


def check_name(name: str) -> str:
    """An env name must be a plain file name (it becomes NAME.zip, a directory, a prompt)."""
    if name.endswith(".zip"):
        raise CondafuseError(
            f"invalid environment name {name!r}: give the name without '.zip'", EXIT_USAGE
        )
    if not _NAME_RE.match(name or ""):
        raise CondafuseError(
            f"invalid environment name {name!r}: use letters, digits and . _ + - "
            "(not starting with . + or -)",
            EXIT_USAGE,
        )
    return name
