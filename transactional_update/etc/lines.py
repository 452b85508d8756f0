"""A line-level three-way merge of text (diff3's rules, with a stricter rule for insertions).

Each side's changes against the base are hunks: a range of base lines and what replaces it.
Hunks of the two sides that do not interfere combine; hunks that do form a cluster, which merges
only when both sides turn it into the same lines (the same edit made twice is no conflict).

Two hunks interfere when they share a base line, or when one inserts lines inside or at either
edge of the other's change: whether the inserted lines go before or after the other side's new
lines is a guess, and a guess in /etc can lock someone out.  Changes to neighbouring lines that
both replace or delete (no insertion involved) combine, since their order is fixed by the base.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher


@dataclass(frozen=True)
class Hunk:
    """Base lines ``[start, end)`` become *lines* (start == end: an insertion before *start*)."""

    start: int
    end: int
    lines: tuple[str, ...]


def split_lines(text: str) -> list[str]:
    """Lines with their ``\\n`` kept; a last line without one stays as it is.

    Only ``\\n`` ends a line: str.splitlines would also split at form feeds and other separators
    that config files may hold inside a line.
    """
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def hunks(base: Sequence[str], side: Sequence[str]) -> list[Hunk]:
    # autojunk would treat lines that repeat often (blank lines, "}") as noise in files of more
    # than 200 lines and align the rest badly.
    matcher = SequenceMatcher(None, base, side, autojunk=False)
    return [
        Hunk(i1, i2, tuple(side[j1:j2]))
        for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        if tag != "equal"
    ]


def _interfere(a: Hunk, b: Hunk) -> bool:
    if a.start < b.end and b.start < a.end:
        return True  # a shared base line
    if a.start == a.end:
        return b.start <= a.start <= b.end
    if b.start == b.end:
        return a.start <= b.start <= a.end
    return False


def _apply(base: Sequence[str], start: int, end: int, side: Sequence[Hunk]) -> tuple[str, ...]:
    """Base lines ``[start, end)`` with *side*'s hunks (all inside that range) applied."""
    out: list[str] = []
    pos = start
    for h in side:
        out.extend(base[pos : h.start])
        out.extend(h.lines)
        pos = h.end
    out.extend(base[pos:end])
    return tuple(out)


def merge_lines(base: str, ours: str, theirs: str) -> str | None:
    """*base* with the changes of both *ours* and *theirs*; None when they conflict."""
    if theirs in (ours, base):
        return ours
    if ours == base:
        return theirs
    b = split_lines(base)
    tagged = sorted(
        [(h, 0) for h in hunks(b, split_lines(ours))]
        + [(h, 1) for h in hunks(b, split_lines(theirs))],
        key=lambda t: (t[0].start, t[0].end),
    )
    out: list[str] = []
    pos = 0
    i = 0
    while i < len(tagged):
        # A cluster: hunks that interfere with one of the cluster's hunks, transitively.  Sorted
        # by start, a later hunk can only interfere with the cluster through its extent.
        cluster = [tagged[i]]
        start, end = tagged[i][0].start, tagged[i][0].end
        i += 1
        while i < len(tagged) and any(_interfere(tagged[i][0], h) for h, _ in cluster):
            cluster.append(tagged[i])
            end = max(end, tagged[i][0].end)
            i += 1
        out.extend(b[pos:start])
        sides = [[h for h, s in cluster if s == n] for n in (0, 1)]
        if not sides[1]:
            out.extend(_apply(b, start, end, sides[0]))
        elif not sides[0]:
            out.extend(_apply(b, start, end, sides[1]))
        else:
            mine, yours = (_apply(b, start, end, s) for s in sides)
            if mine != yours:
                return None
            out.extend(mine)
        pos = end
    out.extend(b[pos:])
    return "".join(out)
