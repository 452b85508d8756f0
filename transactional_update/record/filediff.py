"""Files added, modified and deleted between two snapshots, read from btrfs's send stream.

``btrfs send --no-data -p PARENT CHILD``, read back with ``btrfs receive --dump``, lists the
operations that would turn PARENT into CHILD, in time proportional to the change (see
:mod:`changes`).  The stream is written for a receiver, not a reader, so :func:`classify` replays
its namespace operations on a model of the tree to name what changed at which final path:

* A new inode is created under a temporary name at the top of the subvolume (``/o257-10-0``) and
  then renamed into place; an entry that has to make way is renamed to such a name too, and a
  directory being deleted is renamed to one before its contents are removed below it.
* A renamed *file* appears as ``link NEW dest=OLD`` followed by ``unlink OLD``; a renamed
  directory as ``rename``.
* A file replaced by another (``sed -i``, dpkg's ``.dpkg-new`` dance) appears as ``unlink`` of the
  path and a new inode renamed onto it: the path existed before and after, so it is ``modified``.
* Only names given in the stream are modelled; everything else is where it was in the parent.
  A renamed directory is reported itself (``deleted`` at the old path, ``added`` at the new one,
  with ``source``); the unchanged entries below it are not listed one by one.
* Content changes of a file with several hard links name one of its paths only.

``utimes`` (time stamps, including relatime access times) is not a change an admin made.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from transactional_update.errors import SystemError_
from transactional_update.proc import run
from transactional_update.snapshots import btrfs, etcvol


class FileChangeKind(StrEnum):
    ADDED = "added"
    MODIFIED = "modified"  # content or metadata changed, or the entry was replaced by another
    DELETED = "deleted"


@dataclass(frozen=True)
class FileChange:
    path: str  # absolute inside the snapshot
    kind: FileChangeKind
    is_dir: bool | None = None  # None: the stream did not tell (file_changes fills it in)
    # The parent snapshot's path of the entry now at *path*, when it was moved or hard-linked
    # there from elsewhere (``mv /etc/a /etc/b`` gives b added with source /etc/a, a deleted).
    source: str | None = None


@dataclass(frozen=True)
class SendOp:
    """One line of ``btrfs receive --dump``, with paths made absolute inside the snapshot."""

    op: str
    path: str
    dest: str | None = None  # the new name for ``rename``, the existing name for ``link``


# Operations that create a new inode at their path.
_CREATE = {"mkfile": False, "mkdir": True, "mknod": False, "mkfifo": False, "mksock": False}
_CREATE_SYMLINK = "symlink"  # its dest= is the link's target, not a path in the snapshot
# The stream header (incremental or full), then what is neither a change nor a path: time stamps.
_HEADERS = {"snapshot", "subvol"}
_IGNORED = {*_HEADERS, "utimes"}

_ESCAPES = {
    "a": 0x07,
    "b": 0x08,
    "e": 0x1B,
    "f": 0x0C,
    "n": 0x0A,
    "r": 0x0D,
    "t": 0x09,
    "v": 0x0B,
}
_OCTAL = frozenset("01234567")


def transient(path: str) -> bool:
    """Whether a change of *path* is no change of the system (``--drop-if-no-change``).

    A SQLite database's ``-shm`` file (rpm's ``rpmdb.sqlite-shm``, dnf's history) is the
    shared-memory index of its write-ahead log: every reader rewrites it, and it is rebuilt from
    the database and the ``-wal`` file.  ``zypper search`` or ``rpm -q`` in a transaction
    changes nothing else, and a client that asks for no empty snapshot must get none.
    """
    return path.endswith(".sqlite-shm") or path.endswith(".db-shm")


def _field(line: str, start: int) -> tuple[str, int]:
    """The escaped path at *start* in a dump line and the index just past it.

    btrfs-progs writes every byte that is not printable ASCII as ``\\NNN`` (so a UTF-8 name comes
    out byte by byte) and escapes blanks and backslashes; the bytes are decoded as file names are.
    """
    end = line.find(" ", start)
    end = len(line) if end < 0 else end
    if "\\" not in line[start:end]:
        return line[start:end], end  # most paths: printable ASCII, nothing escaped
    out = bytearray()
    i, n = start, len(line)
    while i < n and line[i] != " ":
        ch = line[i]
        if ch == "\\" and i + 1 < n:
            nxt = line[i + 1]
            if i + 3 < n and nxt in _OCTAL and line[i + 2] in _OCTAL and line[i + 3] in _OCTAL:
                out.append(int(line[i + 1 : i + 4], 8) & 0xFF)
                i += 4
                continue
            out.append(_ESCAPES.get(nxt, ord(nxt) if nxt.isascii() else 0x3F))
            i += 2
            continue
        out.extend(ch.encode("utf-8", "surrogateescape"))
        i += 1
    return os.fsdecode(bytes(out)), i


def _absolute(raw: str, prefix: str) -> str:
    """``./snapshot/etc/x`` -> ``/etc/x`` given the stream's subvolume path ``./snapshot``."""
    if raw == prefix:
        return "/"
    if prefix and raw.startswith(prefix + "/"):
        return raw[len(prefix) :]
    # No header seen: drop "./NAME" as the header would have.
    parts = raw.split("/", 2)
    return "/" + (parts[2] if len(parts) > 2 else "")


def parse_dump(text: str) -> list[SendOp]:
    """The operations in ``btrfs receive --dump`` output, keeping rename and link names.

    ``rename`` names its destination with the subvolume prefix (``dest=./snapshot/etc/x``),
    ``link`` names the existing path relative to the subvolume (``dest=etc/x``).
    """
    ops = []
    prefix = ""
    for line in text.splitlines():
        op, _, rest = line.partition(" ")
        if not rest or op == "utimes":
            continue
        raw, end = _field(line, len(line) - len(rest.lstrip(" ")))
        if op in _HEADERS:
            prefix = raw  # the received subvolume, "./NAME": every path starts with it
            continue
        dest = None
        if op in ("rename", "link"):
            at = line.find(" dest=", end)
            if at < 0:
                raise ValueError(f"no dest= in send stream line: {line!r}")
            target, _ = _field(line, at + len(" dest="))
            dest = _absolute(target, prefix) if op == "rename" else "/" + target.lstrip("/")
        ops.append(SendOp(op, _absolute(raw, prefix), dest))
    return ops


# --- replaying the stream --------------------------------------------------------------------


@dataclass(eq=False)
class _Node:
    """A directory entry the stream touched, at its current place in the model."""

    origin: str | None  # its path in the parent snapshot; None when the stream created it
    is_dir: bool | None = None
    source: str | None = None  # for a hard link: the parent's path of the linked inode
    modified: bool = False
    children: dict[str, _Node] = field(default_factory=dict)


def _join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def _split(path: str) -> tuple[list[str], str]:
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ValueError("the send stream renamed or removed the snapshot's root")
    return parts[:-1], parts[-1]


class _Tree:
    def __init__(self) -> None:
        self.root = _Node(origin="/", is_dir=True)
        self.removed: dict[str, bool | None] = {}  # parent paths whose entry was removed

    def lookup(self, parts: Iterable[str]) -> _Node:
        """The node at *parts*; entries not yet seen are where they were in the parent."""
        node = self.root
        for name in parts:
            node.is_dir = True  # it has an entry below it
            child = node.children.get(name)
            if child is None:
                origin = None if node.origin is None else _join(node.origin, name)
                child = node.children[name] = _Node(origin)
            node = child
        return node

    def detach(self, path: str) -> _Node:
        dirs, name = _split(path)
        parent = self.lookup(dirs)
        node = parent.children.pop(name, None)
        if node is None:  # an entry the stream names for the first time
            node = _Node(None if parent.origin is None else _join(parent.origin, name))
        return node

    def attach(self, path: str, node: _Node) -> None:
        dirs, name = _split(path)
        parent = self.lookup(dirs)
        displaced = parent.children.get(name)
        if displaced is not None:  # send never overwrites, but a rename would: model it
            self.remove(displaced)
        parent.children[name] = node

    def remove(self, node: _Node) -> None:
        if node.origin is not None:
            self.removed[node.origin] = node.is_dir


def _replay(ops: Iterable[SendOp]) -> _Tree:
    tree = _Tree()
    for op in ops:
        if op.op in _CREATE or op.op == _CREATE_SYMLINK:
            tree.attach(op.path, _Node(None, is_dir=_CREATE.get(op.op, False)))
        elif op.op == "rename" and op.dest is not None:
            tree.attach(op.dest, tree.detach(op.path))
        elif op.op == "link" and op.dest is not None:
            existing = tree.lookup(p for p in op.dest.split("/") if p)
            tree.attach(op.path, _Node(None, is_dir=False, source=existing.origin))
        elif op.op in ("unlink", "rmdir"):
            node = tree.detach(op.path)
            node.is_dir = op.op == "rmdir"
            tree.remove(node)
        elif op.op not in _IGNORED:
            # chmod, chown, truncate, update_extent/write/clone, set_xattr/remove_xattr and
            # anything newer protocols add (fallocate, fileattr...): a change to what is there.
            tree.lookup(p for p in op.path.split("/") if p).modified = True
    return tree


def _ancestors(path: str) -> Iterable[str]:
    while path != "/":
        path = path.rsplit("/", 1)[0] or "/"
        yield path


def classify(
    ops: Iterable[SendOp], existed_before: Callable[[str], bool] | None = None
) -> list[FileChange]:
    """What changed at which final path, sorted by path (pure).

    *existed_before(path)* is asked only about a new entry below a directory that was moved
    away from that place, whose old contents moved with it unseen by the stream; without it,
    such an entry counts as ``added``.
    """
    tree = _replay(ops)
    # Every node now in the tree, with its final path and whether it is still where its parent
    # directory's old path says (moved along with an ancestor at most).
    placed: list[tuple[str, _Node, bool]] = []
    stack: list[tuple[str, _Node]] = [("/", tree.root)]
    while stack:
        path, node = stack.pop()
        for name, child in node.children.items():
            child_path = _join(path, name)
            in_place = (
                child.origin is not None
                and node.origin is not None
                and child.origin == _join(node.origin, name)
            )
            placed.append((child_path, child, in_place))
            stack.append((child_path, child))

    # Paths of the parent that no longer hold what they held.
    vacated = dict(tree.removed)
    for _, node, in_place in placed:
        if not in_place and node.origin is not None:
            vacated.setdefault(node.origin, node.is_dir)

    out = []
    occupied = set()
    if tree.root.modified:
        out.append(FileChange("/", FileChangeKind.MODIFIED, True))
    for path, node, in_place in placed:
        occupied.add(path)
        if in_place:
            if node.modified:
                out.append(FileChange(path, FileChangeKind.MODIFIED, node.is_dir))
            continue
        existed = path in vacated or (
            existed_before is not None
            and any(a in vacated for a in _ancestors(path))
            and existed_before(path)
        )
        source = node.origin if node.origin is not None else node.source
        out.append(
            FileChange(
                path,
                FileChangeKind.MODIFIED if existed else FileChangeKind.ADDED,
                node.is_dir,
                None if source == path else source,
            )
        )
    for path, is_dir in vacated.items():
        if path not in occupied:
            out.append(FileChange(path, FileChangeKind.DELETED, is_dir))
    out.sort(key=lambda c: c.path)
    return out


# --- I/O -------------------------------------------------------------------------------------


def send_dump(parent: Path, child: Path) -> str:
    """``btrfs receive --dump`` of the metadata-only stream from read-only *parent* to *child*.

    The stream goes through a private temporary file, not a pipe: ``receive --dump`` exits as soon
    as it has read the end command, and ``btrfs send``'s last ``splice()`` to the closed pipe then
    kills it with SIGPIPE although the whole stream was delivered (about one run in five).
    """
    if not btrfs.is_read_only(parent):
        raise SystemError_(
            f"cannot compare with {parent}: it is not read-only",
            "snapshots of a read-only root can be compared; this one is writable",
        )
    try:
        with btrfs.read_only(child), tempfile.TemporaryDirectory(prefix="tu-send-") as tmp:
            stream = str(Path(tmp) / "stream")
            send = ["btrfs", "send", "-q", "--no-data", "-f", stream, "-p", str(parent), str(child)]
            run(send, what=f"btrfs send {child}")
            dump = run(["btrfs", "receive", "--dump", "-f", stream], what="btrfs receive --dump")
    except OSError as exc:  # the temporary file: no space or no /tmp
        raise SystemError_(
            f"cannot compare {child} with {parent}: {exc}", "check the space in $TMPDIR"
        ) from exc
    return dump.stdout


def _is_dir(snapshot: Path, path: str) -> bool | None:
    try:
        return stat.S_ISDIR(os.lstat(snapshot / path.lstrip("/")).st_mode)
    except OSError:
        return None


def _with_is_dir(change: FileChange, parent: Path, child: Path) -> FileChange:
    holder = parent if change.kind is FileChangeKind.DELETED else child
    return replace(change, is_dir=_is_dir(holder, change.path))


def _changes(parent: Path, child: Path) -> list[FileChange]:
    def existed(path: str) -> bool:
        return os.path.lexists(parent / path.lstrip("/"))

    changes = classify(parse_dump(send_dump(parent, child)), existed)
    return [c if c.is_dir is not None else _with_is_dir(c, parent, child) for c in changes]


def _in_etc(path: str) -> bool:
    return path == "/etc" or path.startswith("/etc/")


def file_changes(parent: Path, child: Path, own_etc: bool = True) -> list[FileChange]:
    """The entries added, modified and deleted from snapshot *parent* to snapshot *child*.

    *parent* must be read-only; *child* is made read-only while btrfs reads it.  Where the stream
    does not say whether an entry is a directory, the snapshot holding it is asked.  A snapshot's
    own ``/etc`` (a nested subvolume, which the stream leaves out) is compared by a stream of its
    own when both have one (*own_etc*), and left out otherwise.
    """
    changes = _changes(parent, child)
    if not etcvol.has_own_etc(child):
        return changes
    changes = [c for c in changes if not _in_etc(c.path)]
    if own_etc and etcvol.has_own_etc(parent):
        changes += etc_changes(parent / etcvol.ETC, child / etcvol.ETC)
        changes.sort(key=lambda c: c.path)
    return changes


def etc_changes(old: Path, new: Path) -> list[FileChange]:
    """The changes between two ``/etc`` subvolumes, as paths under ``/etc``.

    btrfs send reads read-only subvolumes only; a writable one (the live ``/etc``) is read
    through a read-only snapshot of it, never by flipping its flag under the admin's feet.
    """
    with _frozen(old) as o, _frozen(new) as n:
        found = _changes(o, n)
    prefix = f"/{etcvol.ETC}"
    return [
        replace(c, path=prefix + c.path, source=c.source and prefix + c.source)
        for c in found
        if c.path != "/"
    ]


@contextmanager
def _frozen(subvolume: Path) -> Iterator[Path]:
    if btrfs.is_read_only(subvolume):
        yield subvolume
        return
    # Beside the snapshot, in .snapshots/N/, where etcvol.remove_nested finds a leftover.
    view = etcvol.comparison_path(subvolume)
    if btrfs.is_subvolume(view):
        btrfs.delete_subvolume(view)
    btrfs.snapshot(subvolume, view, read_only=True)
    try:
        yield view
    finally:
        btrfs.delete_subvolume(view)
