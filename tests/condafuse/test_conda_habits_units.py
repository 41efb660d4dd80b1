"""Issue 13 pieces that need no mount: environment.yml reading and writing, conda's
environments.txt, the frontend command lines for changes, history replay, and py-rattler
changes of a plain (unmounted) prefix."""

from __future__ import annotations

import os
import subprocess

import condapkg
import pytest

from condafuse import envfile, envs_txt, frontends, prefixinfo, rattler_backend
from condafuse.errors import CondafuseError

# --------------------------------------------------------------------------- environment.yml


def test_env_file_parses_what_conda_writes_and_what_people_write():
    text = """# comment
name: sci   # trailing comment
channels:
  - conda-forge
  - "file:///data/my channel"
  - nodefaults
dependencies:
  - python=3.11
  - 'numpy >=1.20'
  - pip
  - pip:
      - requests==2.31  # pinned
      - --index-url https://example.org/simple
  - scipy
variables:
  OMP_NUM_THREADS: "4"
  LABEL: it's fine
prefix: /old/place/sci
"""
    spec = envfile.parse(text)
    assert spec.name == "sci"
    assert spec.channels == ["conda-forge", "file:///data/my channel", "nodefaults"]
    assert spec.real_channels() == ["conda-forge", "file:///data/my channel"] and spec.nodefaults
    assert spec.dependencies == ["python=3.11", "numpy >=1.20", "pip", "scipy"]
    assert spec.pip == ["requests==2.31", "--index-url https://example.org/simple"]
    assert spec.variables == {"OMP_NUM_THREADS": "4", "LABEL": "it's fine"}
    flow = envfile.parse("name: x\nchannels: [a, 'b']\ndependencies: [c, d=1]\n")
    assert flow.channels == ["a", "b"] and flow.dependencies == ["c", "d=1"] and flow.pip is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nbuild: 1\n", "unknown key 'build'"),
        ("name: x\ndependencies:\n  python\n", "line 3: expected a list item"),
        ("dependencies:\n\t- x\n", "tabs"),
        ("dependencies:\n  - &anchor x\n", "unsupported YAML"),
        ("just text\n", "expected 'key: value'"),
        ("  - x\n", "unexpected indented line"),
    ],
)
def test_env_file_refuses_what_it_does_not_understand(text, message):
    with pytest.raises(CondafuseError) as e:
        envfile.parse(text, "env.yml")
    assert message in str(e.value) and "env.yml" in str(e.value)
    assert "\n" not in str(e.value)


def test_env_file_dump_reads_back():
    text = envfile.dump(
        "demo",
        ["conda-forge", "file:///x y"],
        ["python=3.11.7=0", "a-b=1.0=py_0"],
        ["pkg==1.0"],
        {"GREETING": "hi: there", "N": "4"},
        prefix="/p/demo/demo",
    )
    assert text.splitlines()[:3] == ["name: demo", "channels:", "  - conda-forge"]
    back = envfile.parse(text)
    assert back.name == "demo"
    assert back.channels == ["conda-forge", "file:///x y"]
    assert back.dependencies == ["python=3.11.7=0", "a-b=1.0=py_0"]
    assert back.pip == ["pkg==1.0"]
    assert back.variables == {"GREETING": "hi: there", "N": "4"}
    assert envfile.parse(envfile.dump("e", [], [])).dependencies == []


# --------------------------------------------------------------------------- environments.txt


def test_environments_txt_like_conda(tmp_path):
    env = {"HOME": str(tmp_path / "home")}
    txt = tmp_path / "home" / ".conda" / "environments.txt"
    assert envs_txt.path(env) == txt
    assert envs_txt.register("/m/a/a", env) and txt.read_text() == "/m/a/a\n"
    assert not envs_txt.register("/m/a/a/", env)  # same prefix after normalising
    txt.write_text("/x/other\n\n# kept\n/m/a/a\n/y/last")
    assert envs_txt.register("/m/b/b", env)
    assert txt.read_text() == "/x/other\n\n# kept\n/m/a/a\n/y/last\n/m/b/b\n"
    assert envs_txt.read(env) == ["/x/other", "/m/a/a", "/y/last", "/m/b/b"]
    assert envs_txt.unregister("/m/a/a", env)
    assert txt.read_text() == "/x/other\n\n# kept\n/y/last\n/m/b/b\n"
    assert not envs_txt.unregister("/m/a/a", env)
    assert sorted(p.name for p in txt.parent.iterdir()) == ["environments.txt"]
    assert not envs_txt.register("/m/c/c", {**env, "CONDA_REGISTER_ENVS": "False"})
    assert not envs_txt.unregister("/nothing", {"HOME": str(tmp_path / "nohome")})
    assert not (tmp_path / "nohome").exists()


def test_environments_txt_problems_only_warn(tmp_path, capsys):
    home = tmp_path / "home"
    (home / ".conda").mkdir(parents=True)
    (home / ".conda").chmod(0o500)
    try:
        if os.access(home / ".conda", os.W_OK):  # root ignores modes: use a file in the way
            (home / ".conda").chmod(0o700)
            (home / ".conda").rmdir()
            (home / ".conda").write_text("not a directory")
        assert not envs_txt.register("/m/a/a", {"HOME": str(home)})
    finally:
        if (home / ".conda").is_dir():
            (home / ".conda").chmod(0o700)
    err = capsys.readouterr().err
    assert err.startswith("condafuse: warning: cannot register /m/a/a") and err.count("\n") == 1


# --------------------------------------------------------------------------- frontends


def test_change_and_env_file_command_lines():
    conda = frontends.Frontend("conda", "/opt/conda/bin/conda", "PATH")
    mm = frontends.Frontend("micromamba", "/bin/micromamba", "PATH")
    assert frontends.change_command(conda, "install", "/p", ["numpy", "-c", "x"]) == [
        "/opt/conda/bin/conda",
        "install",
        "--prefix",
        "/p",
        "--yes",
        "numpy",
        "-c",
        "x",
    ]
    assert frontends.change_command(mm, "remove", "/p", ["-y", "xz"]) == [
        "/bin/micromamba",
        "remove",
        "--prefix",
        "/p",
        "-y",
        "xz",
    ]
    with pytest.raises(CondafuseError, match="do not pass --name"):
        frontends.change_command(conda, "update", "/p", ["--name=x"])
    assert frontends.env_file_command(conda, "/p", "/e.yml", []) == [
        "/opt/conda/bin/conda",
        "env",
        "create",
        "--prefix",
        "/p",
        "--file",
        "/e.yml",
    ]
    assert frontends.env_file_command(mm, "/p", "/e.yml", []) == [
        "/bin/micromamba",
        "create",
        "--prefix",
        "/p",
        "--file",
        "/e.yml",
        "--yes",
    ]


# --------------------------------------------------------------------------- rattler changes


def test_rattler_changes_a_plain_prefix_and_records_history(channel, tmp_path):
    prefix = tmp_path / "env"
    cache = tmp_path / "cache"
    req = rattler_backend.parse_create_args(
        ["-c", str(channel), "--override-channels", "-q", "cftool 1.0"], env={}
    )
    rattler_backend.create(prefix, req, cache)

    def change(op, *args, **kw):
        r = rattler_backend.parse_create_args(
            ["-q", *args], env={"CONDA_FUSE_CHANNELS": ""}, need_channels=False
        )
        return rattler_backend.change(prefix, op, r, cache, **kw)

    c = change("install", "cfpy")
    assert c.linked == ["cfpy-0.1-0", f"python-{condapkg.PYVER}-0"] and c.unlinked == []
    out = subprocess.run([prefix / "bin" / "cfpy"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"cfpy sys.prefix={prefix}"
    c = change("update", "cftool")
    assert (c.linked, c.unlinked) == (["cftool-1.1-0"], ["cftool-1.0-0"])
    c = change("update", update_all=True)
    assert c.linked == [] and c.unlinked == []
    with pytest.raises(CondafuseError, match="not installed in this environment: nosuch"):
        change("remove", "nosuch")
    c = change("remove", "cfdata")  # cftool needs it: goes too, as in conda
    assert c.unlinked == ["cfdata-0.1-0", "cftool-1.1-0"]
    assert not (prefix / "bin" / "cftool").exists()
    assert prefixinfo.history_specs(prefix) == ["cfpy"]
    assert sorted(r.name for r in prefixinfo.records(prefix)) == ["cfpy", "python"]
    assert [r.channel for r in prefixinfo.records(prefix)] == [channel.as_uri().rstrip("/")] * 2


def test_history_replay_of_a_conda_history():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d)
        (p / "conda-meta").mkdir()
        (p / "conda-meta" / "history").write_text(
            "==> 2024-01-01 00:00:00 <==\n# cmd: conda create -n x python=3.11 numpy\n"
            "+defaults::python-3.11.0-h1\n# update specs: ['python=3.11', 'numpy']\n"
            "==> 2024-01-02 00:00:00 <==\n# remove specs: ['numpy']\n"
            '==> 2024-01-03 00:00:00 <==\n# update specs: ["conda-forge::scipy>=1"]\n'
        )
        assert prefixinfo.history_specs(p) == ["python=3.11", "conda-forge::scipy>=1"]
    assert prefixinfo.channel_name("https://conda.anaconda.org/conda-forge/") == "conda-forge"
