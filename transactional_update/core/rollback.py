"""``rollback [N|last]``: choose which snapshot boots next.

Without N the booted snapshot becomes the default again (dropping a pending change, as openSUSE's
tool does); ``last`` picks the newest snapshot known to have run this system
(``LAST_WORKING_SNAPSHOTS``).  Refused: numbers that do not exist, snapper's ``0`` (the live
system), unfinished transactions, failed ones kept with ``--keep`` (which never become the
default) and snapshots snapper does not manage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from transactional_update.core.context import Context
from transactional_update.core.lock import Lock
from transactional_update.errors import SnapshotError, UsageError
from transactional_update.record import bootstate, state
from transactional_update.snapshots import btrfs, etcvol, leftovers
from transactional_update.snapshots.system import require_finished

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RollbackResult:
    number: int
    previous_default: int | None
    # What the admin changed in the booted /etc since it booted, which the chosen snapshot does
    # not get (None: not known; empty: nothing), and where it stays.
    left_behind: list[str] | None = None
    left_in: str | None = None
    # Why and when the chosen snapshot failed to boot before (None: it never did).
    boot_failed: dict[str, Any] | None = None


def parse_target(text: str | None) -> int | str | None:
    """``None``, ``"last"`` or a snapshot number from the command line."""
    if text is None or text == "last":
        return text
    if not text.isdigit():
        raise UsageError(
            f"rollback target {text!r} is not a snapshot number or 'last'",
            "pass a number from `transactional-update list`, or 'last'",
        )
    return int(text)


def rollback(ctx: Context, target: int | str | None) -> RollbackResult:
    managed = ctx.managed
    with Lock(managed.snapshots_dir, ctx.config.lock_wait):
        default = managed.default()
        if target is None:
            number = managed.live()  # openSUSE's "current": what runs, applied or booted
            assert number is not None
        elif target == "last":
            candidates = [
                n
                for n in state.last_working(ctx.root)
                if n != default and managed.snapshot_dir(n).is_dir()
            ]
            if not candidates:
                raise SnapshotError(
                    "no last working snapshot is recorded that differs from the default",
                    "name the snapshot: transactional-update rollback N",
                )
            number = candidates[0]
        else:
            assert isinstance(target, int)
            number = target
        path = managed.require_snapshot_dir(number)
        require_finished(
            ctx.snapper.get_snapshot(number), "it may be half-changed; pick a finished snapshot"
        )
        if etcvol.lacks_etc(path):
            raise SnapshotError(
                f"snapshot {number} has no /etc (made by a plain `snapper create`, which does not "
                "copy the nested /etc subvolume), so it cannot boot",
                "pick another snapshot from: transactional-update list",
            )
        btrfs.set_default(path)
        # The admin chose the default: a commit that did not reach the disk is theirs to drop.
        leftovers.clear_intent(ctx.root)
        btrfs.sync(ctx.root)  # on disk before it is reported, and before GRUB's menu names it
        log.info("rollback: snapshot %d is the new default (was %s)", number, default)
        ctx.default_changed()  # GRUB's main entry follows; never raises
        behind, where = _left_behind(ctx, number)
        failed = bootstate.failures(bootstate.load(ctx.root)).get(number)
        if failed is not None:
            log.warning(
                "snapshot %d failed to boot at %s (%s); the boot check will not roll it back "
                "automatically again",
                number,
                failed.get("at"),
                failed.get("reason"),
            )
        return RollbackResult(number, default, behind, where, failed)


def _left_behind(ctx: Context, number: int) -> tuple[list[str] | None, str | None]:
    """The booted /etc's live edits that snapshot *number* does not boot with."""
    from transactional_update.etc import carry

    managed = ctx.managed
    booted = managed.live()  # whose /etc is live
    if booted is None or booted == number:
        return [], None
    booted_dir = managed.snapshot_dir(booted)
    if not etcvol.has_own_etc(booted_dir):
        return [], None
    try:
        behind = carry.left_behind(booted_dir, ctx.root / etcvol.ETC, managed.snapshot_dir(number))
    except OSError as exc:
        log.warning("cannot compare the live /etc with its state at boot: %s", exc)
        behind = None
    return behind, str(booted_dir / etcvol.ETC)
