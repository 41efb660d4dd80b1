"""condafuse pieces that need no mount: paths, names, frontend choice, argument parsing, the shell
hook, the built-in activator (evaluated by a real bash), the packer and the CLI's error style."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cfhelpers import make_stub, need_zsh

from condafuse import cli, frontends, rattler_backend, shell
from condafuse.archive import pack
from condafuse.config import Paths, check_name
from condafuse.errors import CondafuseError

# --------------------------------------------------------------------------------- paths


def test_paths_defaults_follow_the_bash_tool(tmp_path):
    p = Paths.from_env({"HOME": str(tmp_path)})
    assert p.archive_dir == tmp_path / "miniconda_fuse" / "archives"
    assert p.mount_root == tmp_path / "miniconda_fuse" / "envs"
    assert p.tmp_dir == Path("/tmp")
    assert p.spill_dir == Path(f"/tmp/condafuse-{os.getuid()}/spill")
    assert p.archive("sci") == p.archive_dir / "sci.zip"
    assert p.prefix("sci") == p.mount_root / "sci" / "sci"


def test_paths_from_variables(tmp_path):
    p = Paths.from_env(
        {
            "HOME": "/nonexistent",
            "CONDA_FUSE_ARCHIVE_PATH": str(tmp_path / "a"),
            "CONDA_FUSE_MOUNT_ROOT": "~/mnt",
            "TMPDIR": str(tmp_path / "t"),
            "CONDA_FUSE_SPILL_DIR": str(tmp_path / "s"),
        }
    )
    assert p.archive_dir == tmp_path / "a"
    assert p.mount_root == Path("/nonexistent/mnt")
    assert p.spill_dir == tmp_path / "s"
    assert p.pkgs_dir == tmp_path / "t" / f"condafuse-{os.getuid()}" / "pkgs"
    assert p.env_spill_dir("x") == tmp_path / "s" / "x"
    assert p.name_for_prefix("/nonexistent/mnt/x/x") == "x"
    assert p.name_for_prefix("/nonexistent/mnt/x/x/bin") == "x"
    assert p.name_for_prefix("/nonexistent/mnt/x/y") is None
    assert p.name_for_prefix("/elsewhere/x/x") is None


def test_default_scratch_is_private_and_planted_ones_are_refused(tmp_path):
    env = {"HOME": str(tmp_path), "TMPDIR": str(tmp_path / "t")}
    (tmp_path / "t").mkdir()
    p = Paths.from_env(env)
    p.secure_scratch()
    for d in (p.scratch, p.spill_dir, p.pkgs_dir):
        st = os.lstat(d)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    # another user got there first: a world-writable directory, a symlink, someone else's
    planted = tmp_path / "t2"
    planted.mkdir()
    scratch = planted / f"condafuse-{os.getuid()}"
    scratch.mkdir(mode=0o777)
    os.chmod(scratch, 0o777)
    with pytest.raises(CondafuseError, match="others can write"):
        Paths.from_env({**env, "TMPDIR": str(planted)}).secure_scratch()
    assert not (scratch / "spill").exists()
    scratch.rmdir()
    scratch.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CondafuseError, match="symlink"):
        Paths.from_env({**env, "TMPDIR": str(planted)}).secure_scratch()
    scratch.unlink()
    scratch.mkdir(mode=0o700)
    if os.getuid() == 0:  # only root can hand a directory to someone else
        os.chown(scratch, 65534, 65534)
        with pytest.raises(CondafuseError, match="not by you"):
            Paths.from_env({**env, "TMPDIR": str(planted)}).secure_scratch()
    overridden = Paths.from_env(
        {
            **env,
            "CONDA_FUSE_SPILL_DIR": str(tmp_path / "s"),
            "CONDA_FUSE_PKGS_DIR": str(tmp_path / "p"),
        }
    )
    assert overridden.scratch is None
    overridden.secure_scratch()  # the user's own choice: nothing to check in $TMPDIR


@pytest.mark.parametrize("name", ["sci", "py3.11", "my_env-2", "A+B"])
def test_valid_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "..", "sci.zip", "a b", "ä"])
def test_invalid_names(name):
    with pytest.raises(CondafuseError) as e:
        check_name(name)
    assert e.value.code == 2 and "\n" not in str(e.value)


# --------------------------------------------------------------------------------- frontends


def _env(tmp_path, **extra):
    env = {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)}
    env.update(extra)
    return env


def test_frontend_discovery_order(tmp_path):
    (tmp_path / "bin").mkdir()
    log = tmp_path / "log"
    # nothing installed: the embedded backend
    fe = frontends.discover(None, _env(tmp_path))
    assert fe.kind == "rattler" and fe.exe is None
    mm = make_stub(tmp_path / "bin", "micromamba", log)
    assert frontends.discover(None, _env(tmp_path)).kind == "micromamba"
    mamba = make_stub(tmp_path / "bin", "mamba", log)
    assert frontends.discover(None, _env(tmp_path)).exe == str(mamba)
    conda = make_stub(tmp_path / "bin", "conda", log)
    assert frontends.discover(None, _env(tmp_path)) == frontends.Frontend(
        "conda", str(conda), "PATH"
    )
    # $CONDA_EXE beats PATH
    other = tmp_path / "opt" / "conda"
    other.parent.mkdir()
    make_stub(other.parent, "conda", log)
    fe = frontends.discover(None, _env(tmp_path, CONDA_EXE=str(other)))
    assert (fe.kind, fe.exe, fe.source) == ("conda", str(other), "CONDA_EXE")
    # the variable and the option choose
    fe = frontends.discover(None, _env(tmp_path, CONDA_FUSE_FRONTEND="micromamba"))
    assert (fe.exe, fe.source) == (str(mm), "CONDA_FUSE_FRONTEND")
    fe = frontends.discover("rattler", _env(tmp_path, CONDA_FUSE_FRONTEND="micromamba"))
    assert fe.kind == "rattler" and fe.source == "--frontend"
    fe = frontends.discover(str(mamba), _env(tmp_path))
    assert (fe.kind, fe.exe) == ("mamba", str(mamba))
    # $MAMBA_EXE is used when nothing is on PATH
    for stub in (mm, mamba, conda):
        stub.unlink()
    fe = frontends.discover(None, _env(tmp_path, MAMBA_EXE=str(other)))
    assert fe.source == "MAMBA_EXE"


def test_frontend_errors(tmp_path):
    (tmp_path / "bin").mkdir()
    for choice, text in (
        ("nope", "unknown frontend"),
        ("conda", "not found on PATH"),
        ("/no/such/conda", "not an executable"),
    ):
        with pytest.raises(CondafuseError) as e:
            frontends.discover(choice, _env(tmp_path))
        assert text in str(e.value) and e.value.code == 2


def test_exact_create_command_line(tmp_path):
    fe = frontends.Frontend("conda", "/opt/conda/bin/conda", "PATH")
    cmd = frontends.create_command(fe, "/m/sci/sci", ["python=3.11", "numpy", "-c", "bioconda"])
    assert cmd == [
        "/opt/conda/bin/conda",
        "create",
        "--prefix",
        "/m/sci/sci",
        "--yes",
        "python=3.11",
        "numpy",
        "-c",
        "bioconda",
    ]
    # a user's own --yes is not doubled
    cmd = frontends.create_command(fe, "/m/x/x", ["-y", "numpy"])
    assert cmd == ["/opt/conda/bin/conda", "create", "--prefix", "/m/x/x", "-y", "numpy"]
    for bad in (["-n", "x"], ["--prefix", "/p"], ["--name=x"], ["-p", "/p"]):
        with pytest.raises(CondafuseError) as e:
            frontends.create_command(fe, "/m/x/x", bad)
        assert "chooses the prefix" in str(e.value)


def test_activator_choice(tmp_path):
    (tmp_path / "bin").mkdir()
    assert frontends.find_activator(_env(tmp_path)).kind == "builtin"
    conda = make_stub(tmp_path / "bin", "conda", tmp_path / "log")
    assert frontends.find_activator(_env(tmp_path)) == frontends.Activator("conda", str(conda))
    env = _env(tmp_path, CONDA_FUSE_ACTIVATOR="builtin")
    assert frontends.find_activator(env).kind == "builtin"
    conda.unlink()
    make_stub(tmp_path / "bin", "micromamba", tmp_path / "log")  # not used for activation
    assert frontends.find_activator(_env(tmp_path)).kind == "builtin"
    with pytest.raises(CondafuseError):
        frontends.find_activator(_env(tmp_path, CONDA_FUSE_ACTIVATOR="conda"))


# --------------------------------------------------------------------------------- rattler args


def test_rattler_argument_parsing(tmp_path):
    local = tmp_path / "chan"
    local.mkdir()
    req = rattler_backend.parse_create_args(
        [
            "python=3.11",
            "numpy",
            "-c",
            str(local),
            "--channel",
            "bioconda",
            "-y",
            "--override-channels",
        ],
        env={},
    )
    assert req.specs == ["python=3.11", "numpy"]
    assert req.channels == [local.as_uri(), "bioconda"]
    req = rattler_backend.parse_create_args(
        ["-cfile:///x", "pkg"], env={"CONDA_FUSE_CHANNELS": "a, b"}
    )
    assert req.channels == ["file:///x", "a", "b"]
    req = rattler_backend.parse_create_args(["pkg"], env={})
    assert req.channels == ["conda-forge"]
    spec_file = tmp_path / "specs.txt"
    spec_file.write_text("# comment\nnumpy >=1\n\nscipy\n")
    req = rattler_backend.parse_create_args(["--file", str(spec_file)], env={})
    assert req.specs == ["numpy >=1", "scipy"]
    for bad, text in (
        (["--solver", "x", "p"], "does not understand '--solver'"),
        (["-c"], "needs a channel"),
        (["p", "--override-channels"], None),
    ):
        if text is None:
            with pytest.raises(CondafuseError, match="no channels"):
                rattler_backend.parse_create_args(bad, env={"CONDA_FUSE_CHANNELS": ""})
            continue
        with pytest.raises(CondafuseError) as e:
            rattler_backend.parse_create_args(bad, env={})
        assert text in str(e.value)
    # an empty env needs no channel (conda allows `create NAME` alone); a change may find its
    # channels in the env, so it does not insist either
    assert rattler_backend.parse_create_args(["--override-channels"], env={}).specs == []
    req = rattler_backend.parse_create_args(
        ["p", "--override-channels"], env={}, need_channels=False
    )
    assert req.channels == [] and req.override
    with pytest.raises(CondafuseError, match="no packages given"):
        rattler_backend.parse_create_args([], env={}, need_specs=True)


def test_rattler_backend_installs_a_real_env_offline(channel, tmp_path):
    """No FUSE: the embedded backend solves and installs from the local channel."""
    req = rattler_backend.parse_create_args(
        ["-c", str(channel), "--override-channels", "cftool 1.0", "cfpy", "-q"], env={}
    )
    prefix = tmp_path / "env"
    names = rattler_backend.create(prefix, req, tmp_path / "cache")
    assert sorted(names) == sorted(
        ["cftool-1.0-0", "cfdata-0.1-0", "cfpy-0.1-0", f"python-{sys.version.split()[0]}-0"]
    )
    out = subprocess.run([prefix / "bin" / "cft"], capture_output=True, text=True, check=True)
    assert out.stdout == f"cftool 1.0 prefix={prefix}\ngreetings from cfdata\n"
    out = subprocess.run([prefix / "bin" / "cfpy"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"cfpy sys.prefix={prefix}"
    # the .conda build is the newest
    names = rattler_backend.create(
        tmp_path / "env2",
        rattler_backend.parse_create_args(
            ["-c", str(channel), "--override-channels", "cftool", "-q"], env={}
        ),
        tmp_path / "cache",
    )
    assert "cftool-1.1-0" in names
    with pytest.raises(CondafuseError, match="py-rattler"):
        rattler_backend.create(
            tmp_path / "env3",
            rattler_backend.parse_create_args(
                ["-c", str(channel), "--override-channels", "nosuchpkg", "-q"], env={}
            ),
            tmp_path / "cache",
        )


# --------------------------------------------------------------------------------- shell


@pytest.mark.parametrize("sh", ["bash", "zsh"])
def test_shell_hook_is_valid_shell(sh):
    if sh == "zsh":
        need_zsh()
    text = shell.hook(sh, exe="/usr/bin/true")
    assert "condafuse()" in text
    subprocess.run([sh, "-n"], input=text, text=True, check=True)
    proc = subprocess.run([sh, "-c", text + "\ntype condafuse"], capture_output=True, text=True)
    assert proc.returncode == 0 and "function" in proc.stdout


def _fake_prefix(root: Path, name: str) -> Path:
    prefix = root / "envs" / name / name
    (prefix / "conda-meta").mkdir(parents=True)
    (prefix / "bin").mkdir()
    ad = prefix / "etc" / "conda" / "activate.d"
    dd = prefix / "etc" / "conda" / "deactivate.d"
    ad.mkdir(parents=True)
    dd.mkdir(parents=True)
    (ad / "b.sh").write_text(f'export ORDER="${{ORDER-}}{name}b"\n')
    (ad / "a.sh").write_text(f'export ORDER="${{ORDER-}}{name}a"\n')
    (dd / "a.sh").write_text(f'export DEORDER="${{DEORDER-}}{name}a"\n')
    (dd / "b.sh").write_text(f'export DEORDER="${{DEORDER-}}{name}b"\n')
    (prefix / "conda-meta" / "state").write_text(json.dumps({"env_vars": {"ST_" + name: "it's"}}))
    return prefix


def test_builtin_activator_in_real_bash(tmp_path):
    """The printed code, eval'd by bash, sets conda's variables, runs scripts, nests, restores."""
    paths = Paths.from_env({"HOME": str(tmp_path), "CONDA_FUSE_MOUNT_ROOT": str(tmp_path / "envs")})
    one, two = _fake_prefix(tmp_path, "one"), _fake_prefix(tmp_path, "two")
    driver = (
        "import os, sys\n"
        "from condafuse import shell, envs\n"
        "from condafuse.config import Paths\n"
        "p = Paths.from_env()\n"
        "a = shell.BuiltinActivator(os.environ, envs.display_name_factory(p), p.name_for_prefix)\n"
        "sys.stdout.write(a.activate(sys.argv[2]) if sys.argv[1] == 'a' else a.deactivate())\n"
    )
    (tmp_path / "drv.py").write_text(driver)
    py = f"{sys.executable} {tmp_path / 'drv.py'}"
    script = f"""
PS1='$ '
act() {{ eval "$(PS1="$PS1" {py} a "$1")"; }}
deact() {{ eval "$(PS1="$PS1" {py} d)"; }}
show() {{
  echo "$1|$PS1|${{CONDA_PREFIX-}}|${{CONDA_DEFAULT_ENV-}}|$CONDA_SHLVL|${{CONDAFUSE_ENV-}}|\
${{ORDER-}}|${{DEORDER-}}|${{CONDA_PREFIX_1-}}|${{ST_one-}}|${{ST_two-}}|${{PATH%%:*}}"
}}
export CONDA_SHLVL=0
act {one}; show A
act {two}; show B
deact; show C
deact; show D
echo "$PATH"
"""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "CONDA_FUSE_MOUNT_ROOT": str(tmp_path / "envs"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    out = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"A|(one) $ |{one}|one|1|one|oneaoneb|||it's||{one}/bin"
    assert lines[1] == (
        f"B|(two) $ |{two}|two|2|two|oneaonebtwoatwob|onebonea|{one}||it's|{two}/bin"
    )
    assert lines[2] == (
        f"C|(one) $ |{one}|one|1|one|oneaonebtwoatwoboneaoneb|oneboneatwobtwoa||it's||{one}/bin"
    )
    assert lines[3].startswith("D|$ |||0||")
    assert lines[4] == "/usr/bin:/bin"
    assert paths.name_for_prefix(str(one)) == "one"


def test_builtin_activator_quotes_hostile_values(tmp_path):
    prefix = tmp_path / "we ird$(x)" / "p'q"
    (prefix / "conda-meta").mkdir(parents=True)
    marker = tmp_path / "pwned"
    state = {"env_vars": {f"X;touch {marker};Y": "1", "GOOD": f"$(touch {marker})"}}
    (prefix / "conda-meta" / "state").write_text(json.dumps(state))
    act = shell.BuiltinActivator(
        {"PATH": "/bin", "PS1": "$(rm -rf /) "}, lambda p: "n;ls", lambda p: None
    )
    text = act.activate(str(prefix))
    out = subprocess.run(
        ["bash", "--norc", "-c", text + 'printf "%s\\n" "$CONDA_PREFIX" "$PS1"'],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.splitlines() == [str(prefix), "(n;ls) $(rm -rf /) "]
    assert "GOOD=" in text and not marker.exists()


# --------------------------------------------------------------------------------- packer


def test_pack_keeps_symlinks_modes_and_times(tmp_path):
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "bin" / "tool").write_text("#!/bin/sh\necho hi\n")
    (src / "bin" / "tool").chmod(0o750)
    (src / "bin" / "link").symlink_to("tool")
    (src / "dangling").symlink_to("/no/such/file")
    os.utime(src / "bin" / "tool", ns=(1_600_000_000_123_456_700, 1_600_000_000_123_456_700))
    big = os.urandom(1 << 20) * 9 + b"tail"  # above the size read whole: goes by descriptor
    (src / "big.bin").write_bytes(big)
    dest = tmp_path / "x.zip"
    seen = []
    pack(src, dest, "x", progress=seen.append)
    assert seen and seen[-1].entries_done == seen[-1].entries_total
    with zipfile.ZipFile(dest) as z:
        infos = {i.filename: i for i in z.infolist()}
        assert set(infos) == {
            "x/",
            "x/bin/",
            "x/bin/tool",
            "x/bin/link",
            "x/dangling",
            "x/empty/",
            "x/big.bin",
        }
        assert z.read("x/big.bin") == big and z.testzip() is None
        assert stat.S_IMODE(infos["x/bin/tool"].external_attr >> 16) == 0o750
        assert stat.S_ISLNK(infos["x/bin/link"].external_attr >> 16)
        assert z.read("x/bin/link") == b"tool"
        assert z.read("x/dangling") == b"/no/such/file"
        assert stat.S_ISDIR(infos["x/empty/"].external_attr >> 16)
    assert not list(tmp_path.glob(".x.zip.tmp*"))
    unzip = subprocess.run(["unzip", "-tq", str(dest)], capture_output=True, text=True)
    assert unzip.returncode == 0, unzip.stdout + unzip.stderr
    # zipfuse's reader sees the 100 ns mtime (same encoding as a zipfuse commit)
    from zipfuse.zipformat import read_central_directory

    fd = os.open(dest, os.O_RDONLY)
    try:
        cd = read_central_directory(fd)
    finally:
        os.close(fd)
    tool = next(e for e in cd.entries if e.name == "x/bin/tool")
    assert tool.mtime_ns == 1_600_000_000_123_456_700


# --------------------------------------------------------------------------------- CLI style

SUBCOMMANDS = [
    "create",
    "activate",
    "deactivate",
    "shell",
    "shell-hook",
    "run",
    "mount",
    "unmount",
    "list",
    "paths",
    "remove",
    "import",
    "export",
    "install",
    "update",
    "uninstall",
]


@pytest.mark.parametrize("sub", [None, *SUBCOMMANDS])
def test_help_everywhere(sub, capsys):
    argv = ["--help"] if sub is None else [sub, "--help"]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    assert "usage: condafuse" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "code", "text"),
    [
        (["create", "bad/name", "x"], 2, "invalid environment name"),
        (["activate", "x"], 2, "shell-hook"),
        (["deactivate"], 2, "shell-hook"),
        (["unmount"], 2, "give NAME or --all"),
        (["unmount", "x", "--all"], 2, "not both"),
        (["frobnicate"], 2, "invalid choice"),
        (["run", "nosuch", "--", "true"], 3, "no environment 'nosuch'"),
        (["remove", "nosuch", "--yes"], 3, "no environment 'nosuch'"),
        (["export", "nosuch", "/tmp/x"], 3, "no environment 'nosuch'"),
        (["import", "/no/such/dir", "x"], 3, "is not a directory"),
        (["--frontend", "nope", "create", "x", "p"], 2, "unknown frontend"),
        (["install", "nosuch", "pkg"], 3, "no environment 'nosuch'"),
        (["uninstall", "nosuch", "pkg"], 3, "no environment 'nosuch'"),
        (["remove", "x", "pkg", "--all"], 2, "not both"),
        (["create"], 2, "give NAME"),
        (["create", "-f", "/no/such.yml"], 1, "cannot read /no/such.yml"),
        (["export", "x"], 2, "give DIR"),
        (["export", "x", "d", "--yml"], 2, "-f FILE"),
        (["shell-hook", "fish"], 2, "invalid choice"),
    ],
)
def test_errors_are_one_line_with_exit_codes(tmp_path, argv, code, text):
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(Path(__file__).parents[2]))
    proc = subprocess.run(
        [sys.executable, "-m", "condafuse", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == code, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("condafuse: error:")]
    assert len(errors) == 1 and text in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_import_refuses_a_non_env(tmp_path):
    (tmp_path / "plain").mkdir()
    rc = cli.main(["import", str(tmp_path / "plain"), "x"])
    assert rc == 2


def test_paths_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CONDA_FUSE_ARCHIVE_PATH", str(tmp_path / "arch"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    for var in ("CONDA_EXE", "MAMBA_EXE", "CONDA_FUSE_FRONTEND", "CONDA_FUSE_MOUNT_ROOT"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["paths", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["archive_path"] == str(tmp_path / "arch")
    assert rep["mount_root"] == str(tmp_path / "miniconda_fuse" / "envs")
    assert rep["frontend"] == ("rattler" if frontends.rattler_available() else None)
    assert rep["activator"] == "builtin"
    assert rep["conda_environments_txt"] == str(tmp_path / ".conda" / "environments.txt")
    assert cli.main(["paths"]) == 0
    assert "spill dir:" in capsys.readouterr().out


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


def test_progress_printer_terminal_and_log():
    from condafuse.envs import ProgressPrinter
    from zipfuse.api import Progress

    for tty in (True, False):
        stream = _Stream(tty)
        printer = ProgressPrinter("writing x.zip", stream)
        printer(Progress(1, 4, 1_000, 4_000_000))
        printer(Progress(2, 4, 2_000_000, 4_000_000))  # too soon after the first: not shown
        printer(Progress(4, 4, 4_000_000, 4_000_000))
        printer(Progress(4, 4, 4_000_000, 4_000_000))  # the final line only once
        printer.close()
        assert stream.text.count("4/4 entries, 4.0 MB/4.0 MB (100%)") == 1
        assert "1/4 entries, 1.0 kB/4.0 MB (0%)" in stream.text
        assert "2/4" not in stream.text
        if tty:
            assert stream.text.startswith("\r") and stream.text.endswith("\n")
        else:
            assert stream.text.count("\n") == 2 and "\r" not in stream.text


def test_progress_printer_never_past_100_percent():
    """Whatever a producer reports, the line shows done <= total and at most 100 %."""
    from condafuse.envs import ProgressPrinter
    from zipfuse.api import Progress

    stream = _Stream(False)
    printer = ProgressPrinter("writing venv1.zip", stream)
    printer(Progress(8284, 8284, 356_700_000, 112_300_000))  # the numbers of issue 11
    printer.close()
    assert "8284/8284 entries, 112.3 MB/112.3 MB (100%)" in stream.text, stream.text
    assert "318" not in stream.text
