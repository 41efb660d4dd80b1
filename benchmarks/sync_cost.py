"""Cost of one small commit: bytes the daemon writes and wall time of ``zipfuse sync`` after a
one-line change to a file of a large archive (issue 14, O(change) commit).

    python benchmarks/sync_cost.py SRC ARCHIVE WORKDIR LABEL [FILE_IN_ARCHIVE] [--busy]

SRC is the checkout whose ``zipfuse`` package runs (compare two checkouts: the rewrite and the
append in place). The archive is copied into WORKDIR, mounted read-write, and three rounds of
"append one line to FILE, zipfuse sync" are measured with /proc/PID/io write_bytes of the
daemon before and after each sync. Standalone: not part of ``python -m benchmarks``. Run it
from a directory outside both checkouts (``python -m`` puts the current directory first).

``--busy``: another process keeps writing to a file in $TMPDIR (where the spill area is) during
each round, from before the change until the sync returns, and each round waits 3.5 s so the
daemon's periodic flush runs meanwhile: a shared node whose /tmp someone else is filling.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def _neighbour() -> tuple[subprocess.Popen, str]:
    """Someone else's writer on the spill area's filesystem."""
    fd, path = tempfile.mkstemp(prefix="sync-cost-neighbour-")
    os.close(fd)
    dd = ["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=20000"]
    return subprocess.Popen(dd, stderr=subprocess.DEVNULL), path


def main() -> None:
    busy = "--busy" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--busy"]
    src, archive, work, label = args[:4]
    inner = args[4] if len(args) > 4 else "3.11.7/lib/python3.11/os.py"
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
            neighbour = _neighbour() if busy else None
            try:
                with open(os.path.join(mnt, inner), "a") as f:
                    f.write(f"# one more line {n}\n")
                time.sleep(3.5 if busy else 1)
                before = written()
                t0 = time.monotonic()
                subprocess.run([*cmd, "sync", mnt], check=True, env=env)
                dt = time.monotonic() - t0
            finally:
                if neighbour is not None:
                    neighbour[0].kill()
                    neighbour[0].wait()
                    os.unlink(neighbour[1])
            delta = written() - before
            what = f"{label} (busy neighbour)" if busy else label
            print(
                f"{what} round {n}: sync {dt:.3f} s, daemon write_bytes {delta} "
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
