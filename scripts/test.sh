#!/usr/bin/env bash
# The project's test command: lint and type check (zipfuse/), then the whole suite (real FUSE
# mounts included) in kernel-cache mode (patched pyfuse3, built by scripts/setup.sh), then the write-semantics tests
# again with stock pyfuse3 behaviour (ZIPFUSE_KERNEL_CACHE=0). About 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
"$PYTHON" -m mypy
ZIPFUSE_KERNEL_CACHE=1 "$PYTHON" -m pytest -q "$@"
ZIPFUSE_KERNEL_CACHE=0 "$PYTHON" -m pytest -q "$@" \
  tests/zipfuse/test_write_ops.py tests/zipfuse/test_write_model.py \
  tests/zipfuse/test_write_programs.py tests/zipfuse/test_overlay_mount.py
