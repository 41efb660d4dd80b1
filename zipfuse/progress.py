"""One progress line for commits (``zipfuse sync``/``unmount``): counts, percent, rate, ETA.

Pure formatting, no I/O, so it is unit-tested with any numbers. The daemon counts done and
total the same way (see ``commit.bytes_total``); the line still never shows more than 100 % or
a negative ETA, whatever it is given (a file that grew after the total was taken, rounding).
"""

from __future__ import annotations

from typing import Protocol


class ProgressLike(Protocol):
    entries_done: int
    entries_total: int
    bytes_done: int
    bytes_total: int


def fraction(p: ProgressLike) -> float:
    """How far the work is, 0.0 .. 1.0: by bytes when there are any, else by entries."""
    if p.bytes_total > 0:
        value = p.bytes_done / p.bytes_total
    elif p.entries_total > 0:
        value = p.entries_done / p.entries_total
    else:
        value = 1.0
    return min(max(value, 0.0), 1.0)


def eta_seconds(p: ProgressLike, elapsed: float) -> float | None:
    """Seconds left at the rate so far; None while nothing is done yet (no rate to go by)."""
    frac = fraction(p)
    if frac >= 1.0:
        return 0.0
    if frac <= 0.0 or elapsed <= 0:
        return None
    return max(elapsed * (1.0 - frac) / frac, 0.0)


def format_progress(label: str, p: ProgressLike, elapsed: float) -> str:
    """``label: 3/10 entries, 1.2/5.0 MB (24%), 3.1 MB/s, ETA 2 s``; never past 100 %."""
    entries_total = max(p.entries_total, 0)
    entries_done = min(max(p.entries_done, 0), entries_total)
    bytes_total = max(p.bytes_total, 0)
    bytes_done = min(max(p.bytes_done, 0), bytes_total)
    rate = bytes_done / elapsed if elapsed > 0 else 0.0
    eta = eta_seconds(p, elapsed)
    return (
        f"{label}: {entries_done}/{entries_total} entries, "
        f"{bytes_done / 1e6:.1f}/{bytes_total / 1e6:.1f} MB ({int(fraction(p) * 100)}%), "
        f"{rate / 1e6:.1f} MB/s, ETA {'?' if eta is None else f'{eta:.0f} s'}"
    )
