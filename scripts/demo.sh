#!/usr/bin/env bash
# Demo: mount a new archive, write into it, unmount (commit), check it with unzip, remount, read.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.venv/bin}"
work=$(mktemp -d)
trap '"$BIN/zipfuse" unmount "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir "$work/mnt"
echo "== mount a new archive at $work/mnt"
"$BIN/zipfuse" mount "$work/demo.zip" "$work/mnt"
mkdir -p "$work/mnt/demo/bin"
printf '#!/bin/sh\necho hello from inside the archive\n' > "$work/mnt/demo/bin/hello"
chmod +x "$work/mnt/demo/bin/hello"
ln -s bin/hello "$work/mnt/demo/hello-link"
cp -a zipfuse "$work/mnt/demo/zipfuse-source"
"$BIN/zipfuse" status
echo "== unmount: returns once the archive is durable"
"$BIN/zipfuse" unmount "$work/mnt"
ls -l "$work/demo.zip"
unzip -tq "$work/demo.zip"
echo "== remount read-only and run the script from the archive"
"$BIN/zipfuse" mount --read-only "$work/demo.zip" "$work/mnt"
"$work/mnt/demo/hello-link"
diff -r zipfuse "$work/mnt/demo/zipfuse-source" && echo "round-trip: identical"
"$BIN/zipfuse" unmount "$work/mnt"
echo "== done"
