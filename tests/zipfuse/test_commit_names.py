"""Names stored without the UTF-8 flag survive a commit byte for byte."""

from __future__ import annotations

import subprocess
import zipfile

import pytest

from tests.conftest import mounted

pytestmark = pytest.mark.usefixtures("fuse")


def raw_names(archive) -> set[bytes]:
    with zipfile.ZipFile(archive) as z:
        # zipfile decodes unflagged names as CP437: undo that to get the stored bytes back
        return {
            i.filename.encode("utf-8" if i.flag_bits & 0x800 else "cp437") for i in z.infolist()
        }


def test_unflagged_unix_utf8_names_are_kept_and_shown(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ünïcode ✓.txt").write_text("unicode\n")  # '✓' has no CP437 code
    (src / "plain.txt").write_text("plain\n")
    archive = tmp_path / "u.zip"
    subprocess.run(["zip", "-q", "-r", "-y", str(archive), "."], cwd=src, check=True, timeout=60)
    before = raw_names(archive)
    assert "ünïcode ✓.txt".encode() in before
    with mounted(archive, tmp_path / "mnt") as _:
        assert (tmp_path / "mnt" / "ünïcode ✓.txt").read_text() == "unicode\n"
        (tmp_path / "mnt" / "new.txt").write_text("new\n")
    assert raw_names(archive) == before | {b"new.txt"}
    with mounted(archive, tmp_path / "mnt", read_only=True):
        assert (tmp_path / "mnt" / "ünïcode ✓.txt").read_text() == "unicode\n"
    out = subprocess.run(["unzip", "-tq", str(archive)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout
