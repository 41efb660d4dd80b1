"""The systems under test, one class each: how to mount, unmount, and wait until durable.

A system turns a *backing* (a .zip, a squashfs image, or a plain folder for ``disk``) into a folder
that shows the backing's contents (``Mount.root``). ``close`` returns only when the data is durable
as far as that system can make it so, and reports how long that took and the daemon's peak RSS.

Every live mount is remembered in ``_LIVE_MOUNTS`` so the runner can unmount everything on any exit.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from .corpus import Corpus

UNMOUNT_TIMEOUT = 60.0  # fusermount3 -u itself; a commit may take far longer (see close())
COMMIT_TIMEOUT = 1800.0


def _dpkg_version(package: str) -> str:
    """The installed Debian package's version, or "" where dpkg cannot tell."""
    try:
        return subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except Exception:
        return ""


class SystemUnavailable(RuntimeError):
    """The system cannot run at all on this machine (binary missing, API not there yet)."""


class NotSupported(RuntimeError):
    """The system cannot run this workload by design (e.g. writes on a read-only format)."""


@dataclasses.dataclass
class Mount:
    system: str
    backing: Path
    root: Path  # where the backing's contents appear (TOP is inside)
    read_only: bool
    pid: int | None = None
    popen: subprocess.Popen | None = None
    mountpoint: Path | None = None
    closed: bool = False


@dataclasses.dataclass
class CloseResult:
    seconds: float  # from asking to unmount until durable (daemon exited / synced)
    peak_rss_kb: int | None  # daemon VmHWM, the peak over its whole life
    cpu_s: float | None = None  # daemon user+system CPU over its whole life


def proc_status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def is_mounted(path: Path) -> bool:
    p = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == p for line in f)
    except OSError:
        return os.path.ismount(p)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


class HwmSampler:
    """Samples a daemon's VmHWM until it exits (VmHWM vanishes with the process)."""

    def __init__(self, pid: int | None, interval: float = 0.02):
        self.pid, self.interval = pid, interval
        self.peak: int | None = proc_status_kb(pid, "VmHWM") if pid else None
        self.cpu_s: float | None = proc_cpu_seconds(pid) if pid else None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            v = proc_status_kb(self.pid, "VmHWM")
            if v is None:
                return
            self.peak = max(self.peak or 0, v)
            self.cpu_s = proc_cpu_seconds(self.pid) or self.cpu_s
            self._stop.wait(self.interval)

    def __enter__(self) -> HwmSampler:
        if self.pid:
            self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._t.is_alive():
            self._t.join(1)


def fusermount_u(mountpoint: Path, lazy: bool = False) -> None:
    args = ["fusermount3", "-u", "-q"] + (["-z"] if lazy else []) + [str(mountpoint)]
    subprocess.run(args, check=True, timeout=UNMOUNT_TIMEOUT, capture_output=True)


def wait_mounted(mountpoint: Path, proc: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not is_mounted(mountpoint):
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise RuntimeError(f"daemon exited with {proc.returncode} before mounting: {err}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{mountpoint} not mounted after {timeout} s")
        time.sleep(0.002)
    os.stat(mountpoint)  # the first request answered: the mount is usable


def prewarm_file(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(4 << 20)
        while f.readinto(buf):
            pass


def prewarm_tree(root: Path) -> None:
    buf = bytearray(1 << 20)
    for dirpath, _dirnames, filenames in os.walk(root):
        for n in filenames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                continue
            try:
                with open(p, "rb", buffering=0) as f:
                    while f.readinto(buf):
                        pass
            except OSError:
                pass


_LIVE_MOUNTS: dict[int, tuple[System, Mount]] = {}


class System:
    name = "?"
    writable = True
    label = ""
    limit_only = False  # a bound to compare with, not a product: no mount time, no commit

    def unavailable(self) -> str | None:
        """Why this system cannot run here, or None."""
        return None

    def version(self) -> str:
        return ""

    # backings
    def backing(self, corpus: Corpus) -> Path:
        return corpus.zip

    def new_backing(self, workdir: Path) -> Path:
        return workdir / "new.zip"

    def copy_backing(self, corpus: Corpus, workdir: Path) -> Path:
        """A private writable copy of the corpus's backing (for small_change)."""
        dst = workdir / corpus.zip.name
        shutil.copyfile(corpus.zip, dst)
        return dst

    def prewarm(self, backing: Path) -> None:
        """Bring the backing into the page cache ("cold mount, warm disk")."""
        if backing.exists():
            prewarm_file(backing)

    def backing_bytes(self, backing: Path) -> int:
        return backing.stat().st_size

    # mounting
    def open(self, backing: Path, mountpoint: Path, read_only: bool) -> Mount:
        if not read_only and not self.writable:
            raise NotSupported(f"{self.name} is read-only")
        why = self.unavailable()
        if why:
            raise SystemUnavailable(why)
        mountpoint.mkdir(parents=True, exist_ok=True)
        if is_mounted(mountpoint):
            raise RuntimeError(f"{mountpoint} is already a mount point")
        m = self._open(backing, mountpoint, read_only)
        _LIVE_MOUNTS[id(m)] = (self, m)
        return m

    def close(self, m: Mount) -> CloseResult:
        if m.closed:
            return CloseResult(0.0, None)
        try:
            return self._close(m)
        finally:
            m.closed = True
            _LIVE_MOUNTS.pop(id(m), None)

    def rss_kb(self, m: Mount) -> int | None:
        return proc_status_kb(m.pid, "VmRSS") if m.pid else None

    def forget_index(self, backing: Path) -> bool:
        """Drop what a system keeps between mounts of ``backing`` (zipfuse: its mount index);
        False if it keeps nothing (its every mount is a first mount)."""
        return False

    def _open(self, backing: Path, mountpoint: Path, read_only: bool) -> Mount:
        raise NotImplementedError

    def _start(
        self,
        args: list[str],
        backing: Path,
        mountpoint: Path,
        read_only: bool,
        timeout: float,
        env: dict | None = None,
    ) -> Mount:
        """Start a daemon that stays in the foreground (we own its PID) and wait until it has
        mounted; on any failure leave nothing mounted or running."""
        out, err = subprocess.DEVNULL, subprocess.PIPE
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        m = Mount(
            self.name, backing, mountpoint, read_only, pid=p.pid, popen=p, mountpoint=mountpoint
        )
        try:
            wait_mounted(mountpoint, p, timeout=timeout)
        except BaseException:
            self.emergency_close(m)
            if p.poll() is None:
                p.kill()
                p.wait()
            raise
        return m

    def _close(self, m: Mount) -> CloseResult:
        raise NotImplementedError

    def emergency_close(self, m: Mount) -> None:
        """Best effort, never raises: used by cleanup paths."""
        mp = m.mountpoint
        if mp is None:
            return
        for lazy in (False, True):
            if not is_mounted(mp):
                break
            try:
                fusermount_u(mp, lazy=lazy)
            except Exception:
                time.sleep(0.5)
        if m.popen is not None:
            try:
                m.popen.wait(timeout=COMMIT_TIMEOUT if not m.read_only else 30)
            except Exception:
                pass


def close_all_live() -> None:
    for key, (system, m) in list(_LIVE_MOUNTS.items()):
        try:
            system.close(m)
        except Exception:
            system.emergency_close(m)
        _LIVE_MOUNTS.pop(key, None)


class Disk(System):
    """A plain folder on the same disk: the physical limit. 'Durable' means syncfs succeeded."""

    name = "disk"
    label = "plain directory (ext4 page cache)"

    def backing(self, corpus: Corpus) -> Path:
        return corpus.tree

    def new_backing(self, workdir: Path) -> Path:
        return workdir / "newdir"

    def copy_backing(self, corpus: Corpus, workdir: Path) -> Path:
        # A hard-link farm is instant; small_change breaks the link of the file it appends to.
        dst = workdir / "tree"
        subprocess.run(["cp", "-al", str(corpus.tree), str(dst)], check=True)
        return dst

    def prewarm(self, backing: Path) -> None:
        if backing.exists():
            prewarm_tree(backing)

    def backing_bytes(self, backing: Path) -> int:
        out = subprocess.run(
            ["du", "-sb", str(backing)], capture_output=True, text=True, check=True
        ).stdout
        return int(out.split()[0])

    def _open(self, backing: Path, mountpoint: Path, read_only: bool) -> Mount:
        backing.mkdir(parents=True, exist_ok=True)
        os.stat(backing)
        return Mount(self.name, backing, backing, read_only)

    def _close(self, m: Mount) -> CloseResult:
        t0 = time.monotonic()
        if not m.read_only:
            subprocess.run(["sync", "-f", str(m.root)], check=True, timeout=COMMIT_TIMEOUT)
        return CloseResult(time.monotonic() - t0, None)

    def emergency_close(self, m: Mount) -> None:
        pass


class FuseZip(System):
    """fuse-zip (Debian package), started in the foreground by us so we own its PID.

    fusermount3 -u returns before fuse-zip has written the archive; the commit ends when the
    process exits (we wait4() it, which also gives the exact peak RSS).
    """

    name = "fuse-zip"
    label = "fuse-zip (C++, libzip)"

    def unavailable(self) -> str | None:
        return None if shutil.which("fuse-zip") else "fuse-zip is not installed"

    def version(self) -> str:
        return _dpkg_version("fuse-zip")

    def _open(self, backing: Path, mountpoint: Path, read_only: bool) -> Mount:
        args = ["fuse-zip", "-f"] + (["-r"] if read_only else []) + [str(backing), str(mountpoint)]
        return self._start(args, backing, mountpoint, read_only, timeout=120)

    def _close(self, m: Mount) -> CloseResult:
        t0 = time.monotonic()
        with HwmSampler(m.pid) as s:
            try:
                fusermount_u(m.mountpoint)
            except subprocess.CalledProcessError as e:
                raise RuntimeError(f"fusermount3 -u failed: {e.stderr.decode().strip()}") from e
            deadline = time.monotonic() + COMMIT_TIMEOUT
            while True:
                pid, status, ru = os.wait4(m.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("fuse-zip did not exit after unmount")
                time.sleep(0.005)
        secs = time.monotonic() - t0
        m.popen.returncode = os.waitstatus_to_exitcode(status)
        if m.popen.returncode != 0:
            err = m.popen.stderr.read().decode(errors="replace").strip()
            raise RuntimeError(f"fuse-zip exited with {m.popen.returncode}: {err}")
        return CloseResult(secs, max(ru.ru_maxrss, s.peak or 0), ru.ru_utime + ru.ru_stime)


class Floor(System):
    """benchmarks/floorfs.py: pyfuse3 + trio answering from memory, talking to the kernel the
    way zipfuse does. Not a product: the limit of the stack, to tell zipfuse's own cost from the
    cost no zipfuse code can remove. It preloads the archive before it mounts (so mounting is
    not timed) and drops all writes at unmount (so there is nothing to commit or verify)."""

    name = "floor"
    label = "floor (in-memory pyfuse3+trio filesystem: this stack's limit, no archive)"
    limit_only = True

    def unavailable(self) -> str | None:
        try:
            import pyfuse3  # noqa: F401
        except ImportError as e:
            return f"pyfuse3 is missing: {e}"
        return None

    def version(self) -> str:
        import pyfuse3

        patched = "kernel-cache" if getattr(pyfuse3, "NO_OPEN_SUPPORT", False) else "stock"
        return f"pyfuse3 {getattr(pyfuse3, '__version__', '?')} ({patched})"

    def _open(self, backing: Path, mountpoint: Path, read_only: bool) -> Mount:
        env = dict(os.environ)
        here = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        args = [sys.executable, "-m", "benchmarks.floorfs", str(backing), str(mountpoint)]
        args += ["--ro"] if read_only else []
        # the timeout covers the preload of a large archive
        return self._start(args, backing, mountpoint, read_only, timeout=300, env=env)

    def _close(self, m: Mount) -> CloseResult:
        t0 = time.monotonic()
        fusermount_u(m.mountpoint)
        _, status, ru = os.wait4(m.pid, 0)
        m.popen.returncode = os.waitstatus_to_exitcode(status)
        return CloseResult(time.monotonic() - t0, ru.ru_maxrss, ru.ru_utime + ru.ru_stime)


class Squashfuse(System):
    """squashfuse_ll on an image made by mksquashfs (gzip): the read-only HPC standard."""

    name = "squashfuse"
    writable = False
    label = "squashfuse_ll (C, read-only)"
    binary = "squashfuse_ll"

    def unavailable(self) -> str | None:
        for b in (self.binary, "mksquashfs"):
            if not shutil.which(b):
                return f"{b} is not installed"
        return None

    def version(self) -> str:
        return _dpkg_version("squashfuse")

    def backing(self, corpus: Corpus) -> Path:
        return corpus.ensure_squashfs()

    def _open(self, backing: Path, mountpoint: Path, read_only: bool) -> Mount:
        args = [self.binary, "-f", str(backing), str(mountpoint)]
        return self._start(args, backing, mountpoint, True, timeout=60)

    _close = FuseZip._close


class Zipfuse(System):
    """zipfuse through its Python API (zipfuse.api); falls back to the CLI if the API is missing.

    ``unmount`` returns once the daemon has exited and the archive is durable, so the commit time
    is simply how long it blocks. The daemon is not our child: its peak RSS comes from sampling
    /proc/PID/status (VmHWM) until it disappears.
    """

    name = "zipfuse"
    label = "zipfuse (Python, pyfuse3+trio; kernel-cache mode when pyfuse3 is patched)"

    def _api(self):
        try:
            import zipfuse.api as api
        except Exception as e:  # noqa: BLE001
            return None, f"cannot import zipfuse.api: {e}"
        if not all(hasattr(api, f) for f in ("mount", "unmount", "status")):
            return None, "zipfuse.api has no mount/unmount/status yet"
        return api, None

    def _cli(self) -> str | None:
        exe = shutil.which("zipfuse")
        if not exe:
            return None
        r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30)
        return exe if r.returncode == 0 and "mount" in r.stdout else None

    def unavailable(self) -> str | None:
        api, why = self._api()
        if api is not None or self._cli():
            return None
        return f"zipfuse cannot mount yet ({why}; no working `zipfuse` CLI either)"

    def version(self) -> str:
        try:
            import zipfuse

            where = os.path.dirname(os.path.dirname(zipfuse.__file__))
            return f"{getattr(zipfuse, '__version__', '') or '0.1.0'} (from {where})"
        except Exception:
            return ""

    def forget_index(self, backing: Path) -> bool:
        try:
            from zipfuse import indexcache
        except ImportError:  # a zipfuse without a mount index
            return False
        path = indexcache.path_for(None, os.path.realpath(backing))
        if path is not None and os.path.exists(path):
            os.unlink(path)
        return True

    def _open(self, backing: Path, mountpoint: Path, read_only: bool) -> Mount:
        api, _ = self._api()
        if api is not None:
            try:
                info = api.mount(str(backing), str(mountpoint), read_only=read_only, timeout=900)
            except TypeError:  # an API without the timeout keyword
                info = api.mount(str(backing), str(mountpoint), read_only=read_only)
            pid = getattr(info, "pid", None)
        else:
            exe = self._cli()
            subprocess.run(
                [exe, "mount"]
                + (["--read-only"] if read_only else [])
                + [str(backing), str(mountpoint)],
                check=True,
                timeout=300,
                capture_output=True,
            )
            pid = self._cli_pid(exe, mountpoint)
        m = Mount(self.name, backing, mountpoint, read_only, pid=pid, mountpoint=mountpoint)
        try:
            os.stat(mountpoint)
            if not is_mounted(mountpoint):
                raise RuntimeError(f"zipfuse mount returned but {mountpoint} is not mounted")
        except BaseException:
            self.emergency_close(m)
            raise
        return m

    @staticmethod
    def _cli_pid(exe: str, mountpoint: Path) -> int | None:
        import json

        r = subprocess.run([exe, "status", "--json"], capture_output=True, text=True, timeout=30)
        try:
            for e in json.loads(r.stdout):
                if os.path.realpath(e["mountpoint"]) == os.path.realpath(mountpoint):
                    return int(e["pid"])
        except (ValueError, KeyError, TypeError):
            pass
        return None

    def _close(self, m: Mount) -> CloseResult:
        api, _ = self._api()
        t0 = time.monotonic()
        with HwmSampler(m.pid) as s:
            if api is not None:
                api.unmount(str(m.mountpoint))
            else:
                subprocess.run(
                    [self._cli(), "unmount", str(m.mountpoint)],
                    check=True,
                    timeout=COMMIT_TIMEOUT,
                    capture_output=True,
                )
            # The contract says the daemon has exited; make sure, so RSS and timing are honest.
            deadline = time.monotonic() + 60
            while m.pid and pid_alive(m.pid) and time.monotonic() < deadline:
                time.sleep(0.005)
        return CloseResult(time.monotonic() - t0, s.peak, s.cpu_s)

    def emergency_close(self, m: Mount) -> None:
        api, _ = self._api()
        if api is not None and m.mountpoint is not None and is_mounted(m.mountpoint):
            try:
                api.unmount(str(m.mountpoint), timeout=COMMIT_TIMEOUT)
            except Exception:
                pass
        super().emergency_close(m)


class ZipfuseStock(Zipfuse):
    """zipfuse answering open/opendir itself (stock pyfuse3 behaviour, ZIPFUSE_KERNEL_CACHE=0),
    to show what kernel-cache mode (the default with the patched pyfuse3) gains."""

    name = "zipfuse-stock"
    label = "zipfuse, stock pyfuse3 mode (no kernel cache)"

    def _open(self, backing: Path, mountpoint: Path, read_only: bool) -> Mount:
        old = os.environ.get("ZIPFUSE_KERNEL_CACHE")
        os.environ["ZIPFUSE_KERNEL_CACHE"] = "0"  # the daemon inherits it
        try:
            return super()._open(backing, mountpoint, read_only)
        finally:
            if old is None:
                del os.environ["ZIPFUSE_KERNEL_CACHE"]
            else:
                os.environ["ZIPFUSE_KERNEL_CACHE"] = old


SYSTEMS: dict[str, type[System]] = {
    "disk": Disk,
    "zipfuse": Zipfuse,
    "zipfuse-stock": ZipfuseStock,
    "fuse-zip": FuseZip,
    "squashfuse": Squashfuse,
    "floor": Floor,
}
DEFAULT_SYSTEMS = ("disk", "zipfuse", "fuse-zip", "squashfuse")


def make(names: list[str]) -> list[System]:
    out = []
    for n in names:
        if n not in SYSTEMS:
            raise SystemExit(f"unknown system {n!r}; choose from {', '.join(SYSTEMS)}")
        out.append(SYSTEMS[n]())
    return out
