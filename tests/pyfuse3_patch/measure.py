"""Requests and time per workload on kcfs: stock mode vs kernel-cache mode vs tmpfs.

    python tests/pyfuse3_patch/measure.py [--dirs 200] [--files 100] [--size 1000] [--reps 3]
        [--stock-python PATH]   # also run stock mode under a venv with stock pyfuse3

Each repetition mounts afresh and runs, in this order: cold walk, warm walk (the same walk
again), cold read-all, warm re-read, 1000 x os.open+os.read+os.close of one file and 1000 x
Python open().read() of it. Walk and read-all are benchmarks.workloads.walk_lstat/read_files.
Requests are the daemon's handler calls (FORGET excluded). Modes run interleaved per repetition;
the table shows medians. Scratch goes to a private mkdtemp directory (tmpfs tree in /dev/shm).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # a script run from the checkout: benchmarks/ is not installed
from benchmarks.workloads import read_files, walk_lstat  # noqa: E402

KCFS = Path(__file__).with_name("kcfs.py")
MODES = {
    "stock": [],
    "kernel-cache": ["--no-open", "--no-opendir", "--no-atomic-trunc"],
    # what a read-only mount could add: no writeback cache (each close then marks st_blocks
    # stale, so the next stat/fstat sends GETATTR) and ro (a read/readdir marks atime stale)
    "kernel-cache ro": ["--no-open", "--no-opendir", "--no-writeback", "--ro"],
}


class Daemon:
    def __init__(self, python: str, flags: list[str], work: Path, args) -> None:
        self.mnt = work / "mnt"
        self.mnt.mkdir(exist_ok=True)
        self.stats_path = work / "stats.json"
        self.stats_path.unlink(missing_ok=True)
        cmd = [python, str(KCFS), str(self.mnt), "--stats", str(self.stats_path), *flags]
        cmd += ["--dirs", str(args.dirs), "--files", str(args.files), "--size", str(args.size)]
        self.proc = subprocess.Popen(cmd)
        self.seq = 0
        deadline = time.monotonic() + 60
        while not (os.path.ismount(self.mnt) and self.stats_path.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("kcfs did not mount")
            time.sleep(0.05)

    def requests(self) -> int:
        self.seq += 1
        self.proc.send_signal(signal.SIGUSR1)
        while True:
            try:
                doc = json.loads(self.stats_path.read_text())
                if doc["seq"] >= self.seq:
                    return sum(v for k, v in doc["counts"].items() if k != "forget")
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.01)

    def close(self) -> None:
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", str(self.mnt)], timeout=60)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], timeout=60)
            self.proc.kill()
            self.proc.wait(timeout=60)


def make_tmpfs_tree(root: Path, args) -> None:
    payload = (bytes(range(256)) * (args.size // 256 + 1))[: args.size]
    for d in range(args.dirs):
        dd = root / f"d{d:04d}"
        dd.mkdir()
        for f in range(args.files):
            (dd / f"f{f:04d}").write_bytes(payload)
    (root / "existing").write_bytes(b"0123456789" * 10)


def file_list(root: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(dp, f), root) for dp, _, fs in os.walk(root) for f in fs
    )


def os_open_read_close(path: Path, n: int) -> None:
    for _ in range(n):
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 1 << 16)
        os.close(fd)


def py_open_read(path: Path, n: int) -> None:
    for _ in range(n):
        with open(path, "rb") as f:
            f.read()


def run_steps(root: Path, rels: list[str], count) -> dict[str, tuple[float, int | None]]:
    one = root / "d0000" / "f0000"
    steps = [
        ("walk cold", lambda: walk_lstat(root)),
        ("walk warm", lambda: walk_lstat(root)),
        ("read-all cold", lambda: read_files(root, rels)),
        ("re-read warm", lambda: read_files(root, rels)),
        ("1000 os.open+read+close", lambda: os_open_read_close(one, 1000)),
        ("1000 Python open().read()", lambda: py_open_read(one, 1000)),
    ]
    out = {}
    for name, fn in steps:
        before = count()
        t0 = time.perf_counter()
        fn()
        secs = time.perf_counter() - t0
        after = count()
        out[name] = (secs, None if before is None else after - before)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dirs", type=int, default=200)
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--stock-python", help="python of a venv with stock pyfuse3")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kcfs-measure-"))
    shm = Path(tempfile.mkdtemp(prefix="kcfs-tmpfs-", dir="/dev/shm"))
    systems = {"tmpfs": None, **{m: (sys.executable, f) for m, f in MODES.items()}}
    if args.stock_python:
        systems["stock (stock pyfuse3)"] = (args.stock_python, [])
    results: dict[str, dict[str, list[tuple[float, int | None]]]] = {s: {} for s in systems}
    try:
        make_tmpfs_tree(shm, args)
        rels = file_list(shm)
        names = list(systems)
        for rep in range(args.reps):
            for sname in names[rep % len(names) :] + names[: rep % len(names)]:
                if systems[sname] is None:
                    got = run_steps(shm, rels, lambda: None)
                else:
                    python, flags = systems[sname]
                    d = Daemon(python, flags, work, args)
                    try:
                        got = run_steps(d.mnt, rels, d.requests)
                    finally:
                        d.close()
                for step, v in got.items():
                    results[sname].setdefault(step, []).append(v)
                print(f"rep {rep + 1} {sname}: done", file=sys.stderr)
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    steps = list(results["tmpfs"])
    print(f"kcfs: {args.dirs} dirs x {args.files} files of {args.size} B; medians of {args.reps}")
    print("| workload | " + " | ".join(systems) + " |")
    print("|---" * (len(systems) + 1) + "|")
    for step in steps:
        base = statistics.median(s for s, _ in results["tmpfs"][step])
        cells = []
        for sname in systems:
            secs = statistics.median(s for s, _ in results[sname][step])
            reqs = [r for _, r in results[sname][step] if r is not None]
            cell = f"{secs:.3f} s"
            if sname != "tmpfs":
                cell += f" ({secs / base:.1f}x, {int(statistics.median(reqs)):,} req)"
            cells.append(cell)
        print(f"| {step} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
