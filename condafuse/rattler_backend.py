"""The embedded frontend: create and change environments with py-rattler when no conda is
installed.

It understands the common ``conda create``/``install``/``update``/``remove`` arguments: package
specs (``python=3.11 numpy``, conda's lenient syntax), ``-c/--channel`` (names, URLs, ``file://``
URLs and local directories), ``--override-channels``, ``--file FILE``, ``-y/--yes`` and
``-q/--quiet``. Anything else is refused with a one-line message naming the option. Without
``--override-channels`` the channels in ``CONDA_FUSE_CHANNELS`` (comma- or space-separated;
default ``conda-forge``) follow the ``-c`` ones, like conda's defaults do; changes to an existing
env also search the channels its packages came from (before the defaults).

A change (``change``) solves the env's requested specs (from ``conda-meta``) plus the new ones,
preferring the installed builds (rattler's "locked" packages), and lets rattler turn the prefix
into the solution: it links what is new and unlinks what is gone. Like conda, each create or
change appends a revision to ``conda-meta/history``.

``rattler`` is imported lazily: activate, list and paths never pay for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import EXIT_USAGE, CondafuseError

DEFAULT_CHANNELS = "conda-forge"


@dataclasses.dataclass
class CreateRequest:
    specs: list[str]
    channels: list[str]  # in priority order, already resolved to names or URLs
    quiet: bool = False
    given: int = 0  # channels[:given] came from -c; the rest are the defaults
    override: bool = False  # --override-channels


def channel_url(value: str) -> str:
    """Local directories become file:// URLs; names and URLs pass through."""
    if "://" in value:
        return value
    if value.startswith(("/", "./", "../", "~")) or os.path.isdir(value):
        return Path(os.path.expanduser(value)).resolve().as_uri()
    return value


def parse_create_args(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    need_specs: bool = False,
    need_channels: bool = True,
) -> CreateRequest:
    """Arguments of create/install/update/remove. An empty create is allowed, as in conda.
    ``need_channels=False``: a change, which also searches the env's own channels."""
    env = os.environ if env is None else env
    specs: list[str] = []
    channels: list[str] = []
    override = False
    quiet = False
    it = iter(args)
    for arg in it:
        if arg in ("-c", "--channel"):
            value = next(it, None)
            if value is None:
                raise CondafuseError(f"{arg} needs a channel", EXIT_USAGE)
            channels.append(channel_url(value))
        elif arg.startswith("--channel="):
            channels.append(channel_url(arg.split("=", 1)[1]))
        elif arg.startswith("-c") and len(arg) > 2 and not arg.startswith("--"):
            channels.append(channel_url(arg[2:]))
        elif arg == "--override-channels":
            override = True
        elif arg in ("-y", "--yes"):
            pass
        elif arg in ("-q", "--quiet"):
            quiet = True
        elif arg == "--file" or arg.startswith("--file="):
            path = arg.split("=", 1)[1] if "=" in arg else next(it, None)
            if path is None:
                raise CondafuseError("--file needs a file name", EXIT_USAGE)
            specs.extend(_read_spec_file(path))
        elif arg.startswith("-"):
            raise CondafuseError(
                f"the embedded py-rattler backend does not understand {arg!r}; "
                "install conda, mamba or micromamba for the full create options",
                EXIT_USAGE,
            )
        else:
            specs.append(arg)
    if need_specs and not specs:
        raise CondafuseError("no packages given", EXIT_USAGE)
    given = len(channels)
    if not override:
        defaults = env.get("CONDA_FUSE_CHANNELS", DEFAULT_CHANNELS)
        for ch in re.split(r"[,\s]+", defaults.strip()):
            if ch and channel_url(ch) not in channels:
                channels.append(channel_url(ch))
    if not channels and specs and need_channels:
        raise CondafuseError(
            "no channels: give -c CHANNEL (or drop --override-channels)", EXIT_USAGE
        )
    return CreateRequest(
        specs=specs, channels=channels, quiet=quiet, given=given, override=override
    )


def _read_spec_file(path: str) -> list[str]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CondafuseError(f"cannot read spec file {path}: {exc.strerror}") from None
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("@"):
            out.append(line)
    return out


def create(prefix: str | Path, request: CreateRequest, cache_dir: Path) -> list[str]:
    """Solve and install ``request`` into ``prefix`` (absolute). Returns "name-version-build"s.

    No specs: an empty environment (``conda-meta/history`` only), as ``conda create`` makes."""
    prefix = Path(prefix)
    if not prefix.is_absolute():
        raise ValueError("prefix must be absolute (it is written into the installed files)")
    (prefix / "conda-meta").mkdir(parents=True, exist_ok=True)
    if not request.specs:
        write_history(prefix, [], [], request.specs, "update", cmdline())
        return []
    records = _run(_solve(request, request.specs, [], request.channels, cache_dir))
    _run(_install(prefix, records, [], request.specs, cache_dir, request.quiet))
    write_history(prefix, records, [], request.specs, "update", cmdline())
    compile_pyc(prefix, quiet=request.quiet)
    return [_dist(r) for r in records]


@dataclasses.dataclass
class Change:
    """What a change did: "name-version-build" strings linked and unlinked."""

    linked: list[str]
    unlinked: list[str]


def change(
    prefix: str | Path,
    op: str,
    request: CreateRequest,
    cache_dir: Path,
    *,
    update_all: bool = False,
    known_channels: Sequence[str] = (),
) -> Change:
    """``op`` is install, update or remove: change the installed env at ``prefix`` in place.

    install: the new specs join (or replace, by name) the env's requested specs. update: the
    named packages (or every package with ``update_all``) may move to newer builds. remove: the
    named packages go, with every installed package that depends on them (as conda does).
    Everything else stays at its installed build when the solver can keep it. Unless
    --override-channels was given, the channels of the installed packages and
    ``known_channels`` (those the env was created with) are searched after the -c ones."""
    prefix = Path(prefix)
    if op not in ("install", "update", "remove"):
        raise ValueError(op)
    installed = _run(_installed(prefix))
    by_name = {r.name.normalized: r for r in installed}
    requested = requested_specs(installed)
    new = {_spec_name(s): s for s in request.specs}
    if op != "install":
        missing = [n for n in new if n not in by_name]
        if missing:
            raise CondafuseError(
                f"not installed in this environment: {', '.join(missing)}", EXIT_USAGE
            )
    if op == "remove":
        gone = _with_dependents(installed, set(new))
        specs = [s for n, s in requested.items() if n not in gone]
        locked = [r for r in installed if r.name.normalized not in gone]
        history_op = "remove"
        history_specs = [*new, *(n for n in requested if n in gone and n not in new)]
    else:
        requested.update(new)  # --all keeps the requested specs (and their constraints)
        specs = list(requested.values())
        freed = set(by_name) if update_all else set(new)
        locked = [r for r in installed if r.name.normalized not in freed]
        history_op = "update"
        history_specs = list(new.values())
    channels = list(request.channels)
    if not request.override:
        own = []
        for c in [*_env_channels(installed), *(ch.rstrip("/") for ch in known_channels)]:
            if c not in channels and c not in own:
                own.append(c)
        channels[request.given : request.given] = own
    if specs and not channels:
        raise CondafuseError("no channels: give -c CHANNEL", EXIT_USAGE)
    records = _run(_solve(request, specs, locked, channels, cache_dir)) if specs else []
    if op == "remove":
        kept = [n for n in new if any(r.name.normalized == n for r in records)]
        if kept:
            raise CondafuseError(f"cannot remove {', '.join(kept)}: other packages need it")
    old = {_dist(r) for r in installed}
    now = {_dist(r) for r in records}
    result = Change(sorted(now - old), sorted(old - now))
    if not result.linked and not result.unlinked:
        return result
    _run(_install(prefix, records, installed, specs, cache_dir, True))
    write_history(
        prefix,
        [r for r in records if _dist(r) in now - old],
        [r for r in installed if _dist(r) in old - now],
        history_specs,
        history_op,
        cmdline(),
    )
    if result.linked:
        compile_pyc(prefix, quiet=request.quiet)
    return result


def requested_specs(installed: Sequence[Any]) -> dict[str, str]:
    """name -> spec the user asked for, from the conda-meta records (rattler and conda write
    them there). An env that records none (old conda) counts every installed package as asked
    for by name, so a change never drops any of them."""
    out: dict[str, str] = {}
    for r in installed:
        specs = list(getattr(r, "requested_specs", None) or [])
        one = getattr(r, "requested_spec", None)
        if one and one not in specs:
            specs.append(one)
        for s in specs:
            out.setdefault(_spec_name(s), s)
    if not out:
        out = {r.name.normalized: r.name.normalized for r in installed}
    return out


def _spec_name(spec: str) -> str:
    from rattler import MatchSpec

    try:
        name = MatchSpec(spec).name
    except Exception as exc:
        raise CondafuseError(f"invalid package spec {spec!r}: {exc}", EXIT_USAGE) from None
    if name is None:
        raise CondafuseError(f"package spec {spec!r} names no package", EXIT_USAGE)
    return name.normalized


def _with_dependents(installed: Sequence[Any], names: set[str]) -> set[str]:
    """``names`` plus every installed package that needs one of them, transitively."""
    needs = {r.name.normalized: {d.split()[0].lower() for d in r.depends} for r in installed}
    gone = set(names)
    grew = True
    while grew:
        grew = False
        for n, deps in needs.items():
            if n not in gone and deps & gone:
                gone.add(n)
                grew = True
    return gone


def _env_channels(installed: Sequence[Any]) -> list[str]:
    out: list[str] = []
    for r in installed:
        ch = (r.channel or "").rstrip("/")
        if ch and ch not in out:
            out.append(ch)
    return out


def _dist(r: Any) -> str:
    return f"{r.name.normalized}-{r.version}-{r.build}"


def _run(coro: Any) -> Any:
    """asyncio.run with rattler's exceptions turned into one-line CondafuseErrors."""
    try:
        return asyncio.run(coro)
    except CondafuseError:
        raise
    except Exception as exc:  # rattler raises its own exception classes; keep one line
        name = type(exc).__name__
        msg = " ".join(str(exc).split()) or name
        text = f"py-rattler: {msg}" if name in msg else f"py-rattler {name}: {msg}"
        raise CondafuseError(text) from None


def cmdline() -> str:
    return " ".join(["condafuse", *sys.argv[1:]]) if sys.argv else "condafuse"


def write_history(
    prefix: Path,
    linked: Sequence[Any],
    unlinked: Sequence[Any],
    specs: Sequence[str],
    op: str,
    cmd: str,
) -> None:
    """Append one revision to ``conda-meta/history`` in conda's format (``conda list
    --revisions`` and ``conda env export --from-history`` read it)."""
    import datetime

    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"==> {now} <==", f"# cmd: {cmd}", "# conda version: condafuse"]
    lines += [f"-{_hist_dist(r)}" for r in unlinked]
    lines += [f"+{_hist_dist(r)}" for r in linked]
    lines.append(f"# {op} specs: {list(specs)!r}")
    with open(prefix / "conda-meta" / "history", "a") as f:
        f.write("\n".join(lines) + "\n")


def _hist_dist(r: Any) -> str:
    ch = (r.channel or "").rstrip("/")
    return f"{ch}::{_dist(r)}" if ch else _dist(r)


def compile_pyc(prefix: Path, *, quiet: bool = False) -> None:
    """Byte-compile site-packages with the env's own python, as conda does at link time for
    noarch: python packages (rattler does not). Without it every run from a read-only mount
    compiles those modules again in memory. Failures only warn: the env works without .pyc."""
    python = prefix / "bin" / "python"
    site_dirs = sorted(prefix.glob("lib/python*/site-packages"))
    if not site_dirs or not os.access(python, os.X_OK):
        return
    cmd = [str(python), "-m", "compileall", "-q", "-j", "0", *map(str, site_dirs)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"condafuse: warning: could not byte-compile: {exc}", file=sys.stderr)
        return
    if proc.returncode != 0:
        last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["?"]
        print(f"condafuse: warning: byte-compiling failed: {last[0]}", file=sys.stderr)
    elif not quiet:
        print("condafuse: byte-compiled site-packages", file=sys.stderr)


async def _installed(prefix: Path) -> list[Any]:
    from rattler import PrefixRecord

    meta = prefix / "conda-meta"
    if not meta.is_dir():
        raise CondafuseError(f"{prefix} is not a conda environment (no conda-meta/)")
    return [PrefixRecord.from_path(f) for f in sorted(meta.glob("*.json"))]


def _match_specs(specs: Sequence[str]) -> list[Any]:
    from rattler import MatchSpec

    out = []
    for s in specs:
        try:
            out.append(MatchSpec(s))  # conda's lenient syntax: "python 3.11", "numpy>=1"
        except Exception as exc:
            raise CondafuseError(f"invalid package spec {s!r}: {exc}", EXIT_USAGE) from None
    return out


async def _solve(
    request: CreateRequest,
    specs: Sequence[str],
    locked: Sequence[Any],
    channels: Sequence[str],
    cache_dir: Path,
) -> list[Any]:
    import rattler
    from rattler import Channel, Gateway

    match_specs = _match_specs(specs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    gateway = Gateway(cache_dir=cache_dir / "repodata")
    subdir_cls = getattr(rattler, "Subdir", None) or rattler.Platform  # Platform: py-rattler<0.2x
    platform = str(subdir_cls.current())
    try:
        virtual = rattler.VirtualPackage.detect()
    except Exception:  # detection problems must not block offline/local installs
        virtual = []
    log = (lambda m: None) if request.quiet else (lambda m: print(m, file=sys.stderr))
    log(f"condafuse: solving {' '.join(specs)} (channels: {', '.join(channels)})")
    return await rattler.solve(
        sources=[Channel(c) for c in channels],
        specs=match_specs,
        gateway=gateway,
        platforms=[platform, "noarch"],
        locked_packages=list(locked) or None,
        virtual_packages=virtual,
    )


async def _install(
    prefix: Path,
    records: Sequence[Any],
    installed: Sequence[Any],
    specs: Sequence[str],
    cache_dir: Path,
    quiet: bool,
) -> None:
    import rattler
    from rattler import Config

    if not quiet:
        print(f"condafuse: installing {len(records)} packages into {prefix}", file=sys.stderr)
    match_specs = _match_specs(specs)
    # The package cache lives on local disk and the prefix inside a FUSE mount: hard links
    # cannot work across them, so do not even try.
    config = Config.from_toml("allow-hard-links = false\n")
    kwargs: dict[str, Any] = dict(
        target_prefix=str(prefix),
        cache_dir=cache_dir / "pkgs",
        installed_packages=list(installed) or None,
        show_progress=False,
        config=config,
    )
    try:
        await rattler.install(list(records), requested_specs=match_specs, **kwargs)
    except TypeError:
        # py-rattler 0.28 wants the inner spec objects here (conda/rattler#1595 follow-up).
        inner = [getattr(s, "_match_spec", s) for s in match_specs]
        await rattler.install(list(records), requested_specs=inner, **kwargs)
