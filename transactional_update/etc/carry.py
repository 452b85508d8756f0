"""Carrying the live ``/etc`` into the snapshot that boots next, three ways, losing nothing.

Each root snapshot has its own ``/etc`` subvolume (layout: :mod:`snapshots.etcvol`).  A snapshot
that is made while another one runs gets a *sync point*: a read-only snapshot of the live
``/etc``, the base of every later merge.  The live changes since then are merged in

* when the transaction starts on a pending default (:data:`Moment.FORK`: the commands see them),
* when it commits (:data:`Moment.COMMIT`),
* at shutdown, while the old system still runs (:data:`Moment.SYNC`, ``sync-etc``),
* early at the first boot of the new snapshot, from the old one's ``/etc`` (:data:`Moment.BOOT`),
  which catches what a power cut kept the shutdown from carrying.

Every merge is ``base`` = the sync point, ``ours`` = the live ``/etc`` (a read-only snapshot of
it, so that edits during the merge wait for the next one), ``theirs`` = the new snapshot's
``/etc`` (:mod:`etc.merge`).  Only a merge with no failed path moves the sync point on; a failed
one leaves the sync point, so the next merge tries those paths again, and a repeated merge finds
what it carried already on both sides, the same, and does nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from transactional_update.errors import TUError
from transactional_update.etc import merge
from transactional_update.proc import run
from transactional_update.snapshots import btrfs, etcvol
from transactional_update.snapshots.etcvol import ETC

log = logging.getLogger(__name__)

# Lock and backup files that shadow-utils rewrites with every change: merging them would report
# conflicts about copies of the files that are merged by entry.
IGNORED = frozenset({".pwd.lock", "passwd-", "group-", "shadow-", "gshadow-", "subuid-", "subgid-"})


class Moment(StrEnum):
    FORK = "fork"
    COMMIT = "commit"
    SYNC = "sync"  # sync-etc: at shutdown (transactional-update-etc.service), or by hand
    BOOT = "boot"
    APPLY = "apply"  # apply made the snapshot's /etc live: what the old one took meanwhile


@dataclass(frozen=True)
class Carried:
    """One merge of live changes into snapshot *into* from the ``/etc`` of snapshot *live*."""

    into: int
    live: int
    when: Moment
    at: str
    report: merge.Report

    @property
    def empty(self) -> bool:
        """Whether the merge found nothing to carry (and so nothing to record)."""
        r = self.report
        return not (r.taken or r.merged or r.conflicted or r.failed)

    @property
    def changed(self) -> list[str]:
        return [*self.report.taken, *self.report.merged, *(c.path for c in self.report.conflicted)]

    def record(self) -> dict[str, Any]:
        """For the changelog entry of *into* (paths absolute: ``/etc/...``)."""
        r = self.report
        return {
            "when": str(self.when),
            "at": self.at,
            "from": self.live,
            "taken": [_abs(p) for p in r.taken],
            "merged": [_abs(p) for p in r.merged],
            "conflicts": [
                {"path": _abs(c.path), "live": _abs(c.path) + merge.LIVE_SUFFIX, "reason": c.reason}
                for c in r.conflicted
            ],
            "failed": [{"path": _abs(f.path), "error": f.error} for f in r.failed],
        }


def _abs(path: str) -> str:
    return f"/{ETC}/{path}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def scan(tree: Path) -> dict[str, merge.Entry]:
    return {
        path: entry
        for path, entry in merge.scan(tree, xattrs=True).items()
        if path not in IGNORED and not path.endswith(".tu-new")
    }


def three_way(base: Path, ours: Path, theirs: Path) -> merge.Report:
    """Merge the changes from *base* to *ours* into *theirs* (in place)."""
    decisions = merge.plan(scan(base), scan(ours), scan(theirs))
    return merge.apply(decisions, ours, theirs, base)


def begin(
    root: Path, booted: int, base: int, base_dir: Path, fork: int, fork_dir: Path
) -> Carried | None:
    """Give a new fork its own ``/etc``: the live one when it builds on the booted snapshot,
    else its base's with the live changes since that one's sync point merged in.

    A base without an ``/etc`` of its own (a system not migrated) leaves the fork as snapper
    made it: its ``/etc`` is a plain directory, copied with the rest.
    """
    if not etcvol.has_own_etc(base_dir):
        return None
    etc = fork_dir / ETC
    if etcvol.is_placeholder(etc) or (etc.is_dir() and not any(etc.iterdir())):
        etc.rmdir()
    info = etcvol.info_dir(fork_dir)
    carried = None
    if base == booted:
        # One atomic snapshot of the live /etc is both the fork's start and its sync point.
        btrfs.snapshot(root / ETC, info / etcvol.SYNC, read_only=True)
        etcvol.write_sync_info(fork_dir, booted, now())
        btrfs.snapshot(info / etcvol.SYNC, etc)
    else:
        btrfs.snapshot(base_dir / ETC, etc)
        etcvol.recover(base_dir)
        point = etcvol.sync_point(base_dir)
        if point is not None:
            # Whichever snapshot's /etc it follows: the booted one's changes are merged below,
            # another one's (the base's merges were cut short while that one ran) at the boot.
            btrfs.snapshot(point.path, info / etcvol.SYNC, read_only=True)
            etcvol.write_sync_info(fork_dir, point.live, point.at)
        if point is not None and point.live == booted:
            try:
                carried = merge_live(root, booted, fork, fork_dir, Moment.FORK)
            except (TUError, OSError) as exc:
                # The fork has its base's /etc and the base's sync point: the commit's merge
                # (or the shutdown's) carries what this one could not.
                why = exc.message if isinstance(exc, TUError) else str(exc)
                log.warning("the live /etc's changes were not merged at the start (%s)", why)
    btrfs.snapshot(etc, info / etcvol.START, read_only=True)
    return carried


def merge_live(
    root: Path, booted: int, target: int, target_dir: Path, when: Moment
) -> Carried | None:
    """Merge the booted system's live ``/etc`` changes since *target*'s sync point into it.

    None when *target* takes no live changes from the booted snapshot (it was not made while
    this one ran, or it booted already).
    """
    etcvol.recover(target_dir)
    point = etcvol.sync_point(target_dir)
    if point is None or point.live != booted or not etcvol.has_own_etc(root):
        return None
    if _unchanged_since(root / ETC, point.path):
        return Carried(target, booted, when, now(), merge.Report())
    fresh = etcvol.info_dir(target_dir) / etcvol.SYNC_NEW
    btrfs.snapshot(root / ETC, fresh, read_only=True)
    at = now()
    try:
        report = three_way(point.path, fresh, target_dir / ETC)
        _advance(target_dir, point.path, fresh, report, booted, at)
    except BaseException:
        etcvol.recover(target_dir)  # the new reference goes, or replaces an old one gone already
        raise
    return Carried(target, booted, when, at, report)


def _unchanged_since(live: Path, point: Path) -> bool:
    """Whether nothing changed in *live* since the sync point *point* was taken of it, and the
    sync point holds what was taken (no failed path put back): btrfs' transaction ids tell,
    without reading a file."""
    btrfs.sync(live)  # one commit makes both root items current (same filesystem)
    changed, _ = btrfs.transids(live)
    point_changed, taken = btrfs.transids(point)
    return changed <= taken and point_changed <= taken


def _advance(
    target_dir: Path, base: Path, fresh: Path, report: merge.Report, live: int, at: str
) -> None:
    """Make *fresh* (what was merged from) the target's sync point, durably and atomically.

    A path that failed is put back in *fresh* as the old sync point had it, so the next merge
    finds it changed again and retries it; every other path moves on, so that an edit the admin
    makes after this merge (reverting one it carried, say) counts as the change it is.  The
    merged files are durable before the old sync point goes; a cut before the rename leaves
    the new one beside an absent old one, which :func:`etcvol.recover` completes.
    """
    if report.failed:
        _put_back(fresh, base, [f.path for f in report.failed])
    btrfs.sync(target_dir)
    etcvol.drop(target_dir, etcvol.SYNC, keep_info=True)
    os.rename(fresh, etcvol.info_dir(target_dir) / etcvol.SYNC)
    etcvol.write_sync_info(target_dir, live, at)
    btrfs.sync(target_dir)


def _put_back(fresh: Path, base: Path, paths: list[str]) -> None:
    """The *paths* of the read-only snapshot *fresh* as *base* has them (or absent)."""
    btrfs.set_read_only(fresh, False)
    try:
        for path in sorted(paths, key=lambda p: p.count("/")):
            here, there = fresh / path, base / path
            if here.is_dir() and not here.is_symlink():
                shutil.rmtree(here)
            elif os.path.lexists(here):
                here.unlink()
            if os.path.lexists(there) and here.parent.is_dir():
                run(
                    ["cp", "-a", "--reflink=auto", "--no-target-directory", str(there), str(here)],
                    what="restore a path of the /etc sync point",
                )
    finally:
        btrfs.set_read_only(fresh, True)


def at_boot(
    snapshots_dir: Path,
    booted: int,
    booted_dir: Path,
    live_etc: Path,
    when: Moment = Moment.BOOT,
    *,
    still_running: bool = False,
) -> Carried | None:
    """Early at a snapshot's first boot: carry what the previous system's ``/etc`` changed since
    the last merge, then keep the booted ``/etc`` as ``etc-booted`` (what a rollback compares).

    The previous system no longer runs, so its ``/etc`` holds still; a path that fails stays
    in the sync point for the next run (at shutdown, or the next boot), the rest is done.
    After an apply the previous ``/etc`` is hidden, not gone (*still_running*): a shell whose
    working directory it is still writes there.  The sync point then moves on instead of
    going, and each later merge (``sync-etc`` at shutdown, the real first boot) takes what
    was written there since.
    """
    if not etcvol.has_own_etc(booted_dir):
        return None
    carried = None
    keep = still_running
    etcvol.recover(booted_dir)
    point = etcvol.sync_point(booted_dir)
    if point is not None:
        source = snapshots_dir / str(point.live) / "snapshot" / ETC
        if (
            point.live != booted
            and btrfs.is_subvolume(source)
            and _unchanged_since(source, point.path)
        ):
            # Nothing changed there since the last merge (the shutdown's, or apply's a moment
            # ago): nothing to carry, and no need to read three trees to find that out.
            carried = Carried(booted, point.live, when, now(), merge.Report())
            if not keep:
                etcvol.drop(booted_dir, etcvol.SYNC)
        elif point.live != booted and btrfs.is_subvolume(source):
            fresh = etcvol.info_dir(booted_dir) / etcvol.SYNC_NEW
            btrfs.snapshot(source, fresh, read_only=True)
            at = now()
            try:
                report = three_way(point.path, fresh, live_etc)
                carried = Carried(booted, point.live, when, at, report)
                if report.failed or keep:
                    _advance(booted_dir, point.path, fresh, report, point.live, at)
                else:
                    btrfs.sync(live_etc)
                    etcvol.drop(booted_dir, etcvol.SYNC)
            finally:
                etcvol.recover(booted_dir)
        else:
            if point.live != booted:
                log.warning(
                    "snapshot %d, whose /etc changes this one was to take at its first boot, "
                    "is gone; nothing is left to carry",
                    point.live,
                )
            etcvol.drop(booted_dir, etcvol.SYNC)
    etcvol.drop(booted_dir, etcvol.START)
    reference = etcvol.info_dir(booted_dir) / etcvol.BOOTED
    if not btrfs.is_subvolume(reference) and not (carried and carried.report.failed):
        btrfs.snapshot(live_etc, reference, read_only=True)
    return carried


def changes(old: Mapping[str, merge.Entry], new: Mapping[str, merge.Entry]) -> list[dict[str, Any]]:
    """The changelog's file list between two scans of an ``/etc`` (as :mod:`record.filediff`)."""
    out = []
    for path in sorted(set(old) | set(new), key=lambda p: p.split("/")):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        kind = "added" if a is None else "deleted" if b is None else "modified"
        entry = b or a
        assert entry is not None
        out.append({"path": _abs(path), "kind": kind, "dir": entry.kind == merge.Kind.DIR})
    return out


def left_behind(booted_dir: Path, live_etc: Path, target_dir: Path) -> list[str] | None:
    """The files the admin changed in the booted ``/etc`` since it booted that snapshot
    *target_dir* does not boot with as they are now (None: unknown, no reference)."""
    reference = etcvol.info_dir(booted_dir) / etcvol.BOOTED
    if not btrfs.is_subvolume(reference):
        return None
    live = scan(live_etc)
    target = scan(target_dir / ETC) if etcvol.has_own_etc(target_dir) else {}
    edited = [c["path"] for c in changes(scan(reference), live) if not c["dir"]]
    rel = len(ETC) + 2  # "/etc/x" -> "x"
    return [p for p in edited if target.get(p[rel:]) != live.get(p[rel:])]
