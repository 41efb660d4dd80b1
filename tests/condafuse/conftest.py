"""Fixtures for the condafuse tests: a real local conda channel, an isolated user setup, a way to
run the ``condafuse`` program (directly and from real bash/zsh sessions), and cleanup that leaves
no mount behind.

The root conftest provides ``fuse`` (fails in CI when FUSE is missing) and points
``ZIPFUSE_RUNTIME_DIR``/``TMPDIR`` at the test session's temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import condapkg  # noqa: E402

CMD_TIMEOUT = 180


def _need_rattler() -> None:
    try:
        import rattler  # noqa: F401
        import zstandard  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"condafuse tests need py-rattler and zstandard in CI: {exc}")
        pytest.skip(f"needs py-rattler and zstandard: {exc}")


@pytest.fixture(scope="session")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local channel (file://) of real tiny conda packages, indexed with py-rattler."""
    _need_rattler()
    return condapkg.build_channel(tmp_path_factory.mktemp("channel"))


@dataclass
class CF:
    """One isolated condafuse user: its own HOME, archive path, mount root and PATH."""

    root: Path
    env: dict[str, str]
    bindir: Path

    @property
    def archives(self) -> Path:
        return Path(self.env["CONDA_FUSE_ARCHIVE_PATH"])

    @property
    def mount_root(self) -> Path:
        return Path(self.env["CONDA_FUSE_MOUNT_ROOT"])

    def prefix(self, name: str) -> Path:
        return self.mount_root / name / name

    def run(
        self,
        *args: str,
        check: bool | None = True,
        timeout: float = CMD_TIMEOUT,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        """Run the condafuse program; ``check=True`` asserts exit 0 (showing stderr if not)."""
        proc = subprocess.run(
            [str(self.bindir / "condafuse"), *args],
            env=env or self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL if input is None else None,
            input=input,
        )
        if check:
            assert proc.returncode == 0, f"condafuse {' '.join(args)}: {proc.stderr}"
        return proc

    def shell(
        self,
        script: str,
        shell: str = "bash",
        timeout: float = CMD_TIMEOUT,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run ``script`` in a real, non-interactive bash/zsh without any rc files."""
        argv = {
            "bash": ["bash", "--norc", "--noprofile", "-c", script],
            "zsh": ["zsh", "-f", "-c", script],
        }[shell]
        return subprocess.run(
            argv,
            env=env or self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def list_json(self) -> dict[str, dict]:
        rows = json.loads(self.run("list", "--json").stdout)
        return {r["name"]: r for r in rows}

    def create(self, name: str, channel: Path, *specs: str) -> subprocess.CompletedProcess:
        return self.run(
            "--frontend",
            "rattler",
            "create",
            name,
            "-c",
            channel.as_uri(),
            "--override-channels",
            *(specs or ("cftool", "cfpy")),
        )


def _clean_path() -> str:
    """PATH without any conda, mamba or micromamba (tests decide which frontend exists)."""
    keep = []
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if d and not any(
            os.path.exists(os.path.join(d, x)) for x in ("conda", "mamba", "micromamba")
        ):
            keep.append(d)
    return os.pathsep.join(keep)


@pytest.fixture
def cf(tmp_path: Path) -> CF:
    """An isolated user; every mount made under it is unmounted at teardown."""
    root = tmp_path
    bindir = root / "bin"
    bindir.mkdir()
    launcher = bindir / "condafuse"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m condafuse "$@"\n')
    launcher.chmod(0o755)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONDA", "MAMBA", "_CE_", "CONDAFUSE", "PS1"))
    }
    env.update(
        HOME=str(root / "home"),
        CONDA_FUSE_ARCHIVE_PATH=str(root / "home" / "archives"),
        CONDA_FUSE_MOUNT_ROOT=str(root / "home" / "envs"),
        PATH=f"{bindir}{os.pathsep}{_clean_path()}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        CONDA_FUSE_CHANNELS="",  # no default channel: nothing may touch the network
        https_proxy="http://127.0.0.1:9",
        http_proxy="http://127.0.0.1:9",
        CONDA_FUSE_PKGS_DIR=str(root / "pkgs"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    (root / "home").mkdir()
    yield CF(root=root, env=env, bindir=bindir)
    cleanup_mounts(root)


def cleanup_mounts(root: Path) -> None:
    """Unmount everything below ``root`` (commit, 60 s), then detach and kill what is left."""
    from zipfuse import api, registry

    root_s = os.path.realpath(root)

    def ours(mp: str) -> bool:
        return mp == root_s or mp.startswith(root_s + os.sep)

    problems = []
    for info in api.status():
        if ours(info.mountpoint):
            problems.append(info.mountpoint)
            try:
                api.unmount(info.mountpoint, timeout=60)
            except Exception:
                pass
    for rec in registry.records():
        if not ours(rec["mountpoint"]):
            continue
        if rec["mountpoint"] in registry.fuse_mounts():
            subprocess.run(
                ["fusermount3", "-u", "-z", rec["mountpoint"]], capture_output=True, timeout=30
            )
        if registry.alive(rec):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(rec["pid"]), signal.SIGKILL)  # a daemon this test started
            deadline = time.monotonic() + 10
            while registry.alive(rec) and time.monotonic() < deadline:
                time.sleep(0.05)
        registry.unregister(int(rec["pid"]))
    for mp in registry.fuse_mounts():
        if ours(mp):
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, timeout=30)
    assert not problems, f"the test left mounts behind: {problems}"
