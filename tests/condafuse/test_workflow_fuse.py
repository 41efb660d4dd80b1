"""condafuse end to end against REAL zipfuse mounts and real conda packages (no mocks).

Every test here needs FUSE (the root conftest's ``fuse`` fixture fails in CI when it is missing)
and the local channel built with py-rattler.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from cfhelpers import make_stub, need_zsh, read_log

from zipfuse import api

pytestmark = pytest.mark.fuse


def _mounted(path: Path) -> bool:
    return api.find_mount(str(path)) is not None


def test_full_workflow_with_embedded_backend(fuse, cf, channel):
    """create -> activate in bash -> run the program -> deactivate -> unmount -> archive content
    -> list -> run after a remount."""
    name = "demo"
    prefix = cf.prefix(name)
    out = cf.create(name, channel)
    assert "created demo" in out.stderr
    archive = cf.archives / "demo.zip"
    assert archive.is_file(), "create must commit the archive before returning"
    info = api.find_mount(str(cf.mount_root / name))
    assert info is not None and not info.read_only
    with zipfile.ZipFile(archive) as z:  # committed by sync while still mounted
        assert "demo/bin/cftool" in z.namelist()

    script = f"""
set -u
PS1='$ '
eval "$(condafuse shell-hook bash)"
condafuse activate {name} || exit 11
echo "PROMPT=$PS1"
echo "PREFIX=$CONDA_PREFIX"
echo "DEFAULT=$CONDA_DEFAULT_ENV SHLVL=$CONDA_SHLVL CF=$CONDAFUSE_ENV"
echo "HOOK=$CFTOOL_ACTIVE"
echo "WHICH=$(command -v cft)"
cft || exit 12
cfpy || exit 13
condafuse deactivate || exit 14
echo "AFTER=${{CONDA_PREFIX-unset}} ${{CFTOOL_ACTIVE-unset}} $CONDA_SHLVL [$PS1]"
command -v cft || echo "cft gone"
condafuse activate {name} || exit 15
condafuse unmount {name} || exit 16
echo "END=${{CONDA_PREFIX-unset}}"
"""
    proc = cf.shell(script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "PROMPT=(demo) $ " in lines
    assert f"PREFIX={prefix}" in lines
    assert "DEFAULT=demo SHLVL=1 CF=demo" in lines
    assert f"HOOK=on:{prefix}" in lines  # the package's activate.d script ran
    assert f"WHICH={prefix}/bin/cft" in lines
    assert f"cftool 1.1 prefix={prefix}" in lines  # placeholder replaced; symlink followed
    assert "greetings from cfdata" in lines
    assert f"cfpy sys.prefix={prefix}" in lines  # noarch python entry point
    assert "AFTER=unset unset 0 [$ ]" in lines
    assert "cft gone" in lines
    assert "END=unset" in lines  # the hook deactivated before unmounting
    assert "active in this shell; deactivating it first" in proc.stderr
    assert not _mounted(cf.mount_root / name)
    assert not (cf.mount_root / name).exists()

    # the archive holds NAME/... only, with the real content
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        assert all(n.startswith("demo/") for n in names), names
        assert "demo/conda-meta/" in names or any(n.startswith("demo/conda-meta/") for n in names)
        assert f'PREFIX="{prefix}"' in z.read("demo/bin/cftool").decode()
        link = z.getinfo("demo/bin/cft")
        assert stat.S_ISLNK(link.external_attr >> 16) and z.read(link) == b"cftool"
        assert stat.S_IMODE(z.getinfo("demo/bin/cftool").external_attr >> 16) & 0o111
        # noarch: python modules were byte-compiled at create time, as conda does
        pyc = [n for n in names if n.startswith("demo/lib/python") and "/cfpy/__pycache__/" in n]
        assert any(n.endswith(".pyc") for n in pyc), names
        meta = json.loads(z.read("demo/.condafuse.json"))
        assert meta["prefix"] == str(prefix) and meta["frontend"] == "rattler"

    row = cf.list_json()[name]
    assert row["size"] == archive.stat().st_size and row["mounted"] is False
    assert "demo" in cf.run("list").stdout

    # run after a remount: read-only for the run, unmounted afterwards, exit status passed on
    out = cf.run("run", name, "--", "cft")
    assert out.stdout == f"cftool 1.1 prefix={prefix}\ngreetings from cfdata\n"
    assert not _mounted(cf.mount_root / name)
    out = cf.run("run", name, "--", "sh", "-c", 'echo "$CFTOOL_ACTIVE"; exit 7', check=False)
    assert out.returncode == 7 and out.stdout.strip() == f"on:{prefix}"
    out = cf.run("run", name, "--", "no-such-program", check=False)
    assert out.returncode == 127
    assert not _mounted(cf.mount_root / name)

    # mount read-only, list shows the state, run reuses the mount and leaves it mounted
    cf.run("mount", name, "--read-only")
    row = cf.list_json()[name]
    assert row["mounted"] and row["read_only"] is True and row["state"] == "mounted"
    assert cf.run("run", name, "--", "cfpy").stdout.strip() == f"cfpy sys.prefix={prefix}"
    assert _mounted(cf.mount_root / name)
    cf.run("unmount", name)
    assert not _mounted(cf.mount_root / name)


def test_create_refuses_existing_and_leaves_nothing_on_failure(fuse, cf, channel):
    cf.create("one", channel, "cfdata")
    proc = cf.run(
        "--frontend",
        "rattler",
        "create",
        "one",
        "-c",
        channel.as_uri(),
        "--override-channels",
        "cfdata",
        check=False,
    )
    assert proc.returncode == 4
    assert "already exists" in proc.stderr and "condafuse list" in proc.stderr
    assert "condafuse remove one" in proc.stderr
    cf.run("unmount", "one")

    # a solve failure after the mount: no archive, no mount point, no mount
    proc = cf.run(
        "--frontend",
        "rattler",
        "create",
        "two",
        "-c",
        channel.as_uri(),
        "--override-channels",
        "no-such-package",
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert not (cf.archives / "two.zip").exists()
    assert not (cf.mount_root / "two").exists()
    assert not list(Path(os.environ["TMPDIR"]).glob("condafuse-*/spill/two"))
    assert api.find_mount(str(cf.mount_root / "two")) is None
    assert sorted(cf.list_json()) == ["one"]


def test_mount_write_unmount_remount(fuse, cf, channel):
    cf.create("rw", channel, "cfdata")
    prefix = cf.prefix("rw")
    (prefix / "note.txt").write_text("kept\n")
    row = cf.list_json()["rw"]
    assert row["mounted"] and row["read_only"] is False
    proc = cf.run("unmount", "rw")
    assert "the archive is on disk" in proc.stderr
    cf.run("mount", "rw", "--read-only")
    assert (prefix / "note.txt").read_text() == "kept\n"
    with pytest.raises(OSError):
        (prefix / "other.txt").write_text("x")
    proc = cf.run("mount", "rw")  # already mounted: says so, keeps the mount
    assert "already mounted (read-only)" in proc.stderr
    cf.run("unmount", "--all")
    assert cf.run("unmount", "rw", check=False).returncode == 3


def test_second_read_write_mount_elsewhere_gets_read_only(fuse, cf, channel):
    """Another machine sharing the archives (simulated by another mount root) gets a read-only
    mount and is told so; one writer per env."""
    cf.create("shared", channel, "cfdata")
    other = dict(cf.env, CONDA_FUSE_MOUNT_ROOT=str(cf.root / "node2"))
    proc = cf.run("mount", "shared", env=other)
    assert "read-only" in proc.stderr
    info = api.find_mount(str(cf.root / "node2" / "shared"))
    assert info is not None and info.read_only
    script = (
        'eval "$(condafuse shell-hook bash)"; condafuse activate shared; '
        'echo "P=$CONDA_PREFIX"; condafuse deactivate'
    )
    proc = cf.shell(script, env=other)
    assert proc.returncode == 0, proc.stderr
    cf.run("unmount", "shared", env=other)

    # another host: its zipfuse registry is not ours, so only zipfuse's writer lock on the
    # archive can refuse the second writer; condafuse then falls back to read-only
    host2 = dict(other, ZIPFUSE_RUNTIME_DIR=str(cf.root / "host2-runtime"))
    proc = cf.run("mount", "shared", env=host2)
    try:
        assert "read-write mount refused" in proc.stderr and "read-only" in proc.stderr
        rows = json.loads(cf.run("list", "--json", env=host2).stdout)
        assert {r["name"]: r for r in rows}["shared"]["read_only"] is True
    finally:  # the fixture's cleanup does not see this registry
        cf.run("unmount", "shared", env=host2, check=False)
    cf.run("unmount", "shared")


def test_unmount_warns_when_active(fuse, cf, channel):
    cf.create("act", channel, "cfdata")
    env = dict(cf.env, CONDA_PREFIX=str(cf.prefix("act")), CONDA_SHLVL="1")
    proc = cf.run("unmount", "act", env=env)
    assert "warning: act is active in this shell" in proc.stderr


def test_remove(fuse, cf, channel):
    cf.create("gone", channel, "cfdata")
    proc = cf.run("remove", "gone", "--yes", check=False)
    assert proc.returncode == 5 and "unmount" in proc.stderr
    cf.run("unmount", "gone")
    proc = cf.run("remove", "gone", check=False)  # stdin is not a terminal: no silent delete
    assert proc.returncode == 2 and "--yes" in proc.stderr
    assert (cf.archives / "gone.zip").exists()
    cf.run("remove", "gone", "--yes")
    assert not (cf.archives / "gone.zip").exists()
    assert cf.list_json() == {}


def _tree(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            row: tuple = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
            if stat.S_ISLNK(st.st_mode):
                row += (os.readlink(p),)
            else:
                row += (st.st_mtime_ns // 100,)  # zip NTFS times: 100 ns
            if stat.S_ISREG(st.st_mode):
                row += (Path(p).read_bytes(),)
            out[os.path.relpath(p, root)] = row
    return out


def test_import_export_round_trip(fuse, cf, channel, tmp_path):
    """An env directory made by py-rattler (plus awkward extras) survives import + export exactly;
    the original is left alone."""
    from condafuse import rattler_backend

    src = tmp_path / "orig-env"
    req = rattler_backend.parse_create_args(
        ["-c", str(channel), "--override-channels", "-q", "cftool", "cfpy"], env={}
    )
    rattler_backend.create(src, req, tmp_path / "cache")
    (src / "empty-dir").mkdir(mode=0o750)
    (src / "secret").write_text("s")
    (src / "secret").chmod(0o600)
    (src / "dangling").symlink_to("/no/such/target")
    (src / "abs-link").symlink_to(src / "bin" / "cftool")
    (src / "big.bin").write_bytes(os.urandom(3_000_000))
    (src / "unicodé name.txt").write_text("ü")
    os.utime(src / "secret", ns=(1_500_000_000_123_456_789, 1_500_000_000_987_654_321))
    os.utime(src / "empty-dir", ns=(1_400_000_000_000_000_000,) * 2)
    before = _tree(src)

    proc = cf.run("import", str(src), "imp")
    assert "imported" in proc.stderr and "100%" in proc.stderr
    assert _tree(src) == before, "import changed the original"
    with zipfile.ZipFile(cf.archives / "imp.zip") as z:
        assert all(n.startswith("imp/") for n in z.namelist())
    assert api.status() == [] or not any(
        m.archive == str(cf.archives / "imp.zip") for m in api.status()
    )

    dest = tmp_path / "exported"
    cf.run("export", "imp", str(dest))
    assert not _mounted(cf.mount_root / "imp")
    after = _tree(dest)
    assert sorted(after) == sorted(before)
    for key in before:
        assert after[key] == before[key], key
    # the imported env runs from its archive too (its scripts point at the original prefix)
    out = cf.run("run", "imp", "--", "cft")
    assert f"prefix={src}" in out.stdout
    assert cf.run("import", str(src), "imp", check=False).returncode == 4


def test_create_delegates_to_conda_with_exact_arguments(fuse, cf):
    """A recording stand-in `conda` on PATH: argument checks only (it makes an empty env)."""
    log = cf.root / "conda.log"
    make_stub(cf.bindir, "conda", log)
    proc = cf.run("create", "viaconda", "python=3.11", "numpy", "-c", "bioconda")
    prefix = cf.prefix("viaconda")
    calls = read_log(log)
    assert calls[0]["argv"] == [
        "create",
        "--prefix",
        str(prefix),
        "--yes",
        "python=3.11",
        "numpy",
        "-c",
        "bioconda",
    ]
    assert "running" in proc.stderr
    assert (cf.archives / "viaconda.zip").is_file()
    # activation is conda's own, with the NAME prompt
    script = (
        'eval "$(condafuse shell-hook bash)"; condafuse activate viaconda; '
        'echo "P=$CONDA_PREFIX S=$STUB_ACTIVATED CF=$CONDAFUSE_ENV"; '
        'condafuse deactivate; echo "D=${CONDA_PREFIX-unset} ${STUB_DEACTIVATED-} '
        '${CONDAFUSE_ENV-unset}"'
    )
    out = cf.shell(script)
    assert out.returncode == 0, out.stderr
    assert f"P={prefix} S=({{name}})_ CF=viaconda" in out.stdout
    assert "D=unset 1 unset" in out.stdout
    calls = read_log(log)
    assert calls[1]["argv"] == ["shell.posix", "activate", str(prefix)]
    assert calls[1]["env_prompt"] == "({name}) "
    assert calls[2]["argv"] == ["shell.posix", "deactivate"]
    cf.run("unmount", "viaconda")

    # micromamba chosen explicitly gets the same command line
    mlog = cf.root / "mm.log"
    make_stub(cf.bindir, "micromamba", mlog)
    cf.run("--frontend", "micromamba", "create", "viamm", "-y", "xz")
    assert read_log(mlog)[0]["argv"] == ["create", "--prefix", str(cf.prefix("viamm")), "-y", "xz"]
    cf.run("unmount", "viamm")

    # a failing frontend leaves nothing behind
    env = dict(cf.env, STUB_FAIL="1")
    (cf.bindir / "conda").write_text("#!/bin/sh\nexit 3\n")
    proc = cf.run("create", "broken", "x", env=env, check=False)
    assert proc.returncode == 1 and "exit status 3" in proc.stderr
    assert not (cf.archives / "broken.zip").exists()
    assert not (cf.mount_root / "broken").exists()


def test_zsh_session(fuse, cf, channel):
    need_zsh()
    cf.create("zdemo", channel, "cftool")
    prefix = cf.prefix("zdemo")
    script = (
        'PS1="% "; eval "$(condafuse shell-hook zsh)"; condafuse activate zdemo; '
        'echo "P=$CONDA_PREFIX [$PS1]"; cft; condafuse deactivate; '
        'echo "D=${CONDA_PREFIX-unset}"; condafuse unmount zdemo'
    )
    proc = cf.shell(script, shell="zsh")
    assert proc.returncode == 0, proc.stderr
    assert f"P={prefix} [(zdemo) % ]" in proc.stdout
    assert f"cftool 1.1 prefix={prefix}" in proc.stdout
    assert "D=unset" in proc.stdout


def test_failing_backend_is_one_line_and_leaves_nothing(fuse, cf, tmp_path):
    """The embedded backend cannot reach its channel: one-line error, nothing half-made."""
    proc = cf.run(
        "--frontend",
        "rattler",
        "create",
        "x",
        "-c",
        (tmp_path / "nochannel").as_uri(),
        "--override-channels",
        "pkg",
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("condafuse: error:")]
    assert len(errors) == 1 and "py-rattler" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (cf.archives / "x.zip").exists()
    assert not (cf.mount_root / "x").exists()


def _wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _sigterm_when(args, cf, env, ready):
    """Start condafuse ARGS, send it SIGTERM once ``ready()``; return (proc, stdout, stderr)."""
    proc = subprocess.Popen(
        [str(cf.bindir / "condafuse"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_for(ready)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    return proc, out, err


def test_sigterm_reaches_the_command_of_run_and_the_mount_goes(fuse, cf, channel):
    """A batch system stopping `condafuse run` with SIGTERM: the command gets it, its exit
    status comes back, and the temporary read-only mount is removed."""
    cf.create("job", channel, "cftool")
    cf.run("unmount", "job")
    ready = cf.root / "ready"
    cmd = f"trap 'echo got-term; exit 9' TERM; touch {ready}; while :; do sleep 0.05; done"
    proc, out, err = _sigterm_when(["run", "job", "--", "sh", "-c", cmd], cf, cf.env, ready.exists)
    assert proc.returncode == 9, err
    assert "got-term" in out
    assert not _mounted(cf.mount_root / "job")


def test_sigterm_during_create_leaves_nothing(fuse, cf):
    """SIGTERM while the frontend runs: the frontend is stopped and nothing is kept."""
    log = cf.root / "conda.log"
    make_stub(cf.bindir, "conda", log)
    started = cf.root / "started"
    env = dict(cf.env, STUB_SLEEP=str(started))
    proc, _, err = _sigterm_when(["create", "late", "x"], cf, env, started.exists)
    assert proc.returncode != 0 and "Traceback" not in err
    assert "nothing was kept" in err
    assert not (cf.archives / "late.zip").exists()
    assert not (cf.mount_root / "late").exists()


def test_dead_mount_is_reported_and_detached(fuse, cf, channel):
    """The daemon of a mount dies (here: killed by the test, which started it): list shows it,
    activate/run refuse with a clear message, unmount detaches it and says what happened."""
    cf.create("fragile", channel, "cftool")
    info = api.find_mount(str(cf.mount_root / "fragile"))
    os.kill(info.pid, signal.SIGKILL)
    _wait_for(lambda: cf.list_json()["fragile"]["state"] == "dead")
    for args in (("run", "fragile", "--", "cft"), ("shell", "activate", "fragile")):
        proc = cf.run(*args, check=False)
        assert proc.returncode == 5, proc.stderr
        assert "is dead" in proc.stderr and "condafuse unmount fragile" in proc.stderr
    proc = cf.run("unmount", "fragile", check=False)
    assert proc.returncode == 1 and "detached" in proc.stderr
    assert not _mounted(cf.mount_root / "fragile")
    assert cf.list_json()["fragile"]["mounted"] is False
    # the archive committed by create is intact and usable
    assert "cftool 1.1" in cf.run("run", "fragile", "--", "cft").stdout


def test_remove_asks_on_a_terminal(fuse, cf, channel):
    import pty

    cf.create("asked", channel, "cfdata")
    cf.run("unmount", "asked")
    for answer, kept in ((b"n\n", True), (b"y\n", False)):
        pid, fd = pty.fork()
        if pid == 0:  # child: the condafuse program on a terminal
            try:
                os.execve(str(cf.bindir / "condafuse"), ["condafuse", "remove", "asked"], cf.env)
            finally:
                os._exit(127)
        out = b""
        deadline = time.monotonic() + 60
        while b"[y/N]" not in out and time.monotonic() < deadline:
            try:
                out += os.read(fd, 1024)
            except OSError:
                break
        os.write(fd, answer)
        while True:
            try:
                if not os.read(fd, 1024):
                    break
            except OSError:
                break
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        assert b"Remove environment asked" in out
        assert (cf.archives / "asked.zip").exists() == kept
        assert os.waitstatus_to_exitcode(status) == (1 if kept else 0)
