"""What an installed conda prefix holds, read from its files (no conda, no rattler needed):
the package records in ``conda-meta/*.json``, the specs asked for (``conda-meta/history``),
packages pip installed on top, and ``conda env config vars`` (``conda-meta/state``).
Used by ``condafuse export --yml``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

_ANACONDA = re.compile(r"^https?://conda\.anaconda\.org/([^/]+)/?$")
_SPEC_NAME = re.compile(r"^(?:[^:\s]+::)?([A-Za-z0-9_][A-Za-z0-9_.\-]*)")


@dataclasses.dataclass(frozen=True)
class Record:
    name: str
    version: str
    build: str
    channel: str  # a channel name (conda-forge) or URL (file:///...)


def channel_name(channel: str) -> str:
    """conda's short form: https://conda.anaconda.org/conda-forge -> conda-forge."""
    channel = channel.rstrip("/")
    m = _ANACONDA.match(channel)
    return m.group(1) if m else channel


def records(prefix: Path) -> list[Record]:
    """Installed packages, sorted by name."""
    out = []
    for f in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and d.get("name"):
            out.append(
                Record(
                    d["name"],
                    str(d.get("version", "")),
                    str(d.get("build", "")),
                    channel_name(str(d.get("channel") or "")),
                )
            )
    return sorted(out, key=lambda r: r.name)


def conda_files(prefix: Path) -> set[str]:
    """Every path (relative to the prefix) that a conda package installed."""
    owned: set[str] = set()
    for f in (prefix / "conda-meta").glob("*.json"):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        owned.update(d.get("files") or [])
    return owned


def pip_packages(prefix: Path) -> list[str]:
    """``name==version`` of Python distributions not installed by a conda package."""
    owned = conda_files(prefix)
    out = []
    for meta in sorted(prefix.glob("lib/python*/site-packages/*.dist-info/METADATA")):
        rel = str(meta.relative_to(prefix))
        if rel in owned:
            continue
        fields = {}
        try:
            for line in meta.read_text(errors="replace").splitlines():
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                fields.setdefault(k.strip().lower(), v.strip())
        except OSError:
            continue
        if fields.get("name") and fields.get("version"):
            out.append(f"{fields['name']}=={fields['version']}")
    return out


def history_specs(prefix: Path) -> list[str]:
    """The specs asked for, replayed from ``conda-meta/history`` as conda's --from-history
    does: ``# update specs`` add or replace (by name), ``# remove specs`` drop."""
    try:
        text = (prefix / "conda-meta" / "history").read_text()
    except OSError:
        return []
    specs: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^#\s*(update|install|create|remove|neutered) specs:\s*(.*)$", line)
        if not m:
            continue
        try:
            items = ast.literal_eval(m.group(2))
        except (ValueError, SyntaxError):
            items = [s.strip() for s in m.group(2).strip("[]").split(",") if s.strip()]
        for spec in items if isinstance(items, (list, tuple)) else []:
            nm = _SPEC_NAME.match(str(spec))
            if not nm:
                continue
            if m.group(1) == "remove":
                specs.pop(nm.group(1).lower(), None)
            else:
                specs[nm.group(1).lower()] = str(spec)
    return list(specs.values())


def env_vars(prefix: Path) -> dict[str, str]:
    """``conda env config vars`` of the env (``conda-meta/state``)."""
    try:
        d = json.loads((prefix / "conda-meta" / "state").read_text())
    except (OSError, ValueError):
        return {}
    v = d.get("env_vars") if isinstance(d, dict) else None
    return {str(k): str(x) for k, x in v.items()} if isinstance(v, dict) else {}


def set_env_vars(prefix: Path, variables: dict[str, str]) -> None:
    """Write ``variables`` into ``conda-meta/state``, as ``conda env config vars set`` does."""
    state_file = prefix / "conda-meta" / "state"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    if not isinstance(state, dict):
        state = {}
    state.setdefault("env_vars", {}).update(variables)
    state_file.write_text(json.dumps(state, indent=2) + "\n")
