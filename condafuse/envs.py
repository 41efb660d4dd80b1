"""Environment operations on top of zipfuse's Python API (never its printed output).

An env NAME is ``ARCHIVES/NAME.zip`` whose single top folder is ``NAME/``, mounted at
``MOUNT_ROOT/NAME``; the conda prefix is ``MOUNT_ROOT/NAME/NAME``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import envfile, envs_txt, frontends, prefixinfo
from .config import MAX_PREFIX_LEN, Paths, check_name
from .errors import (
    EXIT_BUSY,
    EXIT_EXISTS,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    CondafuseError,
)

META_FILE = ".condafuse.json"  # inside the prefix; conda only reads conda-meta/*.json
MOUNT_TIMEOUT = 60
UNMOUNT_CLEANUP_TIMEOUT = 120


def log(msg: str) -> None:
    print(f"condafuse: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# zipfuse API access


def zf():
    """zipfuse.api, with a one-line error if the core does not provide what we call."""
    try:
        from zipfuse import api
    except Exception as exc:  # pragma: no cover - broken installation
        raise CondafuseError(f"cannot import zipfuse: {exc}") from None
    return api


def _call(fn_name: str, *args: Any, **kwargs: Any) -> Any:
    api = zf()
    fn = getattr(api, fn_name, None)
    if fn is None:
        raise CondafuseError(f"this zipfuse has no api.{fn_name}() yet (zipfuse core too old)")
    try:
        return fn(*args, **kwargs)
    except api.ZipfuseError as exc:
        raise CondafuseError(str(exc)) from None


def mounts() -> list[Any]:
    return list(_call("status"))


def _same(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def find_mount_of(paths: Paths, name: str) -> Any | None:
    """The live mount at MOUNT_ROOT/NAME, if any."""
    return _call("find_mount", str(paths.mountpoint(name)))


def _mount_archive(paths: Paths, name: str, *, read_only: bool) -> Any:
    """zipfuse mount of NAME.zip at MOUNT_ROOT/NAME with its own spill directory."""
    paths.secure_scratch()
    spill = paths.env_spill_dir(name)
    spill.mkdir(parents=True, exist_ok=True, mode=0o700)
    return _call(
        "mount",
        str(paths.archive(name)),
        str(paths.mountpoint(name)),
        read_only=read_only,
        spill_dir=str(spill),
        timeout=MOUNT_TIMEOUT,
    )


class ProgressPrinter:
    """Shows zipfuse Progress records on stderr (a live line on a terminal, else every 5 s)."""

    def __init__(self, label: str, stream=None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last = 0.0
        self.shown = False
        self.finished = False

    def __call__(self, p: Any) -> None:
        now = time.monotonic()
        final = bool(p.entries_total) and p.entries_done >= p.entries_total
        if self.finished or (not final and now - self.last < (0.2 if self.tty else 5.0)):
            return
        self.finished = final
        self.last = now
        # never past 100 %, whatever the producer counted (done and total clamped alike)
        done, total = min(p.bytes_done, p.bytes_total), p.bytes_total
        pct = min(100 * done // total, 100) if total > 0 else 100
        line = (
            f"condafuse: {self.label}: {min(p.entries_done, p.entries_total)}/{p.entries_total} "
            f"entries, {_mb(done)}/{_mb(total)} ({pct}%)"
        )
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _mb(n: int | None) -> str:
    """Human-readable size (decimal units, like du -h --si)."""
    if n is None:
        return "-"
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            break
    return f"{n:.1f} {unit}"


# ------------------------------------------------------------------------------------------
# mounting


def _require_archive(paths: Paths, name: str) -> Path:
    archive = paths.archive(name)
    if not archive.is_file():
        raise CondafuseError(
            f"no environment {name!r} ({archive} does not exist); see `condafuse list`",
            EXIT_NOT_FOUND,
        )
    return archive


def _prepare_mountpoint(mp: Path) -> None:
    try:
        mp.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CondafuseError(f"cannot create mount point {mp}: {exc.strerror}") from None
    try:
        busy = any(True for _ in os.scandir(mp))
    except OSError as exc:
        raise CondafuseError(f"cannot read mount point {mp}: {exc.strerror}") from None
    if busy:
        raise CondafuseError(
            f"mount point {mp} is not empty; move its contents away first", EXIT_BUSY
        )


def _writer_elsewhere(archive: Path, mp: Path) -> Any | None:
    for m in mounts():
        if _same(m.archive, archive) and not _same(m.mountpoint, mp) and not m.read_only:
            return m
    return None


def ensure_mounted(paths: Paths, name: str, *, read_only: bool) -> tuple[Any, bool]:
    """Mount NAME unless it already is. Returns (MountInfo, mounted_now).

    Only one read-write mount per archive: if another one exists (here, at another mount point,
    or refused by zipfuse because a writer holds the archive), mount read-only instead and say
    so.
    """
    archive = _require_archive(paths, name)
    mp = paths.mountpoint(name)
    info = find_mount_of(paths, name)
    if info is not None:
        if info.state == "dead":
            raise CondafuseError(
                f"the mount of {name} at {mp} is dead (its zipfuse daemon exited); "
                f"`condafuse unmount {name}` detaches it",
                EXIT_BUSY,
            )
        if not _same(info.archive, archive):
            raise CondafuseError(
                f"{mp} is already a mount of another archive ({info.archive})", EXIT_BUSY
            )
        if not read_only and info.read_only:
            log(
                f"{name} is mounted read-only; `condafuse unmount {name}` and mount it again "
                "to write"
            )
        return info, False
    want_ro = read_only
    if not want_ro:
        other = _writer_elsewhere(archive, mp)
        if other is not None:
            log(f"{name} is mounted read-write at {other.mountpoint}; mounting it read-only here")
            want_ro = True
    _prepare_mountpoint(mp)
    try:
        info = _mount_archive(paths, name, read_only=want_ro)
    except CondafuseError as exc:
        if want_ro:
            _rmdir_quiet(mp)
            raise
        # Probably a writer elsewhere (another host): a read-only view is still useful.
        try:
            info = _mount_archive(paths, name, read_only=True)
        except CondafuseError:
            _rmdir_quiet(mp)
            raise exc from None
        log(f"read-write mount refused ({exc}); {name} is mounted read-only")
    envs_txt.register(paths.prefix(name))  # conda drops it from the list while unmounted
    return info, True


def _rmdir_quiet(p: Path) -> None:
    try:
        p.rmdir()
    except OSError:
        pass


def mount(paths: Paths, name: str, *, read_only: bool) -> Any:
    info, now = ensure_mounted(paths, name, read_only=read_only)
    if not now:
        mode = "read-only" if info.read_only else "read-write"
        log(f"{name} is already mounted ({mode}) at {info.mountpoint}")
    return info


def _active_here(mp: Path) -> bool:
    cp = os.environ.get("CONDA_PREFIX")
    if not cp:
        return False
    try:
        Path(os.path.abspath(cp)).relative_to(mp)
        return True
    except ValueError:
        return False


def unmount_one(paths: Paths, name: str, *, timeout: float | None = None) -> None:
    mp = paths.mountpoint(name)
    info = find_mount_of(paths, name)
    if info is None:
        raise CondafuseError(f"{name} is not mounted", EXIT_NOT_FOUND)
    if _active_here(mp):
        log(
            f"warning: {name} is active in this shell (CONDA_PREFIX={os.environ['CONDA_PREFIX']});"
            " run `condafuse deactivate` (the shell hook does it for you)"
        )
    printer = ProgressPrinter(f"writing {name}.zip")
    if not info.read_only and info.dirty_bytes:
        log(f"unmounting {name}: writing its archive ({_mb(info.dirty_bytes)} not yet committed)")
    try:
        result = _call("unmount", str(mp), progress=printer, timeout=timeout)
    finally:
        printer.close()
    _rmdir_quiet(mp)
    if info.read_only:
        log(f"{name} unmounted")
    elif isinstance(result, dict) and result.get("committed") is False:
        log(f"{name} unmounted (nothing had changed)")
    else:
        log(f"{name} unmounted; the archive is on disk")


def condafuse_mounts(paths: Paths) -> list[tuple[str, Any]]:
    out = []
    for m in mounts():
        try:
            rel = Path(m.mountpoint).relative_to(paths.mount_root)
        except ValueError:
            continue
        if len(rel.parts) == 1:
            out.append((rel.parts[0], m))
    return sorted(out, key=lambda t: t[0])


def unmount(paths: Paths, names: Sequence[str], *, all_: bool, timeout: float | None = None) -> int:
    if all_:
        names = [n for n, _ in condafuse_mounts(paths)]
        if not names:
            log("nothing is mounted")
            return 0
    # Each problem is reported once, on one line: the last one as the command's error.
    last: CondafuseError | None = None
    for n in names:
        try:
            unmount_one(paths, check_name(n), timeout=timeout)
        except CondafuseError as exc:
            if last is not None:
                print(f"condafuse: error: {last}", file=sys.stderr, flush=True)
            last = exc
    if last is not None:
        raise last
    return 0


# ------------------------------------------------------------------------------------------
# create


def _refuse_existing(archive: Path, name: str) -> None:
    if archive.exists():
        raise CondafuseError(
            f"environment {name!r} already exists ({archive}); see `condafuse list`, "
            f"or `condafuse remove {name}` first",
            EXIT_EXISTS,
        )


def _check_prefix_len(prefix: Path) -> None:
    if len(str(prefix)) > MAX_PREFIX_LEN:
        raise CondafuseError(
            f"prefix {prefix} is {len(str(prefix))} characters; conda packages allow at most "
            f"{MAX_PREFIX_LEN}. Use a shorter CONDA_FUSE_MOUNT_ROOT",
            EXIT_USAGE,
        )


def write_meta(prefix: Path, name: str, **fields: Any) -> None:
    data = {
        "format": 1,
        "name": name,
        "prefix": str(prefix),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    data.update(fields)
    (prefix / META_FILE).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_meta(prefix: Path) -> dict[str, Any]:
    try:
        data = json.loads((prefix / META_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def create(
    paths: Paths,
    frontend: frontends.Frontend,
    name: str,
    args: Sequence[str],
    env_file: str | None = None,
) -> None:
    """Create NAME from conda arguments, or from an environment.yml (``env_file``)."""
    check_name(name)
    archive = paths.archive(name)
    mp = paths.mountpoint(name)
    prefix = paths.prefix(name)
    _refuse_existing(archive, name)
    _check_prefix_len(prefix)
    request = None
    spec = envfile.read(env_file) if env_file else None
    if frontend.kind == "rattler":
        from . import rattler_backend

        request = rattler_backend.parse_create_args(args)
        if spec is not None:
            request = _request_from_env_file(request, spec)
        cmd = None
    elif env_file:
        cmd = frontends.env_file_command(frontend, prefix, os.path.abspath(env_file), args)
    else:
        cmd = frontends.create_command(frontend, prefix, args)
    if find_mount_of(paths, name) is not None:
        raise CondafuseError(
            f"{mp} is already mounted; `condafuse unmount {name}` first", EXIT_BUSY
        )
    paths.archive_dir.mkdir(parents=True, exist_ok=True)
    _prepare_mountpoint(mp)
    mounted = False
    try:
        _mount_archive(paths, name, read_only=False)
        mounted = True
        if request is not None:
            from . import rattler_backend

            paths.secure_scratch()
            installed = rattler_backend.create(prefix, request, paths.pkgs_dir)
            if spec is not None and spec.variables:
                prefixinfo.set_env_vars(prefix, spec.variables)
            if spec is not None and spec.pip:
                assert env_file is not None
                pip_install(prefix, spec.pip, Path(os.path.abspath(env_file)).parent)
            meta = {
                "frontend": "rattler",
                "specs": request.specs,
                "channels": request.channels,
                "packages": installed,
            }
        else:
            log("running " + " ".join(cmd))
            try:
                proc = subprocess.Popen(cmd)
            except OSError as exc:
                raise CondafuseError(f"cannot run {cmd[0]}: {exc.strerror}") from None
            rc = _wait_forwarding(proc)
            if rc != 0:
                raise CondafuseError(
                    f"{frontend.kind} create failed (exit status {rc}); nothing was kept"
                )
            meta = {"frontend": frontend.kind, "args": list(args)}
            if env_file:
                meta["env_file"] = os.path.abspath(env_file)
        if not (prefix / "conda-meta").is_dir():
            raise CondafuseError(f"{frontend.kind} did not create a conda environment at {prefix}")
        write_meta(prefix, name, **meta)
        printer = ProgressPrinter(f"writing {name}.zip")
        try:
            _call("sync", str(mp), progress=printer)
        finally:
            printer.close()
    except BaseException as exc:
        _undo_create(paths, name, mounted)
        if isinstance(exc, KeyboardInterrupt):
            raise CondafuseError(
                "interrupted; nothing was kept", getattr(exc, "code", 130)
            ) from None
        raise
    envs_txt.register(prefix)
    log(f"created {name} at {prefix} (mounted read-write; the archive is on disk)")
    log(f"activate it with `condafuse activate {name}`")


def _request_from_env_file(request: Any, spec: envfile.EnvFile) -> Any:
    """The embedded backend's request for an environment.yml: its dependencies plus any specs
    on the command line; channels: -c ones, the file's, then the defaults (unless the file
    lists ``nodefaults`` or --override-channels was given)."""
    import dataclasses

    from . import rattler_backend

    given = request.channels[: request.given]
    channels = given + [
        c for c in map(rattler_backend.channel_url, spec.real_channels()) if c not in given
    ]
    n_given = len(channels)
    if not (request.override or spec.nodefaults):
        channels += [c for c in request.channels[request.given :] if c not in channels]
    specs = spec.dependencies + request.specs
    if spec.pip and "pip" not in {_spec_name(s) for s in specs}:
        raise CondafuseError(
            "the environment file has a pip: section but no pip among its dependencies: "
            "add `- pip` (its packages are installed with the environment's own pip)",
            EXIT_USAGE,
        )
    if specs and not channels:
        raise CondafuseError("no channels: list channels: in the file or give -c", EXIT_USAGE)
    return dataclasses.replace(request, specs=specs, channels=channels, given=n_given)


def _spec_name(spec: str) -> str:
    m = re.match(r"^(?:[^:\s]+::)?([A-Za-z0-9_][A-Za-z0-9_.\-]*)", spec.strip())
    return m.group(1).lower() if m else ""


def pip_install(prefix: Path, requirements: Sequence[str], cwd: Path) -> None:
    """Install an environment.yml's ``pip:`` section with the env's own pip, as conda does:
    the lines become a requirements file (so options like ``--index-url`` work) read from the
    file's directory (so relative paths work)."""
    import tempfile

    from .shell import BuiltinActivator

    python = prefix / "bin" / "python"
    has_pip = any(prefix.glob("lib/python*/site-packages/pip/__init__.py"))
    if not (os.access(python, os.X_OK) and has_pip):
        raise CondafuseError(
            "the environment file has a pip: section but the environment has no pip "
            f"({prefix}/bin/python -m pip); add `- pip` to its dependencies"
        )
    act = BuiltinActivator(dict(os.environ), lambda p: p, lambda p: None)
    env = act.run_environment(str(prefix))
    try:
        fd, req = tempfile.mkstemp(prefix="condaenv.", suffix=".requirements.txt", dir=cwd)
    except OSError:
        fd, req = tempfile.mkstemp(prefix="condaenv.", suffix=".requirements.txt")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(line + "\n" for line in requirements))
        cmd = [str(python), "-m", "pip", "install", "-U", "-r", req]
        log("running " + " ".join(cmd[:4]) + " " + " ".join(requirements))
        try:
            proc = subprocess.Popen(cmd, env=env, cwd=cwd)
        except OSError as exc:
            raise CondafuseError(f"cannot run {python}: {exc.strerror}") from None
        rc = _wait_forwarding(proc)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(req)
    if rc != 0:
        raise CondafuseError(f"pip install of the pip: section failed (exit status {rc})")


def _undo_create(paths: Paths, name: str, mounted: bool) -> None:
    """Remove everything a failed create made: its mount, archive, mount point, spill dir."""
    mp = paths.mountpoint(name)
    archive = paths.archive(name)
    try:
        info = find_mount_of(paths, name)
    except CondafuseError:
        info = None
    if info is not None:
        try:
            _call("unmount", str(mp), timeout=UNMOUNT_CLEANUP_TIMEOUT)
        except CondafuseError as exc:  # report, then still try to remove what was made
            log(f"cleanup: unmount of {mp} failed: {exc}")
    if mounted or (info is not None and _same(info.archive, archive)):  # new, so ours
        try:
            archive.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log(f"cleanup: cannot remove {archive}: {exc.strerror}")
    _rmdir_quiet(mp)
    shutil.rmtree(paths.env_spill_dir(name), ignore_errors=True)


# ------------------------------------------------------------------------------------------
# list / remove


def list_envs(paths: Paths) -> list[dict[str, Any]]:
    by_archive: dict[str, Any] = {}
    for m in mounts():
        by_archive[os.path.realpath(m.archive)] = m
    names = set(paths.names())
    for n, m in condafuse_mounts(paths):
        if _name_ok(n) and _same(m.archive, paths.archive(n)):
            names.add(n)  # mounted but not committed yet (a create in progress)
    rows = []
    for n in sorted(names):
        archive = paths.archive(n)
        row: dict[str, Any] = {"name": n, "archive": str(archive), "prefix": str(paths.prefix(n))}
        try:
            st = archive.stat()
            row["size"] = st.st_size
            row["modified"] = datetime.datetime.fromtimestamp(st.st_mtime).isoformat(
                timespec="seconds"
            )
        except OSError:
            row["size"] = None  # new archive, not committed yet
            row["modified"] = None
        m = by_archive.get(os.path.realpath(archive))
        if m is None:
            row.update(mounted=False, state=None, read_only=None, dirty_bytes=None, mountpoint=None)
        else:
            row.update(
                mounted=True,
                state=m.state,
                read_only=m.read_only,
                dirty_bytes=m.dirty_bytes,
                mountpoint=m.mountpoint,
            )
        rows.append(row)
    return rows


def _name_ok(n: str) -> bool:
    try:
        check_name(n)
        return True
    except CondafuseError:
        return False


def format_list(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no environments (create one with `condafuse create NAME ...`)\n"
    header = ("NAME", "SIZE", "MODIFIED", "MOUNT", "DIRTY")
    table = [header]
    for r in rows:
        size = _mb(r["size"]) if r["size"] is not None else "-"
        modified = (r["modified"] or "-").replace("T", " ")
        if r["mounted"]:
            mode = "ro" if r["read_only"] else "rw"
            mount = f"{r['state']} ({mode})"
            dirty = _mb(r["dirty_bytes"]) if not r["read_only"] else "-"
        else:
            mount, dirty = "-", "-"
        table.append((r["name"], size, modified, mount, dirty))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in table
    )


def remove(paths: Paths, name: str, *, yes: bool) -> None:
    archive = _require_archive(paths, name)
    mp = paths.mountpoint(name)
    for m in mounts():
        if _same(m.archive, archive) or _same(m.mountpoint, mp):
            raise CondafuseError(
                f"{name} is mounted at {m.mountpoint}; `condafuse unmount {name}` first", EXIT_BUSY
            )
    if not yes:
        if not sys.stdin.isatty():
            raise CondafuseError(
                f"not removing {name} without confirmation: pass --yes", EXIT_USAGE
            )
        size = _mb(archive.stat().st_size)
        sys.stderr.write(f"Remove environment {name} ({archive}, {size})? [y/N] ")
        sys.stderr.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            raise CondafuseError("not removed")
    archive.unlink()
    envs_txt.unregister(paths.prefix(name))
    _rmdir_quiet(mp)
    spill = paths.env_spill_dir(name)
    if spill.is_dir():
        shutil.rmtree(spill, ignore_errors=True)
    log(f"removed {name} ({archive})")


# ------------------------------------------------------------------------------------------
# activation support


def check_prefix(paths: Paths, name: str) -> Path:
    prefix = paths.prefix(name)
    if not (prefix / "conda-meta").is_dir():
        raise CondafuseError(
            f"{paths.archive(name)} holds no conda environment {name}/ "
            "(expected NAME/conda-meta inside the archive)"
        )
    recorded = read_meta(prefix).get("prefix")
    if recorded and recorded != str(prefix):
        log(
            f"warning: {name} was created for prefix {recorded}, now mounted at {prefix}; "
            "programs with the old path baked in may fail (was CONDA_FUSE_MOUNT_ROOT changed?)"
        )
    return prefix


def display_name_factory(paths: Paths) -> Callable[[str], str]:
    def display(prefix: str) -> str:
        n = paths.name_for_prefix(prefix)
        if n:
            return n
        p = Path(prefix)
        return p.name if p.parent.name == "envs" else str(p)

    return display


# ------------------------------------------------------------------------------------------
# run


@contextlib.contextmanager
def mounted_for(paths: Paths, name: str, purpose: str) -> Iterator[Any]:
    """NAME mounted for the block: an existing mount is used as is; otherwise it is mounted
    read-only and unmounted afterwards."""
    info, mounted_now = ensure_mounted(paths, name, read_only=True)
    try:
        yield info
    finally:
        if mounted_now:
            try:
                _call("unmount", info.mountpoint, timeout=UNMOUNT_CLEANUP_TIMEOUT)
            except CondafuseError as exc:
                log(f"unmount after {purpose} failed: {exc}")
            _rmdir_quiet(paths.mountpoint(name))


def run(paths: Paths, name: str, cmd: Sequence[str]) -> int:
    from .shell import BuiltinActivator, activation_scripts

    if not cmd:
        raise CondafuseError("no command given: condafuse run NAME -- CMD [ARGS]", EXIT_USAGE)
    with mounted_for(paths, name, "run"):
        prefix = check_prefix(paths, name)
        act = BuiltinActivator(dict(os.environ), display_name_factory(paths), paths.name_for_prefix)
        env = act.run_environment(str(prefix))
        scripts = activation_scripts(prefix, "activate.d")
        argv = list(cmd)
        if scripts:
            shell = shutil.which("bash") or "/bin/sh"
            sourcing = "; ".join(f". {shlex.quote(str(s))}" for s in scripts)
            argv = [shell, "-c", f'{sourcing}; exec "$@"', "condafuse-run"] + argv
        elif shutil.which(argv[0], path=env["PATH"]) is None and "/" not in argv[0]:
            raise CondafuseError(f"command not found in {name}: {argv[0]}", 127)
        try:
            proc = subprocess.Popen(argv, env=env)
        except OSError as exc:
            raise CondafuseError(f"cannot run {argv[0]}: {exc.strerror}", 127) from None
        return _wait_forwarding(proc)


def _wait_forwarding(proc: subprocess.Popen) -> int:
    """Wait for ``proc``; pass SIGTERM/SIGHUP on to it (Ctrl-C reaches it directly)."""

    def forward(signum: int, frame: Any) -> None:
        proc.send_signal(signum)

    forwarded = (signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, forward) for s in forwarded}
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:  # the child got the SIGINT too; wait for it
                continue
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return 128 - rc if rc < 0 else rc


# ------------------------------------------------------------------------------------------
# import / export


def import_env(paths: Paths, src: Path, name: str, *, level: int = 6) -> None:
    from .archive import pack

    check_name(name)
    src = Path(os.path.abspath(src))
    if not src.is_dir():
        raise CondafuseError(f"{src} is not a directory", EXIT_NOT_FOUND)
    if not (src / "conda-meta").is_dir():
        raise CondafuseError(f"{src} is not a conda environment (no conda-meta/)", EXIT_USAGE)
    archive = paths.archive(name)
    _refuse_existing(archive, name)
    paths.archive_dir.mkdir(parents=True, exist_ok=True)
    printer = ProgressPrinter(f"packing {src}")
    try:
        n = pack(src, archive, name, level=level, progress=printer)
    except OSError as exc:
        raise CondafuseError(f"import failed: {exc.filename or ''}: {exc.strerror}") from None
    finally:
        printer.close()
    new_prefix = paths.prefix(name)
    envs_txt.register(new_prefix)
    log(f"imported {src} as {name} ({n} entries, {_mb(archive.stat().st_size)}; not mounted)")
    if str(src) != str(new_prefix):
        log(
            f"note: files still refer to {src}; when mounted, the env's prefix is {new_prefix}. "
            "Scripts with the old path baked in (shebangs, activate.d) keep using the old "
            "location"
        )


def export_env(paths: Paths, name: str, dest: Path) -> None:
    dest = Path(os.path.abspath(dest))
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CondafuseError(f"{dest} exists and is not an empty directory", EXIT_EXISTS)
    made_dest = not dest.exists()
    with mounted_for(paths, name, "export"):
        prefix = paths.prefix(name)
        if not prefix.is_dir():
            raise CondafuseError(f"{paths.archive(name)} has no top folder {name}/")
        try:
            copy_tree(prefix, dest, ProgressPrinter(f"exporting {name}"))
        except BaseException:  # no half-copied env left behind
            if made_dest:
                shutil.rmtree(dest, ignore_errors=True)
            else:
                for child in list(dest.iterdir()):
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            raise
    log(f"exported {name} to {dest}")


def copy_tree(src: Path, dest: Path, progress: ProgressPrinter | None = None) -> None:
    """Copy ``src`` to ``dest`` keeping symlinks, modes and mtimes (directories last)."""
    from .archive import PackProgress, scan

    entries, total = scan(src)
    dest.mkdir(parents=True, exist_ok=True)
    dirs = [("", os.stat(src))]
    done = 0
    for i, (rel, st) in enumerate(entries, 1):
        s, d = os.path.join(src, rel), os.path.join(dest, rel)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(d, 0o700)
            dirs.append((rel, st))
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        elif stat.S_ISREG(st.st_mode):
            shutil.copyfile(s, d, follow_symlinks=False)
            os.chmod(d, stat.S_IMODE(st.st_mode))
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
            done += st.st_size
        if progress:
            progress(PackProgress(i, len(entries), done, total))
    for rel, st in reversed(dirs):
        d = os.path.join(dest, rel) if rel else str(dest)
        os.chmod(d, stat.S_IMODE(st.st_mode))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
    if progress:
        progress.close()


def export_yml(
    paths: Paths,
    name: str,
    dest: str | None,
    *,
    no_builds: bool = False,
    from_history: bool = False,
) -> None:
    """Write NAME as an environment.yml, as ``conda env export`` does (to stdout without
    ``dest``): its channels, every conda package as ``name=version=build``, packages pip
    installed on top under ``pip:``, and its ``conda env config vars``."""
    with mounted_for(paths, name, "export"):
        prefix = check_prefix(paths, name)
        records = prefixinfo.records(prefix)
        channels: list[str] = []
        for r in records:
            if r.channel and r.channel not in channels:
                channels.append(r.channel)
        if from_history:
            deps = prefixinfo.history_specs(prefix)
            pip: list[str] = []
        else:
            deps = [
                f"{r.name}={r.version}" if no_builds else f"{r.name}={r.version}={r.build}"
                for r in records
            ]
            pip = prefixinfo.pip_packages(prefix)
        text = envfile.dump(
            name, channels, deps, pip, prefixinfo.env_vars(prefix), prefix=str(prefix)
        )
    if dest is None or dest == "-":
        sys.stdout.write(text)
        return
    out = Path(dest)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CondafuseError(f"cannot write {out}: {exc.strerror}") from None
    log(f"exported {name} to {out} ({len(deps)} conda packages, {len(pip)} pip packages)")
