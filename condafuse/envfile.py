"""environment.yml, as ``conda env create -f`` reads it and ``conda env export`` writes it.

Only the part of YAML these files use is understood (no PyYAML dependency): top-level keys
``name``, ``channels``, ``dependencies`` (strings, plus one ``pip:`` list), ``variables``
(a mapping) and ``prefix`` (ignored: condafuse chooses the prefix); block lists (``- item``) or
flow lists (``[a, b]``); quoted or plain scalars; ``#`` comments. Anything else is refused with
a one-line message naming the line, never guessed at.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import EXIT_USAGE, CondafuseError

KEYS = ("name", "channels", "dependencies", "variables", "prefix")


@dataclasses.dataclass
class EnvFile:
    name: str | None = None
    channels: list[str] = dataclasses.field(default_factory=list)
    dependencies: list[str] = dataclasses.field(default_factory=list)  # conda specs
    pip: list[str] | None = None  # lines of the pip: section (requirements-file lines)
    variables: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def nodefaults(self) -> bool:
        """``nodefaults`` among the channels means: no default channels (conda's convention)."""
        return "nodefaults" in self.channels

    def real_channels(self) -> list[str]:
        return [c for c in self.channels if c != "nodefaults"]


def is_env_file(path: str) -> bool:
    return path.endswith((".yml", ".yaml"))


def read(path: str | Path) -> EnvFile:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CondafuseError(f"cannot read {path}: {exc.strerror}") from None
    return parse(text, str(path))


def _scalar(raw: str, where: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        body = raw[1:-1]
        return body.replace("''", "'") if raw[0] == "'" else json.loads(raw)
    if raw[:1] in ("[", "{", "&", "*", "!", "|", ">"):
        raise CondafuseError(f"{where}: unsupported YAML value {raw!r}", EXIT_USAGE)
    return raw


def _strip_comment(line: str) -> str:
    """Drop a ``#`` comment (at the start or after a space, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _flow_list(raw: str, where: str) -> list[str]:
    inner = raw.strip()[1:-1].strip()
    return [_scalar(x, where) for x in inner.split(",") if x.strip()] if inner else []


def parse(text: str, source: str = "environment.yml") -> EnvFile:
    out = EnvFile()
    key: str | None = None  # current top-level key
    in_pip = False
    pip_indent = -1
    for no, line in enumerate(text.splitlines(), 1):
        where = f"{source} line {no}"
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise CondafuseError(f"{where}: tabs are not allowed for indentation", EXIT_USAGE)
        line = _strip_comment(line)
        if not line.strip() or line.strip() == "---":
            continue
        indent = len(line) - len(line.lstrip())
        body = line.strip()
        if indent == 0:
            m = re.match(r"^([A-Za-z_][\w-]*)\s*:\s*(.*)$", body)
            if not m:
                raise CondafuseError(f"{where}: expected 'key: value', got {body!r}", EXIT_USAGE)
            key, value = m.group(1), m.group(2)
            in_pip = False
            if key not in KEYS:
                raise CondafuseError(
                    f"{where}: unknown key {key!r} (condafuse reads {', '.join(KEYS)})",
                    EXIT_USAGE,
                )
            if key in ("name", "prefix"):
                if key == "name":
                    out.name = _scalar(value, where) or None
                key = None
            elif value.startswith("[") and value.endswith("]"):
                items = _flow_list(value, where)
                if key == "channels":
                    out.channels += items
                elif key == "dependencies":
                    out.dependencies += items
                else:
                    raise CondafuseError(f"{where}: {key} must be a mapping", EXIT_USAGE)
                key = None
            elif value and value != "{}":
                raise CondafuseError(f"{where}: {key} must be a list or a mapping", EXIT_USAGE)
            continue
        if key is None:
            raise CondafuseError(f"{where}: unexpected indented line {body!r}", EXIT_USAGE)
        if key == "variables":
            m = re.match(r"^([A-Za-z_]\w*)\s*:\s*(.*)$", body)
            if not m:
                raise CondafuseError(f"{where}: expected 'NAME: value'", EXIT_USAGE)
            out.variables[m.group(1)] = _scalar(m.group(2), where)
            continue
        if in_pip and indent > pip_indent:
            if not body.startswith("- "):
                raise CondafuseError(f"{where}: expected '- requirement' under pip:", EXIT_USAGE)
            assert out.pip is not None
            out.pip.append(_scalar(body[2:], where))
            continue
        in_pip = False
        if not body.startswith("-"):
            raise CondafuseError(f"{where}: expected a list item '- ...'", EXIT_USAGE)
        item = body[1:].strip()
        if key == "dependencies" and re.match(r"^pip\s*:", item):
            rest = item.split(":", 1)[1].strip()
            out.pip = [] if out.pip is None else out.pip
            if rest.startswith("["):
                out.pip += _flow_list(rest, where)
            elif rest:
                raise CondafuseError(f"{where}: pip: must be a list", EXIT_USAGE)
            else:
                in_pip, pip_indent = True, indent
            continue
        value = _scalar(item, where)
        (out.channels if key == "channels" else out.dependencies).append(value)
    return out


def _quote(s: str) -> str:
    """A scalar as YAML: plain when that is unambiguous, else double-quoted."""
    if re.fullmatch(r"[A-Za-z0-9_./:=<>!*,+~@-][A-Za-z0-9_./:=<>!*,+~@ -]*", s) and not (
        s.endswith(" ") or ": " in s or " #" in s
    ):
        return s
    return json.dumps(s)


def dump(
    name: str,
    channels: Sequence[str],
    dependencies: Sequence[str],
    pip: Sequence[str] = (),
    variables: dict[str, str] | None = None,
    prefix: str | None = None,
) -> str:
    """The text ``conda env export`` would write for these values."""
    lines = [f"name: {_quote(name)}"]
    if channels:
        lines.append("channels:")
        lines += [f"  - {_quote(c)}" for c in channels]
    lines.append("dependencies:" if dependencies or pip else "dependencies: []")
    lines += [f"  - {_quote(d)}" for d in dependencies]
    if pip:
        lines.append("  - pip:")
        lines += [f"      - {_quote(p)}" for p in pip]
    if variables:
        lines.append("variables:")
        lines += [f"  {k}: {_quote(v)}" for k, v in variables.items()]
    if prefix:
        lines.append(f"prefix: {_quote(prefix)}")
    return "\n".join(lines) + "\n"
