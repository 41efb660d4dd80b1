"""Helpers shared by the condafuse test modules (imported by name; conftest adds this directory
to sys.path)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest


def make_stub(bindir: Path, name: str, log: Path) -> Path:
    """A recording stand-in for conda/mamba/micromamba: ONLY for command-line checks.

    It logs argv (and CONDA_ENV_PROMPT) as JSON lines; ``create --prefix P`` (and ``env
    create``) makes a minimal ``P/conda-meta``; ``shell.posix activate P`` / ``deactivate``
    print a small script; with ``STUB_FAIL`` set, other commands exit 3.
    """
    stub = bindir / name
    stub.write_text(f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
with open({str(log)!r}, "a") as f:
    f.write(json.dumps({{"exe": {name!r}, "argv": args,
                        "env_prompt": os.environ.get("CONDA_ENV_PROMPT")}}) + "\\n")
if (args[:1] == ["create"] or args[:2] == ["env", "create"]) and "--prefix" in args:
    p = args[args.index("--prefix") + 1]
    os.makedirs(os.path.join(p, "conda-meta"))
    open(os.path.join(p, "conda-meta", "history"), "w").close()
    if os.environ.get("STUB_SLEEP"):
        import time
        open(os.environ["STUB_SLEEP"], "w").close()
        time.sleep(120)
elif args[:2] == ["shell.posix", "activate"]:
    print("export CONDA_PREFIX=" + args[2])
    print("export STUB_ACTIVATED=" + os.environ.get("CONDA_ENV_PROMPT", "").replace(" ", "_"))
elif args[:2] == ["shell.posix", "deactivate"]:
    print("unset CONDA_PREFIX")
    print("export STUB_DEACTIVATED=1")
elif os.environ.get("STUB_FAIL"):
    sys.exit(3)
""")
    stub.chmod(0o755)
    return stub


def read_log(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def need_zsh() -> None:
    """zsh is required in CI (the zsh hook must be tested there); elsewhere skip without it."""
    if shutil.which("zsh") is None:
        if os.environ.get("CI"):
            pytest.fail("zsh is not installed (CI must install it for the zsh hook tests)")
        pytest.skip("zsh is not installed")
