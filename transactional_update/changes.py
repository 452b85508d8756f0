"""What changed between two snapshots, computed by btrfs itself.

``btrfs send --no-data -p PARENT CHILD`` emits a metadata-only stream of the operations that turn
PARENT into CHILD, in time proportional to what changed, not to the size of the root (snapper's
``status`` uses the same stream).  Both subvolumes must be read-only while it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transactional_update import btrfs
from transactional_update.errors import SystemError_
from transactional_update.proc import pipeline

# Access-time updates (relatime) and the stream header are not changes an admin made.
_IGNORED = {"snapshot", "utimes"}


@dataclass(frozen=True)
class Op:
    op: str
    path: str  # absolute inside the snapshot


_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    " ": " ",
    "\\": "\\",
}


def _path_field(line: str, start: int) -> str:
    """The escaped path starting at *start* (btrfs-progs escapes blanks, controls as ``\\NNN``)."""
    out = []
    i = start
    while i < len(line) and line[i] != " ":
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            nxt = line[i + 1]
            if nxt.isdigit() and i + 3 < len(line):
                out.append(chr(int(line[i + 1 : i + 4], 8)))
                i += 4
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_dump(text: str) -> list[Op]:
    """Operations from ``btrfs receive --dump`` output, header and time stamps dropped."""
    ops = []
    for line in text.splitlines():
        op, _, rest = line.partition(" ")
        if not rest or op in _IGNORED:
            continue
        path = _path_field(line, len(line) - len(rest.lstrip(" ")))
        # Paths are relative to the received subvolume: ./snapshot/etc/x -> /etc/x
        parts = path.split("/", 2)
        ops.append(Op(op, "/" + (parts[2] if len(parts) > 2 else "")))
    return ops


@contextmanager
def read_only(subvolume: Path) -> Iterator[None]:
    """Make *subvolume* read-only for the duration, restoring its flag after."""
    was = btrfs.is_read_only(subvolume)
    if not was:
        btrfs.set_read_only(subvolume, True)
    try:
        yield
    finally:
        if not was:
            btrfs.set_read_only(subvolume, False)


def operations(parent: Path, child: Path) -> list[Op]:
    """The operations between read-only *parent* and *child* (made read-only meanwhile)."""
    if not btrfs.is_read_only(parent):
        raise SystemError_(
            f"cannot compare with {parent}: it is not read-only",
            "snapshots of a read-only root can be compared; this one is writable",
        )
    with read_only(child):
        dump = pipeline(
            ["btrfs", "send", "-q", "--no-data", "-p", str(parent), str(child)],
            ["btrfs", "receive", "--dump"],
            what=f"btrfs send {child}",
        )
    return parse_dump(dump)


def changed(parent: Path, child: Path) -> bool:
    """Whether *child* differs from *parent*; when they cannot be compared, assume it does."""
    try:
        return bool(operations(parent, child))
    except SystemError_:
        return True
