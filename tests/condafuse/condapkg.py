"""Build real (tiny) conda packages and a local channel for the condafuse tests.

No conda and no network: packages are written with tarfile (``.tar.bz2``) or as a ``.conda``
(an uncompressed zip of two zstd-compressed tars plus ``metadata.json``), and the channel is
indexed with py-rattler's own indexer.

The channel (subdirs ``linux-64`` and ``noarch``):

- ``cfdata 0.1`` (noarch: generic, .tar.bz2): ``share/cfdata/greeting.txt``.
- ``cftool 1.0`` (.tar.bz2) and ``cftool 1.1`` (.conda), depending on ``cfdata``:
  ``bin/cftool`` is a shell script carrying the prefix placeholder (text mode), ``bin/cft`` a
  relative symlink to it, ``etc/conda/activate.d/cftool.sh`` exports ``CFTOOL_ACTIVE``
  and ``etc/conda/deactivate.d/cftool.sh`` unsets it.
- ``python X.Y.Z`` (a stand-in): ``bin/pythonX.Y`` is an absolute symlink to the interpreter
  running the tests, and ``pyvenv.cfg`` makes that interpreter use the env as ``sys.prefix``, so
  noarch: python packages really run.
- ``cfpy 0.1`` (noarch: python): module ``cfpy`` with an entry point ``cfpy = cfpy:main``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

# Any unique string works as placeholder as long as paths.json declares it; conda-build uses a
# padded /opt/anaconda1anaconda2anaconda3 path, and so do we (shorter than 255 on purpose).
PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3" + "_placehold" * 20
STAMP = 1_700_000_000  # fixed mtime/timestamp: reproducible packages
PYVER = "{}.{}.{}".format(*sys.version_info[:3])
PYMM = "{}.{}".format(*sys.version_info[:2])


@dataclass
class Item:
    path: str
    data: bytes = b""
    mode: int = 0o644
    link: str | None = None  # symlink target
    prefix: bool = False  # data contains PLACEHOLDER (text mode)


@dataclass
class Package:
    name: str
    version: str
    subdir: str  # "linux-64" or "noarch"
    items: list[Item]
    depends: list[str] = field(default_factory=list)
    noarch: str | None = None  # "generic" or "python"
    entry_points: list[str] = field(default_factory=list)
    build: str = "0"

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

    def index_json(self) -> dict:
        d = {
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "build_number": 0,
            "depends": self.depends,
            "license": "MIT",
            "subdir": self.subdir,
            "timestamp": STAMP * 1000,
        }
        if self.subdir != "noarch":
            d.update(arch="x86_64", platform="linux")
        if self.noarch:
            d["noarch"] = self.noarch
        return d

    def _target_bytes(self, item: Item) -> bytes:
        target = os.path.normpath(os.path.join(os.path.dirname(item.path), item.link))
        for other in self.items:
            if other.path == target and other.link is None:
                return other.data
        return b""  # dangling or outside the package (absolute link)

    def info_members(self) -> list[tuple[str, bytes]]:
        paths = []
        for it in self.items:
            data = self._target_bytes(it) if it.link is not None else it.data
            entry = {
                "_path": it.path,
                "path_type": "softlink" if it.link is not None else "hardlink",
                "sha256": hashlib.sha256(data).hexdigest(),
                "size_in_bytes": len(data),
            }
            if it.prefix:
                entry.update(file_mode="text", prefix_placeholder=PLACEHOLDER)
            paths.append(entry)
        members = [
            ("info/index.json", json.dumps(self.index_json(), indent=1, sort_keys=True)),
            ("info/paths.json", json.dumps({"paths": paths, "paths_version": 1}, indent=1)),
            ("info/files", "".join(it.path + "\n" for it in self.items)),
            ("info/about.json", json.dumps({"summary": f"condafuse test package {self.name}"})),
        ]
        with_prefix = [it for it in self.items if it.prefix]
        if with_prefix:
            members.append(
                (
                    "info/has_prefix",
                    "".join(f"{PLACEHOLDER} text {it.path}\n" for it in with_prefix),
                )
            )
        if self.entry_points:
            link = {
                "noarch": {"type": "python", "entry_points": self.entry_points},
                "package_metadata_version": 1,
            }
            members.append(("info/link.json", json.dumps(link)))
        return [(n, s.encode()) for n, s in members]


def _tar_add(
    tar: tarfile.TarFile, path: str, data: bytes = b"", mode: int = 0o644, link: str | None = None
) -> None:
    ti = tarfile.TarInfo(path)
    ti.mtime = STAMP
    if link is not None:
        ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, link, 0o777
        tar.addfile(ti)
    else:
        ti.size, ti.mode = len(data), mode
        tar.addfile(ti, io.BytesIO(data))


def _tar_bytes(members, mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for m in members:
            _tar_add(tar, *m)
    return buf.getvalue()


def write_tar_bz2(pkg: Package, out_dir: Path) -> Path:
    out = out_dir / f"{pkg.stem}.tar.bz2"
    members = [(n, d) for n, d in pkg.info_members()]
    members += [(it.path, it.data, it.mode, it.link) for it in pkg.items]
    out.write_bytes(_tar_bytes(members, "w:bz2"))
    return out


def write_conda(pkg: Package, out_dir: Path) -> Path:
    import zstandard

    out = out_dir / f"{pkg.stem}.conda"
    zc = zstandard.ZstdCompressor(level=3)
    info = zc.compress(_tar_bytes(pkg.info_members()))
    body = zc.compress(_tar_bytes([(it.path, it.data, it.mode, it.link) for it in pkg.items]))
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("metadata.json", json.dumps({"conda_pkg_format_version": 2}))
        z.writestr(f"pkg-{pkg.stem}.tar.zst", body)
        z.writestr(f"info-{pkg.stem}.tar.zst", info)
    return out


def tool_script(version: str) -> bytes:
    return (
        "#!/bin/sh\n"
        f'PREFIX="{PLACEHOLDER}"\n'
        f'echo "cftool {version} prefix=$PREFIX"\n'
        'cat "$PREFIX/share/cfdata/greeting.txt"\n'
    ).encode()


def packages(host_python: str | None = None) -> list[tuple[Package, str]]:
    """(package, format) pairs of the test channel."""
    host = os.path.realpath(host_python or sys.executable)
    out: list[tuple[Package, str]] = []
    out.append(
        (
            Package(
                "cfdata",
                "0.1",
                "noarch",
                noarch="generic",
                items=[
                    Item("share/cfdata/greeting.txt", b"greetings from cfdata\n"),
                ],
            ),
            "tar.bz2",
        )
    )
    for version, fmt in (("1.0", "tar.bz2"), ("1.1", "conda")):
        out.append(
            (
                Package(
                    "cftool",
                    version,
                    "linux-64",
                    depends=["cfdata >=0.1"],
                    items=[
                        Item("bin/cftool", tool_script(version), 0o755, prefix=True),
                        Item("bin/cft", link="cftool"),
                        Item("share/cftool/VERSION", f"{version}\n".encode()),
                        Item(
                            "etc/conda/activate.d/cftool.sh",
                            b'export CFTOOL_ACTIVE="on:${CONDA_PREFIX}"\n',
                        ),
                        Item("etc/conda/deactivate.d/cftool.sh", b"unset CFTOOL_ACTIVE\n"),
                    ],
                ),
                fmt,
            )
        )
    out.append(
        (
            Package(
                "python",
                PYVER,
                "linux-64",
                items=[
                    Item(f"bin/python{PYMM}", link=host),
                    Item("bin/python3", link=f"python{PYMM}"),
                    Item("bin/python", link=f"python{PYMM}"),
                    Item(f"lib/python{PYMM}/site-packages/README.txt", b"stand-in python\n"),
                    Item(
                        "pyvenv.cfg",
                        (
                            f"home = {os.path.dirname(host)}\n"
                            "include-system-site-packages = false\n"
                            f"version = {PYVER}\n"
                        ).encode(),
                    ),
                ],
            ),
            "tar.bz2",
        )
    )
    out.append(
        (
            Package(
                "cfpy",
                "0.1",
                "noarch",
                noarch="python",
                depends=["python"],
                entry_points=["cfpy = cfpy:main"],
                items=[
                    Item(
                        "site-packages/cfpy/__init__.py",
                        b"import sys\n\n\ndef main():\n"
                        b"    print('cfpy sys.prefix=' + sys.prefix)\n",
                    ),
                ],
            ),
            "tar.bz2",
        )
    )
    return out


def build_channel(channel: Path, host_python: str | None = None) -> Path:
    """Write the packages into ``channel`` and index it with py-rattler. Returns ``channel``."""
    from rattler.index import index_fs

    channel = channel.resolve()
    for sub in ("linux-64", "noarch"):
        (channel / sub).mkdir(parents=True, exist_ok=True)
    for pkg, fmt in packages(host_python):
        writer = write_conda if fmt == "conda" else write_tar_bz2
        writer(pkg, channel / pkg.subdir)
    t0 = time.perf_counter()
    # target_platform=None indexes every subdir (with a platform given, noarch was skipped).
    asyncio.run(index_fs(channel, target_platform=None, write_zst=False, write_shards=False))
    assert (channel / "noarch" / "repodata.json").exists(), "noarch not indexed"
    assert time.perf_counter() - t0 < 120
    return channel


if __name__ == "__main__":
    print(build_channel(Path(sys.argv[1])))


def pip_package(host_python: str | None = None) -> Package:
    """A real ``pip`` conda package (noarch: python): the pip that the test interpreter has,
    copied with its dist-info, plus the ``pip`` entry point."""
    import importlib.util

    spec = importlib.util.find_spec("pip")
    assert spec is not None and spec.origin, "the test interpreter has no pip"
    src = Path(spec.origin).parent
    site = src.parent
    items = []
    dist_infos = sorted(site.glob("pip-*.dist-info"))
    roots = [src] + dist_infos[:1]
    for root in roots:
        for f in sorted(root.rglob("*")):
            if "__pycache__" in f.parts or not f.is_file() or f.name == "RECORD":
                continue
            items.append(Item(f"site-packages/{f.relative_to(site)}", f.read_bytes()))
    version = dist_infos[0].name[len("pip-") : -len(".dist-info")] if dist_infos else "0"
    return Package(
        "pip",
        version,
        "noarch",
        noarch="python",
        depends=["python"],
        entry_points=["pip = pip._internal.cli.main:main"],
        items=items,
    )


def build_pip_channel(channel: Path) -> Path:
    """A channel holding only ``pip`` (kept apart: the main channel stays small and fast)."""
    from rattler.index import index_fs

    channel = channel.resolve()
    for sub in ("linux-64", "noarch"):
        (channel / sub).mkdir(parents=True, exist_ok=True)
    write_tar_bz2(pip_package(), channel / "noarch")
    asyncio.run(index_fs(channel, target_platform=None, write_zst=False, write_shards=False))
    return channel


def write_wheel(out_dir: Path, name: str = "cfwheel", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel (module NAME with ``hello()``), for pip's offline installs."""
    import base64

    out_dir.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"def hello():\n    return 'hello from " + name.encode() + b"'\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: condapkg\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    out = out_dir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            z.writestr(path, data)
    return out
