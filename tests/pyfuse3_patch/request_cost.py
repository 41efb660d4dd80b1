"""Cost of one FUSE request through pyfuse3: wall time and daemon CPU per request, on kcfs.

    python tests/pyfuse3_patch/request_cost.py PYTHON [PYTHON ...] [--n 2000] [--reps 3]

Each PYTHON is an interpreter (or ``env PYTHONPATH=... python`` wrapper script) whose pyfuse3 is
measured; they run interleaved per repetition. The workload is N ``os.listdir`` of one directory
in kcfs's stock mode (open/opendir implemented, nothing cached by the kernel), so every listing
sends OPENDIR, READDIRPLUS (twice) and RELEASEDIR and every handler answers without awaiting:
what is measured is pyfuse3's request loop, not a filesystem. Prints medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from measure import Daemon  # the script's folder is on sys.path


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(python: str, n: int, work: Path) -> tuple[float, float]:
    """(wall us, daemon CPU us) per request for n listings."""
    args = argparse.Namespace(dirs=3, files=3, size=1000)
    d = Daemon(python, [], work, args)
    try:
        target = d.mnt / "d0001"
        os.listdir(target)
        r0, c0, t0 = d.requests(), _cpu(d.proc.pid), time.perf_counter()
        for _ in range(n):
            os.listdir(target)
        wall = time.perf_counter() - t0
        cpu = _cpu(d.proc.pid) - c0
        time.sleep(0.2)  # RELEASEDIR follows close asynchronously
        requests = d.requests() - r0 - 1  # the stats request itself is no FUSE request
        return 1e6 * wall / requests, 1e6 * cpu / requests
    finally:
        d.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("python", nargs="+")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    res: dict[str, list[tuple[float, float]]] = {p: [] for p in args.python}
    with tempfile.TemporaryDirectory(prefix="request-cost-") as tmp:
        for rep in range(args.reps):
            for i, py in enumerate(args.python):
                work = Path(tmp) / f"{rep}-{i}"
                work.mkdir()
                res[py].append(one(py, args.n, work))
    print(f"load average {os.getloadavg()[0]:.1f}; {args.n} listings x {args.reps} reps")
    for py, samples in res.items():
        wall = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        print(f"{wall:7.1f} us/request wall {cpu:7.1f} us/request daemon CPU  {py}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
