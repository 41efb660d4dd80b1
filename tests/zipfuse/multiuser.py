"""Two real unprivileged users for the multi-user attack tests (created with useradd).

The tests run zipfuse as ``victim`` and the attacks as ``mallory``, each a real account with its
own uid, through ``setpriv`` (no root capabilities left). When this interpreter lives where those
users cannot reach it (a Python under /root), it is bind-mounted read-only beside the test
directory and a venv-like directory points at our site-packages, so they run exactly this Python
with exactly these packages. Only when users cannot be created at all (not root, no useradd) do
the tests skip, and never when $CI is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile

import pytest

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"multi-user tests cannot run in CI: {why}")
    pytest.skip(why)


@dataclasses.dataclass
class User:
    name: str
    uid: int
    gid: int
    home: str  # a private directory of the user's (0700)
    python: str
    base_env: dict

    def env(self, **extra: str) -> dict:
        env = dict(self.base_env)
        env.update({k: v for k, v in extra.items() if v is not None})
        for k in [k for k, v in extra.items() if v is None]:
            env.pop(k, None)
        return env

    def run(self, argv: list[str], *, timeout: float = 60, check: bool = False, cwd=None,
            **env: str) -> subprocess.CompletedProcess:  # fmt: skip
        proc = subprocess.run(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--",
             *argv],
            env=self.env(**env), capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, cwd=cwd or self.home,
        )  # fmt: skip
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def zipfuse(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        return self.run([self.python, "-m", "zipfuse", *args], timeout=timeout, **env)

    def py(self, code: str, *, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        """Run Python code as this user (the attacks); fails the test if it fails."""
        return self.run([self.python, "-c", code], timeout=timeout, check=True, **env)

    def popen(self, code: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--",
             self.python, "-c", code],
            env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
            cwd=self.home,
        )  # fmt: skip

    def records(self, runtime: str) -> list[dict]:
        out = []
        mounts = os.path.join(runtime, "mounts")
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(mounts):
                if name.endswith(".json"):
                    with (
                        contextlib.suppress(OSError, ValueError),
                        open(os.path.join(mounts, name)) as f,
                    ):
                        out.append(json.load(f))
        return out


def _traversable(path: str) -> None:
    """Let other users pass through our own test directories (pytest makes them 0700)."""
    path = os.path.abspath(path)
    while path != "/":
        st = os.stat(path)
        if st.st_uid == os.getuid() and not st.st_mode & 0o001:
            os.chmod(path, (st.st_mode & 0o7777) | 0o011)
        path = os.path.dirname(path)


def _can_run(python: str, uid: int, gid: int, env: dict | None = None) -> bool:
    """Whether the user runs exactly this interpreter (not, say, a system libpython picked up
    because ours is unreachable) with our packages."""
    proc = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", python, "-c",
         "import sys, zipfuse.cli, pyfuse3, trio; print(sys.version)"],
        capture_output=True, text=True, cwd="/", env={"PATH": PATH, **(env or {})}, timeout=60,
    )  # fmt: skip
    return proc.returncode == 0 and proc.stdout.strip() == sys.version


def _mirror_python(base: str) -> tuple[str, list[str]]:
    """This interpreter and our packages at a path other users can reach; returns the python
    and the bind mounts made (to be unmounted)."""
    root = os.path.join(base, "pyroot")
    venv = os.path.join(base, "uvenv")
    os.makedirs(root, exist_ok=True)
    subprocess.run(["mount", "--bind", sys.base_prefix, root], check=True, timeout=30)
    # read-only: if a killed run leaves this mount behind, removing the scratch folder (by hand,
    # or pytest's own clean-up of old runs) must not delete the interpreter through it
    ro = subprocess.run(["mount", "-o", "remount,bind,ro", root], capture_output=True, timeout=30)
    if ro.returncode != 0:
        subprocess.run(["umount", root], timeout=30)
        raise RuntimeError(f"cannot make the interpreter's bind mount read-only: {ro.stderr!r}")
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    real = os.path.realpath(sys.executable)
    rel = os.path.relpath(real, os.path.realpath(sys.base_prefix))
    os.makedirs(os.path.join(venv, "bin"), exist_ok=True)
    os.makedirs(os.path.join(venv, "lib", ver), exist_ok=True)
    with open(os.path.join(venv, "pyvenv.cfg"), "w") as f:
        f.write(f"home = {os.path.join(root, os.path.dirname(rel))}\n"
                "include-system-site-packages = false\n")  # fmt: skip
    python = os.path.join(venv, "bin", "python")
    with contextlib.suppress(FileExistsError):
        os.symlink(os.path.join(root, rel), python)
    with contextlib.suppress(FileExistsError):
        os.symlink(
            sysconfig.get_paths()["purelib"], os.path.join(venv, "lib", ver, "site-packages")
        )
    return python, [root]


def _lib_env(python: str) -> dict:
    """The mirrored interpreter's libpython (its RUNPATH points into the unreachable place)."""
    lib = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(python))), "lib")
    return {"LD_LIBRARY_PATH": lib}


@contextlib.contextmanager
def two_users(base: str):
    """Yield (victim, mallory, group): two fresh accounts sharing one group."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("setpriv"):
        unavailable("creating users needs root, useradd and setpriv")
    tag = f"{os.getpid() % 100000}{int(time.time()) % 1000}"
    group = f"zfg{tag}"
    names = [f"zfv{tag}", f"zfm{tag}"]
    made: list[str] = []
    mounts: list[str] = []
    os.makedirs(base, exist_ok=True)
    _traversable(base)
    fuse_mode = os.stat("/dev/fuse").st_mode & 0o7777 if os.path.exists("/dev/fuse") else None
    try:
        if fuse_mode is not None and fuse_mode & 0o006 != 0o006:
            # libfuse opens /dev/fuse itself before it tries fusermount3: users can mount only
            # with the usual 0666 (what every distribution ships; this container has 0600)
            os.chmod("/dev/fuse", 0o666)
        if subprocess.run(["groupadd", group], capture_output=True).returncode != 0:
            unavailable("groupadd failed")
        for name in names:
            proc = subprocess.run(
                ["useradd", "-M", "-N", "-g", group, "-d", "/nonexistent", "-s",
                 "/usr/sbin/nologin", name], capture_output=True, text=True,
            )  # fmt: skip
            if proc.returncode != 0:
                unavailable(f"useradd failed: {proc.stderr.strip()}")
            made.append(name)
        pws = [pwd.getpwnam(n) for n in names]
        python = sys.executable
        extra: dict = {}
        if not _can_run(python, pws[0].pw_uid, pws[0].pw_gid):
            python, mounts = _mirror_python(base)
            extra = _lib_env(python)
            assert _can_run(python, pws[0].pw_uid, pws[0].pw_gid, extra), "mirror unusable"
        users = []
        for pw in pws:
            home = os.path.join(base, "home", pw.pw_name)
            os.makedirs(home)
            os.chown(home, pw.pw_uid, pw.pw_gid)
            os.chmod(home, 0o711)  # others may pass through (like many HPC homes), not list
            env = {"PATH": PATH, "HOME": home, "LANG": "C.UTF-8", "USER": pw.pw_name,
                   "TMPDIR": os.path.join(base, "shared"),
                   "ZIPFUSE_RUNTIME_DIR": os.path.join(home, "run"), **extra}  # fmt: skip
            users.append(User(pw.pw_name, pw.pw_uid, pw.pw_gid, home, python, env))
        shared = os.path.join(base, "shared")  # like /tmp: everyone writes, sticky
        os.makedirs(shared)
        os.chmod(shared, 0o1777)
        yield users[0], users[1], group
    finally:
        if fuse_mode is not None and fuse_mode & 0o006 != 0o006:
            os.chmod("/dev/fuse", fuse_mode)
        for mnt in mounts:
            subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=30)
        for name in made:
            subprocess.run(["userdel", name], capture_output=True, timeout=30)
        subprocess.run(["groupdel", group], capture_output=True, timeout=30)


def cleanup_mounts(user: User, under: str, runtimes: list[str]) -> None:
    """Unmount (as the user) every FUSE mount left under ``under``; kill its daemon if needed."""
    from zipfuse import registry

    for mp in list(registry.fuse_mounts()):
        if not mp.startswith(under.rstrip("/") + "/"):
            continue
        for rt in runtimes:
            user.zipfuse("unmount", "--discard", "--timeout", "30", mp, ZIPFUSE_RUNTIME_DIR=rt)
        if mp in registry.fuse_mounts():
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, timeout=30)
    for rt in runtimes:
        for rec in user.records(rt):
            if registry.alive(rec):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(rec["pid"]), signal.SIGKILL)


def make_zip(path: str, files: dict[str, bytes], owner: User | None = None,
             method: int = zipfile.ZIP_DEFLATED) -> None:  # fmt: skip
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in files.items():
            z.writestr(name, data)
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)
