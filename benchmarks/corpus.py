"""Benchmark corpora: a real Python prefix and seeded synthetic trees, cached on disk.

Every corpus lives in ``CACHE/corpus/NAME/`` and holds:

* ``tree/TOP/...``  the plain directory (served by the ``disk`` system; the source of ``create``),
* ``NAME.zip``      the same tree zipped by Info-ZIP (``zip -ry``), with TOP as its one top folder,
* ``manifest.json`` every entry (kind, size, CRC-32 or link target) plus facts about the corpus,
* ``NAME.sqfs``     built lazily, only when the squashfuse system is selected.

A corpus is built in a temporary folder and renamed into place when complete, so an interrupted
build is never mistaken for a cached one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("ZIPFUSE_BENCH_CACHE", "/var/tmp/zipfuse-bench"))
FORMAT_VERSION = 3  # bump to invalidate cached corpora when the recipe changes

# What the full prefix gets on top of a copy of the running installation (numpy is already there
# because matplotlib, from the bench extra, needs it). pandas is the "one more compiled package".
EXTRA_PACKAGE = "pandas"
FULL_IMPORT = "import numpy, pandas"
QUICK_IMPORT = "import json, decimal, asyncio, email.message, sqlite3, zipfile"

# Files of the running installation that belong to this machine, not to a conda-like prefix.
_PREFIX_EXCLUDE_NAMES = {"_sandboxing_egress_ca.pth"}
_PREFIX_EXCLUDE_PREFIXES = ("__editable__", "zipfuse-", "condafuse-")

# The quick prefix: just the interpreter, libpython and a trimmed standard library.
_QUICK_STDLIB_SKIP = {
    "site-packages",
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "distutils",
    "unittest",
    "venv",
}

Log = Callable[[str], None]


def _nolog(msg: str) -> None:
    pass


@dataclasses.dataclass
class Corpus:
    name: str
    kind: str  # "prefix" or "synthetic"
    dir: Path  # CACHE/corpus/NAME
    top: str  # the one top folder inside the tree and the archive
    meta: dict

    @property
    def tree(self) -> Path:
        """Folder that contains TOP (the disk system's 'mount')."""
        return self.dir / "tree"

    @property
    def zip(self) -> Path:
        return self.dir / f"{self.name}.zip"

    @property
    def sqfs(self) -> Path:
        return self.dir / f"{self.name}.sqfs"

    @property
    def entries(self) -> int:
        return self.meta["entries"]

    @property
    def file_bytes(self) -> int:
        return self.meta["file_bytes"]

    def manifest(self) -> list[list]:
        with open(self.dir / "manifest.json") as f:
            return json.load(f)["entries"]

    def files(self) -> list[tuple[str, int]]:
        """(path relative to the tree root, size) of every regular file, sorted by path."""
        return [(e[0], e[2]) for e in self.manifest() if e[1] == "f"]

    def ensure_squashfs(self, log: Log = _nolog) -> Path:
        if self.sqfs.exists():
            return self.sqfs
        tmp = self.sqfs.with_suffix(f".sqfs.tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)
        log(f"building {self.sqfs.name} with mksquashfs (gzip)")
        t0 = time.monotonic()
        # -keep-as-directory keeps TOP as the image's one top folder, like the zip.
        subprocess.run(
            [
                "mksquashfs",
                str(self.tree / self.top),
                str(tmp),
                "-comp",
                "gzip",
                "-noappend",
                "-keep-as-directory",
                "-quiet",
                "-no-progress",
                "-processors",
                str(os.cpu_count() or 1),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tmp.rename(self.sqfs)
        log(f"built {self.sqfs.name} in {time.monotonic() - t0:.1f} s")
        return self.sqfs


# ---------------------------------------------------------------------------------------------
# shared helpers


def _scan(root: Path, top: str) -> tuple[list[list], dict]:
    """Manifest of root/top: [relpath, kind, size, crc32|link target], sorted by path."""
    entries: list[list] = []
    files = dirs = links = 0
    nbytes = 0
    largest_so: tuple[int, str] = (-1, "")
    stack = [top]
    while stack:
        rel = stack.pop()
        st = os.lstat(root / rel)
        if stat.S_ISDIR(st.st_mode):
            entries.append([rel, "d", 0, 0])
            dirs += 1
            with os.scandir(root / rel) as it:
                stack.extend(f"{rel}/{e.name}" for e in it)
        elif stat.S_ISLNK(st.st_mode):
            entries.append([rel, "l", 0, os.readlink(root / rel)])
            links += 1
        elif stat.S_ISREG(st.st_mode):
            crc = 0
            with open(root / rel, "rb") as f:
                while chunk := f.read(1 << 20):
                    crc = zlib.crc32(chunk, crc)
            entries.append([rel, "f", st.st_size, crc])
            files += 1
            nbytes += st.st_size
            if ".so" in rel.rsplit("/", 1)[-1] and st.st_size > largest_so[0]:
                largest_so = (st.st_size, rel)
    entries.sort(key=lambda e: e[0])
    meta = {
        "entries": len(entries),
        "files": files,
        "dirs": dirs,
        "symlinks": links,
        "file_bytes": nbytes,
        "largest_so": largest_so[1] or None,
        "largest_so_bytes": max(largest_so[0], 0),
    }
    return entries, meta


def _zip_tree(tree: Path, top: str, archive: Path) -> float:
    t0 = time.monotonic()
    archive.unlink(missing_ok=True)
    # -y keeps symlinks as links; default deflate level 6, as a user would make it.
    subprocess.run(["zip", "-qry", str(archive), top], cwd=tree, check=True)
    return time.monotonic() - t0


def _finish(
    tmpdir: Path, final: Path, name: str, kind: str, top: str, extra: dict, log: Log
) -> Corpus:
    tree = tmpdir / "tree"
    log(f"{name}: scanning the tree")
    entries, meta = _scan(tree, top)
    log(f"{name}: {meta['entries']} entries, {meta['file_bytes'] / 1e6:.0f} MB; zipping")
    zip_s = _zip_tree(tree, top, tmpdir / f"{name}.zip")
    meta.update(extra)
    meta.update(
        {
            "name": name,
            "kind": kind,
            "top": top,
            "format_version": FORMAT_VERSION,
            "zip_bytes": (tmpdir / f"{name}.zip").stat().st_size,
            "zip_seconds": round(zip_s, 2),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    with open(tmpdir / "manifest.json", "w") as f:
        json.dump({"meta": meta, "entries": entries}, f)
    if final.exists():
        shutil.rmtree(final)
    tmpdir.rename(final)
    log(f"{name}: ready ({meta['zip_bytes'] / 1e6:.0f} MB zip in {zip_s:.0f} s)")
    return Corpus(name, kind, final, top, meta)


def _cached(cache: Path, name: str) -> Corpus | None:
    d = cache / "corpus" / name
    try:
        with open(d / "manifest.json") as f:
            meta = json.load(f)["meta"]
    except (OSError, ValueError, KeyError):
        return None
    if meta.get("format_version") != FORMAT_VERSION or not (d / f"{name}.zip").exists():
        return None
    if meta.get("kind") == "synthetic" and meta.get("synth_recipe") != SYNTH_RECIPE:
        return None
    return Corpus(name, meta["kind"], d, meta["top"], meta)


def _tmpdir(cache: Path, name: str) -> Path:
    tmp = cache / "corpus" / f".{name}.building.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    # Leftovers of builds that were interrupted.
    for old in (cache / "corpus").glob(f".{name}.building.*"):
        if old != tmp:
            pid = old.name.rsplit(".", 1)[-1]
            if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
                shutil.rmtree(old, ignore_errors=True)
    return tmp


# ---------------------------------------------------------------------------------------------
# the real prefix


def source_prefix() -> Path:
    """The running Python installation (pyenv's base prefix, not a venv)."""
    return Path(sys.base_prefix).resolve()


def _ignore_for_prefix(quick: bool, src_root: Path):
    libdir = src_root / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"

    def ignore(dirpath: str, names: list[str]) -> set[str]:
        skip = {
            n for n in names if n in _PREFIX_EXCLUDE_NAMES or n.startswith(_PREFIX_EXCLUDE_PREFIXES)
        }
        if quick:
            d = Path(dirpath)
            if d == src_root:
                skip |= {n for n in names if n not in ("bin", "lib")}
            elif d == src_root / "bin":
                keep = {f"python{sys.version_info[0]}.{sys.version_info[1]}", "python3", "python"}
                skip |= {n for n in names if n not in keep}
            elif d == src_root / "lib":
                skip |= {n for n in names if not (n == libdir.name or n.startswith("libpython"))}
            elif d == libdir:
                skip |= {n for n in names if n in _QUICK_STDLIB_SKIP or n.startswith("config-")}
            skip |= {n for n in names if n.endswith((".opt-1.pyc", ".opt-2.pyc"))}
        return skip

    return ignore


def _patch_runpath(exe: Path, old_prefix: Path, log: Log) -> None:
    """Make the copied interpreter load the copied libpython ($ORIGIN/../lib), as conda's does.

    pyenv links python with an absolute RUNPATH to its own lib folder. We overwrite that string in
    place with the shorter "$ORIGIN/../lib" padded with NUL bytes, the way conda relocates binary
    prefixes, so no tool beyond Python is needed.
    """
    old = str(old_prefix / "lib").encode() + b"\0"
    new = b"$ORIGIN/../lib\0"
    data = exe.read_bytes()
    n = data.count(old)
    if n != 1 or len(new) > len(old):
        log(f"note: RUNPATH of {exe.name} not patched ({n} matches); LD_LIBRARY_PATH is used")
        return
    data = data.replace(old, new + b"\0" * (len(old) - len(new)))
    mode = exe.stat().st_mode
    tmp = exe.with_name(exe.name + ".patching")
    tmp.write_bytes(data)
    os.chmod(tmp, stat.S_IMODE(mode))
    st = exe.stat()
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    tmp.replace(exe)


def python_in(prefix: Path) -> Path:
    return prefix / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"


def check_prefix_python(prefix: Path, import_stmt: str) -> str:
    """Run the prefix's python by full path; return a line describing where it loaded from."""
    code = (
        f"{import_stmt}\nimport sys\n"
        "maps = open('/proc/self/maps').read()\n"
        "lib = [l.split()[-1] for l in maps.splitlines() if 'libpython' in l]\n"
        "print(sys.prefix, lib[0] if lib else 'static')"
    )
    out = subprocess.run(
        [str(python_in(prefix)), "-I", "-B", "-c", code],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout.strip()
    where, lib = out.rsplit(" ", 1)
    if Path(where).resolve() != prefix.resolve():
        raise RuntimeError(f"the copied python reports sys.prefix={where}, not {prefix}")
    if lib != "static" and not Path(lib).resolve().is_relative_to(prefix.resolve()):
        raise RuntimeError(f"the copied python loaded {lib} from outside the copy")
    return out


def prefix_corpus(cache: Path = DEFAULT_CACHE, quick: bool = False, log: Log = _nolog) -> Corpus:
    name = "prefix-quick" if quick else "prefix-full"
    got = _cached(cache, name)
    if got:
        return got
    src = source_prefix()
    if not quick and (src == Path("/usr") or not (src / "bin").is_dir()):
        # A distribution's python lives in /usr: copying "the installation" would copy the OS.
        raise RuntimeError(
            f"the full prefix corpus copies the running Python installation, and {src} is not a "
            "standalone one; run the suite with a pyenv, conda or python.org build"
        )
    top = "env"
    tmp = _tmpdir(cache, name)
    dst = tmp / "tree" / top
    log(f"{name}: copying {src} ({'stdlib subset' if quick else 'everything'})")
    t0 = time.monotonic()
    shutil.copytree(src, dst, symlinks=True, ignore=_ignore_for_prefix(quick, src))
    _patch_runpath(python_in(dst), src, log)
    extra: dict = {"source_prefix": str(src), "copy_seconds": round(time.monotonic() - t0, 1)}
    if quick:
        import_stmt = QUICK_IMPORT
    else:
        import_stmt = FULL_IMPORT
        log(f"{name}: pip install {EXTRA_PACKAGE} into the copy with its own pip")
        subprocess.run(
            [
                str(python_in(dst)),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--only-binary",
                ":all:",
                "--no-warn-script-location",
                "--disable-pip-version-check",
                EXTRA_PACKAGE,
            ],
            check=True,
            timeout=900,
        )
    extra["loaded"] = check_prefix_python(dst, import_stmt)
    extra["import_stmt"] = import_stmt
    extra["python"] = str(python_in(Path(top)))
    return _finish(tmp, cache / "corpus" / name, name, "prefix", top, extra, log)


# ---------------------------------------------------------------------------------------------
# the synthetic tree


_WORDS_TEXT = (
    "def class import return self value data array index numpy module function error type list "
    "dict from None True False print object config path file name test init lambda yield while "
    "assert float int str bytes raise except finally with"
)
_WORDS = _WORDS_TEXT.split()


def _content_pools(rng: random.Random) -> tuple[bytes, bytes]:
    text = " ".join(
        rng.choice(_WORDS) + ("\n" if rng.random() < 0.12 else "") for _ in range(700_000)
    ).encode()
    binary = rng.randbytes(2 << 20)
    # Machine code compresses about 2-3x: mix random bytes with runs of zeros and repeats.
    mixed = bytearray()
    while len(mixed) < (4 << 20):
        mixed += binary[rng.randrange(len(binary) - 4096) :][: rng.randrange(256, 4096)]
        mixed += bytes(rng.randrange(0, 1024))
    return text[: 4 << 20], bytes(mixed[: 4 << 20])


SYNTH_RECIPE = 2  # bump when the synthetic recipe changes (cached synthetic trees are rebuilt)


def _synthetic_size(rng: random.Random) -> int:
    if rng.random() < 0.0003:  # a few shared-library-sized files
        return rng.randrange(1 << 20, 6 << 20)
    return min(int(rng.lognormvariate(7.3, 1.3)), 1 << 20)  # median ~1.5 KB, mean ~3.5 KB


def synthetic_corpus(
    entries: int, cache: Path = DEFAULT_CACHE, log: Log = _nolog, seed: int = 20261126
) -> Corpus:
    """A seeded tree of exactly ``entries`` entries: ~12% dirs, ~1.5% symlinks, the rest files.

    Sizes are log-normal with a median near 1.5 KB and a mean near 3.5 KB, capped at 1 MB (conda
    environments are mostly small .py/.pyc/metadata files), plus 0.03% files of 1-6 MB. Most
    files are text-like; .so and .pyc files are binary-like and about 2x compressible. Names,
    sizes, contents and mtimes depend only on the seed and the entry count.
    """
    name = f"synth-{entries}"
    got = _cached(cache, name)
    if got:
        return got
    rng = random.Random(seed * 1_000_003 + entries)
    text, binary = _content_pools(rng)
    top = "synth"
    tmp = _tmpdir(cache, name)
    root = tmp / "tree"
    log(f"{name}: generating")
    dirs = [top]
    (root / top).mkdir(parents=True)
    files: list[str] = []
    counts = {"d": 1, "f": 0, "l": 0}
    base_mtime = 1_700_000_000
    n = 1
    while n < entries:
        r = rng.random()
        # Prefer recent folders (packages are filled in bursts) but sometimes go anywhere.
        parent = (
            dirs[-1 - int(rng.expovariate(0.3)) % len(dirs)]
            if rng.random() < 0.8
            else rng.choice(dirs)
        )
        if r < 0.12:
            if parent.count("/") >= 7:  # keep the depth realistic
                parent = parent.rsplit("/", 4)[0]
            d = f"{parent}/{rng.choice(_WORDS)}_{counts['d']}"
            (root / d).mkdir()
            dirs.append(d)
            counts["d"] += 1
        elif r < 0.135 and files:
            target = rng.choice(files[-200:])
            link = f"{parent}/link_{counts['l']}"
            os.symlink(os.path.relpath(target, parent), root / link)
            counts["l"] += 1
        else:
            ext = rng.choice((".py", ".py", ".pyc", ".txt", ".json", ".so", ".h"))
            f = f"{parent}/{rng.choice(_WORDS)}_{counts['f']}{ext}"
            size = _synthetic_size(rng)
            pool = binary if ext in (".so", ".pyc") else text
            if size <= len(pool):
                off = rng.randrange(0, len(pool) - size + 1)
                data = pool[off : off + size]
            else:
                data = (pool * (size // len(pool) + 1))[:size]
            with open(root / f, "wb") as fh:
                fh.write(data)
            t = base_mtime + rng.randrange(0, 30_000_000)
            os.utime(root / f, (t, t))
            files.append(f)
            counts["f"] += 1
        n += 1
    for d in dirs:
        os.utime(root / d, (base_mtime, base_mtime))
    extra = {"seed": seed, "synth_recipe": SYNTH_RECIPE}
    return _finish(tmp, cache / "corpus" / name, name, "synthetic", top, extra, log)


def main() -> None:  # python -m benchmarks.corpus [quick|full|synth N]
    what = sys.argv[1:] or ["quick"]
    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)  # noqa: E731
    if what[0] == "synth":
        c = synthetic_corpus(int(what[1]), log=log)
    else:
        c = prefix_corpus(quick=what[0] == "quick", log=log)
    print(json.dumps(c.meta, indent=1))


if __name__ == "__main__":
    main()
