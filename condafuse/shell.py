"""Shell integration: the ``shell-hook`` function and the activation scripts it evaluates.

A child process cannot change its parent shell, so ``eval "$(condafuse shell-hook bash)"``
defines a shell function ``condafuse`` (as conda's and micromamba's hooks do). Its ``activate``
and ``deactivate`` cases run ``condafuse shell activate|deactivate ...`` and ``eval`` the
POSIX shell code it prints; every other subcommand runs the program unchanged.

The printed code comes either from conda itself (``conda shell.posix activate PREFIX``, so that
``conda deactivate``, stacking and prompts behave exactly as conda users expect) or from the
built-in activator below, which follows conda's variable protocol: ``PATH``, ``CONDA_PREFIX``,
``CONDA_SHLVL``, ``CONDA_DEFAULT_ENV``, ``CONDA_PROMPT_MODIFIER``, ``CONDA_PREFIX_<n>`` for
nested envs, variables from ``conda-meta/state`` and ``etc/conda/env_vars.d``, and the env's
``etc/conda/activate.d``/``deactivate.d`` scripts. Either way ``CONDAFUSE_ENV`` names the
active condafuse env, and the prompt shows ``(NAME)``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from .errors import EXIT_USAGE, CondafuseError

SHELLS = ("bash", "zsh")
_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_HOOK = r"""# condafuse shell hook (%(shell)s). Put in your ~/.%(rc)s:
#   eval "$(condafuse shell-hook %(shell)s)"
__condafuse_exe() { %(exe)s "$@"; }
condafuse() {
    case "${1-}" in
        activate|deactivate)
            local __condafuse_script
            __condafuse_script="$(PS1="${PS1-}" __condafuse_exe shell "$@")" || return $?
            eval "$__condafuse_script" || return $?
            %(rehash)s
            ;;
        unmount)
            if [ -n "${CONDAFUSE_ENV-}" ] && [ -n "${CONDA_PREFIX-}" ] &&
                { [ "${2-}" = "$CONDAFUSE_ENV" ] || [ "${2-}" = "--all" ]; }; then
                echo "condafuse: environment '$CONDAFUSE_ENV' is active in this shell;" \
                    "deactivating it first" >&2
                condafuse deactivate || return $?
            fi
            __condafuse_exe "$@"
            ;;
        *)
            __condafuse_exe "$@"
            ;;
    esac
}
"""


def self_command() -> str:
    """How the shell function should call this program (absolute, shell-quoted)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and os.path.basename(argv0) == "condafuse" and os.path.isfile(argv0):
        return shlex.quote(os.path.abspath(argv0))
    return f"{shlex.quote(sys.executable)} -m condafuse"


def hook(shell: str, exe: str | None = None) -> str:
    if shell not in SHELLS:
        raise CondafuseError(f"unsupported shell {shell!r}: use {' or '.join(SHELLS)}", EXIT_USAGE)
    return _HOOK % {
        "shell": shell,
        "rc": "bashrc" if shell == "bash" else "zshrc",
        "exe": exe or self_command(),
        "rehash": "hash -r" if shell == "bash" else "rehash",
    }


# ------------------------------------------------------------------------------------------
# built-in activator (no conda installed)


def _env_vars(prefix: Path) -> dict[str, str]:
    """Variables an env asks for: etc/conda/env_vars.d/*.json, then conda-meta/state."""
    out: dict[str, str] = {}
    d = prefix / "etc" / "conda" / "env_vars.d"
    files = sorted(d.glob("*.json")) if d.is_dir() else []
    for f in files + [prefix / "conda-meta" / "state"]:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if f.name == "state":
            data = data.get("env_vars", {}) if isinstance(data, dict) else {}
        if isinstance(data, dict):  # names go into shell code unquoted: keep only valid ones
            out.update({str(k): str(v) for k, v in data.items() if _VAR_RE.match(str(k))})
    return out


def activation_scripts(prefix: Path, which: str) -> list[Path]:
    d = prefix / "etc" / "conda" / which
    try:
        found = sorted(p for p in d.iterdir() if p.suffix == ".sh" and p.is_file())
    except OSError:
        return []
    return found if which == "activate.d" else found[::-1]


def _source(prefix: str, which: str) -> list[str]:
    """Shell lines that source the env's activate.d or deactivate.d scripts, in conda's order."""
    return [f". {shlex.quote(str(s))}" for s in activation_scripts(Path(prefix), which)]


def shlvl(env: Mapping[str, str]) -> int:
    try:
        return max(int(env.get("CONDA_SHLVL") or 0), 0)
    except ValueError:
        return 0


def _path_without(path: str, bindir: str) -> list[str]:
    return [p for p in path.split(os.pathsep) if p and p != bindir] if path else []


def _strip_modifier(ps1: str, modifier: str) -> str:
    return ps1[len(modifier) :] if modifier and ps1.startswith(modifier) else ps1


class BuiltinActivator:
    """Writes POSIX shell code that changes the calling shell like ``conda activate`` would.

    ``display_name(prefix)`` gives the name shown in the prompt and ``CONDA_DEFAULT_ENV``
    (``NAME`` for condafuse envs); ``condafuse_name(prefix)`` gives ``CONDAFUSE_ENV`` or None.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        display_name: Callable[[str], str],
        condafuse_name: Callable[[str], str | None],
    ) -> None:
        self.env = env
        self.display_name = display_name
        self.condafuse_name = condafuse_name

    def _changeps1(self) -> bool:
        return self.env.get("CONDA_CHANGEPS1", "true").lower() not in ("false", "0", "no")

    def _prompt_lines(self, new_modifier: str) -> list[str]:
        if not self._changeps1():
            return []
        ps1 = _strip_modifier(self.env.get("PS1", ""), self.env.get("CONDA_PROMPT_MODIFIER", ""))
        return [f"PS1={shlex.quote(new_modifier + ps1)}"]

    def _enter_vars(self, prefix: str) -> list[str]:
        name = self.display_name(prefix)
        modifier = f"({name}) "
        lines = [
            f"export CONDA_PREFIX={shlex.quote(prefix)}",
            f"export CONDA_DEFAULT_ENV={shlex.quote(name)}",
            f"export CONDA_PROMPT_MODIFIER={shlex.quote(modifier)}",
        ]
        cf = self.condafuse_name(prefix)
        lines.append(f"export CONDAFUSE_ENV={shlex.quote(cf)}" if cf else "unset CONDAFUSE_ENV")
        for k, v in _env_vars(Path(prefix)).items():
            lines.append(f"export {k}={shlex.quote(v)}")
        return lines + self._prompt_lines(modifier)

    def activate(self, prefix: str) -> str:
        env = self.env
        old = env.get("CONDA_PREFIX") or ""
        level = shlvl(env)
        lines: list[str] = []
        if old and os.path.normpath(old) == os.path.normpath(prefix) and level > 0:
            # reactivation: run the scripts again, as conda does
            lines += _source(prefix, "deactivate.d")
            lines += _source(prefix, "activate.d")
            return "\n".join(lines) + "\n"
        path = env.get("PATH", "")
        if old and level > 0:
            lines += _source(old, "deactivate.d")
            for k in _env_vars(Path(old)):
                lines.append(f"unset {k}")
            parts = _path_without(path, os.path.join(old, "bin"))
            lines.append(f"export CONDA_PREFIX_{level}={shlex.quote(old)}")
        else:
            parts = [p for p in path.split(os.pathsep) if p]
        bindir = os.path.join(prefix, "bin")
        parts = [bindir] + [p for p in parts if p != bindir]
        lines.append(f"export PATH={shlex.quote(os.pathsep.join(parts))}")
        lines.append(f"export CONDA_SHLVL={level + 1}")
        lines += self._enter_vars(prefix)
        lines += _source(prefix, "activate.d")
        return "\n".join(lines) + "\n"

    def deactivate(self) -> str:
        env = self.env
        prefix = env.get("CONDA_PREFIX") or ""
        level = shlvl(env)
        if not prefix or level <= 0:
            return ""
        lines = _source(prefix, "deactivate.d")
        for k in _env_vars(Path(prefix)):
            lines.append(f"unset {k}")
        parts = _path_without(env.get("PATH", ""), os.path.join(prefix, "bin"))
        new_lvl = level - 1
        back = env.get(f"CONDA_PREFIX_{new_lvl}") if new_lvl > 0 else None
        if back:
            bindir = os.path.join(back, "bin")
            parts = [bindir] + [p for p in parts if p != bindir]
            lines.append(f"export PATH={shlex.quote(os.pathsep.join(parts))}")
            lines.append(f"unset CONDA_PREFIX_{new_lvl}")
            lines.append(f"export CONDA_SHLVL={new_lvl}")
            lines += self._enter_vars(back)
            lines += _source(back, "activate.d")
        else:
            lines.append(f"export PATH={shlex.quote(os.pathsep.join(parts))}")
            lines.append("unset CONDA_PREFIX CONDA_DEFAULT_ENV CONDA_PROMPT_MODIFIER CONDAFUSE_ENV")
            lines.append(f"export CONDA_SHLVL={new_lvl}")
            lines += self._prompt_lines("")
        return "\n".join(lines) + "\n"

    def run_environment(self, prefix: str) -> dict[str, str]:
        """The environment a command sees inside the env (for ``condafuse run``)."""
        out = dict(self.env)
        parts = _path_without(out.get("PATH", ""), os.path.join(prefix, "bin"))
        old = out.get("CONDA_PREFIX")
        if old:
            parts = _path_without(os.pathsep.join(parts), os.path.join(old, "bin"))
        name = self.display_name(prefix)
        out.update(
            {
                "PATH": os.pathsep.join([os.path.join(prefix, "bin")] + parts),
                "CONDA_PREFIX": prefix,
                "CONDA_DEFAULT_ENV": name,
                "CONDA_PROMPT_MODIFIER": f"({name}) ",
                "CONDA_SHLVL": "1",
            }
        )
        cf = self.condafuse_name(prefix)
        if cf:
            out["CONDAFUSE_ENV"] = cf
        out.update(_env_vars(Path(prefix)))
        return out


# ------------------------------------------------------------------------------------------
# delegation to conda


def conda_script(conda_exe: str, action: str, prefix: str | None, env: Mapping[str, str]) -> str:
    """conda's own activation code for ``action`` ("activate" PREFIX or "deactivate")."""
    cmd = [conda_exe, "shell.posix", action] + ([prefix] if prefix else [])
    child = dict(env)
    # conda shows "(basename)" only for envs under a directory called envs/; NAME/NAME is not,
    # so ask for {name} (= NAME) explicitly.
    child["CONDA_ENV_PROMPT"] = "({name}) "
    try:
        proc = subprocess.run(cmd, env=child, capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise CondafuseError(f"cannot run {conda_exe}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise CondafuseError(f"{conda_exe} shell.posix {action} did not answer in 120 s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise CondafuseError(f"conda {action} failed: {last}")
    return proc.stdout if proc.stdout.endswith("\n") or not proc.stdout else proc.stdout + "\n"
