"""Where each root snapshot keeps its own writable ``/etc``, and the references beside it.

``/etc`` is a nested btrfs subvolume inside every root snapshot (``.snapshots/N/snapshot/etc``),
as in openSUSE's transactional-update 5 and 6: the snapshot itself stays read-only (its btrfs
flag), ``/`` is mounted read-write, and so only ``/etc`` takes writes.  A snapshot of the root
does not include nested subvolumes (btrfs leaves an empty placeholder directory, inode 2, where
one was), so whoever makes a snapshot gives it its ``/etc`` (:mod:`etc.carry`), and whoever
deletes one deletes the nested ones first: snapper 0.10.4 refuses a subvolume that holds others
("Directory not empty") and has no plugin hook to do it.

Beside the snapshot, in snapper's ``.snapshots/N/`` (read-only snapshots of ``/etc``, never
booted, never in the GRUB menu):

``etc-sync``
    the live ``/etc`` as last carried into this snapshot, which has not been booted yet;
    ``etc-sync.json`` says which snapshot's ``/etc`` that was (``{"live": B, "at": ...}``).
    The base of the next three-way merge; gone once the snapshot booted and took its last merge.
``etc-start``
    the snapshot's ``/etc`` when its transaction's commands started: the changelog's ``/etc``
    file list compares against it.  Only while the transaction runs.
``etc-booted``
    the snapshot's ``/etc`` when it booted: what the admin changed live since then is what a
    rollback leaves behind.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from transactional_update.files import write_atomic
from transactional_update.snapshots import btrfs

ETC = "etc"
SYNC = "etc-sync"
SYNC_NEW = "etc-sync.new"  # a merge's reference while it runs; replaces SYNC when it succeeded
SYNC_INFO = "etc-sync.json"
START = "etc-start"
BOOTED = "etc-booted"
COMPARISON = "etc-compare"  # a read-only view of a writable /etc while btrfs send reads it
REFERENCES = (SYNC, SYNC_NEW, START, BOOTED)
# btrfs' BTRFS_EMPTY_SUBVOL_DIR_OBJECTID: what a snapshot shows where a nested subvolume was
PLACEHOLDER_INO = 2


@dataclass(frozen=True)
class SyncPoint:
    path: Path  # the read-only reference
    live: int  # the snapshot whose /etc it was taken from
    at: str  # when (ISO 8601, UTC)


def info_dir(snapshot_dir: Path) -> Path:
    """``.snapshots/N`` of ``.snapshots/N/snapshot``."""
    return snapshot_dir.parent


def has_own_etc(snapshot_dir: Path) -> bool:
    """Whether the snapshot's ``/etc`` is a subvolume of its own (the writable layout)."""
    return btrfs.is_subvolume(snapshot_dir / ETC)


def is_placeholder(path: Path) -> bool:
    """Whether *path* is the empty directory a snapshot shows where a nested subvolume was."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_ino == PLACEHOLDER_INO


def lacks_etc(snapshot_dir: Path) -> bool:
    """A root that cannot boot for want of an ``/etc``: made by a plain ``snapper create`` from a
    snapshot with its own ``/etc`` (or a fork cut before it got one)."""
    etc = snapshot_dir / ETC
    return is_placeholder(etc) or not os.path.lexists(etc)


_views = itertools.count(1)


def comparison_path(subvolume: Path) -> Path:
    """Where a read-only view of *subvolume* (an ``/etc``) is made: beside its snapshot."""
    # Two comparisons at once each get their own: other processes by the PID, this one's own
    # (``diff N N``, both sides the same /etc) by the count.
    name = f"{COMPARISON}.{os.getpid()}.{next(_views)}"
    if subvolume.name == ETC:
        return info_dir(subvolume.parent) / name
    return subvolume.with_name(f"{subvolume.name}.{name}")


def sync_point(snapshot_dir: Path) -> SyncPoint | None:
    """The reference of the snapshot's next merge (None: it takes no more live changes)."""
    where = info_dir(snapshot_dir)
    if not btrfs.is_subvolume(where / SYNC):
        return None
    try:
        data = json.loads((where / SYNC_INFO).read_text(encoding="utf-8"))
        return SyncPoint(where / SYNC, int(data["live"]), str(data.get("at", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_sync_info(snapshot_dir: Path, live: int, at: str) -> None:
    write_atomic(
        info_dir(snapshot_dir) / SYNC_INFO, json.dumps({"live": live, "at": at}) + "\n", 0o600
    )


def drop(snapshot_dir: Path, name: str, keep_info: bool = False) -> None:
    """Delete the reference *name* beside the snapshot, if there is one (the sync point with
    its info file, unless *keep_info*: a new sync point is about to take its place)."""
    path = info_dir(snapshot_dir) / name
    if btrfs.is_subvolume(path):
        btrfs.delete_subvolume(path)
    if name == SYNC and not keep_info:
        (info_dir(snapshot_dir) / SYNC_INFO).unlink(missing_ok=True)


def recover(snapshot_dir: Path) -> None:
    """Finish a sync point's replacement that a power cut interrupted.

    The old sync point goes only after the merged files are durable (:func:`etc.carry`), so a
    new one without an old one is the one to keep; a new one beside the old is a merge cut
    short, to be redone from the old.
    """
    where = info_dir(snapshot_dir)
    fresh, current = where / SYNC_NEW, where / SYNC
    if not btrfs.is_subvolume(fresh):
        return
    if btrfs.is_subvolume(current) or not (where / SYNC_INFO).exists():
        btrfs.delete_subvolume(fresh)
    else:
        os.rename(fresh, current)


def remove_nested(snapshot_dir: Path) -> None:
    """Delete the snapshot's ``/etc`` and references, so that snapper can delete the rest.

    The snapshot loses its read-only flag: btrfs deletes a nested subvolume only from a writable
    parent.  Only for a snapshot that is going.
    """
    for name in REFERENCES:
        drop(snapshot_dir, name)
    for view in info_dir(snapshot_dir).glob(f"{COMPARISON}.*"):  # left by a killed comparison
        if btrfs.is_subvolume(view):
            btrfs.delete_subvolume(view)
    etc = snapshot_dir / ETC
    if btrfs.is_subvolume(etc):
        if btrfs.is_read_only(snapshot_dir):
            btrfs.set_read_only(snapshot_dir, False)
        btrfs.delete_subvolume(etc)
