"""Longest stall a writer sees while a large commit runs (issue 14, writers during a commit).

    python benchmarks/commit_stall.py SRC WORKDIR LABEL [MEGABYTES]

SRC is the checkout whose ``zipfuse`` package runs (compare two checkouts). An empty archive is
mounted read-write, MEGABYTES (default 1200) of incompressible data are written into it as
12 MB files, then ``zipfuse sync`` runs while a writer creates a 4 KB file, writes it and
fsyncs it in a loop; every operation's latency is recorded. Printed: the commit's duration,
how many writer operations completed during it, and the longest single operation (the stall).
Standalone: not part of ``python -m benchmarks``. Run it from a directory outside both
checkouts (``python -m`` puts the current directory first).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile

FILE_MB = 12


def main() -> None:
    src, work, label = sys.argv[1:4]
    total_mb = int(sys.argv[4]) if len(sys.argv) > 4 else 1200
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [sys.executable, "-m", "zipfuse"]
    os.makedirs(work, mode=0o700, exist_ok=True)
    arch = os.path.join(work, f"{label}.zip")
    with zipfile.ZipFile(arch, "w") as z:
        z.writestr("README", "commit stall benchmark\n")
    mnt = os.path.join(work, f"mnt-{label}")
    os.makedirs(mnt, exist_ok=True)
    subprocess.run([*cmd, "mount", arch, mnt], check=True, env=env, timeout=60)
    try:
        block = os.urandom(1 << 20)
        os.makedirs(os.path.join(mnt, "data"), exist_ok=True)
        for i in range(total_mb // FILE_MB):
            with open(os.path.join(mnt, "data", f"f{i:04d}.bin"), "wb") as f:
                for _ in range(FILE_MB):
                    f.write(block)
        os.makedirs(os.path.join(mnt, "during"), exist_ok=True)
        os.sync()  # the spill files' writeback is not the commit's: let it end first
        lat: list[tuple[float, float]] = []  # (start, seconds) of each writer operation
        stop = threading.Event()

        def writer() -> None:
            n = 0
            while not stop.is_set():
                t0 = time.monotonic()
                with open(os.path.join(mnt, "during", f"w{n:06d}"), "wb") as f:
                    f.write(b"x" * 4096)
                    os.fsync(f.fileno())
                lat.append((t0, time.monotonic() - t0))
                n += 1
                time.sleep(0.01)

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(1)
        t0 = time.monotonic()
        subprocess.run([*cmd, "sync", mnt], check=True, env=env, timeout=1800)
        t1 = time.monotonic()
        time.sleep(0.5)
        stop.set()
        thread.join()
        during = [d for s, d in lat if s + d >= t0 and s <= t1]
        worst = max(during, default=float("nan"))
        at = next((s - t0 for s, d in lat if d == worst), float("nan"))
        print(
            f"{label}: commit of {total_mb} MB took {t1 - t0:.1f} s; writer ops during it: "
            f"{len(during)}, longest {worst:.3f} s (began {at:+.1f} s into the commit), "
            f"median {sorted(during)[len(during) // 2] if during else float('nan'):.4f} s",
            flush=True,
        )
    finally:
        subprocess.run([*cmd, "unmount", mnt], env=env, timeout=1800)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
