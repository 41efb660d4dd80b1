"""Workloads: each function runs ONE sample of one workload on one system and returns its metrics.

A sample always starts from a fresh mount (unless the workload says otherwise), with the backing
brought into the page cache first ("cold mount, warm disk"; --drop-caches drops caches instead).
Every mount is closed in a ``finally``. Metric names end in their unit (``_s``, ``_mb``,
``_mbps``...); ``METRICS`` tells the report how to show them.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from .corpus import Corpus
from .systems import Mount, System, prewarm_tree

# ---------------------------------------------------------------------------------------------
# metric catalogue (for the report)


@dataclasses.dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    higher_is_better: bool = False
    headline: bool = False  # gets a chart


METRICS: dict[str, Metric] = {
    "mount_s": Metric("mount time", "s", headline=True),
    "mount_first_s": Metric("mount time, first mount of the archive", "s"),
    "rss_mb": Metric("daemon RSS after mount", "MB"),
    "walk_s": Metric("stat every entry", "s", headline=True),
    "warm_walk_s": Metric("stat every entry, second walk", "s", headline=True),
    "read_mbps": Metric("read every file", "MB/s", higher_is_better=True, headline=True),
    "read_s": Metric("read every file", "s"),
    "read_peak_rss_mb": Metric("daemon peak RSS after read-all", "MB"),
    "reread_mbps": Metric("read every file again", "MB/s", higher_is_better=True, headline=True),
    "reread_s": Metric("read every file again", "s"),
    "cold_s": Metric("import, first after mount", "s", headline=True),
    "warm_s": Metric("import, second run", "s", headline=True),
    "import_peak_rss_mb": Metric("daemon peak RSS after imports", "MB"),
    "copy_s": Metric("copy prefix in", "s"),
    "commit_s": Metric("unmount until durable", "s"),
    "total_s": Metric("copy + commit", "s", headline=True),
    "peak_rss_mb": Metric("daemon peak RSS", "MB", headline=True),
    "daemon_cpu_s": Metric("daemon CPU time, user+system", "s"),
    "archive_mb": Metric("archive size", "MB"),
    "verified": Metric("round trip verified (1 = yes)", "", higher_is_better=True),
    "change_s": Metric("make the change", "s"),
    "change_commit_s": Metric("unmount until durable", "s"),
    "change_total_s": Metric("change + commit", "s", headline=True),
    "rand_s": Metric("1000 random 4 KiB reads (incl. open)", "s", headline=True),
    "one_s": Metric("one reader", "s"),
    "two_s": Metric("two readers", "s"),
    "speedup": Metric("two readers vs one (x)", "x", higher_is_better=True, headline=True),
}

# ---------------------------------------------------------------------------------------------
# context


@dataclasses.dataclass
class Ctx:
    work: Path  # scratch folder for mount points and archives made during the run
    quick: bool
    drop_caches: bool
    log: Callable[[str], None]
    prefix: Corpus | None = None
    synthetic: list[Corpus] = dataclasses.field(default_factory=list)
    parallel_cap_bytes: int = 400 << 20
    random_reads: int = 1000

    def mountpoint(self, system: System) -> Path:
        p = self.work / "mnt" / system.name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def scratch(self, system: System) -> Path:
        p = self.work / "scratch" / system.name
        if p.exists():
            shutil.rmtree(p)
        p.mkdir(parents=True)
        return p


def make_cold(ctx: Ctx, system: System, backing: Path) -> None:
    if ctx.drop_caches:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    else:
        system.prewarm(backing)


@contextmanager
def mounted(ctx: Ctx, system: System, backing: Path, read_only: bool = True, cold: bool = True):
    if cold:
        make_cold(ctx, system, backing)
    m = system.open(backing, ctx.mountpoint(system), read_only)
    try:
        yield m
    finally:
        system.close(m)


def _mb(kb: int | None) -> float | None:
    return None if kb is None else kb / 1024


# ---------------------------------------------------------------------------------------------
# helpers that do the work


def walk_lstat(root: Path) -> int:
    """lstat every entry below root (root included); return how many."""
    n = 1
    os.lstat(root)
    stack = [os.fspath(root)]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                st = os.lstat(e.path)
                n += 1
                if (st.st_mode & 0o170000) == 0o040000:
                    stack.append(e.path)
    return n


def read_files(root: Path, rels: list[str]) -> int:
    buf = bytearray(1 << 20)
    total = 0
    for rel in rels:
        with open(os.path.join(root, rel), "rb", buffering=0) as f:
            while k := f.readinto(buf):
                total += k
    return total


_READER = r"""
import os, sys
buf = bytearray(1 << 20)
root = sys.argv[1]
total = 0
for rel in open(sys.argv[2]).read().splitlines():
    with open(os.path.join(root, rel), 'rb', buffering=0) as f:
        while (k := f.readinto(buf)):
            total += k
print(total)
"""


def run_readers(root: Path, groups: list[list[str]], listdir: Path) -> tuple[float, int]:
    """Start one reader process per group at once; return (wall seconds, bytes read)."""
    lists = []
    for i, g in enumerate(groups):
        p = listdir / f"readers-{len(groups)}-{i}.txt"
        p.write_text("\n".join(g))
        lists.append(p)
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-S", "-c", _READER, str(root), str(p)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in lists
    ]
    total = 0
    for p in procs:
        out, _ = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(f"reader exited with {p.returncode}")
        total += int(out)
    return time.monotonic() - t0, total


def daemon_peak_kb(m: Mount) -> int | None:
    from .systems import proc_status_kb

    return proc_status_kb(m.pid, "VmHWM") if m.pid else None


# ---------------------------------------------------------------------------------------------
# the workloads


def _timed_mount(ctx: Ctx, system: System, corpus: Corpus) -> tuple[float, int | None]:
    backing = system.backing(corpus)
    make_cold(ctx, system, backing)
    t0 = time.monotonic()
    m = system.open(backing, ctx.mountpoint(system), read_only=True)
    try:
        os.stat(m.root / corpus.top)
        mount_s = time.monotonic() - t0
        rss = system.rss_kb(m)
    finally:
        system.close(m)
    return mount_s, rss


def w_mount(ctx: Ctx, system: System, corpus: Corpus) -> dict:
    """A first mount (nothing kept from earlier mounts), then the usual one: zipfuse keeps an
    index of the archive between mounts; the other systems' mounts are all first mounts."""
    out: dict = {}
    if system.forget_index(system.backing(corpus)):
        out["mount_first_s"], _ = _timed_mount(ctx, system, corpus)
    mount_s, rss = _timed_mount(ctx, system, corpus)
    out.update(mount_s=mount_s, rss_mb=_mb(rss))
    out.setdefault("mount_first_s", mount_s)
    return out


def w_walk(ctx: Ctx, system: System, corpus: Corpus) -> dict:
    with mounted(ctx, system, system.backing(corpus)) as m:
        t0 = time.monotonic()
        n = walk_lstat(m.root / corpus.top)
        secs = time.monotonic() - t0
    if n != corpus.entries:
        raise RuntimeError(f"walk saw {n} entries, the corpus has {corpus.entries}")
    return {"walk_s": secs, "entries": n}


def w_read_all(ctx: Ctx, system: System, corpus: Corpus) -> dict:
    rels = [r for r, _ in corpus.files()]
    with mounted(ctx, system, system.backing(corpus)) as m:
        t0 = time.monotonic()
        nbytes = read_files(m.root, rels)
        secs = time.monotonic() - t0
        peak = daemon_peak_kb(m)
    if nbytes != corpus.file_bytes:
        raise RuntimeError(f"read {nbytes} bytes, the corpus has {corpus.file_bytes}")
    return {"read_mbps": nbytes / 1e6 / secs, "read_s": secs, "read_peak_rss_mb": _mb(peak)}


def w_warm_walk(ctx: Ctx, system: System, corpus: Corpus) -> dict:
    """Walk twice on one mount and time the second: what the kernel's caches answer alone."""
    with mounted(ctx, system, system.backing(corpus)) as m:
        first = walk_lstat(m.root / corpus.top)
        t0 = time.monotonic()
        n = walk_lstat(m.root / corpus.top)
        secs = time.monotonic() - t0
    if first != corpus.entries or n != corpus.entries:
        raise RuntimeError(f"walks saw {first} and {n} entries, the corpus has {corpus.entries}")
    return {"warm_walk_s": secs, "entries": n}


def w_warm_reread(ctx: Ctx, system: System, corpus: Corpus) -> dict:
    """Read every file twice on one mount and time the second pass (page cache, opens, lookups)."""
    rels = [r for r, _ in corpus.files()]
    with mounted(ctx, system, system.backing(corpus)) as m:
        first = read_files(m.root, rels)
        t0 = time.monotonic()
        nbytes = read_files(m.root, rels)
        secs = time.monotonic() - t0
    if first != corpus.file_bytes or nbytes != corpus.file_bytes:
        raise RuntimeError(f"read {first} and {nbytes} bytes, the corpus has {corpus.file_bytes}")
    return {"reread_mbps": nbytes / 1e6 / secs, "reread_s": secs}


def _python_cmd(m: Mount, corpus: Corpus) -> list[str]:
    # -I: ignore PYTHON* variables and the user site; -B: never write .pyc into the mount.
    return [str(m.root / corpus.meta["python"]), "-I", "-B", "-c", corpus.meta["import_stmt"]]


def _timed_run(cmd: list[str]) -> float:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/root")}
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
    secs = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-2:])} failed: {r.stderr.decode()[-500:]}")
    return secs


def w_import(ctx: Ctx, system: System, corpus: Corpus) -> dict:
    with mounted(ctx, system, system.backing(corpus)) as m:
        cmd = _python_cmd(m, corpus)
        cold = _timed_run(cmd)
        warm = _timed_run(cmd)
        peak = daemon_peak_kb(m)
    return {"cold_s": cold, "warm_s": warm, "import_peak_rss_mb": _mb(peak)}


def _verify_archive(archive: Path, corpus: Corpus, prefix_in_archive: str = "") -> None:
    """Every file, folder and symlink of the corpus is in the archive with the same content."""
    want = {e[0]: e for e in corpus.manifest()}
    with zipfile.ZipFile(archive) as z:
        infos = {i.filename.rstrip("/"): i for i in z.infolist()}
        missing = [p for p in want if prefix_in_archive + p not in infos]
        if missing:
            raise RuntimeError(
                f"{len(missing)} entries missing from the archive, e.g. {missing[0]}"
            )
        sample = random.Random(7).sample(sorted(want), min(200, len(want)))
        for p, e in want.items():
            i = infos[prefix_in_archive + p]
            mode = i.external_attr >> 16
            if e[1] == "f":
                if i.file_size != e[2] or e[3] != i.CRC:
                    raise RuntimeError(f"{p}: size/CRC differ after the round trip")
                if p in sample and zlib.crc32(z.read(i)) != e[3]:
                    raise RuntimeError(f"{p}: content differs after the round trip")
            elif e[1] == "l":
                if (mode & 0o170000) != 0o120000 or z.read(i).decode() != e[3]:
                    raise RuntimeError(f"{p}: symlink not kept")
            elif e[1] == "d" and not i.is_dir():
                raise RuntimeError(f"{p}: not a folder in the archive")


def _verify_tree(root: Path, corpus: Corpus) -> None:
    for p, kind, size, extra in corpus.manifest():
        st = os.lstat(root / p)
        if kind == "f" and st.st_size != size:
            raise RuntimeError(f"{p}: size differs after copy")
        if kind == "l" and os.readlink(root / p) != extra:
            raise RuntimeError(f"{p}: symlink differs after copy")


def w_create(ctx: Ctx, system: System, corpus: Corpus) -> dict:
    scratch = ctx.scratch(system)
    backing = system.new_backing(scratch)
    src = corpus.tree / corpus.top
    prewarm_tree(src)  # the source is read from the page cache by every system
    m = system.open(backing, ctx.mountpoint(system), read_only=False)
    try:
        t0 = time.monotonic()
        # cp keeps symlinks, modes and mtimes; not owners or xattrs (fuse-zip 0.5 has none).
        r = subprocess.run(
            ["cp", "-R", "-P", "--preserve=mode,timestamps", str(src), str(m.root) + "/"],
            capture_output=True,
            timeout=7200,
        )
        copy_s = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError(f"cp failed: {r.stderr.decode()[-500:]}")
        rss_before = daemon_peak_kb(m)
        if system.limit_only:  # nothing is committed: check the copy through the mount
            _verify_tree(m.root, corpus)
    finally:
        res = system.close(m)
    if system.limit_only:
        shutil.rmtree(scratch, ignore_errors=True)
        return {"copy_s": copy_s, "daemon_cpu_s": res.cpu_s, "verified": 1}
    try:
        size = system.backing_bytes(backing)
        if system.name == "disk":
            _verify_tree(backing, corpus)
        else:
            _verify_archive(backing, corpus)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    peak = max(filter(None, (res.peak_rss_kb, rss_before)), default=None)
    return {
        "copy_s": copy_s,
        "commit_s": res.seconds,
        "total_s": copy_s + res.seconds,
        "peak_rss_mb": _mb(peak),
        "daemon_cpu_s": res.cpu_s,
        "archive_mb": size / 1e6,
        "verified": 1,
    }


SMALL_PKG = "zbench_pkg"


def _small_change(root: Path, corpus: Corpus, target: str) -> None:
    """What `pip install` of one small pure-Python wheel does: ~10 new files, one appended."""
    rng = random.Random(42)
    site = (
        root
        / corpus.top
        / "lib"
        / f"python{sys.version_info[0]}.{sys.version_info[1]}"
        / "site-packages"
    )
    pkg = site / SMALL_PKG
    dist = site / f"{SMALL_PKG}-1.0.dist-info"
    pkg.mkdir(parents=True)
    dist.mkdir()
    for i in range(8):
        (pkg / f"mod{i}.py").write_bytes(
            b"".join(b"x%d = %d\n" % (j, rng.randrange(1 << 30)) for j in range(200 * (i + 1)))
        )
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: zbench-pkg\nVersion: 1.0\n")
    (dist / "RECORD").write_text("\n".join(f"{SMALL_PKG}/mod{i}.py,," for i in range(8)) + "\n")
    with open(root / target, "a") as f:
        f.write("# touched by the zipfuse benchmark\n")


def w_small_change(ctx: Ctx, system: System, corpus: Corpus) -> dict:
    scratch = ctx.scratch(system)
    try:
        backing = system.copy_backing(corpus, scratch)
        target = corpus.meta.get("append_target") or _append_target(corpus)
        if system.name == "disk":  # break the hard link before appending
            p = backing / target
            tmp = p.with_name(p.name + ".unlink")
            shutil.copy2(p, tmp)
            tmp.replace(p)
        # The copy just made is dirty in the page cache; a user's archive has long been on disk.
        # Without this, whichever system syncs first (zipfuse's commit, the disk's syncfs) pays
        # for writing the whole copy out, and one that never syncs (fuse-zip) does not.
        os.sync()
        make_cold(ctx, system, backing)
        m = system.open(backing, ctx.mountpoint(system), read_only=False)
        try:
            t0 = time.monotonic()
            _small_change(m.root, corpus, target)
            change_s = time.monotonic() - t0
        finally:
            res = system.close(m)
        if system.name != "disk":
            with zipfile.ZipFile(backing) as z:
                names = set(z.namelist())
                got = z.read(target)
            if not any(SMALL_PKG + "/mod7.py" in n for n in names):
                raise RuntimeError("the new files are not in the committed archive")
            if not got.endswith(b"# touched by the zipfuse benchmark\n"):
                raise RuntimeError("the appended line is not in the committed archive")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "change_s": change_s,
        "change_commit_s": res.seconds,
        "change_total_s": change_s + res.seconds,
    }


def _append_target(corpus: Corpus) -> str:
    files = corpus.files()
    for rel, _ in files:
        if rel.endswith("site-packages/README.txt"):
            return rel
    return next(r for r, s in files if r.endswith(".txt"))


def w_random_read(ctx: Ctx, system: System, corpus: Corpus) -> dict:
    rel = corpus.meta["largest_so"]
    size = corpus.meta["largest_so_bytes"]
    rng = random.Random(4096)
    offsets = [rng.randrange(0, max(size - 4096, 1)) & ~4095 for _ in range(ctx.random_reads)]
    with mounted(ctx, system, system.backing(corpus)) as m:
        t0 = time.monotonic()
        fd = os.open(m.root / rel, os.O_RDONLY)
        try:
            for off in offsets:
                os.pread(fd, 4096, off)
        finally:
            os.close(fd)
        secs = time.monotonic() - t0
    return {"rand_s": secs, "file_mb": size / 1e6}


def _parallel_set(ctx: Ctx, corpus: Corpus) -> list[tuple[str, int]]:
    files = corpus.files()
    total = sum(s for _, s in files)
    if total <= ctx.parallel_cap_bytes:
        return files
    step = total / ctx.parallel_cap_bytes
    return files[:: max(1, round(step))]


def w_parallel_read(ctx: Ctx, system: System, corpus: Corpus) -> dict:
    files = _parallel_set(ctx, corpus)
    # Two groups with about equal bytes and equal file counts.
    halves: list[list[str]] = [[], []]
    sizes = [0, 0]
    for rel, s in sorted(files, key=lambda x: -x[1]):
        i = 0 if sizes[0] <= sizes[1] else 1
        halves[i].append(rel)
        sizes[i] += s
    scratch = ctx.scratch(system)
    try:
        backing = system.backing(corpus)
        with mounted(ctx, system, backing) as m:
            one_s, b1 = run_readers(m.root, [[r for r, _ in files]], scratch)
        with mounted(ctx, system, backing) as m:
            two_s, b2 = run_readers(m.root, halves, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if b1 != b2:
        raise RuntimeError(f"one reader read {b1} bytes, two read {b2}")
    return {"one_s": one_s, "two_s": two_s, "speedup": one_s / two_s, "set_mb": b1 / 1e6}


def w_scale(ctx: Ctx, system: System, corpus: Corpus) -> dict:
    backing = system.backing(corpus)
    first = None
    if system.forget_index(backing):  # see w_mount
        first, _ = _timed_mount(ctx, system, corpus)
    make_cold(ctx, system, backing)
    t0 = time.monotonic()
    m = system.open(backing, ctx.mountpoint(system), read_only=True)
    try:
        os.stat(m.root / corpus.top)
        mount_s = time.monotonic() - t0
        rss = system.rss_kb(m)
        t0 = time.monotonic()
        n = walk_lstat(m.root / corpus.top)
        walk_s = time.monotonic() - t0
    finally:
        system.close(m)
    if n != corpus.entries:
        raise RuntimeError(f"walk saw {n} entries, the corpus has {corpus.entries}")
    return {
        "mount_s": mount_s,
        "mount_first_s": mount_s if first is None else first,
        "walk_s": walk_s,
        "rss_mb": _mb(rss),
    }


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    fn: Callable[[Ctx, System, Corpus], dict]
    corpus: str  # "prefix" or "synthetic" (one sample per synthetic size)
    writes: bool
    models: str  # what it stands for, for a conda user
    for_limit: bool = True  # meaningful for a limit_only system (floor): no timed mount, no commit


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "mount",
            w_mount,
            "prefix",
            False,
            "activating an environment: time until the mount answers, and the memory it holds",
            for_limit=False,
        ),
        Workload(
            "walk",
            w_walk,
            "prefix",
            False,
            "conda list / pip freeze / find / du: metadata of every file",
        ),
        Workload(
            "warm_walk",
            w_warm_walk,
            "prefix",
            False,
            "the second conda list / find in a session: metadata the kernel may have cached",
        ),
        Workload(
            "read_all",
            w_read_all,
            "prefix",
            False,
            "a backup, a checksum pass or a virus scan over the environment",
        ),
        Workload(
            "warm_reread",
            w_warm_reread,
            "prefix",
            False,
            "files read again in one session (a second scan, a rebuilt index, re-run tests)",
        ),
        Workload(
            "import",
            w_import,
            "prefix",
            False,
            "starting a Python program from the environment (first and second time)",
        ),
        Workload(
            "random_read",
            w_random_read,
            "prefix",
            False,
            "a big shared library being paged in at random offsets (mmap of a .so)",
        ),
        Workload(
            "parallel_read",
            w_parallel_read,
            "prefix",
            False,
            "two jobs of an array using the same environment at once",
        ),
        Workload(
            "create",
            w_create,
            "prefix",
            True,
            "conda create / unpacking a whole environment into a new archive",
        ),
        Workload(
            "small_change",
            w_small_change,
            "prefix",
            True,
            "pip install of one small package into an existing environment, then deactivate",
            for_limit=False,
        ),
        Workload(
            "scale",
            w_scale,
            "synthetic",
            False,
            "how mount and walk grow with the number of entries (small to huge environments)",
            for_limit=False,
        ),
    )
}
DEFAULT_WORKLOADS = tuple(WORKLOADS)
