"""Which FUSE requests does copying a tree into zipfuse cost, and how long does each take?

``python -m benchmarks.fuse_requests [SRC] [--out DIR] [--count-only]`` mounts an empty archive
with zipfuse, copies SRC into it the way the ``create`` workload does (``cp -R -P
--preserve=mode,timestamps``) while ``perf record`` captures the kernel's ``fuse:fuse_request_send``
and ``fuse:fuse_request_end`` tracepoints, then unmounts (commit included, not traced) and prints,
per opcode: the number of requests, requests per new entry, and the mean and total time from the
kernel sending the request until the daemon's reply arrived. Only requests of this mount's
connection are counted (other FUSE mounts on the machine are ignored).

SRC defaults to numpy inside the prefix corpus. ZIPFUSE_KERNEL_CACHE=0 in the environment gives
the stock mode (the daemon inherits it). Needs perf with the fuse tracepoints (Linux >= 6.16)
and root.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SRC = (
    "/var/tmp/zipfuse-bench/corpus/prefix-full/tree/env/lib/python3.11/site-packages/numpy"
)
_EVENT = re.compile(
    r"\s(\d+\.\d+):\s+fuse:fuse_request_(send|end):\s+connection (\d+) req (\d+)"
    r"(?: opcode \d+ \((\w+)\))?"
)


def kernel_dev(path: str) -> int:
    """The connection number the tracepoints print: the kernel's dev_t of the mount."""
    st = os.stat(path)
    return (os.major(st.st_dev) << 20) | os.minor(st.st_dev)


def parse(script: str, connection: int) -> dict[str, list[float]]:
    """opcode -> latencies (seconds) of the requests of one connection."""
    sent: dict[int, tuple[str, float]] = {}
    out: dict[str, list[float]] = collections.defaultdict(list)
    for line in script.splitlines():
        m = _EVENT.search(line)
        if not m or int(m.group(3)) != connection:
            continue
        ts, kind, unique = float(m.group(1)), m.group(2), int(m.group(4))
        if kind == "send":
            sent[unique] = (m.group(5) or "?", ts)
        elif unique in sent:
            op, t0 = sent.pop(unique)
            out[op].append(ts - t0)
    for op, _ in sent.values():  # no reply seen (FORGET has none)
        out[op].append(float("nan"))
    return out


def table(lat: dict[str, list[float]], entries: int, seconds: float) -> str:
    total = sum(len(v) for v in lat.values())
    rows = [
        f"copy of {entries} entries in {seconds:.2f} s: {total} requests, "
        f"{total / max(entries, 1):.2f} per entry",
        f"{'opcode':<22}{'count':>8}{'/entry':>8}{'mean us':>10}{'total ms':>10}",
    ]
    for op, v in sorted(lat.items(), key=lambda kv: -len(kv[1])):
        done = [x for x in v if x == x]
        mean = 1e6 * sum(done) / len(done) if done else float("nan")
        rows.append(
            f"{op:<22}{len(v):>8}{len(v) / max(entries, 1):>8.2f}{mean:>10.0f}"
            f"{1e3 * sum(done):>10.0f}"
        )
    return "\n".join(rows)


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="?", default=DEFAULT_SRC)
    ap.add_argument("--out", type=Path, default=None, help="keep perf.data and the table here")
    ap.add_argument("--no-trace", action="store_true", help="only time the copy (no perf)")
    args = ap.parse_args(argv)

    import zipfuse.api as api

    src = Path(args.src)
    entries = sum(1 + len(d) + len(f) for _, d, f in os.walk(src))
    work = Path(tempfile.mkdtemp(prefix="fuse-requests-", dir=os.environ.get("TMPDIR")))
    out = args.out or work
    out.mkdir(parents=True, exist_ok=True)
    archive, mnt = work / "new.zip", work / "mnt"
    mnt.mkdir()
    for root, _, files in os.walk(src):  # the source comes from the page cache
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                with open(p, "rb") as fh:
                    while fh.read(1 << 20):
                        pass
    info = api.mount(str(archive), str(mnt))
    perf = None
    try:
        conn = kernel_dev(str(mnt))
        data = out / "perf.data"
        perf = None if args.no_trace else subprocess.Popen(
            ["perf", "record", "-q", "-a", "-e", "fuse:fuse_request_send",
             "-e", "fuse:fuse_request_end", "-o", str(data)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if perf is not None:
            time.sleep(3.0)  # perf needs a moment before it records
        cpu0 = _cpu(info.pid)
        t0 = time.monotonic()
        subprocess.run(
            ["cp", "-R", "-P", "--preserve=mode,timestamps", str(src), str(mnt) + "/"], check=True
        )
        seconds = time.monotonic() - t0
        cpu = _cpu(info.pid) - cpu0
        if perf is not None:
            time.sleep(0.5)
            perf.send_signal(2)
            perf.wait(60)
            perf = None
    finally:
        if perf is not None:
            perf.kill()
            perf.wait()
        api.unmount(str(mnt))
    if args.no_trace:
        print(
            f"copy of {entries} entries in {seconds:.2f} s (not traced); "
            f"daemon CPU {cpu:.2f} s = {1e6 * cpu / entries:.0f} us per entry"
        )
        if args.out is None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        return 0
    script = subprocess.run(
        ["perf", "script", "-i", str(data)], capture_output=True, text=True, check=True
    ).stdout
    mode = os.environ.get("ZIPFUSE_KERNEL_CACHE", "auto")
    text = (
        f"ZIPFUSE_KERNEL_CACHE={mode}, src {src}\n"
        + table(parse(script, conn), entries, seconds)
        + f"\ndaemon CPU during the copy {cpu:.2f} s = {1e6 * cpu / entries:.0f} us per entry"
    )
    print(text)
    (out / "requests.txt").write_text(text + "\n")
    if args.out is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
