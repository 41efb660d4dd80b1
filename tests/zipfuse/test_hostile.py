"""Hostile and broken archives through real mounts: names, bombs, broken files, error boundary.

What must hold whatever the archive contains: nothing appears outside the mountpoint, the daemon
never crashes, hangs or allocates without bound, a damaged entry fails only its own reads (EIO,
logged), and a broken archive fails at mount time with one line on stderr.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from tests.conftest import force_cleanup, mounted
from tests.zipfuse import hostile_zip as hz
from zipfuse import registry
from zipfuse.names import sanitize

pytestmark = pytest.mark.usefixtures("fuse")

MEMORY_LIMIT_KB = 200 * 1024  # peak resident memory allowed to a daemon reading a bomb
MOUNT_CMD_TIMEOUT = 60


# ------------------------------------------------------------------------------ helpers
def daemon_hwm_kb(pid: int) -> int:
    """Peak resident set size (VmHWM) of the daemon, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def assert_memory_bounded(pid: int) -> None:
    hwm = daemon_hwm_kb(pid)
    print(f"daemon {pid} peak RSS (VmHWM): {hwm // 1024} MiB")
    assert hwm < MEMORY_LIMIT_KB, f"daemon peaked at {hwm // 1024} MiB"


def daemon_log(pid: int) -> str:
    rec = next(r for r in registry.records() if int(r["pid"]) == pid)
    with open(rec["log"], errors="replace") as f:
        return f.read()


def within(seconds: float, fn, *args):
    """Run ``fn(*args)`` in a thread and fail the test if it does not return in time: a hung
    daemon fails the test, and the mount cleanup (which kills the daemon) frees the thread."""
    result: list = []

    def run() -> None:
        try:
            result.append((True, fn(*args)))
        except BaseException as exc:  # handed to the test thread
            result.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if not result:
        raise AssertionError(f"{getattr(fn, '__name__', fn)}{args!r} hung for {seconds} s")
    ok, value = result[0]
    if not ok:
        raise value
    return value


def read_errno(path: Path, *, timeout: float = 120) -> int | None:
    """Read ``path`` to its end; the errno that stopped it (None: no error). Must not hang."""
    return within(timeout, _read_errno, path)


def _read_errno(path: Path, offset: int = 0, size: int = 1 << 20) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        return exc.errno
    try:
        while True:
            data = os.pread(fd, size, offset)
            if not data:
                return None
            offset += len(data)
    except OSError as exc:
        return exc.errno
    finally:
        os.close(fd)


def assert_alive(mnt: Path, probe: str, content: bytes) -> None:
    """The mount still answers: listing, stat and a read of another file work."""
    assert probe in within(60, os.listdir, mnt)
    assert within(60, (mnt / probe).read_bytes) == content
    assert os.path.realpath(mnt) in registry.fuse_mounts()


def zipfuse_cli(*args: str, timeout: float = MOUNT_CMD_TIMEOUT) -> subprocess.CompletedProcess:
    """The zipfuse command of the code under test (not whatever ``zipfuse`` is on $PATH)."""
    return subprocess.run(
        [sys.executable, "-m", "zipfuse", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_mount_fails(
    archive: Path, mnt: Path, *words: str, max_seconds: float = 20, timeout: float = 60
) -> str:
    """``zipfuse mount`` refuses quickly, with exactly one line on stderr and no mount left."""
    mnt.mkdir(exist_ok=True)
    start = time.monotonic()
    try:
        proc = zipfuse_cli("mount", "--read-only", str(archive), str(mnt), timeout=timeout)
        elapsed = time.monotonic() - start
        assert proc.returncode != 0, f"{archive.name} was mounted"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        for word in words:
            assert word in lines[0], lines[0]
        assert elapsed < max_seconds, f"refusing {archive.name} took {elapsed:.1f} s"
        assert os.path.realpath(mnt) not in registry.fuse_mounts()
        return lines[0]
    finally:
        force_cleanup(str(mnt))


# ------------------------------------------------------------------------------ names
# (name as stored, payload, visible path or None when the entry must not be visible)
HOSTILE_NAMES: list[tuple[bytes, bytes]] = [
    (b"../evil", b"escape 1"),
    (b"../../canary/evil", b"escape 2"),
    (b"a/../../b", b"escape 3"),
    (b"a/b/../../../c", b"escape 4"),
    (b"/abs/path", b"absolute"),
    (b"./x", b"dot slash"),
    (b"a//b", b"double slash"),
    (b"a/./c", b"dot component"),
    (b"nul\0name", b"nul"),
    (b"nul/\0", b"nul component"),
    (b"n" * 300, b"long name"),
    (b"deep/" + b"m" * 256 + b"/f", b"long component"),
    (b"ok/" + b"k" * 255, b"255 bytes is fine"),
    (b"..\\windows", b"backslash is a character"),
    (b"...", b"three dots is a name"),
    (b".", b"dot"),
    (b"/", b"slash"),
    (b"", b"empty"),
    (b"dup", b"first"),
    (b"dup", b"second"),
    (b"tfile", b"file before dir"),
    (b"tfile/", b""),
    (b"dfirst/", b""),
    (b"dfirst", b"file after dir"),
    (b"shadow", b"shadowed by implicit dir"),
    (b"shadow/inner", b"inner"),
    (b"\xff\xfe raw bytes", b"undecodable"),
]

EXPECTED_FILES = {
    "abs/path": b"absolute",
    "x": b"dot slash",
    "a/b": b"double slash",
    "a/c": b"dot component",
    "ok/" + "k" * 255: b"255 bytes is fine",
    "..\\windows": b"backslash is a character",
    "...": b"three dots is a name",
    "dup": b"second",
    "shadow/inner": b"inner",
    # not UTF-8 and not flagged: CP437, like unzip
    b"\xff\xfe raw bytes".decode("cp437"): b"undecodable",
}
EXPECTED_DIRS = {"abs", "a", "ok", "tfile", "dfirst", "shadow"}
EXPECTED_LINKS = {"outlink": b"../canary/pwned", "abslink": b"/tmp/zipfuse-hostile-nowhere"}


def hostile_names_archive(path: Path) -> None:
    members = []
    for name, data in HOSTILE_NAMES:
        if name.endswith(b"/"):
            members.append(hz.directory(name))
        else:
            members.append(hz.deflated(name, data))
    for name, target in EXPECTED_LINKS.items():
        members.append(hz.symlink(name, target))
    for m in members:
        if not m.name.isascii():
            m.flags = 0  # no UTF-8 flag: raw bytes, decoded like unzip does on Unix
    hz.write(path, members)


def visible_tree(mnt: Path) -> tuple[dict[str, bytes], set[str], dict[str, bytes]]:
    """Files with content, directories, symlinks with target; every path checked to be inside."""
    root = os.path.realpath(mnt)
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    links: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(mnt):
        assert os.path.realpath(dirpath).startswith(root + os.sep) or dirpath == str(mnt)
        for name in dirnames + filenames:
            assert name not in ("", ".", "..") and "/" not in name and "\0" not in name
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, mnt)
            assert ".." not in rel.split(os.sep), rel
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                links[rel] = os.readlink(os.fsencode(full))
                continue
            assert os.path.realpath(full).startswith(root + os.sep), full
            if stat.S_ISDIR(st.st_mode):
                dirs.add(rel)
            else:
                with open(full, "rb") as f:
                    files[rel] = f.read()
    return files, dirs, links


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """tmp_path/box holds the archive and the mountpoint; tmp_path/canary must stay empty."""
    (tmp_path / "canary").mkdir()
    (tmp_path / "box").mkdir()
    return tmp_path


def assert_nothing_escaped(sandbox: Path, *allowed: str, mounted: bool = True) -> None:
    """The canary stays empty; beside the archive only zipfuse's own files (a lock; temp files
    while mounted) may appear."""
    assert os.listdir(sandbox / "canary") == []
    assert not os.path.lexists("/tmp/zipfuse-hostile-nowhere")
    extra = {n for n in os.listdir(sandbox) if not n.endswith(".zipfuse-lock")} - {"canary", "box"}
    assert not extra, extra
    inside = set(os.listdir(sandbox / "box")) - {"mnt", *allowed}
    own = {n for n in inside if any(n.startswith(f".{a}.zipfuse-") for a in allowed)}
    if not mounted:
        own = {n for n in own if "tmp" not in n}
    assert inside == own, inside - own


@pytest.mark.parametrize("read_only", [True, False], ids=["ro", "rw"])
def test_hostile_names_stay_inside(sandbox: Path, read_only: bool) -> None:
    archive = sandbox / "box" / "names.zip"
    hostile_names_archive(archive)
    mnt = sandbox / "box" / "mnt"
    with mounted(archive, mnt, read_only=read_only):
        files, dirs, links = visible_tree(mnt)
        assert files == EXPECTED_FILES
        assert dirs == EXPECTED_DIRS
        assert links == {k: v for k, v in EXPECTED_LINKS.items()}
        assert os.listdir(mnt / "tfile") == [] and os.listdir(mnt / "dfirst") == []
        for bad in ("..", "../evil", "evil", "c", "b", "nul"):
            assert not os.path.lexists(mnt / bad) or bad == ".."
        if not read_only:
            (mnt / "new.txt").write_bytes(b"written through the mount")
            os.rename(mnt / "x", mnt / "a" / "x")
        assert_nothing_escaped(sandbox, "names.zip")
    assert_nothing_escaped(sandbox, "names.zip", mounted=False)
    if read_only:
        return
    # The committed archive is clean: every name is already in sanitised form.
    proc = subprocess.run(["unzip", "-tq", str(archive)], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with zipfile.ZipFile(archive) as zf:
        names = [i.filename for i in zf.infolist()]
        assert zf.read("a/x") == b"dot slash" and zf.read("new.txt").startswith(b"written")
    assert len(names) == len(set(names))
    for name in names:
        parts = tuple(name.rstrip("/").split("/"))
        assert sanitize(name) == parts, name
        assert ".." not in parts and not name.startswith("/")
    # Extracting it with unzip stays inside the target directory too.
    out = sandbox / "box" / "out"
    out.mkdir()
    subprocess.run(["unzip", "-q", str(archive), "-d", str(out)], check=True, timeout=60)
    assert_nothing_escaped(sandbox, "names.zip", "out", mounted=False)
    # And a second mount shows the committed tree.
    with mounted(archive, mnt, read_only=True):
        files, dirs, links = visible_tree(mnt)
        want = dict(EXPECTED_FILES, **{"new.txt": b"written through the mount"})
        want["a/x"] = want.pop("x")
        assert files == want and links == EXPECTED_LINKS


def test_symlink_with_oversized_target_is_a_file(sandbox: Path) -> None:
    """A "symlink" whose target is longer than PATH_MAX is shown as a regular file (no huge
    readlink): the target text is readable as data."""
    archive = sandbox / "box" / "links.zip"
    long_target = b"t/" * 5000
    members = [hz.symlink("long", long_target), hz.symlink("short", b"x" * 4095)]
    members[0].payload = zlib.compress(long_target, 9)[2:-4]
    members[0].method = 8
    hz.write(archive, members)
    mnt = sandbox / "box" / "mnt"
    with mounted(archive, mnt, read_only=True):
        assert stat.S_ISREG(os.lstat(mnt / "long").st_mode)
        assert (mnt / "long").read_bytes() == long_target
        assert os.readlink(mnt / "short") == "x" * 4095
    assert_nothing_escaped(sandbox, "links.zip", mounted=False)


def walk_down(mnt: Path, name: str) -> tuple[int, list[str]]:
    """Descend through ``name`` directories with openat (no path gets long); depth and the
    listing at the bottom."""
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    depth = 0
    try:
        while True:
            try:
                nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            except (NotADirectoryError, FileNotFoundError):
                break
            os.close(fd)
            fd, depth = nfd, depth + 1
        return depth, os.listdir(fd)
    finally:
        os.close(fd)


def test_very_deep_paths_mount(tmp_path: Path) -> None:
    """A name of 1000 components (the limit) mounts like any other."""
    archive = tmp_path / "deep.zip"
    hz.write(archive, [hz.stored("d/" * 999 + "f", b"deep"), hz.stored("probe", b"ok")])
    mnt = tmp_path / "mnt"
    with mounted(archive, mnt, read_only=True):
        assert within(120, walk_down, mnt, "d") == (999, ["f"])


def test_odd_symlink_targets(tmp_path: Path) -> None:
    """Empty targets, NUL inside, absolute and escaping targets: readlink answers (the kernel
    cuts at NUL), nothing is followed by the daemon, the mount stays up."""
    archive = tmp_path / "odd.zip"
    links = {"empty": b"", "nul": b"a\0b", "abs": b"/etc/passwd", "up": b"../../../../x"}
    hz.write(archive, [hz.symlink(n, t) for n, t in links.items()] + [hz.stored("probe", b"ok")])
    mnt = tmp_path / "mnt"
    with mounted(archive, mnt, read_only=True):
        for name, target in links.items():
            got = within(60, os.readlink, os.fsencode(mnt / name))
            assert got == target.split(b"\0")[0], name
            assert stat.S_ISLNK(os.lstat(mnt / name).st_mode)
        assert_alive(mnt, "probe", b"ok")


# ------------------------------------------------------------------------------ zip bombs
GIB = 1 << 30


@pytest.fixture(scope="module")
def zero_gib_stream() -> bytes:
    return hz.zero_deflate_stream(GIB)


@pytest.mark.slow
def test_gib_of_zeros_reads_in_bounded_memory(tmp_path: Path, zero_gib_stream: bytes) -> None:
    archive = tmp_path / "zeros.zip"
    bomb = hz.Member(b"zeros.bin", zero_gib_stream, 8, hz.zero_crc(GIB), GIB)
    hz.write(archive, [bomb, hz.stored("probe", b"still here")])
    assert archive.stat().st_size < 2 << 20
    mnt = tmp_path / "mnt"
    with mounted(archive, mnt, read_only=True) as info:
        assert (mnt / "zeros.bin").stat().st_size == GIB
        within(900, read_all_zeros, mnt / "zeros.bin")
        assert_alive(mnt, "probe", b"still here")
        assert_memory_bounded(info.pid)


def read_all_zeros(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        total, zeros = 0, bytes(1 << 20)
        while chunk := os.read(fd, 1 << 20):
            assert chunk == zeros[: len(chunk)]
            total += len(chunk)
        assert total == GIB
        assert os.pread(fd, 4096, GIB) == b""  # nothing beyond the declared size
        assert os.pread(fd, 4096, GIB + 12345) == b""
    finally:
        os.close(fd)


def liar(name: str, stream: bytes, declared: int, method: int = 8) -> hz.Member:
    """An entry that declares ``declared`` bytes (with the CRC of that many zeros) but whose
    data inflates to much more: only the size check can notice."""
    return hz.Member(name.encode(), stream, method, hz.zero_crc(declared), declared)


def read_some_zeros(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 1 << 20, 0) == bytes(1 << 20)
        assert os.pread(fd, 1 << 20, 6 << 20) == bytes(1 << 20)
    finally:
        os.close(fd)


def test_data_inflating_past_declared_size(tmp_path: Path, zero_gib_stream: bytes) -> None:
    """Small (decoded in memory) and large (streamed) entries whose data goes on past their
    declared size: EIO and a log line naming the entry, bounded memory, the mount stays up."""
    archive = tmp_path / "liars.zip"
    members = [
        liar("small_liar.bin", zero_gib_stream, 1 << 20),
        liar("big_liar.bin", zero_gib_stream, 64 << 20),
        liar("zero_liar.bin", zero_gib_stream, 0),
        hz.stored("probe", b"still here"),
    ]
    d64, d64_size = hz.deflate64_zero_bomb(20000)  # 1.3 GB from 72 KB
    members.append(liar("d64_liar.bin", d64, 1 << 20, method=9))
    members.append(hz.Member(b"d64_honest.bin", d64, 9, hz.zero_crc(d64_size), d64_size))
    hz.write(archive, members)
    mnt = tmp_path / "mnt"
    with mounted(archive, mnt, read_only=True) as info:
        for name in ("small_liar.bin", "big_liar.bin", "d64_liar.bin"):
            assert read_errno(mnt / name) == errno.EIO, name
            assert_alive(mnt, "probe", b"still here")
            # the first bytes of a streamed liar were handed out unverified; the end fails
        assert within(60, (mnt / "zero_liar.bin").read_bytes) == b""
        with open(mnt / "big_liar.bin", "rb") as f:
            f.seek(64 << 20)
            assert f.read() == b""
        # the honest Deflate64 bomb: read a stretch of it (the start, then a skip forward)
        within(120, read_some_zeros, mnt / "d64_honest.bin")
        assert_alive(mnt, "probe", b"still here")
        assert_memory_bounded(info.pid)
        log = daemon_log(info.pid)
    for name in ("small_liar.bin", "big_liar.bin", "d64_liar.bin"):
        lines = [ln for ln in log.splitlines() if name in ln]
        assert any("past its declared size" in ln for ln in lines), (name, log[-3000:])


def write_over(path: Path, data: bytes, truncate: bool) -> None:
    with open(path, "wb" if truncate else "r+b") as f:
        f.write(data)


def test_bombs_in_a_read_write_mount(tmp_path: Path, zero_gib_stream: bytes) -> None:
    """Writing into a liar needs its old bytes (copy-up): that fails with EIO, while replacing
    it (O_TRUNC) works. The commit copies the bomb entries as they are, in bounded memory."""
    archive = tmp_path / "rw.zip"
    hz.write(
        archive,
        [
            liar("liar.bin", zero_gib_stream, 1 << 20),
            liar("liar2.bin", zero_gib_stream, 1 << 20),
            hz.Member(b"zeros.bin", zero_gib_stream, 8, hz.zero_crc(GIB), GIB),
            hz.stored("probe", b"still here"),
        ],
    )
    mnt = tmp_path / "mnt"
    with mounted(archive, mnt) as info:
        with pytest.raises(OSError) as exc:
            within(60, write_over, mnt / "liar.bin", b"patch", False)
        assert exc.value.errno == errno.EIO
        within(60, write_over, mnt / "liar2.bin", b"replaced", True)
        assert within(60, (mnt / "liar2.bin").read_bytes) == b"replaced"
        within(60, write_over, mnt / "new.txt", b"new", True)
        assert_alive(mnt, "probe", b"still here")
        assert_memory_bounded(info.pid)
    with zipfile.ZipFile(archive) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        assert zf.read("liar2.bin") == b"replaced" and zf.read("new.txt") == b"new"
        assert infos["zeros.bin"].file_size == GIB
        assert infos["zeros.bin"].compress_size == len(zero_gib_stream)  # copied as it was
        assert infos["liar.bin"].file_size == 1 << 20
    with mounted(archive, mnt, read_only=True):
        assert read_errno(mnt / "liar.bin") == errno.EIO  # still the same bomb, still refused


def test_zstd_and_lzma_bombs(tmp_path: Path) -> None:
    """zstd and LZMA entries: small declared size over huge data, and LZMA properties that ask
    for a 4 GiB dictionary."""
    from zipfuse.entryreader import supported_method

    zeros = bytes(1 << 20)
    huge_dict = hz.lzma_zip_payload([zeros] * 96, dict_size_field=0xFFFFFFFF)  # 96 MiB
    members = [
        liar("lzma_liar.bin", huge_dict, 1 << 20, method=14),
        hz.Member(b"lzma_bigdict.bin", huge_dict, 14, hz.zero_crc(96 << 20), 96 << 20),
        hz.stored("probe", b"still here"),
    ]
    small = hz.lzma_zip_payload([zeros] * 8, dict_size_field=0xFFFFFFFF)
    members.append(hz.Member(b"lzma_ok.bin", small, 14, hz.zero_crc(8 << 20), 8 << 20))
    if supported_method(93):
        import zstandard

        cobj = zstandard.ZstdCompressor(level=3).compressobj()
        body = b"".join(cobj.compress(zeros) for _ in range(512)) + cobj.flush()  # 512 MiB
        members.append(liar("zstd_liar.bin", body, 1 << 20, method=93))
        members.append(liar("zstd_big_liar.bin", body, 32 << 20, method=93))
    archive = tmp_path / "bombs.zip"
    hz.write(archive, members)
    mnt = tmp_path / "mnt"
    with mounted(archive, mnt, read_only=True) as info:
        assert read_errno(mnt / "lzma_liar.bin") == errno.EIO
        # 96 MiB with a dictionary as large as the file: more than the 64 MiB limit
        assert read_errno(mnt / "lzma_bigdict.bin") == errno.EIO
        # 8 MiB whose header asks for 4 GiB: the dictionary is cut to the entry size
        assert within(120, (mnt / "lzma_ok.bin").read_bytes) == bytes(8 << 20)
        if supported_method(93):
            assert read_errno(mnt / "zstd_liar.bin") == errno.EIO
            assert read_errno(mnt / "zstd_big_liar.bin") == errno.EIO
        assert_alive(mnt, "probe", b"still here")
        assert_memory_bounded(info.pid)
        log = daemon_log(info.pid)
    assert "past its declared size" in log and "dictionary" in log


def overlap_archives(tmp_path: Path) -> dict[str, Path]:
    """Archives whose structure is hostile: overlapping entries, shared local headers,
    impossible counts, offsets into the central directory, impossible sizes."""
    out: dict[str, Path] = {}
    kernel = hz.zero_deflate_stream(16 << 20)

    def put(name: str, data: bytes) -> None:
        out[name] = tmp_path / f"{name}.zip"
        out[name].write_bytes(data)

    a = hz.Member(b"a", kernel, 8, hz.zero_crc(16 << 20), 16 << 20)
    # 100 central records all naming the one local header: 1.6 GB from 16 KB
    put(
        "shared_header",
        hz.build([a], aliases=[(hz.Member(f"copy{i}".encode(), b"", 8, a.crc, a.usize,
                                          csize=len(kernel)), 0) for i in range(100)]),
    )  # fmt: skip
    # zbsm style: each entry's compressed data runs over the following local headers
    members = [hz.stored(f"f{i}", b"x" * 10) for i in range(5)]
    data = bytearray(hz.build(members))
    big = hz.Member(b"f0", b"", 0, 0, 0, csize=len(data) - 200)
    first_cd = data.index(b"PK\x01\x02")
    rec = hz.central_record(big, 0)
    data[first_cd : first_cd + hz.CDH.size] = rec[: hz.CDH.size]
    put("overlapping", bytes(data))
    # an entry whose local header is inside the central directory
    members = [hz.stored("x", b"data"), hz.stored("y", b"more")]
    plain = hz.build(members)
    cd_start = plain.index(b"PK\x01\x02")
    y_offset = len(hz.local_header(members[0])) + 4
    put("offset_into_cd", hz.build(members, offset_shift={1: cd_start - y_offset}))
    # end records claiming more entries than the directory can hold
    put("huge_count", hz.build(members, count=0xFFFF))
    put("huge_count64", hz.build(members, count64=2**64 - 1))
    # zip64 size of 2**64 - 1 bytes (no file can be that large)
    put("huge_size", hz.build([hz.Member(b"big", b"", 0, 0, 2**64 - 1)]))
    return out


def test_hostile_structures_refused_at_mount(tmp_path: Path) -> None:
    archives = overlap_archives(tmp_path)
    expect = {
        "shared_header": "overlap",
        "overlapping": "overlap",
        "offset_into_cd": "overlaps the central directory",
        "huge_count": "entry count",
        "huge_count64": "entry count",
        "huge_size": "impossible size",
    }
    for name, path in archives.items():
        assert_mount_fails(path, tmp_path / "mnt", path.name, expect[name])


# ------------------------------------------------------------------------------ broken archives
@pytest.fixture
def good_archive(tmp_path: Path) -> Path:
    path = tmp_path / "good.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"dir/file{i}.txt", f"content {i}\n" * 50)
        zf.comment = b""
    return path


def test_truncated_archives_fail_fast(tmp_path: Path, good_archive: Path) -> None:
    data = good_archive.read_bytes()
    cd = data.index(b"PK\x01\x02")
    cuts = sorted({1, 4, 29, 100, cd - 1, cd, cd + 10, len(data) - 23, len(data) - 1})
    for n in cuts:
        cut = tmp_path / f"cut{n}.zip"
        cut.write_bytes(data[:n])
        assert_mount_fails(cut, tmp_path / "mnt", cut.name)


def test_bit_flipped_directory_fails_fast(tmp_path: Path, good_archive: Path) -> None:
    data = good_archive.read_bytes()
    cd = data.index(b"PK\x01\x02")
    eocd = data.rindex(b"PK\x05\x06")
    flips = {
        "cd_signature": (cd + 1, 0x40),
        "name_length": (cd + 28 + 1, 0x80),
        "second_record_signature": (data.index(b"PK\x01\x02", cd + 4), 0x01),
        "eocd_cd_size": (eocd + 12 + 1, 0x01),
        "eocd_signature": (eocd + 2, 0x20),
    }
    for what, (pos, bit) in flips.items():
        mutated = bytearray(data)
        mutated[pos] ^= bit
        path = tmp_path / f"{what}.zip"
        path.write_bytes(bytes(mutated))
        assert_mount_fails(path, tmp_path / "mnt", path.name)


def test_not_an_archive_fails_fast(tmp_path: Path) -> None:
    cases = {
        "text.zip": b"this is not a zip archive\n" * 100,
        "empty.zip": b"",
        "eocd_only_garbage.zip": os.urandom(5000) + b"PK\x05\x06" + b"\xff" * 18,
        "jpeg.zip": b"\xff\xd8\xff\xe0" + bytes(4000),
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        assert_mount_fails(path, tmp_path / "mnt", name)
    (tmp_path / "adir.zip").mkdir()
    assert_mount_fails(tmp_path / "adir.zip", tmp_path / "mnt", "is a directory")
    # read-write mounts of a directory are refused too (not taken as "create a new archive")
    proc = zipfuse_cli("mount", str(tmp_path / "adir.zip"), str(tmp_path / "mnt"))
    force_cleanup(str(tmp_path / "mnt"))
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1


def test_unreadable_archive_fails_fast(tmp_path: Path, good_archive: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode: permission denied cannot happen")
    good_archive.chmod(0)
    try:
        assert_mount_fails(good_archive, tmp_path / "mnt", "Permission denied")
    finally:
        good_archive.chmod(0o644)


def test_fifo_as_archive_does_not_hang(tmp_path: Path) -> None:
    """A FIFO where the archive should be: refused, not a hang."""
    fifo = tmp_path / "pipe.zip"
    os.mkfifo(fifo)
    assert_mount_fails(fifo, tmp_path / "mnt", "pipe.zip", timeout=8)


# ------------------------------------------------------------------------------ error boundary
def test_unexpected_exception_fails_one_request(tmp_path: Path, monkeypatch) -> None:
    """An exception that is no OSError inside a FUSE handler (injected into the entry reader
    through ZIPFUSE_TEST_READ_FAULT): that read gets EIO and a logged traceback, everything
    else keeps working, the unmount is clean."""
    archive = tmp_path / "fault.zip"
    hz.write(
        archive,
        [hz.deflated("dir/boom.txt", b"never read\n"), hz.stored("probe", b"still here")],
    )
    monkeypatch.setenv("ZIPFUSE_TEST_READ_FAULT", "dir/boom.txt")
    mnt = tmp_path / "mnt"
    with mounted(archive, mnt, read_only=True) as info:
        for _ in range(3):
            assert read_errno(mnt / "dir" / "boom.txt") == errno.EIO
            assert_alive(mnt, "probe", b"still here")
        assert os.listdir(mnt / "dir") == ["boom.txt"]
        log = daemon_log(info.pid)
    assert "unexpected error in read" in log and "RuntimeError" in log
    assert "injected fault" in log


def test_unexpected_exception_is_logged_with_the_path(tmp_path: Path, monkeypatch) -> None:
    archive = tmp_path / "fault.zip"
    hz.write(archive, [hz.deflated("dir/boom.txt", b"never read\n")])
    monkeypatch.setenv("ZIPFUSE_TEST_READ_FAULT", "dir/boom.txt")
    mnt = tmp_path / "mnt"
    with mounted(archive, mnt, read_only=True) as info:
        assert read_errno(mnt / "dir" / "boom.txt") == errno.EIO
        log = daemon_log(info.pid)
    # the injected exception's message does not name the entry: the path must come from ops
    lines = [ln for ln in log.splitlines() if "unexpected error" in ln]
    assert lines and all("dir/boom.txt" in ln for ln in lines), lines


def test_mount_survives_many_bad_requests(tmp_path: Path) -> None:
    """Corrupt, encrypted, unsupported and truncated entries side by side, read concurrently."""
    archive = tmp_path / "mixed.zip"
    good = hz.deflated("good.txt", b"good data\n" * 1000)
    corrupt = hz.deflated("corrupt.txt", b"abc" * 10000)
    corrupt.payload = corrupt.payload[:10] + b"\xff" * 20 + corrupt.payload[30:]
    encrypted = hz.deflated("encrypted.txt", b"secret")
    encrypted.flags |= 1
    unknown = hz.deflated("unknown.txt", b"method 77")
    unknown.method = 77
    badcrc = hz.deflated("badcrc.txt", b"crc" * 100)
    badcrc.crc ^= 1
    stored_liar = hz.stored("stored_liar.txt", b"short")
    stored_liar.usize = 10**6
    hz.write(archive, [good, corrupt, encrypted, unknown, badcrc, stored_liar])
    mnt = tmp_path / "mnt"
    expect = {
        "corrupt.txt": errno.EIO,
        "encrypted.txt": errno.EACCES,
        "unknown.txt": errno.EOPNOTSUPP,
        "badcrc.txt": errno.EIO,
        "stored_liar.txt": errno.EIO,
    }
    import concurrent.futures

    with mounted(archive, mnt, read_only=True):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = {pool.submit(read_errno, mnt / name): name for name in list(expect) * 4}
            for fut, name in futures.items():
                assert fut.result(timeout=60) == expect[name], name
        assert (mnt / "good.txt").read_bytes() == b"good data\n" * 1000
        assert sorted(os.listdir(mnt)) == sorted(["good.txt", *expect])
