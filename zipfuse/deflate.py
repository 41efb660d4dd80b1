"""Raw-deflate decoding and CRC-32 (reads, and the CRC of what a commit writes): ISA-L's when
it is installed.

python-isal wraps Intel's ISA-L, whose inflate and CRC-32 run about twice and four times as
fast as zlib's on the machines we measured (``benchmarks/`` read-all, cold import). It has
zlib's interface, so zlib stands in where the package is missing (a platform without wheels).
Compression stays with zlib: its levels are what ``--level`` means and what archives expect.
"""

from __future__ import annotations

import types
import zlib
from typing import Any

_impl: types.ModuleType
try:
    from isal import isal_zlib as _impl
except ImportError:  # pragma: no cover - isal is a dependency; this keeps odd platforms working
    _impl = zlib

# Errors a corrupt deflate stream raises (isal's is not a subclass of zlib.error).
ERRORS: tuple[type[Exception], ...] = (zlib.error, getattr(_impl, "error", zlib.error))
crc32 = _impl.crc32
ACCELERATED = _impl is not zlib


def decompressobj() -> Any:
    """A raw-deflate (no header) streaming decoder with zlib's interface."""
    return _impl.decompressobj(-15)
