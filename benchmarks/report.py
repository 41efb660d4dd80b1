"""Summaries (medians, min-max, ratios), report.md and PNG charts from results.json."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .workloads import METRICS, WORKLOADS

REFERENCE_SYSTEMS = ("fuse-zip", "disk")


def _key(param) -> str:
    return "" if param is None else str(param)


def summarize(samples: list[dict]) -> dict:
    """{workload: {param: {metric: {system: {n, median, min, max, values}}}}}"""
    out: dict = {}
    for s in samples:
        if s.get("error"):
            continue
        for metric, v in s["metrics"].items():
            if not isinstance(v, (int, float)) or v is None:
                continue
            d = (
                out.setdefault(s["workload"], {})
                .setdefault(_key(s.get("param")), {})
                .setdefault(metric, {})
                .setdefault(s["system"], {"values": []})
            )
            d["values"].append(v)
    for w in out.values():
        for p in w.values():
            for m in p.values():
                for d in m.values():
                    vals = d["values"]
                    d.update(
                        n=len(vals), median=statistics.median(vals), min=min(vals), max=max(vals)
                    )
    return out


def ratio(summary: dict, workload: str, param: str, metric: str, system: str, ref: str):
    try:
        m = summary[workload][param][metric]
        a, b = m[system]["median"], m[ref]["median"]
    except KeyError:
        return None
    if not b:
        return None
    return a / b


# The targets of the open issues (12: read path, 14: write path), as
# (description, workload, param, metric, reference, comparison, goal); reference None: an
# absolute value in the metric's unit.
TARGETS = [
    ("warm walk <= 1.5x plain disk", "warm_walk", "", "warm_walk_s", "disk", "<=", 1.5),
    ("warm re-read <= 1.5x plain disk", "warm_reread", "", "reread_s", "disk", "<=", 1.5),
    ("cold walk <= 0.5x fuse-zip", "walk", "", "walk_s", "fuse-zip", "<=", 0.5),
    ("read every file >= 1.5x fuse-zip's MB/s", "read_all", "", "read_mbps", "fuse-zip", ">=", 1.5),
    ("cold import <= 0.7x fuse-zip", "import", "", "cold_s", "fuse-zip", "<=", 0.7),
    ("warm import <= 1.05x plain disk", "import", "", "warm_s", "disk", "<=", 1.05),
    ("mount <= 0.3 s", "mount", "", "mount_s", None, "<=", 0.3),
    ("daemon RSS after mount <= 40 MB", "mount", "", "rss_mb", None, "<=", 40.0),
    ("300k-entry mount <= 0.5x fuse-zip", "scale", "300000", "mount_s", "fuse-zip", "<=", 0.5),
    ("small change + commit <= 0.7x fuse-zip", "small_change", "", "change_total_s", "fuse-zip",
     "<=", 0.7),
    ("create: copy-in <= 2.5x plain disk", "create", "", "copy_s", "disk", "<=", 2.5),
    ("create: unmount until durable <= 0.25x fuse-zip", "create", "", "commit_s", "fuse-zip", "<=",
     0.25),
    ("create: daemon peak RSS <= 200 MB", "create", "", "peak_rss_mb", None, "<=", 200.0),
]  # fmt: skip


def _median(summary: dict, workload: str, param: str, metric: str, system: str):
    try:
        return summary[workload][param][metric][system]["median"]
    except KeyError:
        return None


def targets(summary: dict, system: str = "zipfuse") -> list[dict]:
    """Each target's value for ``system`` and for ``floor`` (the stack's limit), if it ran."""
    rows = []
    for desc, w, p, metric, ref, op, goal in TARGETS:
        if ref is None:
            unit = "s" if metric.endswith("_s") else "MB"
            value = _median(summary, w, p, metric, system)
            bound = _median(summary, w, p, metric, "floor")
        else:
            unit = "x"
            value = ratio(summary, w, p, metric, system, ref)
            bound = ratio(summary, w, p, metric, "floor", ref)
        rows.append(
            {
                "target": desc,
                "value": value,
                "floor": bound,
                "unit": unit,
                "met": None if value is None else (value <= goal if op == "<=" else value >= goal),
            }
        )
    return rows


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "–"
    if unit == "MB/s" or unit == "MB":
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _fmt_ratio(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def _order(systems: list[str], present) -> list[str]:
    return [s for s in systems if s in present]


# (workload, metric, short label) shown in the one-table summary
SUMMARY_ROWS = [
    ("mount", "mount_s", "mount (s)"),
    ("mount", "mount_first_s", "mount, first of the archive (s)"),
    ("mount", "rss_mb", "daemon RSS after mount (MB)"),
    ("walk", "walk_s", "stat every entry (s)"),
    ("warm_walk", "warm_walk_s", "stat every entry, second walk (s)"),
    ("read_all", "read_mbps", "read every file (MB/s)"),
    ("warm_reread", "reread_mbps", "read every file again (MB/s)"),
    ("import", "cold_s", "import, cold (s)"),
    ("import", "warm_s", "import, warm (s)"),
    ("random_read", "rand_s", "1000 random 4 KiB reads in the largest .so (s)"),
    ("parallel_read", "speedup", "two readers vs one (x)"),
    ("create", "copy_s", "create: copy in (s)"),
    ("create", "commit_s", "create: unmount until durable (s)"),
    ("create", "total_s", "create: total (s)"),
    ("create", "peak_rss_mb", "create: daemon peak RSS (MB)"),
    ("create", "archive_mb", "create: archive size (MB)"),
    ("small_change", "change_total_s", "small change + commit (s)"),
]


def summary_table(results: dict) -> list[str]:
    """One row per headline number, one column per system (medians), plus zipfuse ÷ fuse-zip."""
    summary = results["summary"]
    systems = results["meta"]["systems"]
    both = "zipfuse" in systems and "fuse-zip" in systems
    head = "| | " + " | ".join(systems) + (" | zipfuse ÷ fuse-zip |" if both else " |")
    rows = [head, "|" + "---|" * (len(systems) + 1 + both)]
    sized = [(w, m, lab) for w, m, lab in SUMMARY_ROWS]
    for n in results["meta"].get("scale_sizes", []) if "scale" in summary else []:
        sized.append(("scale", f"mount_s@{n}", f"mount, {n:,} entries (s)"))
        sized.append(("scale", f"mount_first_s@{n}", f"first mount, {n:,} entries (s)"))
        sized.append(("scale", f"walk_s@{n}", f"walk, {n:,} entries (s)"))
    for w, m, lab in sized:
        param = ""
        if "@" in m:
            m, param = m.split("@")
        by_sys = summary.get(w, {}).get(param, {}).get(m)
        if not by_sys:
            continue
        unit = METRICS[m].unit if m in METRICS else ""
        cells = [_fmt(by_sys[s]["median"], unit) if s in by_sys else "–" for s in systems]
        if both:
            r = ratio(summary, w, param, m, "zipfuse", "fuse-zip")
            cells.append("–" if r is None else _fmt_ratio(r))
        rows.append(f"| {lab} | " + " | ".join(cells) + " |")
    return rows


def write_markdown(results: dict, out: Path, charts: dict[str, str]) -> Path:
    meta = results["meta"]
    summary = results["summary"]
    systems = meta["systems"]
    lines = [
        "# zipfuse benchmark report",
        "",
        f"Run `{meta['command']}` on {meta['started']} ({meta['duration_s']:.0f} s).",
        "",
        f"Machine: {meta['machine']['cpu']} × {meta['machine']['cpus']} CPUs, "
        f"{meta['machine']['mem_gb']:.0f} GB RAM, Linux {meta['machine']['kernel']}, "
        f"Python {meta['machine']['python']}. Load average at start "
        f"{'/'.join(f'{x:.1f}' for x in meta['loadavg_start'])}, at end "
        f"{'/'.join(f'{x:.1f}' for x in meta['loadavg_end'])}; CPU steal during the run "
        f"{meta['machine'].get('steal_pct', 0):.1f}%.",
        "",
        "Systems: "
        + "; ".join(f"`{s}` {meta['versions'].get(s, '')}".rstrip() for s in systems)
        + ".",
        "",
        f"Repetitions: {meta['reps']} per system, interleaved (system order rotated every "
        f"repetition). Page cache: {meta['cache_state']}. Figures are medians; ratios compare "
        "medians of the same run.",
        "",
    ]
    for c in meta["corpora"]:
        lines.append(
            f"- corpus `{c['name']}`: {c['entries']:,} entries ({c['files']:,} files, "
            f"{c['dirs']:,} folders, {c['symlinks']:,} symlinks), "
            f"{c['file_bytes'] / 1e6:,.0f} MB of file data, zip {c['zip_bytes'] / 1e6:,.0f} MB"
            + (f"; import: `{c['import_stmt']}`" if c.get("import_stmt") else "")
        )
    loads = [x["loadavg"][0] for x in results["samples"] if x.get("loadavg")]
    if loads:
        lines.append("")
        lines.append(
            f"1-minute load average when samples started: min {min(loads):.1f}, median "
            f"{statistics.median(loads):.1f}, max {max(loads):.1f} (per sample in results.json)."
        )
    lines += ["", "## Summary", "", *summary_table(results), ""]
    if "zipfuse" in systems:
        lines += [
            "## Targets (zipfuse)",
            "",
            "`floor` is the same measure for benchmarks/floorfs.py, an in-memory filesystem on "
            "the same pyfuse3 + trio: no zipfuse code can do better (– where it did not run).",
            "",
            "| target | measured | floor | met |",
            "|---|---|---|---|",
        ]
        for t in targets(summary):
            met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
            val, bound = (
                "–" if v is None else f"{_fmt(v)} {t['unit']}" for v in (t["value"], t["floor"])
            )
            lines.append(f"| {t['target']} | {val} | {bound} | {met} |")
        lines.append("")
    errors: dict[str, list[str]] = {}
    for e in results["samples"]:
        if e.get("error"):
            msg = (
                f"`{e['system']}`"
                + (f" ({e['param']})" if e.get("param") else "")
                + f": {e['error']}"
            )
            if msg not in errors.setdefault(e["workload"], []):
                errors[e["workload"]].append(msg)
    for wname in meta["workloads"]:
        w = WORKLOADS[wname]
        lines += [f"## {wname}", "", f"Models: {w.models}.", ""]
        params = summary.get(wname, {})
        if params:
            refs = [r for r in REFERENCE_SYSTEMS if r in systems]
            head = (
                "| "
                + ("entries | " if w.corpus == "synthetic" else "")
                + "metric | system | median | min–max | "
                + " | ".join(f"× {r}" for r in refs)
                + " |"
            )
            lines += [head, "|" + "---|" * (head.count("|") - 1)]
            for param in sorted(params, key=lambda p: int(p) if p.isdigit() else 0):
                for metric, by_sys in params[param].items():
                    spec = METRICS.get(metric)
                    if spec is None:  # descriptive facts (entries, file sizes): in results.json
                        continue
                    label = (
                        f"{spec.label} ({spec.unit})"
                        if spec and spec.unit
                        else (spec.label if spec else metric)
                    )
                    unit = spec.unit if spec else ""
                    for sname in _order(systems, by_sys):
                        d = by_sys[sname]
                        cells = [f"{int(param):,}"] if w.corpus == "synthetic" else []
                        cells += [
                            label,
                            sname,
                            _fmt(d["median"], unit),
                            f"{_fmt(d['min'], unit)}–{_fmt(d['max'], unit)}",
                        ]
                        for r in refs:
                            x = ratio(summary, wname, param, metric, sname, r)
                            cells.append("–" if x is None or sname == r else _fmt_ratio(x))
                        lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        for msg in errors.get(wname, []):
            lines.append(f"- not measured: {msg}")
        if errors.get(wname):
            lines.append("")
        if wname in charts:
            lines += [f"![{wname}]({charts[wname]})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


COLORS = {
    "disk": "#7f7f7f",
    "zipfuse": "#1f77b4",
    "fuse-zip": "#d62728",
    "squashfuse": "#2ca02c",
    "floor": "#bcbd22",
}


def write_charts(results: dict, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    systems = results["meta"]["systems"]
    made: dict[str, str] = {}
    for wname, params in summary.items():
        w = WORKLOADS.get(wname)
        if w is None:
            continue
        if w.corpus == "synthetic":
            metrics = [m for m in ("mount_s", "walk_s") if any(m in p for p in params.values())]
            if not metrics:
                continue
            fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8))
            axes = [axes] if len(metrics) == 1 else list(axes)
            for ax, metric in zip(axes, metrics, strict=False):
                for sname in systems:
                    pts = sorted(
                        (int(p), d[metric][sname])
                        for p, d in params.items()
                        if metric in d and sname in d[metric] and p.isdigit()
                    )
                    if not pts:
                        continue
                    xs = [x for x, _ in pts]
                    ys = [max(v["median"], 1e-4) for _, v in pts]
                    lo = [y - max(v["min"], 1e-4) for y, (_, v) in zip(ys, pts, strict=False)]
                    hi = [max(v["max"], 1e-4) - y for y, (_, v) in zip(ys, pts, strict=False)]
                    ax.errorbar(
                        xs,
                        ys,
                        yerr=[lo, hi],
                        marker="o",
                        capsize=3,
                        label=sname,
                        color=COLORS.get(sname),
                    )
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_xlabel("entries")
                ax.set_ylabel("seconds (median, min–max)")
                ax.set_title(METRICS[metric].label)
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=8)
        else:
            p = params.get("", {})
            metrics = [m for m, spec in METRICS.items() if spec.headline and m in p]
            if not metrics:
                continue
            fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
            axes = [axes] if len(metrics) == 1 else list(axes)
            for ax, metric in zip(axes, metrics, strict=False):
                names = _order(systems, p[metric])
                med = [p[metric][s]["median"] for s in names]
                lo = [m - p[metric][s]["min"] for m, s in zip(med, names, strict=False)]
                hi = [p[metric][s]["max"] - m for m, s in zip(med, names, strict=False)]
                ax.bar(
                    names,
                    med,
                    yerr=[lo, hi],
                    capsize=4,
                    color=[COLORS.get(s, "#9467bd") for s in names],
                )
                spec = METRICS[metric]
                ax.set_title(spec.label, fontsize=9)
                ax.set_ylabel(spec.unit + (" (higher is better)" if spec.higher_is_better else ""))
                ax.tick_params(axis="x", labelsize=8)
                for i, (m, s_) in enumerate(zip(med, names, strict=True)):
                    ax.annotate(
                        _fmt(m, spec.unit),
                        (i, p[metric][s_]["max"]),  # above the error bar
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        xytext=(0, 2),
                        textcoords="offset points",
                    )
        fig.suptitle(f"{wname} — median of {results['meta']['reps']} (bars: min–max)", fontsize=10)
        fig.tight_layout()
        name = f"{wname}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        made[wname] = name
    return made


def render(out: Path) -> Path:
    """(Re)write report.md and the charts from DIR/results.json."""
    results = json.loads((out / "results.json").read_text())
    results["summary"] = summarize(results["samples"])
    try:
        charts = write_charts(results, out)
    except ImportError as e:  # matplotlib missing: the report still works
        print(f"charts skipped: {e}")
        charts = {}
    return write_markdown(results, out, charts)
