"""The pyfuse3 lazy-version patch (patches/README.md): ``import pyfuse3`` no longer imports
importlib.metadata; ``pyfuse3.__version__`` is looked up when first read.

Each test runs a fresh interpreter (what a module imported is only visible there). Without the
patch they skip, except in CI, where scripts/setup.sh builds it and they must pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

import pyfuse3
import pytest

# The patch's mark: pyfuse3's pure-Python module answers __version__ from a module __getattr__.
PATCHED = callable(vars(pyfuse3._pyfuse3).get("__getattr__"))


@pytest.fixture(autouse=True)
def _needs_patch() -> None:
    if not PATCHED:
        if os.environ.get("CI"):
            pytest.fail("pyfuse3 lacks the lazy-version patch in CI: scripts/setup.sh builds it")
        pytest.skip("pyfuse3 lacks the lazy-version patch (run scripts/setup.sh)")


def run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object, returned here."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(proc.stdout)


def test_import_pyfuse3_does_not_import_importlib_metadata() -> None:
    got = run(
        "import json, sys\n"
        "before = 'importlib.metadata' in sys.modules\n"
        "import pyfuse3\n"
        "print(json.dumps({'before': before, 'after': 'importlib.metadata' in sys.modules,\n"
        "                  'email': sorted(m for m in sys.modules if m.startswith('email'))}))\n"
    )
    if got["before"]:
        pytest.skip("this interpreter imports importlib.metadata at start-up")
    assert got == {"before": False, "after": False, "email": []}


def test_the_version_is_looked_up_when_first_read() -> None:
    got = run(
        "import json, sys\n"
        "import pyfuse3\n"
        "from pyfuse3 import _pyfuse3\n"
        "cached = '__version__' in vars(_pyfuse3)\n"
        "first = pyfuse3.__version__\n"
        "from pyfuse3 import __version__ as imported\n"
        "print(json.dumps({'cached': cached, 'first': first, 'imported': imported,\n"
        "                  'inner': _pyfuse3.__version__,\n"
        "                  'kept': vars(_pyfuse3).get('__version__'),\n"
        "                  'metadata': 'importlib.metadata' in sys.modules}))\n"
    )
    expected = version("pyfuse3")
    assert got == {
        "cached": False,
        "first": expected,
        "imported": expected,
        "inner": expected,
        "kept": expected,  # looked up once, then a plain module attribute
        "metadata": True,
    }


def test_other_missing_attributes_still_raise_attribute_error() -> None:
    """The module __getattr__ must answer only __version__: hasattr and getattr with a default
    (feature checks such as ``getattr(pyfuse3, "NO_OPEN_SUPPORT", False)``) rely on it."""
    assert not hasattr(pyfuse3, "no_such_name")
    assert getattr(pyfuse3._pyfuse3, "no_such_name", 42) == 42
    with pytest.raises(AttributeError, match="no_such_name"):
        pyfuse3.no_such_name  # noqa: B018
    with pytest.raises(AttributeError, match="no_such_name"):
        pyfuse3._pyfuse3.no_such_name  # noqa: B018
    assert pyfuse3.__version__ == version("pyfuse3")
