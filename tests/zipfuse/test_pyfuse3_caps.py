"""Kernel-cache capability detection and the ZIPFUSE_KERNEL_CACHE override (zipfuse.pyfuse3_caps).

In CI, scripts/setup.sh builds the patched pyfuse3, so the capability must be detected there.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pyfuse3
import pytest

from zipfuse import api, pyfuse3_caps
from zipfuse.pyfuse3_caps import KernelCacheUnavailable, kernel_cache_enabled

HAS = pyfuse3_caps.pyfuse3_has_kernel_cache()


def test_detection_matches_the_patch_flag_and_ci_has_the_patch() -> None:
    assert (getattr(pyfuse3, "NO_OPEN_SUPPORT", False) is True) == HAS
    if os.environ.get("CI"):
        assert HAS, "CI must run with the patched pyfuse3 that scripts/setup.sh builds"


@pytest.mark.parametrize("value", ["0", "no", "off", "false", " OFF "])
def test_zero_forces_stock_behaviour(value: str) -> None:
    assert kernel_cache_enabled({"ZIPFUSE_KERNEL_CACHE": value}) is False


@pytest.mark.parametrize("value", [None, "", "auto"])
def test_unset_or_auto_follows_the_capability(value: str | None) -> None:
    env = {} if value is None else {"ZIPFUSE_KERNEL_CACHE": value}
    assert kernel_cache_enabled(env) is HAS


def test_one_requires_the_capability() -> None:
    if HAS:
        assert kernel_cache_enabled({"ZIPFUSE_KERNEL_CACHE": "1"}) is True
    else:
        with pytest.raises(KernelCacheUnavailable, match="lacks the kernel-cache patch"):
            kernel_cache_enabled({"ZIPFUSE_KERNEL_CACHE": "1"})


def test_a_value_it_does_not_understand_is_a_one_line_user_error() -> None:
    with pytest.raises(KernelCacheUnavailable) as exc:
        kernel_cache_enabled({"ZIPFUSE_KERNEL_CACHE": "maybe"})
    assert isinstance(exc.value, api.ZipfuseError)
    assert "\n" not in str(exc.value) and "'maybe'" in str(exc.value)


def test_stock_pyfuse3_is_not_mistaken_for_the_patched_one(monkeypatch) -> None:
    """What a plain `pip install` gives: no NO_OPEN_SUPPORT flag, so the stock path is taken."""
    monkeypatch.delattr(pyfuse3, "NO_OPEN_SUPPORT", raising=False)
    assert pyfuse3_caps.pyfuse3_has_kernel_cache() is False
    assert kernel_cache_enabled({}) is False
    with pytest.raises(KernelCacheUnavailable, match="run scripts/setup.sh"):
        kernel_cache_enabled({"ZIPFUSE_KERNEL_CACHE": "1"})


def test_the_process_environment_is_read_by_default() -> None:
    code = "from zipfuse.pyfuse3_caps import kernel_cache_enabled as k; print(k())"
    for value, want in (("0", "False"), ("auto", str(HAS))):
        env = dict(os.environ, ZIPFUSE_KERNEL_CACHE=value)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.stdout.strip() == want, out.stderr


def test_inline_request_loop_detection_matches_the_patch_and_ci_has_it() -> None:
    helper = getattr(getattr(pyfuse3, "_pyfuse3", None), "_resume", None)
    assert pyfuse3_caps.pyfuse3_has_inline_requests() is callable(helper)
    if os.environ.get("CI"):
        assert pyfuse3_caps.pyfuse3_has_inline_requests(), "scripts/setup.sh builds the patch"
