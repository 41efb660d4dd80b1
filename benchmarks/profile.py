"""Where does the zipfuse daemon spend its time? Sample it with py-spy during one workload step.

``python -m benchmarks profile [--step walk|import|read_all|mount] [--quick] [--out DIR]``
mounts the prefix corpus read-only with zipfuse, attaches ``py-spy record`` to the daemon, runs
the step, and prints the functions with the most samples (self and inclusive). The raw collapsed
stacks are kept in DIR/profile-STEP.txt (load them into any flame-graph viewer).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from . import corpus as corpora
from .systems import Zipfuse, is_mounted, prewarm_file
from .workloads import _python_cmd, _timed_run, read_files, walk_lstat

_LINE = re.compile(r" \(([^)]*?):\d+\)")


def _frame_key(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"
    m = _LINE.search(frame)
    if not m:
        return frame.strip()
    return f"{frame[: m.start()].strip()} ({os.path.basename(m.group(1))})"


def summarize(raw: Path, top: int = 20) -> str:
    self_c: collections.Counter = collections.Counter()
    incl_c: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        total += k
        frames = [_frame_key(f) for f in stack.split(";") if f]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        self_c[frames[-1]] += k
        for f in set(frames):
            incl_c[f] += k
    out = [f"{total} samples"]
    out.append("self time:")
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in self_c.most_common(top)]
    out.append("inclusive:")
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl_c.most_common(top)]
    return "\n".join(out)


def profile(step: str, quick: bool, out: Path, cache: Path, log) -> str:
    if not shutil.which("py-spy"):
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    c = corpora.prefix_corpus(cache, quick=quick, log=log)
    system = Zipfuse()
    why = system.unavailable()
    if why:
        raise SystemExit(why)
    out.mkdir(parents=True, exist_ok=True)
    mp = cache / f"profile-{os.getpid()}"
    mp.mkdir(parents=True, exist_ok=True)
    raw = out / f"profile-{step}.txt"
    prewarm_file(c.zip)
    spy = None
    m = system.open(c.zip, mp, read_only=True)
    try:
        if not m.pid:
            raise SystemExit("zipfuse did not report its daemon pid")
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(m.pid), "--rate", "250", "--format", "raw",
             "--threads", "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(1.0)  # let py-spy attach
        t0 = time.monotonic()
        if step == "walk":
            walk_lstat(m.root / c.top)
        elif step == "read_all":
            read_files(m.root, [r for r, _ in c.files()])
        elif step == "import":
            cmd = _python_cmd(m, c)
            log(f"cold {_timed_run(cmd):.2f} s")
            log(f"warm {_timed_run(cmd):.2f} s")
        else:
            raise SystemExit(f"unknown step {step}")
        log(f"{step}: {time.monotonic() - t0:.2f} s under py-spy (sampling slows it down)")
    finally:
        if spy is not None and spy.poll() is None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        system.close(m)
        if not is_mounted(mp):
            mp.rmdir()
    # Without --idle, py-spy keeps only samples of threads that were running: the busy view.
    text = summarize(raw)
    (out / f"profile-{step}.summary.txt").write_text(text + "\n")
    return text
