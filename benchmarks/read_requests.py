"""Which FUSE requests does a read workload send a fresh read-only zipfuse mount, and whose CPU
does it cost?

``python -m benchmarks.read_requests ARCHIVE STEP [--no-trace]`` mounts ARCHIVE read-only,
runs STEP on it while ``perf record`` captures the kernel's fuse request tracepoints (as
``benchmarks.fuse_requests`` does for copy-in), unmounts, and prints the wall time, the
daemon's user and system CPU, the CPU of the process doing the work, and per opcode: count,
mean and total time from request to reply (for READ also percentiles). STEP:

- ``walk``: lstat every entry (the benchmark's cold walk);
- ``read``: read every regular file once (the paths come from the archive itself);
- ``reread``: the same, timing the second pass only;
- ``cmd:COMMAND``: run COMMAND in a shell, MNT replaced by the mountpoint (e.g.
  ``"cmd:MNT/env/bin/python3.11 -I -B -c 'import numpy'"``); ``--before COMMAND`` runs one
  untimed first (a warm run).

The archive is read into the page cache first. ZIPFUSE_KERNEL_CACHE=0 gives the stock mode.
Needs perf with the fuse tracepoints (Linux >= 6.16) and root, unless ``--no-trace``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from .fuse_requests import kernel_dev, parse
from .workloads import read_files, walk_lstat


def _cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _files(archive: str) -> list[str]:
    with zipfile.ZipFile(archive) as z:
        return [
            i.filename
            for i in z.infolist()
            if not i.is_dir() and (i.external_attr >> 28) in (0, 0o10)  # regular (or no mode)
        ]


def _run(step: str, mnt: Path, files: list[str]) -> int:
    if step == "walk":
        return walk_lstat(mnt)
    if step in ("read", "reread"):
        return read_files(mnt, files)
    subprocess.run(step.removeprefix("cmd:").replace("MNT", str(mnt)), shell=True, check=True)
    return 1


def _at(ordered: list[float], p: float) -> float:
    """The ``p`` quantile of sorted latencies, in microseconds."""
    return 1e6 * ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _table(lat: dict[str, list[float]]) -> list[str]:
    rows = [f"{'opcode':<22}{'count':>8}{'mean us':>10}{'total ms':>10}"]
    for op, v in sorted(lat.items(), key=lambda kv: -len(kv[1])):
        done = sorted(x for x in v if x == x)  # FORGET has no reply
        mean = 1e6 * sum(done) / len(done) if done else float("nan")
        rows.append(f"{op:<22}{len(v):>8}{mean:>10.0f}{1e3 * sum(done):>10.0f}")
        if op == "FUSE_READ" and done:
            p50, p90, p99 = (_at(done, p) for p in (0.5, 0.9, 0.99))
            rows.append(
                f"  READ us: p50 {p50:.0f}, p90 {p90:.0f}, p99 {p99:.0f}, max "
                f"{1e6 * done[-1]:.0f}; the 10 slowest take {1e3 * sum(done[-10:]):.0f} ms"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive")
    ap.add_argument("step", help="walk, read, reread or cmd:COMMAND")
    ap.add_argument("--before", help="a command run untimed first (MNT: the mountpoint)")
    ap.add_argument("--no-trace", action="store_true", help="only time it (no perf)")
    args = ap.parse_args(argv)
    if args.step not in ("walk", "read", "reread") and not args.step.startswith("cmd:"):
        ap.error("STEP is walk, read, reread or cmd:COMMAND")

    import zipfuse.api as api

    archive = os.path.realpath(args.archive)
    files = _files(archive) if args.step in ("read", "reread") else []
    work = Path(tempfile.mkdtemp(prefix="read-requests-", dir=os.environ.get("TMPDIR")))
    mnt = work / "mnt"
    mnt.mkdir()
    with open(archive, "rb") as f:  # the archive comes from the page cache
        while f.read(1 << 20):
            pass
    perf = None
    try:
        info = api.mount(archive, str(mnt), read_only=True)
        try:
            if args.before:
                subprocess.run(args.before.replace("MNT", str(mnt)), shell=True, check=True)
            if args.step == "reread":
                read_files(mnt, files)
            if not args.no_trace:
                perf = subprocess.Popen(
                    ["perf", "record", "-q", "-a", "-e", "fuse:fuse_request_send",
                     "-e", "fuse:fuse_request_end", "-o", str(work / "perf.data")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(3.0)  # perf needs a moment before it records
            d0, w0, t0 = _cpu(info.pid), os.times(), time.monotonic()
            n = _run(args.step, mnt, files)
            secs = time.monotonic() - t0
            d1, w1 = _cpu(info.pid), os.times()
            if perf is not None:
                time.sleep(0.5)
                perf.send_signal(2)
                perf.wait(60)
            conn = kernel_dev(str(mnt))
        finally:
            if perf is not None and perf.poll() is None:
                perf.kill()
                perf.wait()
            api.unmount(str(mnt))
        worker = (w1.user - w0.user + w1.children_user - w0.children_user,
                  w1.system - w0.system + w1.children_system - w0.children_system)  # fmt: skip
        mode = os.environ.get("ZIPFUSE_KERNEL_CACHE", "auto")
        print(
            f"{args.step} (ZIPFUSE_KERNEL_CACHE={mode}): {secs:.2f} s, {n} "
            f"{'bytes' if args.step in ('read', 'reread') else 'entries'}; daemon CPU user "
            f"{d1[0] - d0[0]:.2f} s, system {d1[1] - d0[1]:.2f} s; the workload's own CPU user "
            f"{worker[0]:.2f} s, system {worker[1]:.2f} s"
        )
        if not args.no_trace:
            script = subprocess.run(
                ["perf", "script", "-i", str(work / "perf.data")],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            print("\n".join(_table(parse(script, conn))))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
