"""The ``zipfuse`` command: mount, unmount, sync, status, recover, compact.

User errors are one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

from .errors import ZipfuseError

if TYPE_CHECKING:
    import argparse

    from . import launch, spawn
    from .api import Progress

# Modules are imported by the commands that use them: a mount forks its daemon before anything
# else is imported, even argparse (see main), and no short command pays for another's imports.


def _parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(
        prog="zipfuse",
        description="Mount a .zip archive as a read-write directory; changes are written back "
        "into the archive atomically on sync or unmount.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("mount", help="mount ARCHIVE on MOUNTPOINT (returns once it is ready)")
    m.add_argument(
        "archive", metavar="ARCHIVE", help="zip file (created at first commit if missing)"
    )
    m.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty directory")
    m.add_argument("--read-only", "-r", action="store_true", help="refuse all writes (EROFS)")
    m.add_argument("--foreground", "-f", action="store_true", help="stay attached; log to stderr")
    m.add_argument(
        "--spill-dir",
        metavar="DIR",
        help="where modified files are kept until commit (default: $TMPDIR/zipfuse-spill-UID)",
    )
    m.add_argument(
        "--level",
        type=int,
        default=6,
        choices=range(0, 10),
        metavar="0-9",
        help="deflate level for new and modified files (0 stores; default 6)",
    )
    m.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTS",
        help="extra FUSE mount options, comma separated (e.g. allow_other; nonempty is --nonempty)",
    )
    m.add_argument(
        "--nonempty",
        action="store_true",
        help="mount over a directory that is not empty (its files are hidden while mounted)",
    )
    m.add_argument("--debug", action="store_true", help="verbose daemon log")
    m.add_argument(
        "--restore",
        action="store_true",
        help="if an interrupted session left "
        "changes, mount with them restored instead of committing them first",
    )

    r = sub.add_parser(
        "recover",
        help="commit the changes an interrupted session (crash, kill -9, reboot) left for ARCHIVE",
    )
    r.add_argument("archive", metavar="ARCHIVE")
    r.add_argument("--spill-dir", metavar="DIR", help="the spill directory that session used")

    u = sub.add_parser(
        "unmount", aliases=["umount"], help="commit, unmount and wait until the archive is durable"
    )
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument("--timeout", type=float, default=None, help="give up waiting after SECONDS")
    u.add_argument(
        "--discard",
        action="store_true",
        help="drop the changes not yet committed "
        "(e.g. after a conflict) instead of committing them",
    )

    s = sub.add_parser("sync", help="commit changes into the archive now and stay mounted")
    s.add_argument("mountpoint", metavar="MOUNTPOINT")

    c = sub.add_parser(
        "compact",
        help="rewrite the archive without the dead space that small commits leave "
        "(MOUNTPOINT of a read-write mount, or an ARCHIVE that is not mounted read-write)",
    )
    c.add_argument("target", metavar="MOUNTPOINT|ARCHIVE")
    c.add_argument("--spill-dir", metavar="DIR", help="the spill directory of its sessions")

    st = sub.add_parser("status", aliases=["list"], help="show this user's live mounts")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    return p


class ProgressLine:
    """Progress on a terminal (bytes, entries, rate, ETA); silent when stderr is not a tty."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.start = time.monotonic()
        self.shown = False

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        from .progress import format_progress

        line = format_progress(self.label, p, time.monotonic() - self.start)
        sys.stderr.write(f"\r{line}\x1b[K")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        """End the live line (once)."""
        if self.shown:
            sys.stderr.write("\n")
            self.shown = False


def _mount(args: argparse.Namespace, spawned: spawn.Spawned | None) -> int:
    if args.foreground and spawned is not None:  # -f hidden in combined flags (e.g. -rf)
        spawned.abandon()
        spawned = None
    elif not args.foreground and spawned is None:
        spawned = _spawn()
    try:
        prepared = _prepare(args)
    except BaseException:
        if spawned is not None:
            spawned.abandon()
        raise
    for note in prepared.notes:
        print(f"zipfuse: {note}", file=sys.stderr)
    if spawned is None:
        from . import daemon

        return daemon.run_foreground(prepared)
    spawned.hand_over(prepared)
    return 0


def _prepare(args: argparse.Namespace) -> launch.Prepared:
    from . import launch

    options = tuple(o for opts in args.options for o in opts.split(",") if o)
    nonempty = args.nonempty or "nonempty" in options  # fuse 2's option; libfuse 3 lacks it
    options = tuple(o for o in options if o != "nonempty")
    config = launch.Config(
        archive=args.archive,
        mountpoint=args.mountpoint,
        read_only=args.read_only,
        spill_dir=args.spill_dir,
        fuse_options=options,
        level=args.level,
        foreground=args.foreground,
        debug=args.debug,
        restore=args.restore,
        nonempty=nonempty,
    )
    return launch.prepare(config)


def _commit_cmd(args: argparse.Namespace) -> int:
    from . import api

    label = "committing" if args.command == "sync" else "unmounting"
    line = ProgressLine(label)
    try:
        if args.command == "sync":
            result = api.sync(args.mountpoint, progress=line)
        else:
            result = api.unmount(
                args.mountpoint, progress=line, timeout=args.timeout, discard=args.discard
            )
    except KeyboardInterrupt:
        line.done()
        print(_interrupted(args), file=sys.stderr)
        return 130
    finally:
        line.done()
    if result.get("read_only"):
        mp = result["mountpoint"]
        print(f"zipfuse: nothing to commit: {mp} is mounted read-only", file=sys.stderr)
    if sys.stderr.isatty() and result.get("committed"):
        print(
            f"zipfuse: committed {result['entries']} entries "
            f"({result['archive_size'] / 1e6:.1f} MB) in {result['seconds']:.1f} s",
            file=sys.stderr,
        )
    return 0


def _interrupted(args: argparse.Namespace) -> str:
    """Ctrl-C only stops this command: say what the daemon goes on doing and what to do."""
    from . import registry

    mp = os.path.realpath(args.mountpoint)
    cmd = "sync" if args.command == "sync" else "unmount"
    if mp in registry.fuse_mounts():
        return (
            f"zipfuse: interrupted; the commit continues in the daemon and the mount stays up: "
            f"run 'zipfuse {cmd} {mp}' again"
        )
    return (
        f"zipfuse: interrupted; {mp} is unmounted and the daemon finishes the commit in the "
        "background ('zipfuse status' shows it)"
    )


def _status(args: argparse.Namespace) -> int:
    from . import api

    mounts = api.status()
    if args.json:
        import json

        print(json.dumps([m.__dict__ for m in mounts], indent=2))
        return 0
    if not mounts:
        print("no zipfuse mounts")
        return 0
    for m in mounts:
        mode = "ro" if m.read_only else "rw"
        failed = f"\tfailsafe read-only: {m.failed}" if m.failed else ""
        print(
            f"{m.mountpoint}\t{m.archive}\t{mode}\t{m.state}\tpid {m.pid}\t"
            f"dirty {m.dirty_bytes} bytes{failed}"
        )
    return 0


def _spawn() -> spawn.Spawned:
    from . import spawn

    # the daemon imports its modules while this process checks and parses the archive
    return spawn.spawn()


def _early_spawn(argv: list[str]) -> spawn.Spawned | None:
    """A mount's longest step is its daemon's imports (trio, pyfuse3): fork the daemon before
    argparse is even imported and the parser built (20-25 ms the daemon does not need). The
    mount ends it again if the arguments are wrong or ask for --help or --foreground."""
    if argv[:1] != ["mount"] or {"-f", "--foreground", "-h", "--help"} & set(argv):
        return None
    try:
        return _spawn()
    except OSError:  # e.g. no process left: the mount tries again and says why
        return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    spawned = _early_spawn(argv)
    try:
        args = _parser().parse_args(argv)
    except BaseException:  # usage error or --help: SystemExit
        if spawned is not None:
            spawned.abandon()
        raise
    try:
        if args.command == "mount":
            return _mount(args, spawned)
        if args.command in ("unmount", "umount", "sync"):
            return _commit_cmd(args)
        from . import api

        if args.command == "compact":
            print(f"zipfuse: {api.compact(args.target, spill_dir=args.spill_dir)}", file=sys.stderr)
            return 0
        if args.command == "recover":
            note = api.recover(args.archive, spill_dir=args.spill_dir)
            print(f"zipfuse: {note or 'nothing to recover for ' + args.archive}", file=sys.stderr)
            return 0
        return _status(args)
    except ZipfuseError as exc:
        print(f"zipfuse: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("zipfuse: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(
            f"zipfuse: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
