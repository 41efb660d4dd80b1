"""The zipfuse command line: one-line errors, status, signals, busy unmounts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from tests.conftest import ZIPFUSE_CMD, force_cleanup, mounted
from tests.zipfuse.writehelp import PAUSE_WRITTEN
from zipfuse import api, registry

pytestmark = pytest.mark.usefixtures("fuse")


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ZIPFUSE_CMD, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def small_zip(tmp_path):
    path = tmp_path / "small.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("dir/file.txt", "hello\n")
    return path


def test_mount_errors_are_one_line(tmp_path, small_zip):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    one_line_error(
        run("mount", "--read-only", str(tmp_path / "missing.zip"), str(mnt)), "does not exist"
    )
    notzip = tmp_path / "notzip.zip"
    notzip.write_text("this is not a zip archive\n" * 10)
    one_line_error(run("mount", str(notzip), str(mnt)), "not a zip")
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    one_line_error(run("mount", str(empty), str(mnt)), "empty.zip")
    one_line_error(run("mount", str(small_zip), str(tmp_path / "nowhere")), "does not exist")
    one_line_error(run("mount", str(small_zip), str(small_zip)), "not a directory")
    one_line_error(run("unmount", str(mnt)), "not a zipfuse mount")
    one_line_error(run("sync", str(mnt)), "not a zipfuse mount")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(small_zip.read_bytes()[:-30])
    one_line_error(run("mount", str(truncated), str(mnt)), "truncated.zip")
    assert str(mnt) not in registry.fuse_mounts()


def test_busy_mountpoint_and_second_writer_refused(tmp_path, small_zip):
    mnt, other = tmp_path / "mnt", tmp_path / "other"
    other.mkdir()
    with mounted(small_zip, mnt):
        one_line_error(run("mount", str(small_zip), str(mnt)), "already a mount point")
        one_line_error(run("mount", str(small_zip), str(other)), "already mounted read-write")
        # a reader beside the writer is fine
        with mounted(small_zip, other, read_only=True):
            assert (other / "dir" / "file.txt").read_text() == "hello\n"


def test_status_json_and_sync(tmp_path, small_zip):
    mnt = tmp_path / "mnt"
    with mounted(small_zip, mnt) as info:
        (mnt / "new.txt").write_text("new data\n")
        proc = run("status", "--json")
        assert proc.returncode == 0
        rows = json.loads(proc.stdout)
        row = next(r for r in rows if r["mountpoint"] == str(mnt))
        assert {"archive", "mountpoint", "pid", "state", "read_only", "dirty_bytes"} <= set(row)
        assert row["pid"] == info.pid and row["archive"] == str(small_zip)
        assert row["state"] == "mounted" and row["read_only"] is False
        assert row["dirty_bytes"] == len("new data\n")
        proc = run("sync", str(mnt))
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""  # quiet when not on a terminal
        with zipfile.ZipFile(small_zip) as z:
            assert z.read("new.txt") == b"new data\n"
        assert api.find_mount(str(mnt)).dirty_bytes == 0
        (mnt / "later.txt").write_text("later\n")
    with zipfile.ZipFile(small_zip) as z:
        assert z.read("later.txt") == b"later\n"
        assert z.testzip() is None


def test_a_deep_runtime_directory_still_reaches_the_daemon(tmp_path, small_zip, monkeypatch):
    """A control socket path past the 107 bytes a Unix socket address holds (a deep
    ZIPFUSE_RUNTIME_DIR or XDG_RUNTIME_DIR) must not kill the daemon or lose the commit."""
    runtime = tmp_path / ("r" * 60) / ("u" * 60)
    monkeypatch.setenv("ZIPFUSE_RUNTIME_DIR", str(runtime))
    mnt = tmp_path / "mnt"
    with mounted(small_zip, mnt) as info:
        assert len(registry.socket_path(info.pid)) > 108
        (mnt / "deep.txt").write_text("reached\n")
        proc = run("sync", str(mnt))
        assert proc.returncode == 0, proc.stderr
        assert api.find_mount(str(mnt)).state == "mounted"
    with zipfile.ZipFile(small_zip) as z:
        assert z.read("deep.txt") == b"reached\n"


def test_sigterm_is_a_clean_unmount(tmp_path, small_zip):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    info = api.mount(str(small_zip), str(mnt))
    try:
        (mnt / "by-signal.txt").write_text("kept\n")
        rec = {"pid": info.pid, "start_time": registry.process_start_time(info.pid)}
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while registry.alive(rec) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not registry.alive(rec)
        assert str(mnt) not in registry.fuse_mounts()
        with zipfile.ZipFile(small_zip) as z:
            assert z.read("by-signal.txt") == b"kept\n"
        assert api.find_mount(str(mnt)) is None
    finally:
        force_cleanup(str(mnt))


def test_busy_unmount_fails_and_keeps_mount(tmp_path, small_zip):
    mnt = tmp_path / "mnt"
    with mounted(small_zip, mnt):
        holder = subprocess.Popen(["sleep", "60"], cwd=mnt)
        try:
            proc = run("unmount", str(mnt))
            one_line_error(proc, "busy: a process has its cwd or a file open inside")
            assert f"(see `fuser -vm {mnt}`)" in proc.stderr
            assert proc.stderr.count(str(mnt)) == 1, proc.stderr  # the path once
            assert str(mnt) in registry.fuse_mounts()
            assert (mnt / "dir" / "file.txt").read_text() == "hello\n"
        finally:
            holder.kill()
            holder.wait()


def test_help_everywhere():
    for args in (
        ["--help"],
        ["mount", "--help"],
        ["unmount", "--help"],
        ["sync", "--help"],
        ["status", "--help"],
    ):
        proc = run(*args)
        assert proc.returncode == 0 and "usage: zipfuse" in proc.stdout


def test_ctrl_c_on_unmount_says_the_commit_goes_on(tmp_path, small_zip, monkeypatch):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    marker = tmp_path / "paused"
    monkeypatch.setenv("ZIPFUSE_TEST_PAUSE", f"{PAUSE_WRITTEN}:{marker}")  # daemon inherits it
    api.mount(str(small_zip), str(mnt))
    monkeypatch.delenv("ZIPFUSE_TEST_PAUSE")
    unmounter = None
    try:
        (mnt / "late.txt").write_text("committed after all\n")
        unmounter = subprocess.Popen(
            [*ZIPFUSE_CMD, "unmount", str(mnt)],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the commit never started"
        unmounter.send_signal(signal.SIGINT)
        _, err = unmounter.communicate(timeout=30)
        assert unmounter.returncode == 130
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "the commit continues in the daemon and the mount stays up" in lines[0]
        assert f"run 'zipfuse unmount {mnt}' again" in lines[0]
        assert str(mnt) in registry.fuse_mounts()
        assert (mnt / "late.txt").read_text() == "committed after all\n"
        marker.unlink()  # the daemon's commit goes on
        # a sync sent while that commit runs is refused ("mount is committing"): the command
        # starts fast enough now (no trio import) to get there first, so let it end
        deadline = time.monotonic() + 60
        while api.find_mount(str(mnt)).state != "mounted" and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = run("unmount", str(mnt), timeout=120)
        assert proc.returncode == 0, proc.stderr
        with zipfile.ZipFile(small_zip) as z:
            assert z.read("late.txt") == b"committed after all\n"
    finally:
        if unmounter is not None and unmounter.poll() is None:
            unmounter.kill()
            unmounter.wait()
        force_cleanup(str(mnt))


def test_mount_over_a_non_empty_directory(tmp_path, small_zip):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "mine.txt").write_text("would be hidden\n")
    one_line_error(run("mount", str(small_zip), str(mnt)), "is not empty", "--nonempty")
    one_line_error(run("mount", "-r", str(small_zip), str(mnt)), "is not empty")
    assert str(mnt) not in registry.fuse_mounts()
    for flag in (["--nonempty"], ["-o", "nonempty"]):
        proc = run("mount", *flag, "--read-only", str(small_zip), str(mnt))
        try:
            assert proc.returncode == 0, proc.stderr
            assert (mnt / "dir" / "file.txt").read_text() == "hello\n"
            assert not (mnt / "mine.txt").exists()
        finally:
            assert run("unmount", str(mnt)).returncode == 0
            force_cleanup(str(mnt))
    assert (mnt / "mine.txt").read_text() == "would be hidden\n"


def test_sync_of_a_read_only_mount_says_nothing_to_commit(tmp_path, small_zip):
    mnt = tmp_path / "mnt"
    before = os.stat(small_zip)
    with mounted(small_zip, mnt, read_only=True):
        proc = run("sync", str(mnt))
        assert proc.returncode == 0
        assert proc.stderr.strip() == f"zipfuse: nothing to commit: {mnt} is mounted read-only"
    after = os.stat(small_zip)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_recover_of_a_missing_archive_or_a_non_zip(tmp_path, small_zip):
    missing = tmp_path / "missing.zip"
    one_line_error(run("recover", str(missing)), str(missing), "does not exist")
    assert not list(tmp_path.glob(".missing.zip*"))  # no lock file left behind
    notzip = tmp_path / "notes.zip"
    notzip.write_text("plain text, not an archive\n" * 20)
    one_line_error(run("recover", str(notzip)), str(notzip), "not a zip archive")
    one_line_error(run("recover", str(tmp_path)), "not a regular file")
    for proc in (run("recover", str(missing)), run("recover", str(notzip))):
        assert proc.returncode == 1
    proc = run("recover", str(small_zip))  # a good archive without leftovers: fine, rc 0
    assert proc.returncode == 0 and "nothing to recover" in proc.stderr


# Runs one command through zipfuse.cli.main and then names the heavy modules it imported: the
# daemon needs trio and pyfuse3, a short-lived command must not pay for them (0.2 s).
_HEAVY_PROBE = """
import os, sys
from zipfuse.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help
    code = exc.code
heavy = [m for m in ("trio", "pyfuse3", "zipfuse.daemon", "zipfuse.ops") if m in sys.modules]
print("HEAVY=" + ",".join(heavy))
with open(f"/proc/self/task/{os.getpid()}/children") as f:
    print("CHILDREN=" + f.read().strip())
sys.exit(code)
"""


def run_probed(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run a command; return it and the heavy modules it imported (CHILDREN= in its stdout
    lists the processes it left running: its mount daemon, if any)."""
    proc = subprocess.run(
        [sys.executable, "-c", _HEAVY_PROBE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY="))
    return proc, [m for m in line.removeprefix("HEAVY=").split(",") if m]


def test_short_commands_never_import_trio_or_pyfuse3(tmp_path, small_zip):
    """status, sync, unmount, compact, recover and the mount command's own process stay free
    of trio and pyfuse3; the daemon the mount starts imports them (it serves the mount)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    other = tmp_path / "other.zip"
    other.write_bytes(small_zip.read_bytes())
    proc, heavy = run_probed("mount", str(small_zip), str(mnt))
    try:
        assert proc.returncode == 0, proc.stderr
        assert heavy == []
        assert (mnt / "dir" / "file.txt").read_text() == "hello\n"
        (mnt / "probe.txt").write_text("probed\n")
        for args in (["status"], ["status", "--json"], ["sync", str(mnt)], ["--help"]):
            proc, heavy = run_probed(*args)
            assert proc.returncode == 0, (args, proc.stderr)
            assert heavy == [], args
        with zipfile.ZipFile(small_zip) as z:
            assert z.read("probe.txt") == b"probed\n"  # the sync above committed
        for args in (["compact", str(other)], ["recover", str(other)]):
            proc, heavy = run_probed(*args)
            assert proc.returncode == 0, (args, proc.stderr)
            assert heavy == [], args
        with zipfile.ZipFile(other) as z:
            assert z.testzip() is None and z.read("dir/file.txt") == b"hello\n"
        proc, heavy = run_probed("unmount", str(mnt))
        assert proc.returncode == 0, proc.stderr
        assert heavy == []
        assert str(mnt) not in registry.fuse_mounts()
    finally:
        force_cleanup(str(mnt))


def test_mount_usage_error_or_help_after_the_early_fork_leaves_nothing(tmp_path, small_zip):
    """A mount forks its daemon before its arguments are parsed: a usage error, or --help
    spelled so that the early check misses it (an abbreviation), must end that daemon again
    (exit code and message from argparse as always, no process left)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for args, code, words in (
        (["--level", "12", str(small_zip), str(mnt)], 2, "invalid choice"),
        ([str(small_zip)], 2, "the following arguments are required: MOUNTPOINT"),
        (["--he"], 0, "MOUNTPOINT"),
    ):
        proc, heavy = run_probed("mount", *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert words in (proc.stderr if code else proc.stdout), (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert "CHILDREN=\n" in proc.stdout, args  # the early daemon is gone (and reaped)
        assert heavy == []
    assert str(mnt) not in registry.fuse_mounts()
    assert registry.records() == []


def test_foreground_in_combined_flags_ends_the_early_daemon(tmp_path, small_zip):
    """``-rf`` hides --foreground from the check made before parsing: the daemon forked early
    is ended, and the command's own process mounts and serves (no second process)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [*ZIPFUSE_CMD, "mount", "-rf", str(small_zip), str(mnt)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while str(mnt) not in registry.fuse_mounts():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the foreground mount did not come up"
            time.sleep(0.05)
        assert (mnt / "dir" / "file.txt").read_text() == "hello\n"
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            assert f.read().split() == []
        assert [r["pid"] for r in registry.records()] == [proc.pid]
        done = run("unmount", str(mnt))
        assert done.returncode == 0, done.stderr
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            force_cleanup(str(mnt))
            proc.wait(timeout=60)
        if proc.stderr:
            proc.stderr.close()
    assert str(mnt) not in registry.fuse_mounts()


def test_mount_refused_after_the_daemon_was_forked_leaves_nothing(tmp_path, small_zip):
    """The daemon is forked before the archive is checked: a refusal must end it at once (no
    process left, the command returns promptly with the one-line reason)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    notzip = tmp_path / "notzip.zip"
    notzip.write_text("not a zip\n" * 100)
    for args in ([str(notzip), str(mnt)], [str(small_zip), str(tmp_path / "nowhere")]):
        proc, heavy = run_probed("mount", *args)
        assert proc.returncode == 1 and heavy == []
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert "notzip.zip" in proc.stderr or "does not exist" in proc.stderr
        assert "CHILDREN=\n" in proc.stdout  # the forked daemon is gone (and reaped)
        assert str(mnt) not in registry.fuse_mounts()
        assert registry.records() == []
