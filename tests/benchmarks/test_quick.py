"""The benchmark suite must keep working: run `python -m benchmarks run --quick` end to end.

This mounts for real (disk, fuse-zip when installed, zipfuse, the in-memory floor) and takes
about a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Every workload of the suite (benchmarks.workloads.WORKLOADS); spelled out so this test does not
# depend on how pytest puts folders on sys.path.
WORKLOADS = (
    "mount", "walk", "warm_walk", "read_all", "warm_reread", "import", "random_read",
    "parallel_read", "create", "small_change", "scale",
)  # fmt: skip


@pytest.mark.fuse
@pytest.mark.slow
def test_quick_run_has_numbers_for_every_system_and_workload(fuse, tmp_path: Path) -> None:
    systems = ["disk", "zipfuse", "floor"]
    if shutil.which("fuse-zip") or os.environ.get("CI"):
        systems.insert(1, "fuse-zip")
    # floor (benchmarks/floorfs.py) is a bound: it has no timed mount and nothing to commit
    not_for_floor = {"mount", "small_change", "scale"}
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "benchmarks", "run", "--quick",
        "--systems", ",".join(systems),
        "--out", str(out),
        "--cache", str(tmp_path / "cache"),
    ]  # fmt: skip
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the harness unmount everything before it exits; never leave mounts.
        p.terminate()
        _, err = p.communicate(timeout=300)
        pytest.fail("the quick benchmark run took more than 10 minutes:\n" + err[-4000:])
    log = err[-4000:]
    assert (out / "results.json").exists(), log
    results = json.loads((out / "results.json").read_text())
    errors = [
        f"{s['workload']}/{s['system']}: {s['error']}"
        for s in results["samples"]
        if s.get("error")
        and not (
            s["system"] == "floor"
            and s["workload"] in not_for_floor
            and s["error"].endswith("(not applicable)")
        )
    ]
    assert not errors, "\n".join(errors) + "\n" + log
    assert p.returncode == 0, log

    assert list(results["meta"]["workloads"]) == list(WORKLOADS)
    summary = results["summary"]
    for wname in WORKLOADS:
        for system in systems:
            if system == "floor" and wname in not_for_floor:
                assert wname not in summary or all(
                    "floor" not in by_sys for m in summary[wname].values() for by_sys in m.values()
                ), f"floor has numbers for {wname}, which it cannot measure"
                continue
            params = summary.get(wname, {})
            assert params, f"no results for workload {wname}"
            for param, metrics in params.items():
                got = [m for m, by_sys in metrics.items() if system in by_sys]
                assert got, f"{wname}[{param}] has no number for {system}"
                for m in got:
                    v = metrics[m][system]["median"]
                    assert isinstance(v, (int, float)) and v >= 0, (wname, system, m, v)

    report = (out / "report.md").read_text()
    for wname in WORKLOADS:
        assert f"## {wname}" in report
    assert (out / "import.png").stat().st_size > 1000

    # Nothing may stay mounted or running below the scratch folder.
    with open("/proc/self/mountinfo") as f:
        assert str(tmp_path) not in f.read()
