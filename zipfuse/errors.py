"""Errors meant for a user: the bottom floor of the package, imported by every layer above."""

from __future__ import annotations


class ZipfuseError(Exception):
    """A user-facing failure; ``str(exc)`` is one line."""
