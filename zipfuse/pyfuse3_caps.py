"""Can this pyfuse3 run kernel-cache mode, and should it?

Kernel-cache mode answers ``open``/``opendir`` with ENOSYS: the kernel then opens files and
directories itself, keeps their pages and listings cached, and sends no OPEN/RELEASE/OPENDIR/
RELEASEDIR at all. Stock pyfuse3 cannot serve that (its read/readdir wrappers drop the inode when
the kernel sends file handle 0), so the mode needs pyfuse3 built with
patches/pyfuse3-*-kernel-cache.patch (scripts/setup.sh does it). A plain ``pip install`` gets
stock pyfuse3 and zipfuse falls back to answering open/opendir itself.

``ZIPFUSE_KERNEL_CACHE`` chooses: unset or ``auto`` uses the mode when pyfuse3 has it; ``0``
forces stock behaviour (CI runs the write-semantics tests both ways); ``1`` requires the mode
and fails with one clear line when pyfuse3 lacks it (so a CI run never silently falls back).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import ZipfuseError

ENV_VAR = "ZIPFUSE_KERNEL_CACHE"
_OFF = frozenset({"0", "no", "off", "false"})
_ON = frozenset({"1", "yes", "on", "true"})
_AUTO = frozenset({"", "auto"})


class KernelCacheUnavailable(ZipfuseError):
    """ZIPFUSE_KERNEL_CACHE asks for something this installation cannot do."""


def pyfuse3_has_kernel_cache() -> bool:
    """True if the importable pyfuse3 carries the kernel-cache patch.

    The patch sets ``pyfuse3.NO_OPEN_SUPPORT``; the two API additions it brings are checked too,
    so a half-built or differently patched pyfuse3 is not mistaken for it.
    """
    import pyfuse3

    return (
        getattr(pyfuse3, "NO_OPEN_SUPPORT", False) is True
        and hasattr(pyfuse3.FileInfo(), "cache_readdir")
        and hasattr(pyfuse3.Operations, "enable_atomic_o_trunc")
    )


def pyfuse3_has_inline_requests() -> bool:
    """True if pyfuse3 carries patches/pyfuse3-*-inline-requests.patch (its faster request loop).

    Nothing in zipfuse depends on it (handlers that need not wait are simply answered sooner); the
    daemon logs it, so a slow mount can be told from a stock pyfuse3. The patch adds no public
    flag; its loop's helper ``pyfuse3._pyfuse3._resume`` is the mark.
    """
    import pyfuse3

    return callable(getattr(getattr(pyfuse3, "_pyfuse3", None), "_resume", None))


def kernel_cache_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the daemon should run in kernel-cache mode (capability + ZIPFUSE_KERNEL_CACHE)."""
    env = os.environ if environ is None else environ
    setting = env.get(ENV_VAR, "").strip().lower()
    if setting in _OFF:
        return False
    if setting not in _ON and setting not in _AUTO:
        raise KernelCacheUnavailable(
            f"{ENV_VAR}={env.get(ENV_VAR)!r} is not understood; use 0, 1 or auto"
        )
    available = pyfuse3_has_kernel_cache()
    if setting in _ON and not available:
        raise KernelCacheUnavailable(
            f"{ENV_VAR}=1 but the installed pyfuse3 lacks the kernel-cache patch "
            "(run scripts/setup.sh to build it)"
        )
    return available
