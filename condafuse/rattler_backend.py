"""The embedded frontend: create an environment with py-rattler when no conda is installed.

It understands the common ``conda create`` arguments: package specs (``python=3.11 numpy``,
conda's lenient syntax), ``-c/--channel`` (names, URLs, ``file://`` URLs and local directories),
``--override-channels``, ``--file FILE``, ``-y/--yes`` and ``-q/--quiet``. Anything else is
refused with a one-line message naming the option. Without ``--override-channels`` the channels
in ``CONDA_FUSE_CHANNELS`` (comma- or space-separated; default ``conda-forge``) follow the ``-c``
ones, like conda's defaults do.

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

from .errors import EXIT_USAGE, CondafuseError

DEFAULT_CHANNELS = "conda-forge"


@dataclasses.dataclass
class CreateRequest:
    specs: list[str]
    channels: list[str]  # in priority order, already resolved to names or URLs
    quiet: bool = False


def _channel_url(value: str) -> str:
    """Local directories become file:// URLs; names and URLs pass through."""
    if "://" in value:
        return value
    if value.startswith(("/", "./", "../", "~")) or os.path.isdir(value):
        return Path(os.path.expanduser(value)).resolve().as_uri()
    return value


def parse_create_args(args: Sequence[str], env: Mapping[str, str] | None = None) -> CreateRequest:
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
            channels.append(_channel_url(value))
        elif arg.startswith("--channel="):
            channels.append(_channel_url(arg.split("=", 1)[1]))
        elif arg.startswith("-c") and len(arg) > 2 and not arg.startswith("--"):
            channels.append(_channel_url(arg[2:]))
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
    if not specs:
        raise CondafuseError(
            "no packages given: e.g. condafuse create NAME python=3.11 numpy", EXIT_USAGE
        )
    if not override:
        defaults = env.get("CONDA_FUSE_CHANNELS", DEFAULT_CHANNELS)
        for ch in re.split(r"[,\s]+", defaults.strip()):
            if ch and _channel_url(ch) not in channels:
                channels.append(_channel_url(ch))
    if not channels:
        raise CondafuseError(
            "no channels: give -c CHANNEL (or drop --override-channels)", EXIT_USAGE
        )
    return CreateRequest(specs=specs, channels=channels, quiet=quiet)


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
    """Solve and install ``request`` into ``prefix`` (absolute). Returns "name-version-build"s."""
    prefix = Path(prefix)
    if not prefix.is_absolute():
        raise ValueError("prefix must be absolute (it is written into the installed files)")
    try:
        names = asyncio.run(_create(prefix, request, cache_dir))
    except CondafuseError:
        raise
    except Exception as exc:  # rattler raises its own exception classes; keep one line
        name = type(exc).__name__
        msg = " ".join(str(exc).split()) or name
        text = f"py-rattler: {msg}" if name in msg else f"py-rattler {name}: {msg}"
        raise CondafuseError(text) from None
    compile_pyc(prefix, quiet=request.quiet)
    return names


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


async def _create(prefix: Path, request: CreateRequest, cache_dir: Path) -> list[str]:
    import rattler
    from rattler import Channel, Config, Gateway, MatchSpec

    specs = []
    for s in request.specs:
        try:
            specs.append(MatchSpec(s))  # conda's lenient syntax: "python 3.11", "numpy>=1"
        except Exception as exc:
            raise CondafuseError(f"invalid package spec {s!r}: {exc}", EXIT_USAGE) from None
    channels = [Channel(c) for c in request.channels]
    cache_dir.mkdir(parents=True, exist_ok=True)
    gateway = Gateway(cache_dir=cache_dir / "repodata")
    subdir_cls = getattr(rattler, "Subdir", None) or rattler.Platform  # Platform: py-rattler<0.2x
    platform = str(subdir_cls.current())
    try:
        virtual = rattler.VirtualPackage.detect()
    except Exception:  # detection problems must not block offline/local installs
        virtual = []
    log = (lambda m: None) if request.quiet else (lambda m: print(m, file=sys.stderr))
    log(f"condafuse: solving {' '.join(request.specs)} (channels: {', '.join(request.channels)})")
    records = await rattler.solve(
        sources=channels,
        specs=specs,
        gateway=gateway,
        platforms=[platform, "noarch"],
        virtual_packages=virtual,
    )
    names = [f"{r.name.normalized}-{r.version}-{r.build}" for r in records]
    log(f"condafuse: installing {len(records)} packages into {prefix}")
    # The package cache lives on local disk and the prefix inside a FUSE mount: hard links
    # cannot work across them, so do not even try.
    config = Config.from_toml("allow-hard-links = false\n")
    kwargs = dict(
        target_prefix=str(prefix), cache_dir=cache_dir / "pkgs", show_progress=False, config=config
    )
    try:
        await rattler.install(records, requested_specs=specs, **kwargs)
    except TypeError:
        # py-rattler 0.28 wants the inner spec objects here (conda/rattler#1595 follow-up).
        inner = [getattr(s, "_match_spec", s) for s in specs]
        await rattler.install(records, requested_specs=inner, **kwargs)
    return names
