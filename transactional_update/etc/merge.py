"""The three-way merge of /etc trees: base (at the fork), ours (the live /etc), theirs (new).

:func:`scan` describes a real tree, :func:`plan` decides per path what the new tree gets (pure),
and :func:`apply` carries the plan out in the new tree.  Every path theirs and ours agree on, or
that only theirs changed, is left alone: the new tree already holds it, so a typical run touches
the few files an admin edited and nothing else.

Per path, with ``b``, ``o``, ``t`` the entries (or their absence) in base, ours and theirs:

* ``o == t`` or ``o == b``: theirs stays (no change, the same change twice, or theirs' change);
* ``t == b``: ours' state is taken whole: content, mode, owner, symlink target, a deletion, a
  different type;
* both changed differently, all three regular files: content, mode, uid and gid merge one by one
  (one side's change wins; both changed the content: the line merge, or the entry merge for the
  account files at the top of the tree; both changed mode or owner differently: a conflict);
* both changed differently, all three directories: mode and owner merge the same way;
* anything else (both added different files, a deletion against a change, different types,
  symlinks retargeted twice, binary files both changed): a conflict.

A conflict keeps theirs in place and puts ours beside it as ``PATH`` + :data:`LIVE_SUFFIX`
(files and symlinks only: a live directory is not copied), so that nothing the admin did is lost
and the booted system is the one the package manager built.  An account file with conflicting
entries is merged and also gets ours beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from transactional_update import files

LIVE_SUFFIX = ".live"
# accounts.ACCOUNT_FILES at the top of the tree; not imported from there, so that a plan
# without content merges loads no difflib.
_ACCOUNT_PATHS = frozenset({"passwd", "group", "shadow", "gshadow"})
_CHUNK = 1 << 20


class Kind(StrEnum):
    FILE = "file"
    SYMLINK = "symlink"
    DIR = "dir"


@dataclass(frozen=True)
class Entry:
    kind: Kind
    mode: int  # permission bits with setuid, setgid and sticky (stat.S_IMODE)
    uid: int
    gid: int
    digest: str = ""  # sha256 of a file's content
    target: str = ""  # a symlink's target
    xattrs: tuple[tuple[str, bytes], ...] = ()  # sorted by name


class Action(StrEnum):
    TAKE = "take"  # ours' entry replaces theirs or is created (and its children, one by one)
    DELETE = "delete"  # ours deleted it
    META = "meta"  # theirs' content, with merged mode and owner
    CONTENT = "content"  # ours' content, with merged mode and owner
    MERGE_TEXT = "merge-text"  # the line merge, with merged mode and owner
    MERGE_ACCOUNTS = "merge-accounts"  # the entry merge, with merged mode and owner
    CONFLICT = "conflict"  # theirs stays, ours beside it as PATH.live


@dataclass(frozen=True)
class Decision:
    path: str  # relative, "/"-separated
    action: Action
    base: Entry | None
    ours: Entry | None
    theirs: Entry | None
    mode: int = 0  # META, CONTENT, MERGE_*: the result's mode and owner
    uid: int = 0
    gid: int = 0
    reason: str = ""  # CONFLICT: why


@dataclass(frozen=True)
class Conflict:
    path: str
    reason: str  # for an account file: the names whose entry is theirs despite a live change


@dataclass(frozen=True)
class Failure:
    path: str
    error: str


@dataclass(frozen=True)
class Report:
    taken: tuple[str, ...] = ()  # ours' state taken: TAKE, DELETE, META, CONTENT
    merged: tuple[str, ...] = ()  # both sides' changes combined
    conflicted: tuple[Conflict, ...] = ()  # theirs kept; ours beside it (files and links)
    failed: tuple[Failure, ...] = ()  # left as the new tree had it


# --- reading a tree ---


def _digest(path: str) -> str:
    # os.read into one buffer: most of /etc is a few hundred bytes, where a buffered file object
    # costs more than the hashing.
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def scan(root: Path, xattrs: bool = False) -> dict[str, Entry]:
    """Every file, symlink and directory under *root* (not *root* itself), without following
    symlinks.  Devices, fifos and sockets are left out: nothing in /etc is one, and copying one
    is not a merge's business."""
    out: dict[str, Entry] = {}
    pending = [(os.fspath(root), "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            it = os.scandir(directory)
        except FileNotFoundError:
            continue  # removed since its parent was read (a live tree): it is not there
        with it:
            for item in it:
                try:
                    entry = _entry(item, xattrs)
                except FileNotFoundError:
                    continue  # the same, for a file
                if entry is None:
                    continue
                if entry.kind == Kind.DIR:
                    pending.append((item.path, prefix + item.name + "/"))
                out[prefix + item.name] = entry
    return out


def _entry(item: os.DirEntry[str], xattrs: bool) -> Entry | None:
    st = item.stat(follow_symlinks=False)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        entry = Entry(Kind.FILE, stat.S_IMODE(mode), st.st_uid, st.st_gid, _digest(item.path))
    elif stat.S_ISLNK(mode):
        target = os.readlink(item.path)
        entry = Entry(Kind.SYMLINK, 0o777, st.st_uid, st.st_gid, target=target)
    elif stat.S_ISDIR(mode):
        entry = Entry(Kind.DIR, stat.S_IMODE(mode), st.st_uid, st.st_gid)
    else:
        return None
    return replace(entry, xattrs=_xattrs(item.path)) if xattrs else entry


# --- the plan ---


def _three(b: int, o: int, t: int) -> tuple[int, bool]:
    """One attribute merged: (value, True), or (theirs, False) when both changed it differently."""
    if o in (t, b):
        return t, True
    if t == b:
        return o, True
    return t, False


def _decide(path: str, b: Entry | None, o: Entry | None, t: Entry | None) -> Decision | None:
    if o in (t, b):
        return None
    if t == b:
        return Decision(path, Action.DELETE if o is None else Action.TAKE, b, o, t)

    def conflict(reason: str) -> Decision:
        return Decision(path, Action.CONFLICT, b, o, t, reason=reason)

    if b is None or o is None or t is None:
        if b is None:
            return conflict("added on both sides, differently")
        return conflict("deleted on one side, changed on the other")
    if not b.kind == o.kind == t.kind or b.kind == Kind.SYMLINK:
        return conflict("changed on both sides, differently")
    mode, mode_ok = _three(b.mode, o.mode, t.mode)
    uid, uid_ok = _three(b.uid, o.uid, t.uid)
    gid, gid_ok = _three(b.gid, o.gid, t.gid)
    if not (mode_ok and uid_ok and gid_ok):
        return conflict("mode or owner changed on both sides, differently")
    # Merged content is written with one side's attributes: they must be the same.
    if o.xattrs != t.xattrs:
        return conflict("extended attributes differ")
    if b.kind == Kind.DIR or o.digest in (t.digest, b.digest):
        action = Action.META
    elif t.digest == b.digest:
        action = Action.CONTENT
    elif path in _ACCOUNT_PATHS:
        action = Action.MERGE_ACCOUNTS
    else:
        action = Action.MERGE_TEXT
    return Decision(path, action, b, o, t, mode, uid, gid)


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _result_kind(d: Decision | None, theirs: Entry | None) -> Kind | None:
    """What the new tree holds at a path after *d*."""
    if d is None or d.action not in (Action.TAKE, Action.DELETE):
        return theirs.kind if theirs else None
    return d.ours.kind if d.ours else None


def plan(
    base: Mapping[str, Entry], ours: Mapping[str, Entry], theirs: Mapping[str, Entry]
) -> tuple[Decision, ...]:
    """What :func:`apply` does, path by path, parents before children; paths left alone are
    not listed."""
    decisions: dict[str, Decision] = {}
    for path in set(base) | set(ours) | set(theirs):
        d = _decide(path, base.get(path), ours.get(path), theirs.get(path))
        if d is not None:
            decisions[path] = d
    order = sorted(decisions, key=lambda p: p.split("/"))
    # Taking ours' deletion of a directory, or ours' file in its place, removes everything theirs
    # holds below it: only when every such path is itself going (children first, so that a kept
    # grandchild keeps its parent too).
    theirs_below: dict[str, list[str]] = {}
    for path in theirs:
        parent = _parent(path)
        while parent:
            theirs_below.setdefault(parent, []).append(path)
            parent = _parent(parent)
    for path in reversed(order):
        d = decisions[path]
        if (
            d.action in (Action.TAKE, Action.DELETE)
            and d.theirs is not None
            and d.theirs.kind == Kind.DIR
            and (d.ours is None or d.ours.kind != Kind.DIR)
        ):
            below = theirs_below.get(path, [])
            if any((c := decisions.get(p)) is None or c.action != Action.DELETE for p in below):
                decisions[path] = replace(
                    d, action=Action.CONFLICT, reason="the new tree keeps something inside it"
                )
    # Ours' entries need a directory in the new tree to go into.
    for path in order:
        d = decisions[path]
        if d.action in (Action.DELETE, Action.CONFLICT) or d.ours is None:
            continue
        parent = _parent(path)
        if parent and _result_kind(decisions.get(parent), theirs.get(parent)) != Kind.DIR:
            decisions[path] = replace(
                d, action=Action.CONFLICT, reason="its directory is not one in the new tree"
            )
    return tuple(decisions[p] for p in order)


# --- carrying it out ---


def _place(
    dest: Path,
    src: Path,
    entry: Entry,
    data: bytes | None = None,
    mode: int | None = None,
    owner: tuple[int, int] | None = None,
) -> None:
    """Put a copy of *src* (a file or symlink described by *entry*; *data* instead of its
    content) at *dest*, atomically.

    Unlike files.write_atomic, owner, extended attributes and mtime are set on the temporary file,
    before the name appears: a shadow file must never be visible under the wrong owner.
    """
    uid, gid = owner if owner else (entry.uid, entry.gid)
    tmp = dest.with_name(f".{dest.name}.tu-new")
    tmp.unlink(missing_ok=True)
    try:
        if entry.kind == Kind.SYMLINK:
            os.symlink(os.readlink(src), tmp)
            os.lchown(tmp, uid, gid)
        else:
            st = os.lstat(src)
            if data is None:
                fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
                with open(fd, "rb") as f:
                    data = f.read()
            perm = entry.mode if mode is None else mode
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchown(fd, uid, gid)
                os.fchmod(fd, perm)  # after chown, which clears setuid and setgid
                for name, value in entry.xattrs:
                    os.setxattr(fd, name, value)
                if mode is None and owner is None:
                    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))  # an untouched copy
                os.fsync(fd)
        before = os.lstat(dest) if os.path.lexists(dest) else None
        if before is not None and stat.S_ISDIR(before.st_mode):
            dest.rmdir()  # theirs' directory, emptied by the deletions before
            try:
                os.replace(tmp, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    dest.mkdir(stat.S_IMODE(before.st_mode))
                    os.lchown(dest, before.st_uid, before.st_gid)
                raise
        else:
            os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    files.fsync_dir(dest.parent)


def _set_meta(path: Path, mode: int, uid: int, gid: int) -> None:
    """Mode and owner of a file or directory; as they were when either step fails."""
    # Through a descriptor opened without following a symlink: chmod of a path with
    # follow_symlinks=False is not supported everywhere.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        before = os.fstat(fd)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)  # after chown, which clears setuid and setgid
        except BaseException:
            with contextlib.suppress(OSError):
                os.fchown(fd, before.st_uid, before.st_gid)
                os.fchmod(fd, stat.S_IMODE(before.st_mode))
            raise
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with open(fd, "rb") as f:
        return f.read()


def _text(data: bytes) -> str | None:
    # surrogateescape: Latin-1 comments in an old config survive the round trip byte for byte.
    return None if b"\0" in data else data.decode("utf-8", "surrogateescape")


def _merge_content(d: Decision, base_root: Path | None, live: Path, new: Path) -> bytes | None:
    """The merged content, or None when it conflicts; raises when it cannot be read."""
    from transactional_update.etc import accounts, lines

    if base_root is None:
        return None
    texts = [_text(_read(root / d.path)) for root in (base_root, live, new)]
    b, o, t = texts
    if b is None or o is None or t is None:
        return None
    if d.action == Action.MERGE_ACCOUNTS:
        result = accounts.merge_accounts(d.path, b, o, t)
        if result is None:
            return None
        if result.conflicts:
            raise _PartialConflict(result.text.encode("utf-8", "surrogateescape"), result.conflicts)
        return result.text.encode("utf-8", "surrogateescape")
    merged = lines.merge_lines(b, o, t)
    return None if merged is None else merged.encode("utf-8", "surrogateescape")


class _PartialConflict(Exception):
    """An account file merged, with entries where theirs was kept over a live change."""

    def __init__(self, data: bytes, names: Iterable[str]) -> None:
        super().__init__(", ".join(names))
        self.data = data


def apply(
    decisions: Iterable[Decision], live_root: Path, new_root: Path, base_root: Path | None = None
) -> Report:
    """Carry out *decisions* (from :func:`plan`) in *new_root*, copying from *live_root*.

    *base_root* holds base's files for the content merges (without it they are conflicts).
    A path that fails (unreadable, disk full, immutable) stays as the new tree had it and is
    reported under ``failed``; nothing per path raises out of here.
    """
    taken: list[str] = []
    merged: list[str] = []
    conflicted: list[Conflict] = []
    failed: list[Failure] = []
    ordered = list(decisions)

    def fail(path: str, exc: BaseException) -> None:
        msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        failed.append(Failure(path, msg or type(exc).__name__))

    # Deletions first, children before parents, so that a directory is empty when it goes and a
    # directory that ours replaced by a file can be removed before the file takes its place.
    for d in reversed(ordered):
        if d.action != Action.DELETE:
            continue
        target = new_root / d.path
        try:
            if d.theirs is not None and d.theirs.kind == Kind.DIR:
                target.rmdir()
            else:
                target.unlink()
            files.fsync_dir(target.parent)
            taken.append(d.path)
        except OSError as exc:
            fail(d.path, exc)
    failed_paths = {f.path for f in failed}
    for d in ordered:
        if d.action == Action.DELETE:
            continue
        target, source = new_root / d.path, live_root / d.path
        if any(d.path.startswith(p + "/") for p in failed_paths):
            failed.append(Failure(d.path, "its directory could not be merged"))
            failed_paths.add(d.path)
            continue
        try:
            if d.action == Action.TAKE:
                assert d.ours is not None
                if d.ours.kind == Kind.DIR:
                    if d.theirs is not None and d.theirs.kind != Kind.DIR:
                        target.unlink()
                    with contextlib.suppress(FileExistsError):
                        target.mkdir()
                    _set_meta(target, d.ours.mode, d.ours.uid, d.ours.gid)
                else:
                    _place(target, source, d.ours)
                taken.append(d.path)
            elif d.action == Action.META:
                _set_meta(target, d.mode, d.uid, d.gid)
                taken.append(d.path)
            elif d.action == Action.CONTENT:
                assert d.ours is not None
                _place(target, source, d.ours, mode=d.mode, owner=(d.uid, d.gid))
                taken.append(d.path)
            elif d.action in (Action.MERGE_TEXT, Action.MERGE_ACCOUNTS):
                assert d.ours is not None
                try:
                    data = _merge_content(d, base_root, live_root, new_root)
                except _PartialConflict as partial:
                    # The live copy first: should the merged file fail, theirs is still whole.
                    _place(_live(target), source, d.ours)
                    _place(target, source, d.ours, partial.data, d.mode, (d.uid, d.gid))
                    conflicted.append(Conflict(d.path, f"entries kept as theirs: {partial}"))
                    continue
                if data is None:
                    _conflict(d, source, target)
                    conflicted.append(Conflict(d.path, "both changed the content, differently"))
                else:
                    _place(target, source, d.ours, data, d.mode, (d.uid, d.gid))
                    merged.append(d.path)
            else:
                _conflict(d, source, target)
                conflicted.append(Conflict(d.path, d.reason))
        except (OSError, ValueError) as exc:
            fail(d.path, exc)
            failed_paths.add(d.path)
    return Report(tuple(taken), tuple(merged), tuple(conflicted), tuple(failed))


def _live(target: Path) -> Path:
    return target.with_name(target.name + LIVE_SUFFIX)


def _conflict(d: Decision, source: Path, target: Path) -> None:
    # Where theirs has no directory for it, ours cannot be kept beside: the report names it.
    if d.ours is not None and d.ours.kind != Kind.DIR and target.parent.is_dir():
        _place(_live(target), source, d.ours)
