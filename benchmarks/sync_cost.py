"""Cost of one small commit: bytes the daemon writes and wall time of ``zipfuse sync`` after a
one-line change to a file of a large archive (issue 14, O(change) commit).

    python benchmarks/sync_cost.py SRC ARCHIVE WORKDIR LABEL [FILE_IN_ARCHIVE]

SRC is the checkout whose ``zipfuse`` package runs (compare two checkouts: the rewrite and the
append in place). The archive is copied into WORKDIR, mounted read-write, and three rounds of
"append one line to FILE, zipfuse sync" are measured with /proc/PID/io write_bytes of the
daemon before and after each sync. Standalone: not part of ``python -m benchmarks``. Run it
from a directory outside both checkouts (``python -m`` puts the current directory first).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time


def main() -> None:
    src, archive, work, label = sys.argv[1:5]
    inner = sys.argv[5] if len(sys.argv) > 5 else "3.11.7/lib/python3.11/os.py"
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [sys.executable, "-m", "zipfuse"]
    os.makedirs(work, exist_ok=True)
    arch = os.path.join(work, f"{label}.zip")
    shutil.copy(archive, arch)
    with open(arch, "rb+") as f:  # else the first sync's fsync writes the whole copy
        os.fsync(f.fileno())
    mnt = os.path.join(work, f"mnt-{label}")
    os.makedirs(mnt, exist_ok=True)
    subprocess.run([*cmd, "mount", arch, mnt], check=True, env=env)
    try:
        out = subprocess.run(
            [*cmd, "status", "--json"], check=True, env=env, capture_output=True, text=True
        )
        pid = next(m["pid"] for m in json.loads(out.stdout) if m["mountpoint"] == mnt)

        def written() -> int:
            with open(f"/proc/{pid}/io") as f:
                return int(next(ln for ln in f if ln.startswith("write_bytes")).split()[1])

        for n in range(3):
            with open(os.path.join(mnt, inner), "a") as f:
                f.write(f"# one more line {n}\n")
            time.sleep(1)
            before = written()
            t0 = time.monotonic()
            subprocess.run([*cmd, "sync", mnt], check=True, env=env)
            dt = time.monotonic() - t0
            delta = written() - before
            print(
                f"{label} round {n}: sync {dt:.3f} s, daemon write_bytes {delta} "
                f"({delta / 1e6:.2f} MB), archive {os.path.getsize(arch) / 1e6:.1f} MB, "
                f"inode {os.stat(arch).st_ino}",
                flush=True,
            )
    finally:
        subprocess.run([*cmd, "unmount", mnt], env=env)
    subprocess.run(["unzip", "-tq", arch], check=True)
    os.unlink(arch)


if __name__ == "__main__":
    main()
