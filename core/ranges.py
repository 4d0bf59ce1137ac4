"""Arithmetic on inclusive ranges of sequence numbers, `(first, last)`: written once for the spool and the collector.

The agent's spool records which seqs it evicted or lost and forgets what the collector confirmed; the collector
records which seqs it acknowledged, evicted or lost and finds the gaps. Both need the same few operations:

- `merge`: sort and join overlapping or adjacent ranges ([1,5] + [6,9] = [1,9]);
- `insert`: add one range to a merged list in place (O(log n) to find the place);
- `subtract`: the parts of one range a merged list does not cover; `difference`: a list minus another;
- `runs`, `tagged_runs`: the contiguous runs of sorted seqs (with one tag each, e.g. a reason).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Iterable, Sequence, TypeVar

Range = tuple[int, int]
T = TypeVar("T")
_AFTER = 1 << 64  # greater than any seq: (x, _AFTER) sorts after every range starting at x


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Return sorted, merged ranges (adjacent ones joined: [1,5] + [6,9] = [1,9])."""
    out: list[Range] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def size(ranges: Iterable[Range]) -> int:
    """Return how many seqs merged ranges cover."""
    return sum(last - first + 1 for first, last in ranges)


def touching(ranges: Sequence[Range], first: int, last: int) -> tuple[int, int]:
    """Return (i, j): ranges[i:j] are the merged ranges that overlap [first, last] or are adjacent to it."""
    i = bisect_left(ranges, (first,))  # the first range starting at or after `first`
    if i and ranges[i - 1][1] >= first - 1:
        i -= 1
    return i, bisect_right(ranges, (last + 1, _AFTER))


def insert(ranges: list[Range], first: int, last: int) -> tuple[Range, int] | None:
    """Add [first, last] to the merged list `ranges` in place (O(log n) to find, one slice to replace).

    Return (the merged range it became part of, how many seqs are new), or None when it was covered already."""
    i, j = touching(ranges, first, last)
    if j - i == 1 and ranges[i][0] <= first and last <= ranges[i][1]:
        return None
    touched = ranges[i:j]
    merged = (min(first, touched[0][0]), max(last, touched[-1][1])) if touched else (first, last)
    ranges[i:j] = [merged]
    return merged, size([merged]) - size(touched)


def subtract(first: int, last: int, done: Sequence[Range]) -> list[Range]:
    """Return the parts of [first, last] not covered by the merged ranges `done`."""
    out, start = [], first
    for i in range(max(0, bisect_right(done, (first, _AFTER)) - 1), len(done)):  # from the range holding `first`
        a, b = done[i]
        if b < start:
            continue
        if a > last:
            break
        if a > start:
            out.append((start, a - 1))
        start = max(start, b + 1)
        if start > last:
            return out
    if start <= last:
        out.append((start, last))
    return out


def difference(ranges: Iterable[Range], remove: Iterable[Range]) -> list[Range]:
    """Return each of `ranges` minus `remove` (any order, overlapping or not), in the order of `ranges`."""
    done = merge(r for r in remove if r[0] <= r[1])
    return [piece for first, last in ranges for piece in subtract(first, last, done)]


def runs(seqs: Iterable[int]) -> list[Range]:
    """Return the contiguous runs of sorted `seqs` as (first, last)."""
    out: list[Range] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def tagged_runs(seqs: Iterable[tuple[int, T]]) -> list[tuple[int, int, T]]:
    """Return contiguous runs of sorted (seq, tag) with one tag each, as (first, last, tag)."""
    out: list[tuple[int, int, T]] = []
    for seq, tag in seqs:
        if out and seq == out[-1][1] + 1 and tag == out[-1][2]:
            out[-1] = (out[-1][0], seq, tag)
        else:
            out.append((seq, seq, tag))
    return out


__all__ = ["Range", "difference", "insert", "merge", "runs", "size", "subtract", "tagged_runs", "touching"]
