"""Real programs writing into a mount: git, python -m venv + pip, tar -x, sqlite3.

Each one runs in a subprocess with a timeout; the result is checked in the mount, then again
after a commit (unmount) and a remount.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

from tests.conftest import mounted, tree_state
from tests.zipfuse.writehelp import check_archive, full_state
from zipfuse import api

pytestmark = pytest.mark.usefixtures("fuse")


def run(cmd, *, cwd=None, env=None, timeout=180, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert proc.returncode == 0, (
            f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


# ------------------------------------------------------------------------------- git


def _git_env(home) -> dict:
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="T",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="T",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    return env


def test_git_init_add_commit_status(tmp_path):
    archive, mnt = tmp_path / "git.zip", tmp_path / "mnt"
    env = _git_env(tmp_path)
    with mounted(archive, mnt):
        repo = mnt / "repo"
        run(["git", "init", "-q", "-b", "main", repo], env=env)
        (repo / "src").mkdir()
        for i in range(30):
            (repo / "src" / f"m{i}.py").write_text(f"X = {i}\n" * (i + 1))
        (repo / "run.sh").write_text("#!/bin/sh\necho hi\n")
        os.chmod(repo / "run.sh", 0o755)
        os.symlink("src/m1.py", repo / "link")
        run(["git", "add", "-A"], cwd=repo, env=env)
        run(["git", "commit", "-q", "-m", "first"], cwd=repo, env=env)
        (repo / "src" / "m0.py").write_text("changed\n")
        os.unlink(repo / "src" / "m2.py")
        run(["git", "commit", "-q", "-a", "-m", "second"], cwd=repo, env=env)
        run(["git", "gc", "-q"], cwd=repo, env=env)  # packs, renames and deletes many files
        assert run(["git", "status", "--porcelain"], cwd=repo, env=env).stdout == ""
        head = run(["git", "rev-parse", "HEAD"], cwd=repo, env=env).stdout.strip()
    check_archive(archive)
    with mounted(archive, mnt):
        repo = mnt / "repo"
        assert run(["git", "status", "--porcelain"], cwd=repo, env=env).stdout == ""
        assert run(["git", "rev-parse", "HEAD"], cwd=repo, env=env).stdout.strip() == head
        run(["git", "fsck", "--full", "--strict"], cwd=repo, env=env)
        log = run(["git", "log", "--format=%s"], cwd=repo, env=env).stdout.split()
        assert log == ["second", "first"]
        assert os.readlink(repo / "link") == "src/m1.py"
        assert os.access(repo / "run.sh", os.X_OK)
        assert run([repo / "run.sh"]).stdout == "hi\n"


# ------------------------------------------------------------------------------- venv + pip


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def build_wheel(dest_dir) -> str:
    """A tiny pure-Python wheel written by hand, with a correct RECORD."""
    files = {
        "tinypkg/__init__.py": b"from .mod import answer\n\nVALUE = 'tiny ' + str(answer())\n",
        "tinypkg/mod.py": b"def answer():\n    return 42\n",
        "tinypkg/data/words.txt": b"alpha\nbeta\n",
        "tinypkg-1.0.dist-info/METADATA": (
            b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\nSummary: test package\n"
        ),
        "tinypkg-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: zipfuse-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
        "tinypkg-1.0.dist-info/top_level.txt": b"tinypkg\n",
    }
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    record += "tinypkg-1.0.dist-info/RECORD,,\n"
    path = os.path.join(dest_dir, "tinypkg-1.0-py3-none-any.whl")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("tinypkg-1.0.dist-info/RECORD", record)
    return path


def pycache_listing(root) -> dict[str, tuple[int, int]]:
    """Every file inside a __pycache__ directory below root: (mtime_ns, size)."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        if os.path.basename(dirpath) != "__pycache__":
            continue
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_mtime_ns, st.st_size)
    return out


@pytest.mark.slow
def test_venv_pip_install_and_import_after_remount(tmp_path):
    archive, mnt = tmp_path / "venv.zip", tmp_path / "mnt"
    wheel = build_wheel(tmp_path)
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    code = "import tinypkg, importlib.resources as r; print(tinypkg.VALUE)"
    with mounted(archive, mnt):
        venv = mnt / "venv"
        run([sys.executable, "-m", "venv", venv], env=env, timeout=300)
        py = venv / "bin" / "python"
        run(
            [py, "-m", "pip", "install", "--no-index", "--no-deps", "--no-cache-dir", wheel],
            env=env,
            timeout=300,
        )
        assert run([py, "-c", code], env=env).stdout == "tiny 42\n"
        run([py, "-m", "pip", "check"], env=env)
        before = full_state(mnt)
    check_archive(archive)
    stamp = os.stat(archive)
    with mounted(archive, mnt):
        assert full_state(mnt) == before
        venv = mnt / "venv"
        site = run([venv / "bin" / "python", "-c", "import site; print(site.getsitepackages()[0])"])
        pkg = os.path.join(site.stdout.strip(), "tinypkg")
        assert any(n.startswith("__init__.") for n in os.listdir(os.path.join(pkg, "__pycache__")))
        pyc_before = pycache_listing(venv)
        assert run([venv / "bin" / "python", "-c", code], env=env).stdout == "tiny 42\n"
        run([venv / "bin" / "python", "-m", "pip", "--version"], env=env)
        pyc_after = pycache_listing(venv)
        assert pyc_after == pyc_before, "import after remount rewrote .pyc files: " + str(
            {k: (pyc_before.get(k), pyc_after.get(k)) for k in set(pyc_before) ^ set(pyc_after)}
            or {
                k: (pyc_before[k], pyc_after[k])
                for k in pyc_before
                if pyc_before[k] != pyc_after[k]
            }
        )
    after = os.stat(archive)
    assert (after.st_ino, after.st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)


# ------------------------------------------------------------------------------- tar


def _make_tar_source(src) -> None:
    (src / "pkg" / "deep" / "er").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "pkg" / "a.txt").write_bytes(b"a" * 1000)
    (src / "pkg" / "deep" / "b.bin").write_bytes(os.urandom(300_000))
    (src / "pkg" / "deep" / "er" / "c").write_bytes(b"")
    (src / "exe").write_bytes(b"#!/bin/sh\nexit 0\n")
    os.chmod(src / "exe", 0o755)
    os.chmod(src / "empty", 0o700)
    os.link(src / "pkg" / "a.txt", src / "hard-a")
    os.link(src / "pkg" / "deep" / "b.bin", src / "pkg" / "hard-b")
    os.symlink("pkg/a.txt", src / "sym-a")
    os.symlink("pkg/deep", src / "sym-dir")
    os.symlink("../nowhere", src / "pkg" / "dangling")
    os.chown(src / "pkg" / "a.txt", 1000, 1001)
    os.chown(src / "sym-a", 1002, 1003, follow_symlinks=False)
    for i, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(src, topdown=False))):
        for name in dirnames + filenames:
            os.utime(
                os.path.join(dirpath, name),
                (1_400_000_000, 1_400_000_000 + 1000 * i + len(name)),
                follow_symlinks=False,
            )


def _link_groups(root) -> list[list[str]]:
    by_ino: dict[int, list[str]] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            by_ino.setdefault(os.lstat(p).st_ino, []).append(os.path.relpath(p, root))
    return sorted(sorted(g) for g in by_ino.values() if len(g) > 1)


def test_tar_extract_with_symlinks_and_hard_links(tmp_path):
    src, plain = tmp_path / "src", tmp_path / "plain"
    src.mkdir()
    plain.mkdir()
    _make_tar_source(src)
    tarball = tmp_path / "t.tar"
    run(["tar", "-cf", tarball, "-C", src, "."])
    run(["tar", "-xpf", tarball, "-C", plain])
    archive, mnt = tmp_path / "tar.zip", tmp_path / "mnt"
    with mounted(archive, mnt):
        (mnt / "x").mkdir()
        run(["tar", "-xpf", tarball, "-C", mnt / "x"])
        assert full_state(mnt / "x") == full_state(plain)
        assert (
            _link_groups(mnt / "x")
            == _link_groups(plain)
            == [
                ["hard-a", "pkg/a.txt"],
                ["pkg/deep/b.bin", "pkg/hard-b"],
            ]
        )
        run(["tar", "-df", tarball, "-C", mnt / "x"])  # tar's own comparison
        before = full_state(mnt)
    check_archive(archive)
    with mounted(archive, mnt):
        assert full_state(mnt) == before
        assert full_state(mnt / "x") == full_state(plain)
        assert os.lstat(mnt / "x" / "sym-a")[4:6] == (1002, 1003)


# ------------------------------------------------------------------------------- sqlite

SQLITE_WRITE = textwrap.dedent(
    """
    import sqlite3, sys
    path, journal = sys.argv[1], sys.argv[2]
    con = sqlite3.connect(path, timeout=30)
    con.execute("PRAGMA mmap_size=268435456")
    if journal != "default":
        assert con.execute(f"PRAGMA journal_mode={journal}").fetchone()[0] == journal.lower()
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
    for batch in range(20):
        with con:
            con.executemany(
                "INSERT INTO t (name, blob) VALUES (?, ?)",
                [(f"row {batch}-{i}", bytes([i % 256]) * (i * 7 % 3000)) for i in range(250)],
            )
    with con:
        con.execute("UPDATE t SET name = name || '!' WHERE id % 3 = 0")
        con.execute("DELETE FROM t WHERE id % 10 = 0")
    # a second connection sees committed data while the first holds a read transaction
    other = sqlite3.connect(path, timeout=30)
    other.execute("PRAGMA mmap_size=268435456")
    assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 4500
    con.execute("BEGIN IMMEDIATE")
    try:
        other.execute("PRAGMA busy_timeout=0")
        other.execute("BEGIN IMMEDIATE")
        raise SystemExit("second writer got the lock while the first held it")
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc), exc
    con.execute("INSERT INTO t (name) VALUES ('locked insert')")
    con.commit()
    other.close()
    con.close()
    """
)

SQLITE_READ = textwrap.dedent(
    """
    import sqlite3, sys
    con = sqlite3.connect(sys.argv[1])
    con.execute("PRAGMA mmap_size=268435456")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n, s = con.execute("SELECT count(*), sum(length(blob)) FROM t").fetchone()
    bang = con.execute("SELECT count(*) FROM t WHERE name LIKE '%!'").fetchone()[0]
    last = con.execute("SELECT name FROM t ORDER BY id DESC LIMIT 1").fetchone()[0]
    print(n, s, bang, last, con.execute("PRAGMA journal_mode").fetchone()[0])
    """
)


@pytest.mark.parametrize("journal", ["default", "WAL"])
def test_sqlite_database_in_mount(tmp_path, journal):
    archive, mnt, plain = tmp_path / "db.zip", tmp_path / "mnt", tmp_path / "plain"
    plain.mkdir()
    run([sys.executable, "-c", SQLITE_WRITE, plain / "t.db", journal], timeout=120)
    expected = run([sys.executable, "-c", SQLITE_READ, plain / "t.db"]).stdout
    assert expected.split()[0] == "4501"
    with mounted(archive, mnt):
        db = mnt / "data" / "t.db"
        db.parent.mkdir()
        run([sys.executable, "-c", SQLITE_WRITE, db, journal], timeout=240)
        assert run([sys.executable, "-c", SQLITE_READ, db]).stdout == expected
        api.sync(str(mnt))
        assert run([sys.executable, "-c", SQLITE_READ, db]).stdout == expected
        leftovers = sorted(os.listdir(db.parent))
    check_archive(archive)
    names = zipfile.ZipFile(archive).namelist()
    assert sorted(
        n.removeprefix("data/") for n in names if n.startswith("data/") and n != "data/"
    ) == (leftovers)
    with mounted(archive, mnt):
        db = mnt / "data" / "t.db"
        assert run([sys.executable, "-c", SQLITE_READ, db]).stdout == expected
    # the plain copy and the mount agree on the bytes sqlite wrote when both are checkpointed
    with zipfile.ZipFile(archive) as zf:
        (tmp_path / "out").mkdir()
        zf.extract("data/t.db", tmp_path / "out")
    shutil.copy(tmp_path / "out" / "data" / "t.db", tmp_path / "copy.db")
    assert run([sys.executable, "-c", SQLITE_READ, tmp_path / "copy.db"]).stdout == expected
    assert tree_state(tmp_path / "out")
