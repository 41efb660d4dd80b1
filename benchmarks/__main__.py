"""python -m benchmarks run [--quick] [--workloads ...] [--systems ...] [--out DIR]

Also: ``python -m benchmarks report DIR`` re-renders report.md and the charts from results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from . import corpus as corpora
from . import report
from . import systems as sysmod
from .workloads import DEFAULT_WORKLOADS, WORKLOADS, Ctx

QUICK_SCALE = (200, 1000)
FULL_SCALE = (1000, 10000, 100000, 300000)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _split(values: list[str] | None, default) -> list[str]:
    if not values:
        return list(default)
    out = []
    for v in values:
        out += [x for x in v.split(",") if x]
    return out


def _cpu_times() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def _machine() -> dict:
    cpu = "?"
    mem_kb = 0
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
        with open("/proc/meminfo") as f:
            mem_kb = next((int(ln.split()[1]) for ln in f if ln.startswith("MemTotal")), 0)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_gb": mem_kb / 1024 / 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _git_rev() -> str | None:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        return r.stdout.strip() or None
    except Exception:
        return None


def _mounts_under(path: Path) -> list[str]:
    p = os.path.realpath(path) + "/"
    with open("/proc/self/mountinfo") as f:
        return [m for m in (line.split()[4] for line in f) if (m + "/").startswith(p)]


class _Stop(BaseException):
    pass


def _on_signal(signum, frame):
    raise _Stop(f"signal {signum}")


def cmd_run(args) -> int:
    t_start = time.time()
    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    wnames = _split(args.workloads, DEFAULT_WORKLOADS)
    for w in wnames:
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    snames = _split(args.systems, sysmod.DEFAULT_SYSTEMS)
    systems = sysmod.make(snames)
    if not args.systems:  # by default, leave out optional systems that are not installed
        systems = [s for s in systems if s.name != "squashfuse" or not s.unavailable()]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache).resolve()
    work = cache / f"run-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_signal)

    unavailable = {s.name: s.unavailable() for s in systems}
    for name, why in unavailable.items():
        if why:
            _log(f"WARNING: {name}: {why}")

    ctx = Ctx(work=work, quick=quick, drop_caches=args.drop_caches, log=_log)
    if quick:
        ctx.parallel_cap_bytes = 64 << 20
        ctx.random_reads = 300
    scale_sizes = [int(x) for x in _split(args.scale_sizes, QUICK_SCALE if quick else FULL_SCALE)]

    # Corpora (cached; built before any timing starts).
    used = []
    if any(WORKLOADS[w].corpus == "prefix" for w in wnames):
        ctx.prefix = corpora.prefix_corpus(cache, quick=quick, log=_log)
        used.append(ctx.prefix)
    if "scale" in wnames:
        ctx.synthetic = [corpora.synthetic_corpus(n, cache, log=_log) for n in scale_sizes]
        used += ctx.synthetic
    if any(s.name == "squashfuse" and not unavailable[s.name] for s in systems):
        for c in used:
            c.ensure_squashfs(log=_log)

    cache_state = (
        "dropped before every sample (--drop-caches)"
        if args.drop_caches
        else "cold mount, warm disk: every sample starts from a fresh mount after its "
        "backing (archive, image or plain tree) was read into the page cache"
    )
    results = {
        "meta": {
            "command": "python -m benchmarks " + shlex.join(sys.argv[1:]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t_start)),
            "quick": quick,
            "reps": reps,
            "systems": [s.name for s in systems],
            "workloads": wnames,
            "scale_sizes": scale_sizes,
            "cache_state": cache_state,
            "machine": _machine(),
            "git": _git_rev(),
            "versions": {s.name: s.version() for s in systems},
            "unavailable": {k: v for k, v in unavailable.items() if v},
            "labels": {s.name: s.label for s in systems},
            "corpora": [dict(c.meta) for c in used],
            "loadavg_start": list(os.getloadavg()),
        },
        "samples": [],
    }
    cpu0 = _cpu_times()

    def save() -> None:
        results["meta"]["loadavg_end"] = list(os.getloadavg())
        results["meta"]["duration_s"] = time.time() - t_start
        cpu1 = _cpu_times()
        d = [b - a for a, b in zip(cpu0, cpu1, strict=False)]
        results["meta"]["machine"]["steal_pct"] = 100 * d[7] / max(sum(d), 1) if len(d) > 7 else 0
        results["summary"] = report.summarize(results["samples"])
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=1, default=str))
        tmp.replace(out / "results.json")

    failed_for_good: dict[str, str] = {}
    stopped = None
    try:
        for wname in wnames:
            w = WORKLOADS[wname]
            cs = [ctx.prefix] if w.corpus == "prefix" else ctx.synthetic
            for c in cs:
                param = c.entries if w.corpus == "synthetic" else None
                for rep in range(reps):
                    k = rep % len(systems)
                    for system in systems[k:] + systems[:k]:  # A B C, B C A, ... interleaved
                        sample = {
                            "workload": wname,
                            "system": system.name,
                            "param": param,
                            "rep": rep,
                            "corpus": c.name,
                            "metrics": {},
                        }
                        if system.name in failed_for_good:
                            sample["error"] = failed_for_good[system.name]
                        elif w.writes and not system.writable:
                            sample["error"] = f"{system.name} is read-only (not applicable)"
                        elif system.limit_only and not w.for_limit:
                            sample["error"] = (
                                f"{system.name} is a bound, not a product (not applicable)"
                            )
                        if sample.get("error"):
                            if rep == 0:
                                results["samples"].append(sample)
                            continue
                        sample["loadavg"] = list(os.getloadavg())
                        sample["t"] = round(time.time() - t_start, 2)
                        try:
                            sample["metrics"] = w.fn(ctx, system, c)
                        except sysmod.SystemUnavailable as e:
                            failed_for_good[system.name] = str(e)
                            sample["error"] = str(e)
                        except Exception as e:
                            sample["error"] = f"{type(e).__name__}: {e}"
                            sample["traceback"] = traceback.format_exc(limit=6)
                        finally:
                            sysmod.close_all_live()
                        sample["loadavg_after"] = list(os.getloadavg())
                        results["samples"].append(sample)
                        shown = ", ".join(
                            f"{k2}={v:.3g}"
                            for k2, v in sample["metrics"].items()
                            if isinstance(v, (int, float))
                        )
                        _log(
                            f"{wname}{'' if param is None else f'[{param}]'} rep {rep} "
                            f"{system.name}: {sample.get('error') or shown}"
                        )
                        save()
    except (KeyboardInterrupt, _Stop) as e:
        stopped = str(e) or "interrupted"
        _log(f"stopping: {stopped}")
    finally:
        sysmod.close_all_live()
        left = _mounts_under(work)
        for mp in left:  # should never happen; never delete files below a live mount
            subprocess.run(["fusermount3", "-u", "-z", mp], timeout=30, check=False)
        if not _mounts_under(work):
            shutil.rmtree(work, ignore_errors=True)
        else:
            _log(f"WARNING: mounts left under {work}; not deleting it")
    results["meta"]["stopped"] = stopped
    save()
    path = report.render(out)
    _log(f"wrote {out / 'results.json'} and {path}")
    errors = [
        s for s in results["samples"] if s.get("error") and "not applicable" not in s["error"]
    ]
    if errors:
        _log(f"{len(errors)} samples failed; see report.md")
    return 1 if stopped else (2 if errors else 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks", description="zipfuse vs fuse-zip vs plain disk benchmarks"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the suite")
    r.add_argument(
        "--quick", action="store_true", help="tiny corpora, one repetition (CI; under 3 minutes)"
    )
    r.add_argument(
        "--workloads",
        nargs="+",
        metavar="W",
        help=f"comma or space separated (default: all: {','.join(DEFAULT_WORKLOADS)})",
    )
    r.add_argument(
        "--systems",
        nargs="+",
        metavar="S",
        help=f"comma or space separated (default: {','.join(sysmod.DEFAULT_SYSTEMS)};"
        " squashfuse only if installed)",
    )
    r.add_argument("--out", default="bench-out", help="output folder (default: bench-out)")
    r.add_argument("--reps", type=int, help="repetitions per system (default 3; --quick: 1)")
    r.add_argument(
        "--scale-sizes",
        nargs="+",
        metavar="N",
        help=f"synthetic entry counts for 'scale' (default {FULL_SCALE})",
    )
    r.add_argument(
        "--cache",
        default=str(corpora.DEFAULT_CACHE),
        help="where corpora and scratch files live (default %(default)s)",
    )
    r.add_argument(
        "--drop-caches",
        action="store_true",
        help="drop the page cache before each sample (root; affects the whole machine)",
    )
    pp = sub.add_parser("profile", help="sample the zipfuse daemon with py-spy during one step")
    pp.add_argument("--step", default="walk", choices=["walk", "import", "read_all"])
    pp.add_argument("--quick", action="store_true", help="use the small prefix corpus")
    pp.add_argument("--out", default="bench-out")
    pp.add_argument("--cache", default=str(corpora.DEFAULT_CACHE))
    rp = sub.add_parser("report", help="re-render report.md and charts from DIR/results.json")
    rp.add_argument("dir")
    args = ap.parse_args(argv)
    if args.cmd == "profile":
        from .profile import profile

        print(profile(args.step, args.quick, Path(args.out), Path(args.cache), _log))
        return 0
    if args.cmd == "report":
        print(report.render(Path(args.dir)))
        return 0
    return cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
