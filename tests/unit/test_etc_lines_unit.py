"""etc.lines: the three-way line merge (pure)."""

from __future__ import annotations

import pytest

from transactional_update.etc.lines import merge_lines, split_lines

BASE = "a\nb\nc\nd\ne\n"


@pytest.mark.parametrize(
    ("ours", "theirs", "merged"),
    [
        # Changes in different places combine.
        ("A\nb\nc\nd\ne\n", "a\nb\nc\nd\nE\n", "A\nb\nc\nd\nE\n"),
        # Neighbouring lines replaced on each side: the base fixes their order.
        ("a\nB\nc\nd\ne\n", "a\nb\nC\nd\ne\n", "a\nB\nC\nd\ne\n"),
        # A deletion on one side, an edit elsewhere on the other.
        ("a\nc\nd\ne\n", "a\nb\nc\nD\ne\n", "a\nc\nD\ne\n"),
        # Insertions in different places.
        ("x\na\nb\nc\nd\ne\n", "a\nb\nc\nd\ne\ny\n", "x\na\nb\nc\nd\ne\ny\n"),
        # The same change on both sides is no conflict, and is not doubled.
        ("a\nB\nc\nd\ne\n", "a\nB\nc\nd\ne\n", "a\nB\nc\nd\ne\n"),
        ("a\nb\nc\nd\ne\nnew\n", "a\nb\nc\nd\ne\nnew\n", "a\nb\nc\nd\ne\nnew\n"),
        # The same change plus one more on one side.
        ("a\nB\nc\nd\ne\n", "a\nB\nc\nd\nE\n", "a\nB\nc\nd\nE\n"),
        # Only one side changed.
        (BASE, "a\nb\nX\nd\ne\n", "a\nb\nX\nd\ne\n"),
        ("a\nb\nX\nd\ne\n", BASE, "a\nb\nX\nd\ne\n"),
        # Both deleted the same line.
        ("a\nb\nd\ne\n", "a\nb\nd\ne\n", "a\nb\nd\ne\n"),
        # A line replaced by two, its neighbour replaced on the other side.
        ("a\nB\nx\nc\nd\ne\n", "a\nb\nC\nd\ne\n", "a\nB\nx\nC\nd\ne\n"),
        # Deleting neighbouring lines on each side.
        ("a\nc\nd\ne\n", "a\nb\nd\ne\n", "a\nd\ne\n"),
    ],
)
def test_merges(ours: str, theirs: str, merged: str) -> None:
    assert merge_lines(BASE, ours, theirs) == merged
    # A clean merge does not depend on which side is which.
    assert merge_lines(BASE, theirs, ours) == merged


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        # The same line changed differently.
        ("a\nB\nc\nd\ne\n", "a\nBB\nc\nd\ne\n"),
        # Different lines inserted at the same spot: which goes first is a guess.
        ("a\nx\nb\nc\nd\ne\n", "a\ny\nb\nc\nd\ne\n"),
        # An insertion next to the other side's change, after it and before it.
        ("a\nb\nx\nc\nd\ne\n", "a\nB\nc\nd\ne\n"),
        ("a\nb\nx\nc\nd\ne\n", "a\nb\nC\nd\ne\n"),
        ("a\nx\nb\nc\nd\ne\n", "a\nB\nc\nd\ne\n"),
        # A deletion against an edit of the same line.
        ("a\nc\nd\ne\n", "a\nB\nc\nd\ne\n"),
        # Overlapping ranges.
        ("a\nX\nY\nd\ne\n", "a\nb\nZ\nW\ne\n"),
        # Both appended different lines.
        ("a\nb\nc\nd\ne\nours\n", "a\nb\nc\nd\ne\ntheirs\n"),
    ],
)
def test_conflicts(ours: str, theirs: str) -> None:
    assert merge_lines(BASE, ours, theirs) is None
    assert merge_lines(BASE, theirs, ours) is None


def test_empty_files() -> None:
    assert merge_lines("", "", "") == ""
    assert merge_lines("", "a\n", "") == "a\n"
    assert merge_lines("", "", "b\n") == "b\n"
    assert merge_lines("", "a\n", "a\n") == "a\n"
    assert merge_lines("", "a\n", "b\n") is None
    # Emptied on one side, untouched on the other.
    assert merge_lines(BASE, "", BASE) == ""
    # Emptied on one side, changed on the other.
    assert merge_lines(BASE, "", "a\nb\nC\nd\ne\n") is None


def test_no_trailing_newline() -> None:
    assert split_lines("a\nb") == ["a\n", "b"]
    assert split_lines("a\nb\n") == ["a\n", "b\n"]
    assert split_lines("") == []
    base = "a\nb\nc"
    assert merge_lines(base, "A\nb\nc", "a\nb\nC") == "A\nb\nC"
    # A newline added at the end on one side stays.
    assert merge_lines(base, "A\nb\nc", "a\nb\nc\n") == "A\nb\nc\n"
    # The last line, without a newline, changed on both sides differently.
    assert merge_lines(base, "a\nb\nX", "a\nb\nY") is None


def test_only_newlines_end_lines() -> None:
    base = "a\fx\nb\n"
    assert merge_lines(base, "a\fy\nb\n", "a\fx\nB\n") == "a\fy\nB\n"


def test_long_files_with_repeated_lines() -> None:
    # More than 200 lines, mostly the same: autojunk would misalign them.
    base = "".join(f"key{i} = 1\n\n}}\n" for i in range(150))
    ours = base.replace("key3 = 1", "key3 = 2")
    theirs = base.replace("key140 = 1", "key140 = 3")
    merged = merge_lines(base, ours, theirs)
    assert merged == base.replace("key3 = 1", "key3 = 2").replace("key140 = 1", "key140 = 3")
