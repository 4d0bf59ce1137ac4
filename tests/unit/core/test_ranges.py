"""Range arithmetic (core.ranges): the collector's merged lists and the spool's pending ranges use the same code."""

import random

from core.ranges import difference, insert, merge, runs, size, subtract, tagged_runs


def test_ranges_merge_and_subtract():
    assert merge([(6, 9), (1, 5), (12, 12), (11, 11)]) == [(1, 9), (11, 12)]
    assert subtract(1, 20, [(3, 5), (8, 30)]) == [(1, 2), (6, 7)]
    assert subtract(4, 6, [(1, 10)]) == [] and subtract(4, 6, []) == [(4, 6)]


def test_insert_reports_the_merged_range_and_the_new_seqs():
    ranges: list[tuple[int, int]] = []
    assert insert(ranges, 5, 9) == ((5, 9), 5)
    assert insert(ranges, 6, 8) is None  # covered already
    assert insert(ranges, 1, 3) == ((1, 3), 3)
    assert insert(ranges, 4, 4) == ((1, 9), 1)  # joins both neighbours
    assert insert(ranges, 8, 12) == ((1, 12), 3)
    assert ranges == [(1, 12)] and size(ranges) == 12


def _spool_subtract(ranges, remove):
    """The agent spool's algorithm before core.ranges (every remove range against every piece)."""
    out = []
    for a, b in ranges:
        pieces = [(a, b)]
        for c, d in remove:
            pieces = [p for x, y in pieces for p in ((x, min(y, c - 1)), (max(x, d + 1), y)) if p[0] <= p[1]]
        out.extend(pieces)
    return out


def test_difference_is_what_the_spool_subtracted_for_any_order_and_overlap():
    rnd = random.Random(11)
    for _ in range(2000):
        starts = sorted(rnd.sample(range(1, 200), rnd.randint(0, 6)))
        ranges = [(s, s + rnd.randint(0, 15)) for s in starts]
        remove = [(s, s + rnd.randint(0, 30)) for s in (rnd.randint(1, 220) for _ in range(rnd.randint(0, 6)))]
        assert difference(ranges, remove) == _spool_subtract(ranges, remove), (ranges, remove)


def test_difference_keeps_the_order_of_the_ranges():
    assert difference([(10, 20), (1, 5)], [(3, 12), (15, 15)]) == [(13, 14), (16, 20), (1, 2)]


def test_runs_and_tagged_runs():
    assert runs([]) == [] and runs([1, 2, 3, 5, 7, 8]) == [(1, 3), (5, 5), (7, 8)]
    seqs = [(1, "a"), (2, "a"), (3, "b"), (5, "b"), (6, "b")]
    assert tagged_runs(seqs) == [(1, 2, "a"), (3, 3, "b"), (5, 6, "b")]
