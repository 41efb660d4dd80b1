"""``condafuse install`` / ``update`` / ``uninstall``: change the packages of an existing env.

The env is mounted read-write (or its read-write mount is used), the change is made in the
mounted prefix (by the embedded py-rattler backend, or by ``<frontend> install|update|remove
--prefix PREFIX --yes ARGS``), and the archive is committed before the command returns. If the
change fails on a mount made for it, the mount is dropped without committing: the archive is
exactly as it was. A mount that existed before is left up (its earlier changes are the user's).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from . import envs, frontends, prefixinfo
from .config import Paths, check_name
from .errors import EXIT_BUSY, EXIT_USAGE, CondafuseError

OPS = ("install", "update", "remove")


def change(
    paths: Paths, frontend: frontends.Frontend, name: str, op: str, args: Sequence[str]
) -> None:
    """Run ``op`` (install, update or remove) with conda-style ``args`` on env NAME."""
    check_name(name)
    envs._require_archive(paths, name)
    prefix = paths.prefix(name)
    args = list(args)
    request = cmd = None
    update_all = False
    if frontend.kind == "rattler":
        from . import rattler_backend

        if op == "update" and "--all" in args:
            update_all = True
            args = [a for a in args if a != "--all"]
        request = rattler_backend.parse_create_args(args, need_channels=False)
        if not request.specs and not update_all:
            what = {"install": "packages to install", "update": "packages to update (or --all)"}
            raise CondafuseError(f"no {what.get(op, 'packages to remove')} given", EXIT_USAGE)
        if update_all and request.specs:
            raise CondafuseError("give package names or --all, not both", EXIT_USAGE)
    else:
        cmd = frontends.change_command(frontend, op, prefix, args)
    info, mounted_now = envs.ensure_mounted(paths, name, read_only=False)
    if info.read_only:
        if mounted_now:
            _unmount(paths, name, discard=True)
        raise CondafuseError(
            f"{name} is mounted read-only at {info.mountpoint}; `condafuse unmount {name}` "
            "first (or unmount its read-write mount elsewhere)",
            EXIT_BUSY,
        )
    done = False
    changed = True  # an external frontend's changes are not known in advance
    before: list[tuple[str, int, int]] | None = None
    try:
        envs.check_prefix(paths, name)
        before = _meta_state(prefix)
        if request is not None:
            from . import rattler_backend

            paths.secure_scratch()
            result = rattler_backend.change(
                prefix,
                op,
                request,
                paths.pkgs_dir,
                update_all=update_all,
                known_channels=envs.read_meta(prefix).get("channels") or [],
            )
            changed = bool(result.linked or result.unlinked)
            if not changed:
                envs.log(f"nothing to change in {name}: all requested packages are installed")
            else:
                gone = " ".join(f"-{d}" for d in result.unlinked)
                new = " ".join(f"+{d}" for d in result.linked)
                envs.log(f"{name}: {' '.join(x for x in (gone, new) if x)}")
        else:
            envs.log("running " + " ".join(cmd))
            try:
                proc = subprocess.Popen(cmd)
            except OSError as exc:
                raise CondafuseError(f"cannot run {cmd[0]}: {exc.strerror}") from None
            rc = envs._wait_forwarding(proc)
            if rc != 0:
                raise CondafuseError(f"{frontend.kind} {op} failed (exit status {rc})")
        if changed:
            _update_meta(prefix, name)
        printer = envs.ProgressPrinter(f"writing {name}.zip")
        try:
            synced = envs._call("sync", str(paths.mountpoint(name)), progress=printer)
        finally:
            printer.close()
        done = True
    except BaseException as exc:
        if mounted_now:
            _unmount(paths, name, discard=True)
            kept = "the archive is unchanged"
        elif before is None or before == _meta_state(prefix):
            kept = "the environment is unchanged"
        else:
            kept = f"nothing was committed; the mount at {prefix} may hold a partial change"
        if isinstance(exc, KeyboardInterrupt):
            raise CondafuseError(f"interrupted; {kept}", getattr(exc, "code", 130)) from None
        if isinstance(exc, CondafuseError):
            raise CondafuseError(f"{exc}; {kept}", exc.code) from None
        raise
    finally:
        if done and mounted_now:
            _unmount(paths, name, discard=False)
    if isinstance(synced, dict) and synced.get("committed") is False:
        envs.log(f"{name} is unchanged")
    else:
        envs.log(f"{name} changed; the archive is on disk")


def _meta_state(prefix: Path) -> list[tuple[str, int, int]]:
    """conda-meta's listing (name, size, mtime): every package change shows there."""
    try:
        with os.scandir(prefix / "conda-meta") as it:
            return sorted(
                (e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in it if e.is_file()
            )
    except OSError:
        return []


def _update_meta(prefix: Path, name: str) -> None:
    """Keep ``.condafuse.json``'s package list current (its other fields stay)."""
    meta = envs.read_meta(prefix)
    if not meta:
        return
    meta["packages"] = [f"{r.name}-{r.version}-{r.build}" for r in prefixinfo.records(prefix)]
    meta["modified"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    (prefix / envs.META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def _unmount(paths: Paths, name: str, *, discard: bool) -> None:
    try:
        envs._call(
            "unmount",
            str(paths.mountpoint(name)),
            discard=discard,
            timeout=envs.UNMOUNT_CLEANUP_TIMEOUT,
        )
    except CondafuseError as exc:
        envs.log(f"unmount of {name} failed: {exc}")
    envs._rmdir_quiet(paths.mountpoint(name))
