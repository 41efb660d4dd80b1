"""condafuse fits conda habits (issue 13), against REAL zipfuse mounts and real conda packages:
conda's ~/.conda/environments.txt, install/update/uninstall into an existing env, environment.yml
(create and export), empty envs, and the small command-line frictions.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import condapkg
import pytest
from cfhelpers import make_stub, read_log

from zipfuse import api

pytestmark = pytest.mark.fuse

RATTLER = ("--frontend", "rattler")


def _mounted(path: Path) -> bool:
    return api.find_mount(str(path)) is not None


def _envs_txt(cf) -> Path:
    return Path(cf.env["HOME"]) / ".conda" / "environments.txt"


def _packages(archive: Path, name: str) -> set[str]:
    """name-version-build of every conda-meta record in the archive (read with zipfile)."""
    with zipfile.ZipFile(archive) as z:
        out = set()
        for n in z.namelist():
            if n.startswith(f"{name}/conda-meta/") and n.endswith(".json"):
                d = json.loads(z.read(n))
                out.add(f"{d['name']}-{d['version']}-{d['build']}")
        return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("condafuse: error:")]


def test_conda_sees_created_imported_envs_and_forgets_removed_ones(fuse, cf, channel, tmp_path):
    """~/.conda/environments.txt: one absolute prefix per line, no duplicates, other lines kept
    as they were, registration again on every mount (conda drops unmounted prefixes)."""
    txt = _envs_txt(cf)
    txt.parent.mkdir()
    txt.write_text("/opt/conda/envs/other\n# a comment conda ignores\n/home/x/env2")  # no \n
    txt.chmod(0o640)
    cf.create("demo", channel, "cftool")
    prefix = str(cf.prefix("demo"))
    assert txt.read_text() == (
        f"/opt/conda/envs/other\n# a comment conda ignores\n/home/x/env2\n{prefix}\n"
    )
    assert txt.stat().st_mode & 0o777 == 0o640  # rewritten in place of the old one, same mode
    assert not [p for p in txt.parent.iterdir() if p.name != "environments.txt"]  # no temp left

    # conda dropped it while unmounted (it does that for missing prefixes): a mount adds it back
    cf.run("unmount", "demo")
    txt.write_text("/opt/conda/envs/other\n")
    cf.run("mount", "demo")
    cf.run("unmount", "demo")
    cf.run("run", "demo", "--", "true")
    assert txt.read_text() == f"/opt/conda/envs/other\n{prefix}\n"  # once, however many mounts

    # import registers the prefix the env will have when mounted
    from condafuse import rattler_backend

    src = tmp_path / "plain-env"
    req = rattler_backend.parse_create_args(
        ["-c", str(channel), "--override-channels", "-q", "cfdata"], env={}
    )
    rattler_backend.create(src, req, tmp_path / "cache")
    proc = cf.run("import", str(src), "imp")
    assert "not mounted" in proc.stderr and "is mounted at" not in proc.stderr
    imp = str(cf.prefix("imp"))
    assert txt.read_text() == f"/opt/conda/envs/other\n{prefix}\n{imp}\n"

    cf.run("remove", "demo", "--yes")
    assert txt.read_text() == f"/opt/conda/envs/other\n{imp}\n"
    cf.run("remove", "imp", "--yes")
    assert txt.read_text() == "/opt/conda/envs/other\n"

    # conda's own switch turns it off
    off = dict(cf.env, CONDA_REGISTER_ENVS="false")
    cf.run(*RATTLER, "create", "quiet", "-c", channel.as_uri(), "--override-channels", env=off)
    assert txt.read_text() == "/opt/conda/envs/other\n"
    cf.run("unmount", "quiet")


def test_install_update_uninstall_with_the_embedded_backend(fuse, cf, channel):
    """A second package into an existing (unmounted) env; then both programs run; update moves
    to the newer build; uninstall drops it; a failed install leaves the archive untouched."""
    cf.create("work", channel, "cftool=1.0")
    cf.run("unmount", "work")
    archive = cf.archives / "work.zip"
    prefix = cf.prefix("work")
    assert _packages(archive, "work") == {"cftool-1.0-0", "cfdata-0.1-0"}

    # no -c: the channel the env's packages came from is searched
    proc = cf.run(*RATTLER, "install", "work", "cfpy")
    assert "+cfpy-0.1-0" in proc.stderr and "the archive is on disk" in proc.stderr
    assert not _mounted(cf.mount_root / "work")  # mounted for the change only
    assert not (cf.mount_root / "work").exists()
    pyver = condapkg.PYVER
    assert _packages(archive, "work") == {
        "cftool-1.0-0",
        "cfdata-0.1-0",
        "cfpy-0.1-0",
        f"python-{pyver}-0",
    }
    assert cf.run("run", "work", "--", "cft").stdout.startswith(f"cftool 1.0 prefix={prefix}\n")
    assert cf.run("run", "work", "--", "cfpy").stdout.strip() == f"cfpy sys.prefix={prefix}"

    # update: the named package moves to its newest build, the rest stays
    proc = cf.run(*RATTLER, "update", "work", "cftool")
    assert "-cftool-1.0-0 +cftool-1.1-0" in proc.stderr
    assert cf.run("run", "work", "--", "cft").stdout.startswith("cftool 1.1 ")
    proc = cf.run(*RATTLER, "update", "work", "--all")
    assert "nothing to change" in proc.stderr and "work is unchanged" in proc.stderr

    # uninstall (and conda's spelling `remove NAME PKG`) removes packages, not the env
    before = _digest(archive)
    proc = cf.run(*RATTLER, "install", "work", "no-such-package", check=False)
    assert proc.returncode == 1 and len(_errors(proc.stderr)) == 1, proc.stderr
    assert "the archive is unchanged" in proc.stderr and "Traceback" not in proc.stderr
    assert _digest(archive) == before and not _mounted(cf.mount_root / "work")
    cf.run(*RATTLER, "uninstall", "work", "cfpy")
    # python was there for cfpy only: it goes too (nobody asked for it)
    assert _packages(archive, "work") == {"cftool-1.1-0", "cfdata-0.1-0"}
    assert cf.run("run", "work", "--", "cfpy", check=False).returncode == 127
    proc = cf.run(*RATTLER, "remove", "work", "cftool", "--yes")
    assert _packages(archive, "work") == set()  # cftool, and cfdata with it
    assert archive.exists()
    with zipfile.ZipFile(archive) as z:
        history = z.read("work/conda-meta/history").decode()
        assert z.testzip() is None
    assert history.count("==> ") == 5  # create, install, update, uninstall, remove
    assert "# remove specs: ['cftool']" in history

    # a change into a read-write mount that is up already: used and left up
    cf.run("mount", "work")
    cf.run(*RATTLER, "install", "work", "cftool")
    info = api.find_mount(str(cf.mount_root / "work"))
    assert info is not None and not info.read_only
    assert "cftool-1.1-0" in _packages(archive, "work")  # committed before returning
    cf.run("unmount", "work")


def test_empty_create_then_install_into_it(fuse, cf, channel):
    proc = cf.run(*RATTLER, "create", "empty")
    assert "created empty" in proc.stderr
    archive = cf.archives / "empty.zip"
    with zipfile.ZipFile(archive) as z:
        assert "empty/conda-meta/history" in z.namelist()
    assert _packages(archive, "empty") == set()
    assert cf.list_json()["empty"]["mounted"] is True
    cf.run("unmount", "empty")
    cf.run(*RATTLER, "install", "empty", "-c", channel.as_uri(), "cftool")
    assert "greetings from cfdata" in cf.run("run", "empty", "--", "cft").stdout


def test_environment_yml_create_and_export_round_trip(fuse, cf, channel, tmp_path):
    yml = tmp_path / "environment.yml"
    yml.write_text(
        "# as people write them\n"
        "name: fromyml\n"
        "channels:\n"
        f"  - {channel.as_uri()}\n"
        "  - nodefaults\n"
        "dependencies:\n"
        "  - cftool =1.0   # pinned\n"
        "  - 'cfpy'\n"
        "variables:\n"
        '  CF_GREETING: "hi: there"\n'
    )
    proc = cf.run(*RATTLER, "create", "-f", str(yml))  # NAME from the file
    assert "created fromyml" in proc.stderr
    prefix = cf.prefix("fromyml")
    assert cf.run("run", "fromyml", "--", "cft").stdout.startswith(f"cftool 1.0 prefix={prefix}")
    out = cf.run("run", "fromyml", "--", "sh", "-c", 'echo "$CF_GREETING"').stdout
    assert out == "hi: there\n"  # variables: became conda env config vars

    # export --yml to stdout while mounted, and to a file
    text = cf.run("export", "fromyml", "--yml").stdout
    assert text.startswith(f"name: fromyml\nchannels:\n  - {channel.as_uri()}\ndependencies:\n")
    assert "  - cftool=1.0=0\n" in text and f"  - python={condapkg.PYVER}=0\n" in text
    assert f"prefix: {prefix}\n" in text and '  CF_GREETING: "hi: there"\n' in text
    cf.run("unmount", "fromyml")
    out_yml = tmp_path / "exported.yml"
    cf.run("export", "fromyml", "--yml", "-f", str(out_yml))
    assert out_yml.read_text() == text
    hist = cf.run("export", "fromyml", "--yml", "--from-history").stdout
    assert "  - cftool =1.0\n  - cfpy\n" in hist

    # the exported file recreates the same package set, under another name
    cf.run(*RATTLER, "create", "copy", "-f", str(out_yml))
    cf.run("unmount", "copy")
    pkgs = _packages(cf.archives / "fromyml.zip", "fromyml")
    assert len(pkgs) == 4
    assert _packages(cf.archives / "copy.zip", "copy") == pkgs
    assert cf.run("run", "copy", "--", "sh", "-c", 'echo "$CF_GREETING"').stdout == "hi: there\n"


def test_environment_yml_pip_section(fuse, cf, channel, tmp_path):
    """The pip: section is installed with the env's own pip (a real pip, offline, from a local
    wheel); without pip among the dependencies it is refused before anything is made."""
    yml = tmp_path / "environment.yml"
    body = (
        "channels:\n"
        f"  - {channel.as_uri()}\n"
        "  - {pipch}\n"
        "dependencies:\n"
        "  - cftool\n"
        "{pipdep}"
        "  - pip:\n"
        "    - --no-index\n"
        "    - --find-links ./wheels\n"
        "    - cfwheel\n"
    )
    yml.write_text(body.format(pipch=channel.as_uri(), pipdep=""))
    proc = cf.run(*RATTLER, "create", "-f", str(yml), "nopip", check=False)
    assert proc.returncode == 2 and len(_errors(proc.stderr)) == 1
    assert "pip: section but no pip" in proc.stderr
    assert not (cf.archives / "nopip.zip").exists() and not (cf.mount_root / "nopip").exists()

    pip_channel = condapkg.build_pip_channel(tmp_path / "pipchannel")
    condapkg.write_wheel(tmp_path / "wheels")
    yml.write_text(body.format(pipch=pip_channel.as_uri(), pipdep="  - pip\n"))
    env = dict(cf.env, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_CONFIG_FILE=os.devnull)
    cf.run(*RATTLER, "create", "-f", str(yml), "withpip", env=env)
    cf.run("unmount", "withpip")
    out = cf.run("run", "withpip", "--", "python", "-c", "import cfwheel; print(cfwheel.hello())")
    assert out.stdout == "hello from cfwheel\n"
    text = cf.run("export", "withpip", "--yml").stdout
    assert text.endswith(f"  - pip:\n      - cfwheel==0.1\nprefix: {cf.prefix('withpip')}\n")
    assert not list(tmp_path.glob("condaenv.*"))  # the temporary requirements file is gone


def test_conda_frontend_command_lines_for_changes(fuse, cf, tmp_path):
    """A recording stand-in `conda`: argument checks only (it makes an empty env)."""
    log = cf.root / "conda.log"
    make_stub(cf.bindir, "conda", log)
    cf.run("create", "viaconda", "python=3.11")
    prefix = str(cf.prefix("viaconda"))
    cf.run("unmount", "viaconda")
    cf.run("install", "viaconda", "numpy", "-c", "bioconda")
    cf.run("update", "viaconda", "--all")
    cf.run("uninstall", "viaconda", "numpy")
    cf.run("remove", "viaconda", "scipy", "--yes")
    argvs = [c["argv"] for c in read_log(log)]
    assert argvs[1:] == [
        ["install", "--prefix", prefix, "--yes", "numpy", "-c", "bioconda"],
        ["update", "--prefix", prefix, "--yes", "--all"],
        ["remove", "--prefix", prefix, "--yes", "numpy"],
        ["remove", "--prefix", prefix, "--yes", "scipy"],
    ]
    assert (cf.archives / "viaconda.zip").exists()
    assert not _mounted(cf.mount_root / "viaconda")

    # a failing frontend: the mount made for the change is dropped, the archive is untouched
    before = _digest(cf.archives / "viaconda.zip")
    proc = cf.run("install", "viaconda", "x", env=dict(cf.env, STUB_FAIL="1"), check=False)
    assert proc.returncode == 1 and "conda install failed (exit status 3)" in proc.stderr
    assert len(_errors(proc.stderr)) == 1
    assert _digest(cf.archives / "viaconda.zip") == before
    assert not _mounted(cf.mount_root / "viaconda")

    # -p/--prefix are condafuse's to choose
    proc = cf.run("install", "viaconda", "-p", "/elsewhere", "x", check=False)
    assert proc.returncode == 2 and "do not pass -p" in proc.stderr

    # environment files: conda's env create; micromamba's create --file
    yml = tmp_path / "env.yml"
    yml.write_text("name: fromfile\ndependencies:\n  - python\n")
    cf.run("create", "-f", str(yml))
    assert read_log(log)[-1]["argv"] == [
        "env",
        "create",
        "--prefix",
        str(cf.prefix("fromfile")),
        "--file",
        str(yml),
    ]
    cf.run("unmount", "fromfile")
    mlog = cf.root / "mm.log"
    make_stub(cf.bindir, "micromamba", mlog)
    cf.run("--frontend", "micromamba", "create", "mm", "-f", str(yml))
    assert read_log(mlog)[-1]["argv"] == [
        "create",
        "--prefix",
        str(cf.prefix("mm")),
        "--file",
        str(yml),
        "--yes",
    ]
    cf.run("--frontend", "micromamba", "install", "mm", "xz")
    mm_prefix = str(cf.prefix("mm"))
    assert read_log(mlog)[-1]["argv"] == ["install", "--prefix", mm_prefix, "--yes", "xz"]
    cf.run("unmount", "mm")


def test_small_frictions(fuse, cf, channel):
    """mount -r; `unmount a b` with b not mounted is one line; no "writing its archive" when
    nothing changed."""
    cf.create("fr", channel, "cfdata")
    proc = cf.run("unmount", "fr")
    assert "writing its archive" not in proc.stderr and "nothing had changed" in proc.stderr
    proc = cf.run("mount", "fr", "-r")
    assert _mounted(cf.mount_root / "fr")
    assert cf.list_json()["fr"]["read_only"] is True
    cf.run("unmount", "fr")
    cf.run("mount", "fr")
    (cf.prefix("fr") / "note.txt").write_text("x" * 5000)
    proc = cf.run("unmount", "fr", "nosuch", check=False)
    assert proc.returncode == 3
    lines = proc.stderr.splitlines()
    assert any("writing its archive (5.0 kB not yet committed)" in ln for ln in lines)
    assert "condafuse: fr unmounted; the archive is on disk" in lines
    assert [ln for ln in lines if "nosuch" in ln] == ["condafuse: error: nosuch is not mounted"]
