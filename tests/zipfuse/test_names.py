"""Tests for zipfuse.names.sanitize: hostile entry names become safe relative components."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zipfuse.names import sanitize


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.txt", ("a.txt",)),
        ("dir/", ("dir",)),
        ("dir/sub/file", ("dir", "sub", "file")),
        ("/etc/passwd", ("etc", "passwd")),  # absolute -> relative
        ("//server/share/x", ("server", "share", "x")),
        ("a//b/./c/", ("a", "b", "c")),
        ("./x", ("x",)),
        ("/", ()),  # the root itself: caller skips it
        ("./", ()),
        ("", ()),
        ("a\\b", ("a\\b",)),  # backslash is an ordinary character
        ("..\\..\\evil", ("..\\..\\evil",)),  # ...so this is one harmless odd name
        ("...", ("...",)),
        ("a..b/..c", ("a..b", "..c")),
        ("é/ü", ("é", "ü")),
    ],
)
def test_accepted(name: str, expected: tuple[str, ...]) -> None:
    assert sanitize(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "../evil",
        "a/../../evil",
        "a/..",
        "/../x",
        "..",
        "a\0b",
        "x" * 256,  # component longer than NAME_MAX
        "ok/" + "é" * 128,  # 256 bytes in UTF-8
        "bad-\ud800",  # lone surrogate: not representable
    ],
)
def test_rejected(name: str) -> None:
    assert sanitize(name) is None


def test_length_limit_counts_utf8_bytes() -> None:
    assert sanitize("x" * 255) == ("x" * 255,)
    assert sanitize("é" * 127 + "x") == ("é" * 127 + "x",)  # 255 bytes
    # An undecodable byte kept as a surrogate escape counts as one byte.
    assert sanitize("\udcff" * 255) == ("\udcff" * 255,)
    assert sanitize("\udcff" * 256) is None


@given(st.text(alphabet=st.sampled_from("ab./\\\0é\udcff"), max_size=30))
def test_result_is_always_safe(name: str) -> None:
    parts = sanitize(name)
    if parts is None:
        assert (
            "\0" in name
            or ".." in name.split("/")
            or any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in name.split("/"))
        )
        return
    for part in parts:
        assert part not in ("", ".", "..")
        assert "/" not in part and "\0" not in part
    assert "/".join(parts) == "/".join(p for p in name.split("/") if p not in ("", "."))
