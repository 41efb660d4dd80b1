"""O(change) commit: a small change is appended in place (same inode), the old version stays
complete until the new end is durable, kill -9 at each step recovers, readers read on, the
result is a standard zip, and dead space past 25% brings back the full rewrite."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import zipfile

import pytest

from tests.conftest import ZIPFUSE_CMD, force_cleanup, mounted
from tests.zipfuse.test_reliability import kill9, names
from tests.zipfuse.writehelp import paused_sync
from zipfuse import api
from zipfuse.zipformat import read_central_directory

pytestmark = pytest.mark.usefixtures("fuse")

FILES = 24
SIZE = 60_000


def _blob(i: int) -> bytes:
    return os.urandom(SIZE - 40) + f"file {i}\n".encode().rjust(40, b".")


@pytest.fixture
def big_zip(tmp_path):
    """~1.4 MB of incompressible data in 24 files: a one-file change is small relative to it
    (archives under commit.APPEND_MIN are always rewritten)."""
    path = tmp_path / "env.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("keep.txt", "original\n")
        for i in range(FILES):
            z.writestr(f"lib/f{i:02d}.bin", _blob(i))
    return path


def _check_standard(archive) -> None:
    """Independent readers accept the archive."""
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
    proc = subprocess.run(["unzip", "-t", str(archive)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run(["7z", "t", str(archive)], capture_output=True, text=True)
    assert proc.returncode == 0 and "Everything is Ok" in proc.stdout, proc.stdout


def test_small_change_is_appended_in_place(tmp_path, big_zip):
    before = big_zip.read_bytes()
    ino = os.stat(big_zip).st_ino
    old = names(big_zip)
    mnt = tmp_path / "mnt"
    with mounted(big_zip, mnt):
        (mnt / "keep.txt").write_text("changed\n")
        (mnt / "new.txt").write_text("new file\n")
        os.unlink(mnt / "lib" / "f03.bin")
        os.chmod(mnt / "lib" / "f04.bin", 0o600)  # metadata only: re-listed with its bytes
        os.rename(mnt / "lib" / "f05.bin", mnt / "lib" / "moved.bin")
        api.sync(str(mnt))
        st = os.stat(big_zip)
        assert st.st_ino == ino, "an append keeps the inode"
        data = big_zip.read_bytes()
        assert data[: len(before)] == before, "nothing before the old end was written"
        # the new and changed entries only: the renamed and chmod'ed files' bytes, two small ones
        assert len(data) - len(before) < 3 * SIZE + 8000
        # the old version is complete on its own: the bytes up to the old end
        old_copy = tmp_path / "old.zip"
        old_copy.write_bytes(data[: len(before)])
        assert names(old_copy) == old
        assert (mnt / "lib" / "moved.bin").read_bytes() == old["lib/f05.bin"]
        # a second small commit appends again
        (mnt / "keep.txt").write_text("changed twice\n")
        api.sync(str(mnt))
        assert os.stat(big_zip).st_ino == ino
    _check_standard(big_zip)
    got = names(big_zip)
    assert got["keep.txt"] == b"changed twice\n" and got["new.txt"] == b"new file\n"
    assert "lib/f03.bin" not in got and "lib/f05.bin" not in got
    assert got["lib/moved.bin"] == old["lib/f05.bin"]
    with zipfile.ZipFile(big_zip) as z:
        assert (z.getinfo("lib/f04.bin").external_attr >> 16) & 0o777 == 0o600
    for i in (0, 1, 2, 6, 23):
        assert got[f"lib/f{i:02d}.bin"] == old[f"lib/f{i:02d}.bin"]
    with mounted(big_zip, mnt, read_only=True):  # our own reader sees the appended version
        assert (mnt / "keep.txt").read_text() == "changed twice\n"
        assert (mnt / "lib" / "f04.bin").stat().st_mode & 0o777 == 0o600


def test_reader_keeps_reading_while_writer_appends(tmp_path, big_zip):
    old = names(big_zip)
    with mounted(big_zip, tmp_path / "ro", read_only=True):
        held = open(tmp_path / "ro" / "lib" / "f07.bin", "rb")  # noqa: SIM115
        try:
            with mounted(big_zip, tmp_path / "rw"):
                for n in range(3):
                    (tmp_path / "rw" / "keep.txt").write_text(f"writer {n}\n")
                    api.sync(str(tmp_path / "rw"))
                    assert held.read() == old["lib/f07.bin"]
                    held.seek(0)
                    assert (tmp_path / "ro" / "keep.txt").read_text() == "original\n"
                    for i in range(FILES):
                        got = (tmp_path / "ro" / "lib" / f"f{i:02d}.bin").read_bytes()
                        assert got == old[f"lib/f{i:02d}.bin"]
        finally:
            held.close()
    assert names(big_zip)["keep.txt"] == b"writer 2\n"


def test_dead_space_past_a_quarter_rewrites(tmp_path, big_zip):
    ino = os.stat(big_zip).st_ino
    mnt = tmp_path / "mnt"
    inodes = []
    with mounted(big_zip, mnt):
        for n in range(12):  # each round replaces one 60 KB file: dead space grows
            (mnt / "lib" / f"f{n:02d}.bin").write_bytes(_blob(100 + n))
            api.sync(str(mnt))
            inodes.append(os.stat(big_zip).st_ino)
            assert _dead(big_zip) <= 0.26 * os.path.getsize(big_zip)
    assert inodes[0] == ino, "the first small change is appended"
    assert len(set(inodes)) > 1, "a full rewrite (new inode) reclaimed the dead space"
    _check_standard(big_zip)
    got = names(big_zip)
    for n in range(12):
        assert got[f"lib/f{n:02d}.bin"][-40:] == f"file {100 + n}\n".encode().rjust(40, b".")


STAGES = ["append-before-write", "append-entries-written", "append-before-fsync", "append-done"]


@pytest.mark.parametrize("stage", STAGES)
def test_kill9_during_append(tmp_path, big_zip, monkeypatch, stage):
    """kill -9 at each step of an append: the archive is the old complete one (cut back by
    recover) or the new one, and recover brings the change in."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before = big_zip.read_bytes()
    old = names(big_zip)
    marker = tmp_path / "paused"
    monkeypatch.setenv("ZIPFUSE_TEST_PAUSE", f"{stage}:{marker}")  # inherited by the daemon
    info = api.mount(str(big_zip), str(mnt))
    monkeypatch.delenv("ZIPFUSE_TEST_PAUSE")
    try:
        (mnt / "payload.bin").write_bytes(b"commit me\n" * 3000)
        with paused_sync(mnt, marker) as syncer:
            kill9(info)
            syncer.wait(60)
            assert syncer.returncode != 0
    finally:
        force_cleanup(str(mnt))
    assert not glob.glob(str(tmp_path / ".env.zip.zipfuse-tmp-*")), "no temp file: in place"
    data = big_zip.read_bytes()
    assert data[: len(before)] == before, "the old version's bytes are never overwritten"
    if stage == "append-before-write":
        assert data == before
    if stage in ("append-before-fsync", "append-done"):  # the new end records are there
        assert names(big_zip)["payload.bin"] == b"commit me\n" * 3000
    else:  # the old archive stays complete up to its old end
        (tmp_path / "old.zip").write_bytes(data[: len(before)])
        assert names(tmp_path / "old.zip") == old
    note = api.recover(str(big_zip))
    assert note is not None
    if stage != "append-done":
        # cut back to the old version, then the change committed as today
        assert "recovered" in note
    got = names(big_zip)
    assert got["payload.bin"] == b"commit me\n" * 3000 and got["keep.txt"] == b"original\n"
    assert {k: v for k, v in got.items() if k != "payload.bin"} == old
    assert api.recover(str(big_zip)) is None  # nothing left behind
    _check_standard(big_zip)
    with mounted(big_zip, mnt):  # a later session works normally and appends again
        (mnt / "after.txt").write_text("after\n")
    assert names(big_zip)["after.txt"] == b"after\n"


def test_torn_or_garbage_tail_falls_back_to_the_previous_end(tmp_path, big_zip):
    """An end record search must not take a half-written tail: a candidate whose directory
    does not parse is skipped for the previous valid end record."""
    old = names(big_zip)
    size = os.path.getsize(big_zip)
    mnt = tmp_path / "mnt"
    with mounted(big_zip, mnt):
        (mnt / "keep.txt").write_text("appended\n")
    assert os.path.getsize(big_zip) > size and os.path.getsize(big_zip) - size < 65_000
    full = big_zip.read_bytes()
    torn = tmp_path / "torn.zip"
    # the new directory and end record half-written: cut inside the new end record
    for cut in (len(full) - 5, len(full) - 30, size + 40):
        torn.write_bytes(full[:cut])
        with open(torn, "rb") as f:
            cd = read_central_directory(f.fileno())
        assert cd.end_offset == size and len(cd.entries) == FILES + 1
        assert {e.name for e in cd.entries} == set(old)
    # garbage that looks like an end record, pointing at a directory that does not parse
    fake = b"PK\x05\x06" + bytes(4) + (3).to_bytes(2, "little") * 2
    fake += (500).to_bytes(4, "little") + (size - 100).to_bytes(4, "little") + bytes(2)
    torn.write_bytes(full[:size] + os.urandom(700) + fake)
    with open(torn, "rb") as f:
        cd = read_central_directory(f.fileno())
    assert len(cd.entries) == FILES + 1 and cd.end_offset == size
    with mounted(torn, tmp_path / "ro", read_only=True):
        assert (tmp_path / "ro" / "keep.txt").read_text() == "original\n"
        assert (tmp_path / "ro" / "lib" / "f09.bin").read_bytes() == old["lib/f09.bin"]


def test_archive_with_trailing_data_is_rewritten(tmp_path, big_zip):
    """Bytes after the end record: the simple safe path (a full rewrite, new inode)."""
    with open(big_zip, "ab") as f:
        f.write(b"trailing data")
    ino = os.stat(big_zip).st_ino
    with mounted(big_zip, tmp_path / "mnt"):
        (tmp_path / "mnt" / "keep.txt").write_text("changed\n")
    assert os.stat(big_zip).st_ino != ino
    assert names(big_zip)["keep.txt"] == b"changed\n"
    _check_standard(big_zip)


def test_conflict_check_still_applies_to_appends(tmp_path, big_zip):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    api.mount(str(big_zip), str(mnt))
    try:
        (mnt / "mine.txt").write_text("my change\n")
        other = tmp_path / "other.zip"
        shutil.copy(big_zip, other)
        with zipfile.ZipFile(other, "a") as z:
            z.writestr("theirs.txt", "their change\n")
        os.replace(other, big_zip)  # someone replaced the archive behind our back
        theirs = big_zip.read_bytes()
        proc = subprocess.run(
            [*ZIPFUSE_CMD, "sync", str(mnt)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode != 0 and "changed by someone else" in proc.stderr
        assert big_zip.read_bytes() == theirs
        conflicts = glob.glob(str(tmp_path / "env.zip.conflict-*"))
        assert len(conflicts) == 1 and names(conflicts[0])["mine.txt"] == b"my change\n"
    finally:
        kill9(api.find_mount(str(mnt)))
        force_cleanup(str(mnt))


def _dead(archive) -> int:
    """Bytes before the directory that no entry's local header and data use."""
    with open(archive, "rb") as f:
        cd = read_central_directory(f.fileno())
    used = sum(
        30 + len(e.raw_name or e.name.encode()) + len(e.extra) + e.compressed_size
        for e in cd.entries
    )
    return cd.cd_offset - used


def test_compact_mounted_and_unmounted(tmp_path, big_zip):
    mnt = tmp_path / "mnt"
    with mounted(big_zip, mnt):
        (mnt / "lib" / "f00.bin").write_bytes(_blob(200))
        api.sync(str(mnt))
        assert _dead(big_zip) > SIZE  # the replaced entry is dead space now
        ino = os.stat(big_zip).st_ino
        proc = subprocess.run(
            [*ZIPFUSE_CMD, "compact", str(mnt)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert "compacted" in proc.stderr
        assert os.stat(big_zip).st_ino != ino  # the atomic full rewrite
        assert _dead(big_zip) < 200  # only local extras a bit longer than the central ones
        assert (mnt / "lib" / "f00.bin").read_bytes()[-40:].endswith(b"file 200\n")
        (mnt / "keep.txt").write_text("after compact\n")  # the mount goes on appending
    got = names(big_zip)
    assert got["keep.txt"] == b"after compact\n" and got["lib/f00.bin"][-40:].endswith(b"200\n")
    assert _dead(big_zip) > 0
    proc = subprocess.run(
        [*ZIPFUSE_CMD, "compact", str(big_zip)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "compacted" in proc.stderr, proc.stderr
    assert _dead(big_zip) < 200
    assert names(big_zip) == got
    _check_standard(big_zip)
    with mounted(big_zip, tmp_path / "ro", read_only=True):
        proc = subprocess.run(
            [*ZIPFUSE_CMD, "compact", str(tmp_path / "ro")], capture_output=True, text=True
        )
        assert proc.returncode != 0 and "not a read-write zipfuse mount" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_append_crossing_zip64_limits_stays_standard(tmp_path, big_zip, monkeypatch):
    """An append whose offsets and count pass the (lowered) zip64 limits writes zip64 records
    for the kept entries and the end; independent readers accept it."""
    from zipfuse.zipwrite import EntryMeta, ZipWriter

    monkeypatch.setattr(ZipWriter, "_zip64_limit", 300_000)
    monkeypatch.setattr(ZipWriter, "_zip64_count_limit", 10)
    old = names(big_zip)
    with open(big_zip, "rb") as f:
        cd = read_central_directory(f.fileno())
    size = os.path.getsize(big_zip)
    fd = os.open(big_zip, os.O_RDWR)
    try:
        w = ZipWriter(fd, start=size)
        w.keep_entries(cd.entries)
        w.add_bytes(EntryMeta("added.txt", 0o100644, 0, 0, 10**18, 10**18), b"appended\n")
        w.finish()
    finally:
        os.close(fd)
    data = big_zip.read_bytes()
    assert b"PK\x06\x06" in data[-200:] and b"PK\x06\x07" in data[-200:]
    _check_standard(big_zip)
    got = names(big_zip)
    assert got == {**old, "added.txt": b"appended\n"}
    with open(big_zip, "rb") as f:
        cd2 = read_central_directory(f.fileno())
    assert cd2.zip64 and cd2.cd_offset > size
    assert [e.header_offset for e in cd2.entries[:-1]] == [e.header_offset for e in cd.entries]


@pytest.mark.parametrize(
    "stage", ["before-rename", "after-rename", "append-entries-written", "append-done"]
)
def test_kill9_during_a_commit_keeps_what_was_changed_while_it_ran(
    tmp_path, big_zip, monkeypatch, stage
):
    """Writers go on while a commit writes; kill -9 at each step (before and after the new
    archive is durable, rewrite and append in place): recover brings back the snapshot and
    every fsync'ed change made during the commit (the records after the journal's mark)."""
    archive = big_zip
    if not stage.startswith("append"):  # a small archive is always rewritten
        archive = tmp_path / "small.zip"
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("keep.txt", "original\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    marker = tmp_path / "paused"
    monkeypatch.setenv("ZIPFUSE_TEST_PAUSE", f"{stage}:{marker}")  # inherited by the daemon
    info = api.mount(str(archive), str(mnt))
    monkeypatch.delenv("ZIPFUSE_TEST_PAUSE")
    payload = b"commit me\n" * 3000
    try:
        (mnt / "payload.bin").write_bytes(payload)
        with paused_sync(mnt, marker) as syncer:
            with open(mnt / "payload.bin", "r+b") as f:  # the commit is storing it: copied first
                f.write(b"CHANGED")
                os.fsync(f.fileno())
            os.chmod(mnt / "keep.txt", 0o600)
            os.rename(mnt / "keep.txt", mnt / "kept.txt")
            with open(mnt / "during.txt", "wb") as f:
                f.write(b"made during the commit\n")
                os.fsync(f.fileno())  # the journal up to here is durable
            kill9(info)
            syncer.wait(60)
    finally:
        force_cleanup(str(mnt))
    note = api.recover(str(archive))
    assert note is not None and "recovered" in note, note
    got = names(archive)
    assert got["payload.bin"] == b"CHANGED" + payload[7:]
    assert got["during.txt"] == b"made during the commit\n"
    assert got["kept.txt"] == b"original\n" and "keep.txt" not in got
    with zipfile.ZipFile(archive) as z:
        assert (z.getinfo("kept.txt").external_attr >> 16) & 0o777 == 0o600
    assert api.recover(str(archive)) is None  # nothing left behind
    _check_standard(archive)


def test_new_reader_while_a_large_append_is_in_flight(tmp_path, big_zip, monkeypatch):
    """A read-only mount started while a writer's append has written megabytes of entries but
    no end records yet mounts the previous version (found past the last 64 KiB), and reads
    on after the append completes."""
    old = names(big_zip)
    size = os.path.getsize(big_zip)
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    marker = tmp_path / "paused"
    monkeypatch.setenv("ZIPFUSE_TEST_PAUSE", f"append-entries-written:{marker}")
    api.mount(str(big_zip), str(rw))
    monkeypatch.delenv("ZIPFUSE_TEST_PAUSE")
    payload = os.urandom(3 << 20)
    try:
        (rw / "payload.bin").write_bytes(payload)
        with paused_sync(rw, marker) as syncer:
            assert os.path.getsize(big_zip) - size > 1 << 20, "a torn tail of more than 1 MB"
            with mounted(big_zip, ro, read_only=True):
                assert not (ro / "payload.bin").exists()
                assert (ro / "keep.txt").read_text() == "original\n"
                marker.unlink()  # the writer goes on
                _, err = syncer.communicate(timeout=120)
                assert syncer.returncode == 0, err
                for name, data in old.items():
                    assert (ro / name).read_bytes() == data
            api.unmount(str(rw))
    finally:
        marker.unlink(missing_ok=True)
        force_cleanup(str(rw))
    assert names(big_zip)["payload.bin"] == payload
    _check_standard(big_zip)


def test_folders_nobody_listed_read_right_after_appends(tmp_path, big_zip):
    """A small commit plans from what was touched: folders never listed stay unlisted across
    it, their entries renumbered (the first entry of the archive is the one replaced), and
    read the right bytes afterwards, through the same mount and a new one."""
    with zipfile.ZipFile(big_zip, "a") as z:
        for i in range(30):
            z.writestr(f"other/sub{i % 3}/g{i}.txt", f"other {i}\n")
    old = names(big_zip)
    ino = os.stat(big_zip).st_ino
    mnt = tmp_path / "mnt"
    with mounted(big_zip, mnt):
        for n in range(3):  # keep.txt is entry 0: every later index shifts each time
            (mnt / "keep.txt").write_text(f"changed {n}\n")
            (mnt / f"new{n}.txt").write_text(f"new {n}\n")
            proc = subprocess.run(
                [*ZIPFUSE_CMD, "sync", str(mnt)], capture_output=True, text=True, timeout=120
            )
            assert proc.returncode == 0, proc.stderr
            assert os.stat(big_zip).st_ino == ino, "appended in place"
        seen = {
            str(p.relative_to(mnt)): p.read_bytes()
            for p in (mnt / "other").rglob("*")
            if p.is_file()
        }
        assert (mnt / "lib" / "f07.bin").read_bytes() == old["lib/f07.bin"]
    want = {k: v for k, v in old.items() if k.startswith("other/")}
    assert seen == want
    got = names(big_zip)
    assert got["keep.txt"] == b"changed 2\n" and got["new2.txt"] == b"new 2\n"
    assert {k: v for k, v in got.items() if k.startswith(("other/", "lib/"))} == {
        k: v for k, v in old.items() if k.startswith(("other/", "lib/"))
    }
    _check_standard(big_zip)


def test_entries_decoded_late_read_right_across_appends_and_a_rewrite(tmp_path):
    """An archive of Info-ZIP's zip: a listing decodes no entry (each is decoded from the
    archive when first read). Files listed but not read before small commits (appended, the
    first entries replaced so every later index shifts) and a compaction (full rewrite) read
    their own bytes afterwards; a listed file deleted while open reads on after the commit."""
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "other" / "sub").mkdir(parents=True)
    (src / "keep.txt").write_text("original\n")
    want = {"keep.txt": b"original\n"}
    for i in range(FILES):
        want[f"lib/f{i:02d}.bin"] = _blob(i)
        want[f"other/sub/g{i}.txt"] = f"other {i}\n".encode()
    for rel, data in want.items():
        (src / rel).write_bytes(data)
    archive = tmp_path / "iz.zip"
    subprocess.run(["zip", "-q", "-r", "-y", str(archive), "."], cwd=src, check=True, timeout=60)
    ino = os.stat(archive).st_ino
    mnt = tmp_path / "mnt"
    with mounted(archive, mnt):
        listed = {p.name: p.lstat().st_size for p in (mnt / "lib").iterdir()}  # READDIRPLUS
        assert listed == {k[4:]: len(v) for k, v in want.items() if k.startswith("lib/")}
        held = open(mnt / "lib" / "f01.bin", "rb")  # noqa: SIM115  # listed, open, not read
        try:
            os.unlink(mnt / "lib" / "f01.bin")
            for n in range(2):
                (mnt / "keep.txt").write_text(f"changed {n}\n")
                api.sync(str(mnt))
                assert os.stat(archive).st_ino == ino, "appended in place"
            assert held.read() == want["lib/f01.bin"]
            for i in range(2, FILES, 2):
                assert (mnt / "lib" / f"f{i:02d}.bin").read_bytes() == want[f"lib/f{i:02d}.bin"]
            proc = subprocess.run(
                [*ZIPFUSE_CMD, "compact", str(mnt)], capture_output=True, text=True, timeout=120
            )
            assert proc.returncode == 0, proc.stderr
            assert os.stat(archive).st_ino != ino  # the full rewrite
            for i in range(3, FILES, 2):
                assert (mnt / "lib" / f"f{i:02d}.bin").read_bytes() == want[f"lib/f{i:02d}.bin"]
            assert {
                str(p.relative_to(mnt)): p.read_bytes() for p in (mnt / "other").rglob("*.txt")
            } == {k: v for k, v in want.items() if k.startswith("other/")}
        finally:
            held.close()
    got = names(archive)
    del want["lib/f01.bin"]
    want["keep.txt"] = b"changed 1\n"
    assert got == want
    _check_standard(archive)
