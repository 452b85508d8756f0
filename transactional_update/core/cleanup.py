"""``cleanup``: remove what interrupted runs left and apply snapper's number cleanup.

Left by interrupted runs (see :mod:`snapshots.leftovers`): forks still marked in progress,
subvolumes without snapper's metadata (a cut while snapper created them) and complete snapshots
whose commit did not reach the disk (a cut before the default was synced).

``cleanup --prune-only`` (:func:`prune_only`) removes no snapshot: it only follows deletions made
by others - snapper's own daily cleanup, whose unit runs it afterwards through our drop-in, or an
admin's ``snapper delete`` - by dropping their changelog entries and GRUB menu entries.

Never touched: the booted snapshot, the default (which is the pending one when they differ),
the snapshot whose /etc changes either of them is still to take (see :mod:`etc.carry`), and
snapshot 0.  Runs under the transaction lock, so no live transaction's fork can be taken.  The
number algorithm reads snapper's settings: of the snapshots with cleanup ``number``, keep the
newest NUMBER_LIMIT (and NUMBER_LIMIT_IMPORTANT of those marked ``important=yes``); younger than
NUMBER_MIN_AGE seconds are kept too.  It differs from snapper's own in one way, on purpose:
the protected snapshots do not use up places in the limit (snapper counts them and then spares
them), so the admin always keeps NUMBER_LIMIT rollback targets besides the booted and default.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from transactional_update.config import conffile
from transactional_update.core.context import Context, Followup
from transactional_update.core.lock import Lock
from transactional_update.errors import ConfigError, LockedError, SnapshotError, SystemError_
from transactional_update.record import bootstate, changelog
from transactional_update.snapshots import btrfs, etcvol, leftovers
from transactional_update.snapshots.snapinfo import Snapshot
from transactional_update.snapshots.system import IN_PROGRESS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NumberLimits:
    limit: int = 50
    limit_important: int = 10
    min_age: int = 1800


@dataclass
class CleanupResult:
    stale: list[int] = field(default_factory=list)
    number: list[int] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)  # subvolumes snapper does not know
    lost: list[int] = field(default_factory=list)  # complete, but their commit never landed

    def removed(self) -> list[int]:
        return sorted({*self.stale, *self.number, *self.orphans, *self.lost})


@dataclass
class PruneResult:
    pruned: list[int] = field(default_factory=list)  # changelog entries of deleted snapshots
    followups: list[Followup] = field(default_factory=list)  # what follows the default
    skipped: str | None = None  # why nothing was done: another transaction holds the lock


def _upper(value: str, key: str, where: str) -> int:
    # snapper allows ranges "2-10"; the upper bound is what it keeps while space allows.
    try:
        return int(value.rsplit("-", maxsplit=1)[-1])
    except ValueError:
        raise ConfigError(
            f"{where}: {key}={value!r} is not a number or range",
            f'set {key} to a number like "10" or a range like "2-10"',
        ) from None


def read_limits(root: Path, config: str) -> NumberLimits:
    path = root / "etc/snapper/configs" / config
    where = f"/etc/snapper/configs/{config}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read {where}: {exc}", "fix the file's permissions or encoding"
        ) from exc
    values = conffile.values(text, where, conffile.Lines.FOREIGN)
    return NumberLimits(
        limit=_upper(values.get("NUMBER_LIMIT", "50"), "NUMBER_LIMIT", where),
        limit_important=_upper(
            values.get("NUMBER_LIMIT_IMPORTANT", "10"), "NUMBER_LIMIT_IMPORTANT", where
        ),
        min_age=_upper(values.get("NUMBER_MIN_AGE", "1800"), "NUMBER_MIN_AGE", where),
    )


def number_candidates(
    snaps: list[Snapshot], protected: set[int], limits: NumberLimits, now: datetime
) -> list[int]:
    """Snapshots the number algorithm removes, oldest first (pure: unit-tested)."""
    doomed = []
    kept = kept_important = 0
    for s in sorted(snaps, key=lambda s: s.number, reverse=True):
        if s.cleanup != "number" or s.number in protected or s.number == 0:
            continue
        if IN_PROGRESS in s.userdata:
            continue
        important = s.userdata.get("important") == "yes"
        if important and kept_important < limits.limit_important:
            kept_important += 1
            continue
        if not important and kept < limits.limit:
            kept += 1
            continue
        if s.date is not None and (now - s.date).total_seconds() < limits.min_age:
            continue
        doomed.append(s.number)
    return sorted(doomed)


def cleanup(ctx: Context) -> CleanupResult:
    """Remove what interrupted runs left (:mod:`snapshots.leftovers`) and apply the number limit.

    Everything removed is on disk before it is reported (the deletions are committed).
    """
    managed = ctx.managed
    with Lock(managed.snapshots_dir, ctx.config.lock_wait):
        booted, default = managed.booted(), managed.default()
        protected = {n for n in (booted, default, managed.live()) if n is not None}
        protected |= _etc_sources(ctx, booted, default)  # their /etc changes are still to come
        good = bootstate.known_good(bootstate.load(ctx.root))
        if good is not None:
            protected.add(good)  # GRUB falls back to it when a new default does not boot
        snaps = ctx.snapper.list_snapshots()
        # We hold the lock, so an in-progress mark can only belong to a transaction that died.
        found = leftovers.find(managed, booted, default)
        result = CleanupResult(
            stale=[
                s.number for s in snaps if IN_PROGRESS in s.userdata and s.number not in protected
            ],
            orphans=found.orphans,
            lost=found.lost,
        )
        limits = read_limits(ctx.root, ctx.config.snapper_config)
        rest = [s for s in snaps if s.number not in {*result.stale, *result.lost}]
        result.number = number_candidates(rest, protected, limits, datetime.now(UTC))
        ids = _delete_snapshots(ctx, result.stale + result.lost + result.number)
        ids |= _delete_orphans(managed.snapshots_dir, result.orphans)
        if result.lost:
            leftovers.clear_intent(ctx.root)
        if ids:
            btrfs.wait_cleaned(ctx.root, ids, timeout=60.0)
        btrfs.sync(ctx.root)  # what is reported removed stays removed
        # Changelog entries go with their snapshots (also those snapper's own cleanup removed).
        changelog.prune(ctx.root)
        _forget_failures(ctx)
        ctx.default_changed()  # removed snapshots leave GRUB's menu; never raises
        for n in result.stale:
            log.info("cleanup: removed snapshot %d left by an interrupted transaction", n)
        for n in result.orphans:
            log.info("cleanup: removed subvolume .snapshots/%d, which snapper does not know", n)
        for n in result.lost:
            log.info("cleanup: removed snapshot %d, whose commit did not reach the disk", n)
        for n in result.number:
            log.info("cleanup: removed snapshot %d (number limit)", n)
    return result


def _forget_failures(ctx: Context) -> None:
    """Failed boots of deleted snapshots leave the boot state (and ``status``)."""
    try:
        bootstate.prune(ctx.root)
    except OSError as exc:
        log.warning("cannot update the boot state: %s", exc.strerror or exc)


def _etc_sources(ctx: Context, *numbers: int | None) -> set[int]:
    """The snapshots whose /etc changes the booted or default snapshot is still to take (at a
    shutdown or its first boot): deleting one would lose them."""
    sources = set()
    for n in numbers:
        point = etcvol.sync_point(ctx.managed.snapshot_dir(n)) if n is not None else None
        if point is not None:
            sources.add(point.live)
    return sources


def _delete_snapshots(ctx: Context, doomed: list[int]) -> set[int]:
    """Delete snapper's snapshots *doomed*; the subvolume ids btrfs' cleaner is to free."""
    if not doomed:
        return set()
    managed = ctx.managed
    ids = {
        btrfs.subvolume_id(managed.snapshot_dir(n))
        for n in doomed
        if btrfs.is_subvolume(managed.snapshot_dir(n))
    }
    ctx.snapper.delete_snapshots(doomed)
    return ids


def _delete_orphans(snapshots_dir: Path, orphans: list[int]) -> set[int]:
    """Remove the directories *orphans* of the store, subvolume and all (snapper cannot)."""
    ids = set()
    for n in orphans:
        subvol = snapshots_dir / str(n) / "snapshot"
        etcvol.remove_nested(subvol)
        if btrfs.is_subvolume(subvol):
            ids.add(btrfs.delete_subvolume(subvol))
        try:
            shutil.rmtree(snapshots_dir / str(n))
        except OSError as exc:
            raise SystemError_(
                f"cannot remove {snapshots_dir / str(n)}: {exc.strerror or exc}",
                "remove it by hand (btrfs subvolume delete, rm -r)",
            ) from exc
    return ids


def prune_only(ctx: Context) -> PruneResult:
    """Drop the changelog entries and boot menu entries of snapshots others deleted.

    Under the transaction lock, like every change to the menu.  When a transaction still holds it
    after LOCK_WAIT, nothing is done and :attr:`PruneResult.skipped` says why: this is a catch-up
    that the transaction's own commit (menu) and every later cleanup (both) repeat, so running
    after snapper's cleanup it must not fail snapper's unit.
    """
    lock = Lock(ctx.managed.snapshots_dir, ctx.config.lock_wait)
    try:
        lock.acquire()
    except LockedError as exc:
        if not lock.is_held():  # a planted link or foreign file: a real problem, say so
            raise
        log.debug("cleanup --prune-only: skipped: %s", exc.message)
        return PruneResult(skipped=exc.message)
    try:
        pruned = changelog.prune(ctx.root)
        _forget_failures(ctx)
        followups = ctx.default_changed()
    finally:
        lock.release()
    for n in pruned:
        log.debug("cleanup: dropped the changelog entry of deleted snapshot %d", n)
    return PruneResult(pruned=pruned, followups=followups)


def delete(ctx: Context, numbers: list[int]) -> list[int]:
    """``delete N…``: what ``snapper delete`` does, for snapshots with their own ``/etc``.

    snapper 0.10.4 refuses those (a nested subvolume; see :mod:`snapshots.etcvol`); this removes
    the nested subvolumes first, then lets snapper delete, drops the changelog entries, and the
    GRUB menu follows.  The booted and the default snapshot are refused, as snapper does.
    """
    managed = ctx.managed
    wanted = sorted(set(numbers))
    with Lock(managed.snapshots_dir, ctx.config.lock_wait):
        booted, default, live = managed.booted(), managed.default(), managed.live()
        sources = _etc_sources(ctx, booted, default)
        for n in wanted:
            managed.require_snapshot_dir(n)
            if n in (booted, default, live):
                which = (
                    "booted"
                    if n == booted
                    else "default (it boots next)"
                    if n == default
                    else "live (apply made its /usr and /etc the running ones)"
                )
                raise SnapshotError(
                    f"snapshot {n} is the {which} snapshot and cannot be deleted",
                    "make another snapshot the default first: transactional-update rollback N",
                )
            if n == bootstate.known_good(bootstate.load(ctx.root)):
                raise SnapshotError(
                    f"snapshot {n} is the known-good snapshot: GRUB falls back to it when a "
                    "new default does not boot",
                    "delete it once a newer snapshot has passed its boot check (status shows it)",
                )
            if n in sources:
                raise SnapshotError(
                    f"snapshot {n}'s /etc changes are still to be carried into the next boot",
                    "boot the default snapshot first (its first boot carries them), then delete",
                )
        ids = _delete_snapshots(ctx, wanted)
        if ids:
            btrfs.wait_cleaned(ctx.root, ids, timeout=60.0)
        btrfs.sync(ctx.root)
        changelog.prune(ctx.root)
        _forget_failures(ctx)
        ctx.default_changed()  # the menu drops them; never raises
    for n in wanted:
        log.info("deleted snapshot %d", n)
    return wanted


def cleanup_text(res: CleanupResult) -> str:
    """What ``cleanup`` prints (pure: unit-tested)."""
    interrupted = len(res.stale) + len(res.orphans) + len(res.lost)
    text = f"removed {interrupted} interrupted and {len(res.number)} old snapshot(s)"
    if res.removed():
        text += ": " + " ".join(map(str, res.removed()))
    return text


def prune_text(res: PruneResult) -> str:
    """What ``cleanup --prune-only`` prints (pure: unit-tested)."""
    if res.skipped is not None:
        return f"skipped: {res.skipped}; the next transaction or cleanup catches up"
    if res.pruned:
        text = (
            f"dropped the changelog entries of {len(res.pruned)} deleted snapshot(s): "
            + " ".join(map(str, res.pruned))
        )
    else:
        text = "no changelog entry of a deleted snapshot"
    for f in res.followups:
        if f.done is True:
            text += f"; {f.what} is current"
        elif f.done is False:
            text += f"; {f.what} was not refreshed"
    return text
