"""The ``condafuse`` command line: conda environments kept in zip archives, mounted with zipfuse."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from collections.abc import Sequence

from . import changes, envfile, envs, envs_txt, frontends, shell
from .config import Paths, check_name
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, CondafuseError, Terminated

DESCRIPTION = """\
Keep each conda environment in one zip archive (one file instead of tens of thousands) and
mount it with zipfuse when you use it. Environment NAME is ARCHIVES/NAME.zip (top folder NAME/),
mounted at MOUNT_ROOT/NAME; its conda prefix is MOUNT_ROOT/NAME/NAME.

In-shell activation needs the shell hook, e.g. in ~/.bashrc:
    eval "$(condafuse shell-hook bash)"
"""

EPILOG = """\
environment variables:
  CONDA_FUSE_ARCHIVE_PATH  archives directory (default ~/miniconda_fuse/archives)
  CONDA_FUSE_MOUNT_ROOT    mount points (default ~/miniconda_fuse/envs)
  TMPDIR                   temporary files; spill files and package caches go to
                           $TMPDIR/condafuse-UID/ unless CONDA_FUSE_SPILL_DIR /
                           CONDA_FUSE_PKGS_DIR say otherwise
  CONDA_FUSE_FRONTEND      auto, conda, mamba, micromamba, rattler, or an executable's path
  CONDA_FUSE_ACTIVATOR     auto (conda's activation if conda exists), conda or builtin
  CONDA_FUSE_CHANNELS      default channels of the embedded backend (default conda-forge)

exit status: 0 ok, 1 failed, 2 usage, 3 no such environment, 4 already exists,
5 busy (mounted / in use), 130 interrupted; `run` returns the command's status.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too; keep it short)
        self.print_usage(sys.stderr)
        raise CondafuseError(f"{message} (see `{self.prog} --help`)", EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="condafuse",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--frontend",
        metavar="FRONTEND",
        help="conda, mamba, micromamba, rattler, auto, or an executable's path "
        "(default: $CONDA_FUSE_FRONTEND, else auto-detect)",
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"condafuse {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, help_: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_[0].upper() + help_[1:] + ".",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kw,
        )

    def sub_frontend(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--frontend",
            dest="sub_frontend",
            metavar="FRONTEND",
            help="frontend for this command (see `condafuse --help`)",
        )

    c = add(
        "create",
        "create environment NAME (conda create arguments follow NAME)",
        epilog="examples:\n"
        "  condafuse create sci python=3.11 numpy -c conda-forge\n"
        "  condafuse create -f environment.yml [NAME]\n"
        "  condafuse create empty\n"
        "Runs `<frontend> create --prefix MOUNT_ROOT/NAME/NAME --yes ARGS` (with -f:\n"
        "`conda env create --prefix ... --file FILE`) in a new read-write mount and commits\n"
        "the archive before returning. Without a frontend, the embedded py-rattler backend\n"
        "installs the packages, then an environment file's pip: section with the env's pip.",
    )
    sub_frontend(c)
    c.add_argument(
        "-f",
        "--file",
        dest="env_file",
        metavar="FILE",
        help="environment.yml to create from (NAME defaults to its name:)",
    )
    c.add_argument("name", metavar="NAME", nargs="?")
    c.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="ARGS",
        help="passed to the frontend's create (specs, -c CHANNEL, ...)",
    )

    for op, help_, example in (
        ("install", "install packages into environment NAME", "condafuse install sci scipy"),
        ("update", "update packages of environment NAME", "condafuse update sci numpy | --all"),
        ("uninstall", "remove packages from environment NAME", "condafuse uninstall sci scipy"),
    ):
        verb = "remove" if op == "uninstall" else op
        sp = add(
            op,
            help_,
            epilog=f"example: {example}\n"
            f"Runs `<frontend> {verb} --prefix MOUNT_ROOT/NAME/NAME --yes ARGS` in a read-write\n"
            "mount (the embedded backend solves with py-rattler against the installed packages)\n"
            "and commits the archive before returning. If the change fails, a mount made for it\n"
            "is dropped without committing: the archive stays as it was.",
        )
        sub_frontend(sp)
        sp.add_argument("name", metavar="NAME")
        sp.add_argument(
            "args",
            nargs=argparse.REMAINDER,
            metavar="ARGS",
            help=f"passed to the frontend's {verb} (packages, -c CHANNEL, ...)",
        )

    a = add("activate", "activate NAME in the calling shell (needs the shell hook)")
    a.add_argument("name", metavar="NAME")
    a.add_argument("-r", "--read-only", action="store_true", help="mount read-only if not mounted")
    add("deactivate", "deactivate the active environment (needs the shell hook)")

    s = add(
        "shell",
        "print shell code for activate/deactivate (used by the shell hook)",
        epilog='In scripts without the hook: eval "$(condafuse shell activate NAME)"',
    )
    ssub = s.add_subparsers(dest="shell_command", metavar="ACTION", parser_class=_Parser)
    sa = ssub.add_parser("activate", help="print code that activates NAME (mounting it)")
    sa.add_argument("name", metavar="NAME")
    sa.add_argument("-r", "--read-only", action="store_true", help="mount read-only if not mounted")
    ssub.add_parser("deactivate", help="print code that deactivates the active environment")

    h = add(
        "shell-hook",
        "print the shell function for ~/.bashrc or ~/.zshrc",
        epilog='usage: eval "$(condafuse shell-hook bash)"',
    )
    h.add_argument(
        "shell",
        nargs="?",
        choices=shell.SHELLS,
        default=None,
        help="bash or zsh (default: from $SHELL, else bash)",
    )

    r = add(
        "run",
        "run a command inside NAME (mounted read-only for the run if needed)",
        epilog="example: condafuse run sci -- python script.py\nThe exit status is the command's.",
    )
    r.add_argument("name", metavar="NAME")
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS]")

    m = add("mount", "mount NAME at MOUNT_ROOT/NAME")
    m.add_argument("name", metavar="NAME")
    m.add_argument("-r", "--read-only", action="store_true", help="mount read-only")

    u = add("unmount", "commit and unmount NAME (waits until the archive is on disk)")
    u.add_argument("names", nargs="*", metavar="NAME")
    u.add_argument("--all", action="store_true", help="unmount every condafuse environment")
    u.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up waiting after SECONDS",
    )

    ls = add("list", "list environments: archives and mounts")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    pa = add("paths", "show the archive path, mount root, spill dir and frontend in use")
    pa.add_argument("--json", action="store_true", help="machine-readable output")

    rm = add(
        "remove",
        "delete environment NAME's archive (refused while mounted), or remove packages from it",
        epilog="`condafuse remove NAME [--all]` deletes the environment;\n"
        "`condafuse remove NAME PKG...` removes packages, like `condafuse uninstall`.",
    )
    sub_frontend(rm)
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("packages", nargs="*", metavar="PKG", help="packages to remove")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask")
    rm.add_argument(
        "--all", action="store_true", help="the whole environment (the default without PKG)"
    )

    im = add(
        "import",
        "pack an existing conda environment directory into archive NAME",
        epilog="The original directory is left alone.",
    )
    im.add_argument("prefix", metavar="PREFIX")
    im.add_argument("name", metavar="NAME")
    im.add_argument(
        "--level",
        type=int,
        default=6,
        choices=range(0, 10),
        metavar="0-9",
        help="deflate level (default 6)",
    )

    ex = add(
        "export",
        "copy environment NAME out into directory DIR, or write its environment.yml",
        epilog="examples:\n"
        "  condafuse export sci /scratch/sci-copy\n"
        "  condafuse export sci --yml > environment.yml   (like `conda env export`)\n"
        "  condafuse export sci --yml -f environment.yml --from-history",
    )
    ex.add_argument("name", metavar="NAME")
    ex.add_argument("dir", metavar="DIR", nargs="?")
    ex.add_argument("--yml", action="store_true", help="write an environment.yml instead")
    ex.add_argument(
        "-f", "--file", metavar="FILE", help="with --yml: write to FILE (default: stdout)"
    )
    ex.add_argument(
        "--no-builds", action="store_true", help="with --yml: name=version, no build strings"
    )
    ex.add_argument(
        "--from-history",
        action="store_true",
        help="with --yml: only the specs that were asked for (conda-meta/history)",
    )
    return p


def _frontend(args) -> frontends.Frontend:
    return frontends.discover(getattr(args, "sub_frontend", None) or args.frontend)


def _paths_report(paths: Paths, args) -> dict:
    out = {
        "archive_path": str(paths.archive_dir),
        "mount_root": str(paths.mount_root),
        "tmpdir": str(paths.tmp_dir),
        "spill_dir": str(paths.spill_dir),
        "pkgs_dir": str(paths.pkgs_dir),
        "conda_environments_txt": str(envs_txt.path()) if envs_txt.enabled() else None,
    }
    try:
        fe = _frontend(args)
        out["frontend"] = fe.kind
        out["frontend_exe"] = fe.exe
        out["frontend_source"] = fe.source
    except CondafuseError as exc:
        out["frontend"] = None
        out["frontend_error"] = str(exc)
    try:
        out["activator"] = frontends.find_activator().describe()
    except CondafuseError as exc:
        out["activator"] = f"error: {exc}"
    return out


def _shell_activate(paths: Paths, name: str, read_only: bool) -> str:
    check_name(name)
    activator = frontends.find_activator()
    envs.ensure_mounted(paths, name, read_only=read_only)
    prefix = envs.check_prefix(paths, name)
    if activator.kind == "conda":
        script = shell.conda_script(activator.conda_exe, "activate", str(prefix), os.environ)
        return script + f"export CONDAFUSE_ENV={shlex.quote(name)}\n"
    act = shell.BuiltinActivator(
        os.environ, envs.display_name_factory(paths), paths.name_for_prefix
    )
    return act.activate(str(prefix))


def _shell_deactivate(paths: Paths) -> str:
    activator = frontends.find_activator()
    if activator.kind == "conda":
        script = shell.conda_script(activator.conda_exe, "deactivate", None, os.environ)
        lvl = shell.shlvl(os.environ) - 1
        back = os.environ.get(f"CONDA_PREFIX_{lvl}") if lvl > 0 else None
        name = paths.name_for_prefix(back) if back else None
        return script + (
            f"export CONDAFUSE_ENV={shlex.quote(name)}\n" if name else "unset CONDAFUSE_ENV\n"
        )
    act = shell.BuiltinActivator(
        os.environ, envs.display_name_factory(paths), paths.name_for_prefix
    )
    return act.deactivate()


def _create(paths: Paths, args) -> None:
    """create NAME ARGS, or create -f environment.yml [NAME] (also NAME -f FILE.yml ...)."""
    rest = list(args.args)
    env_file = args.env_file
    for i, a in enumerate(rest):
        if a == "--":
            break
        value = None
        if a in ("-f", "--file") and i + 1 < len(rest):
            value, drop = rest[i + 1], 2
        elif a.startswith("--file="):
            value, drop = a.split("=", 1)[1], 1
        if value is not None and envfile.is_env_file(value):
            if env_file:
                raise CondafuseError("give one environment file", EXIT_USAGE)
            env_file = value
            del rest[i : i + drop]
            break
    if env_file and not envfile.is_env_file(env_file):
        rest = ["--file", env_file, *rest]  # a plain spec list, as conda create --file takes
        env_file = None
    name = args.name
    if env_file:
        if name is None:
            name = envfile.read(env_file).name
            if not name:
                raise CondafuseError(
                    f"{env_file} has no name: give NAME (condafuse create -f FILE NAME)",
                    EXIT_USAGE,
                )
    elif name is None:
        raise CondafuseError("give NAME (or -f environment.yml)", EXIT_USAGE)
    envs.create(paths, _frontend(args), check_name(name), rest, env_file=env_file)


def dispatch(args, parser: argparse.ArgumentParser) -> int:
    paths = Paths.from_env()
    cmd = args.command
    if cmd is None:
        parser.print_help()
        return EXIT_USAGE
    if cmd == "create":
        _create(paths, args)
    elif cmd in ("install", "update", "uninstall"):
        op = "remove" if cmd == "uninstall" else cmd
        changes.change(paths, _frontend(args), check_name(args.name), op, args.args)
    elif cmd in ("activate", "deactivate"):
        raise CondafuseError(
            f"`condafuse {cmd}` changes your shell, which needs the shell hook: run "
            'eval "$(condafuse shell-hook bash)" (or zsh) first, or in scripts use '
            f'eval "$(condafuse shell {cmd}{" NAME" if cmd == "activate" else ""})"',
            EXIT_USAGE,
        )
    elif cmd == "shell":
        if args.shell_command == "activate":
            sys.stdout.write(_shell_activate(paths, args.name, args.read_only))
        elif args.shell_command == "deactivate":
            sys.stdout.write(_shell_deactivate(paths))
        else:
            raise CondafuseError(
                "use `condafuse shell activate NAME` or `condafuse shell deactivate`", EXIT_USAGE
            )
    elif cmd == "shell-hook":
        sh = args.shell or os.path.basename(os.environ.get("SHELL", "bash"))
        sys.stdout.write(shell.hook(sh if sh in shell.SHELLS else "bash"))
    elif cmd == "run":
        command = list(args.cmd)
        if command and command[0] == "--":
            command = command[1:]
        return envs.run(paths, check_name(args.name), command)
    elif cmd == "mount":
        info = envs.mount(paths, check_name(args.name), read_only=args.read_only)
        print(info.mountpoint)
    elif cmd == "unmount":
        if not args.names and not args.all:
            raise CondafuseError("give NAME or --all", EXIT_USAGE)
        if args.names and args.all:
            raise CondafuseError("give NAME or --all, not both", EXIT_USAGE)
        return envs.unmount(paths, args.names, all_=args.all, timeout=args.timeout)
    elif cmd == "list":
        rows = envs.list_envs(paths)
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            sys.stdout.write(envs.format_list(rows))
    elif cmd == "paths":
        rep = _paths_report(paths, args)
        if args.json:
            print(json.dumps(rep, indent=1))
        else:
            fe = rep.get("frontend")
            fe_text = (
                f"{fe} ({rep['frontend_exe'] or 'embedded py-rattler'}; {rep['frontend_source']})"
                if fe
                else f"none ({rep['frontend_error']})"
            )
            print(f"archive path:  {rep['archive_path']}")
            print(f"mount root:    {rep['mount_root']}")
            print(f"tmpdir:        {rep['tmpdir']}")
            print(f"spill dir:     {rep['spill_dir']}")
            print(f"package cache: {rep['pkgs_dir']}")
            print(f"conda's list:  {rep['conda_environments_txt'] or 'off (CONDA_REGISTER_ENVS)'}")
            print(f"frontend:      {fe_text}")
            print(f"activation:    {rep['activator']}")
    elif cmd == "remove":
        if args.packages and args.all:
            raise CondafuseError("give PKG... or --all, not both", EXIT_USAGE)
        if args.packages:
            # like conda's, the frontend is always run with --yes (nothing to confirm here)
            changes.change(paths, _frontend(args), check_name(args.name), "remove", args.packages)
        else:
            envs.remove(paths, check_name(args.name), yes=args.yes)
    elif cmd == "import":
        envs.import_env(paths, args.prefix, check_name(args.name), level=args.level)
    elif cmd == "export":
        if args.yml:
            if args.dir is not None:
                raise CondafuseError("with --yml give the output as -f FILE", EXIT_USAGE)
            envs.export_yml(
                paths,
                check_name(args.name),
                args.file,
                no_builds=args.no_builds,
                from_history=args.from_history,
            )
        elif args.dir is None:
            raise CondafuseError("give DIR (or --yml for an environment.yml)", EXIT_USAGE)
        elif args.file or args.no_builds or args.from_history:
            raise CondafuseError("-f, --no-builds and --from-history go with --yml", EXIT_USAGE)
        else:
            envs.export_env(paths, check_name(args.name), args.dir)
    else:  # pragma: no cover - argparse restricts choices
        raise CondafuseError(f"unknown command {cmd}", EXIT_USAGE)
    return 0


def _terminate(signum: int, frame) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # A batch system's SIGTERM/SIGHUP unwinds like Ctrl-C, so no half-made env or stray mount
    # is left behind (run passes them on to its command instead).
    old = {s: signal.signal(s, _terminate) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _main(parser, argv)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _main(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    try:
        args = parser.parse_args(argv)
        return dispatch(args, parser)
    except CondafuseError as exc:
        print(f"condafuse: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt as exc:
        print("condafuse: interrupted", file=sys.stderr)
        return getattr(exc, "code", EXIT_INTERRUPTED)
    except BrokenPipeError:
        return 1
    except OSError as exc:  # environment problems (permissions, full disk): one line
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"condafuse: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
