"""Turning entry names from hostile archives into safe relative paths.

A zip entry name is any string the archive's author chose. Before it becomes a path in the
mounted tree, ``sanitize`` applies these rules, in order:

1. A name containing NUL is rejected (``None``): no filesystem can represent it.
2. The name is split on ``/`` only. A backslash is an ordinary character (``a\\b`` is one file
   named ``a\\b``), whatever system wrote the archive: APPNOTE requires ``/`` as separator and
   guessing is worse than being predictable.
3. Empty components and ``.`` are dropped. That makes absolute names relative (``/etc/x`` ->
   ``etc/x``) and collapses ``a//b`` and ``a/./b``.
4. A name containing a ``..`` component is rejected (``None``) rather than resolved, so no
   entry can ever point outside (or sideways within) the tree.
5. A component longer than 255 bytes in UTF-8 (``NAME_MAX`` on Linux) is rejected (``None``).
   Undecodable bytes kept as surrogate escapes count as one byte each; any other lone
   surrogate cannot be encoded and is rejected.

The result is a tuple of components; an empty tuple means the root itself (``/``, ``./``), which
the caller skips. A trailing ``/`` (a directory marker) does not change the components; the
entry's mode says whether it is a directory.

Collisions are resolved by the namespace layer, not here: for duplicate names the LAST entry in
central-directory order wins, and when a file and a directory have the same path the directory
wins and the file is hidden with a warning.
"""

from __future__ import annotations

NAME_MAX = 255


def sanitize(name: str) -> tuple[str, ...] | None:
    """Return the safe path components of ``name``, or ``None`` if the entry must be skipped."""
    if "\0" in name:
        return None
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            return None
        try:
            if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
                return None
        except UnicodeEncodeError:  # a lone surrogate that no filesystem name can hold
            return None
        parts.append(part)
    return tuple(parts)
