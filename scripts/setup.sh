#!/usr/bin/env bash
# Install system packages and the project (with test extras) into ./.venv. Debian/Ubuntu, as root.
# Set PYTHON=/path/to/python to install into that interpreter instead of creating .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs="fuse3 libfuse3-dev pkg-config gcc patch zip unzip p7zip-full fuse-zip sqlite3 git zsh squashfuse squashfs-tools"
command -v python3 >/dev/null || pkgs="$pkgs python3"
python3 -c 'import ensurepip, venv' 2>/dev/null || pkgs="$pkgs python3-venv"
# pyfuse3 and zipfile-deflate64 compile C extensions: they need Python.h
python3 -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null \
  || pkgs="$pkgs python3-dev"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
if [ -z "${PYTHON:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  PYTHON=.venv/bin/python
fi
# pyfuse3 from its pinned sdist with patches/ applied in this order (kernel-cache mode, the inline
# request loop, the lazy __version__; see patches/README.md). Skipped when the installed pyfuse3
# already has all three (NO_OPEN_SUPPORT; the request loop's _pyfuse3._resume helper; the module
# __getattr__ of _pyfuse3 that looks the version up). Cython comes with pyfuse3's own build
# requirements; the sdist's shipped __init__.c is unpatched, so it is removed to force it.
PYFUSE3_VERSION=3.5.0
PYFUSE3_PATCHES="kernel-cache inline-requests lazy-version"
pyfuse3_patched='import pyfuse3, sys; m = pyfuse3._pyfuse3; sys.exit(not (getattr(pyfuse3, "NO_OPEN_SUPPORT", False) and hasattr(m, "_resume") and callable(vars(m).get("__getattr__"))))'
if ! "$PYTHON" -c "$pyfuse3_patched" 2>/dev/null; then
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' EXIT
  "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary pyfuse3 \
    -d "$build" "pyfuse3==$PYFUSE3_VERSION"
  tar -xzf "$build/pyfuse3-$PYFUSE3_VERSION.tar.gz" -C "$build" --no-same-owner
  src="$build/pyfuse3-$PYFUSE3_VERSION"
  for name in $PYFUSE3_PATCHES; do
    patch -d "$src" -p1 --quiet --forward <"patches/pyfuse3-$PYFUSE3_VERSION-$name.patch"
  done
  rm -f "$src/src/pyfuse3/__init__.c"
  "$PYTHON" -m pip install -q --disable-pip-version-check "$src"  # a local tree always reinstalls
  "$PYTHON" -c "$pyfuse3_patched"
fi
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test,bench,rattler]'
# An editable install compiles nothing (a wheel install does): without .pyc files, where
# PYTHONDONTWRITEBYTECODE is set, every mount compiled the package again (~0.1 s of its 0.7 s).
"$PYTHON" -m compileall -q zipfuse condafuse >/dev/null
echo "installed into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
