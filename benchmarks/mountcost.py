"""Mount cost of one archive: time until the mount is usable and the daemon's memory after it.

    python -m benchmarks.mountcost ARCHIVE [--reps 3] [--systems zipfuse,fuse-zip] [--walk]
    python -m benchmarks.mountcost ARCHIVE --commit     # read-write: add one file, unmount
    python -m benchmarks.mountcost --make-flat N OUT.zip   # N empty files, 1,000 per folder
    python -m benchmarks.mountcost --make-deep DEPTH OUT.zip  # one file DEPTH folders deep

zipfuse is timed through its CLI (``python -m zipfuse mount``: interpreter start, imports, parsing,
fork, FUSE init), fuse-zip in the foreground until the mountpoint appears; samples alternate
between systems. ``mount_cpu_s`` is the CPU time spent until the mount is ready (the CLI process
plus the daemon; for fuse-zip its process): on a loaded machine it is steadier than wall time.
RSS is VmRSS/VmHWM of the daemon from /proc right after the mount (and after the
walk with ``--walk``); ``--commit`` reports the unmount (commit) time, the daemon's peak RSS
sampled until it exits, and the size of the committed archive. Scratch mountpoints live in a
private folder made by ``tempfile.mkdtemp`` under ``--scratch`` (default: beside the archive).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from .systems import (
    HwmSampler,
    fusermount_u,
    pid_alive,
    proc_cpu_seconds,
    proc_status_kb,
    wait_mounted,
)

ZIPFUSE = [sys.executable, "-m", "zipfuse"]


def _zipfuse_pid(mp: Path) -> int:
    out = subprocess.run([*ZIPFUSE, "status", "--json"], capture_output=True, text=True, timeout=30)
    for rec in json.loads(out.stdout):
        if os.path.realpath(rec["mountpoint"]) == os.path.realpath(mp):
            return int(rec["pid"])
    raise RuntimeError(f"no zipfuse daemon for {mp}")


def _walk(mp: Path) -> int:
    return sum(len(d) + len(f) for _, d, f in os.walk(mp))


def _rss(pid: int) -> tuple[int, int]:
    return proc_status_kb(pid, "VmRSS") or 0, proc_status_kb(pid, "VmHWM") or 0


def zipfuse_sample(
    archive: Path, mp: Path, walk: bool, commit: bool, launcher: list[str] = ZIPFUSE
) -> dict:
    args = [*launcher, "mount"] + ([] if commit else ["-r"]) + [str(archive), str(mp)]
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.monotonic() - t0
    if status:
        return {"error": p.stderr.read().decode().strip()}
    pid = _zipfuse_pid(mp)
    cpu = usage.ru_utime + usage.ru_stime + (proc_cpu_seconds(pid) or 0)
    out = {"mount_s": secs, "mount_cpu_s": cpu}
    out["rss_mb"], out["hwm_mb"] = (v / 1024 for v in _rss(pid))
    try:
        if walk:
            t0 = time.monotonic()
            out["walk_entries"] = _walk(mp)
            out["walk_s"] = time.monotonic() - t0
            out["rss_after_walk_mb"] = _rss(pid)[0] / 1024
        if commit:
            (mp / "zz-added-by-mountcost").write_bytes(b"x")
    finally:
        t0 = time.monotonic()
        with HwmSampler(pid, interval=0.01) as s:
            subprocess.run([*ZIPFUSE, "unmount", str(mp)], check=True, timeout=3600)
            while pid_alive(pid):
                time.sleep(0.005)
    if commit:
        out["commit_s"] = time.monotonic() - t0
        out["commit_peak_mb"] = (s.peak or 0) / 1024
        out["archive_mb"] = archive.stat().st_size / 1e6
    return out


def fusezip_sample(archive: Path, mp: Path, walk: bool, commit: bool) -> dict:
    args = ["fuse-zip", "-f"] + ([] if commit else ["-r"]) + [str(archive), str(mp)]
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_mounted(mp, p, timeout=900)
        out = {"mount_s": time.monotonic() - t0, "mount_cpu_s": proc_cpu_seconds(p.pid) or 0}
        out["rss_mb"], out["hwm_mb"] = (v / 1024 for v in _rss(p.pid))
        if walk:
            t0 = time.monotonic()
            out["walk_entries"] = _walk(mp)
            out["walk_s"] = time.monotonic() - t0
            out["rss_after_walk_mb"] = _rss(p.pid)[0] / 1024
        if commit:
            (mp / "zz-added-by-mountcost").write_bytes(b"x")
    finally:
        t0 = time.monotonic()
        with HwmSampler(p.pid, interval=0.01) as s:
            fusermount_u(mp)
            p.wait(timeout=3600)
    if commit:
        out["commit_s"] = time.monotonic() - t0
        out["commit_peak_mb"] = (s.peak or 0) / 1024
        out["archive_mb"] = archive.stat().st_size / 1e6
    return out


def make_flat(n: int, out: Path) -> None:
    """``n`` empty stored files, 1,000 per folder (names like d0042/f000123)."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for i in range(n):
            z.writestr(f"d{i // 1000:04d}/f{i:07d}", b"")


def make_deep(depth: int, out: Path) -> None:
    """One small file ``depth`` one-letter folders deep (implicit folders, no entries)."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("a/" * depth + "f", b"deep\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive", type=Path, nargs="?")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--systems", default="zipfuse,fuse-zip")
    ap.add_argument("--walk", action="store_true", help="also walk the whole tree after mounting")
    ap.add_argument("--commit", action="store_true", help="read-write: add a file and commit")
    ap.add_argument("--scratch", type=Path, default=None)
    ap.add_argument("--make-flat", type=int, metavar="N")
    ap.add_argument("--make-deep", type=int, metavar="DEPTH")
    ap.add_argument(
        "--compare",
        metavar="SCRIPT",
        help="system 'zipfuse-compare': mount with `python SCRIPT mount ...` (another version)",
    )
    a = ap.parse_args()
    if a.make_flat or a.make_deep:
        (make_flat if a.make_flat else make_deep)(a.make_flat or a.make_deep, a.archive)
        print(f"{a.archive}: {a.archive.stat().st_size} bytes")
        return
    scratch = Path(tempfile.mkdtemp(prefix="mountcost-", dir=a.scratch or a.archive.parent))
    samplers = {"zipfuse": zipfuse_sample, "fuse-zip": fusezip_sample}
    if a.compare:
        other = [sys.executable, a.compare]
        samplers["zipfuse-compare"] = lambda *args: zipfuse_sample(*args, launcher=other)
    results: dict[str, list[dict]] = {}
    try:
        for rep in range(a.reps):
            for name in a.systems.split(","):
                mp = scratch / f"mp-{name}"
                mp.mkdir(exist_ok=True)
                archive = a.archive
                if a.commit:  # never modify the source archive
                    archive = scratch / f"{name}-{rep}.zip"
                    shutil.copyfile(a.archive, archive)
                res = samplers[name](archive, mp, a.walk, a.commit)
                if a.commit:
                    archive.unlink()
                results.setdefault(name, []).append(res)
                print(name, rep, {k: round(v, 3) if isinstance(v, float) else v
                                  for k, v in res.items()}, flush=True)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name, runs in results.items():
        keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
        med = {k: round(statistics.median(r[k] for r in runs if k in r), 3) for k in keys}
        print(f"median {name}: {med}")


if __name__ == "__main__":
    main()
