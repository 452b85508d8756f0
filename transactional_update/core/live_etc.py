"""``sync-etc``: carry the live ``/etc``'s changes where they belong, at shutdown and at boot.

``transactional-update-etc.service`` runs it early at every boot (before anything else writes
``/etc``) and again when it stops at shutdown:

1. at the first boot of a snapshot, merge what the previous system's ``/etc`` changed since the
   last merge (the shutdown's, or the commit's when a power cut came first), then keep the
   booted ``/etc`` as the reference of what later live edits are (:func:`etc.carry.at_boot`);
2. while a pending default waits for the reboot, merge the live changes since its last merge
   into it (:func:`etc.carry.merge_live`).

Each merge lands in the changelog entry of the snapshot that received it.  Under the
transaction lock: a transaction's own merges must not interleave with these.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from transactional_update.core.context import Context
from transactional_update.core.lock import Lock
from transactional_update.errors import SystemError_, TUError
from transactional_update.etc import carry
from transactional_update.record import applied, changelog, conflicts
from transactional_update.snapshots import etcvol

log = logging.getLogger(__name__)


def sync(ctx: Context) -> tuple[list[carry.Carried], TUError | None]:
    """Both merges, each tried even when the other failed: what merged (recorded), and the
    first failure (the sync points stay, so the next run tries again)."""
    managed = ctx.managed
    done: list[carry.Carried | None] = []
    failed: list[TUError] = []

    def attempt(what: str, merge: Callable[[], carry.Carried | None]) -> None:
        try:
            done.append(merge())
        except (TUError, OSError) as exc:
            err = exc if isinstance(exc, TUError) else SystemError_(str(exc), "")
            err.message = f"{what}: {err.message}"
            err.hint = err.hint or "the sync point is kept: the next sync-etc tries again"
            log.error("%s", err.message)
            failed.append(err)

    with Lock(managed.snapshots_dir, ctx.config.lock_wait):
        applied.refuse_interrupted(ctx.root)
        # The snapshot whose /etc is live: the booted one, or the one apply bound over it.
        booted = managed.live()
        assert booted is not None  # open_root refuses a root that is not a snapshot
        booted_dir = managed.snapshot_dir(booted)
        # After an apply the booted snapshot's /etc still runs, hidden (a shell's working
        # directory): its sync point stays for the merges after this one.
        still_running = managed.booted() != booted
        attempt(
            "the boot's /etc merge",
            lambda: carry.at_boot(
                managed.snapshots_dir,
                booted,
                booted_dir,
                ctx.root / etcvol.ETC,
                carry.Moment.SYNC if still_running else carry.Moment.BOOT,
                still_running=still_running,
            ),
        )
        default = managed.default()
        if default is not None and default != booted:
            attempt(
                f"the live /etc's merge into snapshot {default}",
                lambda: carry.merge_live(
                    ctx.root, booted, default, managed.snapshot_dir(default), carry.Moment.SYNC
                ),
            )
    merged = [m for m in done if m is not None and not m.empty]
    for m in merged:
        record(ctx, m)
    return merged, failed[0] if failed else None


def catch_up_hidden(ctx: Context) -> None:
    """After an apply: what the booted snapshot's hidden /etc took since the last merge, into
    the live /etc, before a transaction or another apply takes the live /etc as it is (a
    power cut before the shutdown's sync-etc then loses nothing they took)."""
    managed = ctx.managed
    live = managed.live()
    if live is None or live == managed.booted():
        return
    try:
        merged = carry.at_boot(
            managed.snapshots_dir,
            live,
            managed.snapshot_dir(live),
            ctx.root / etcvol.ETC,
            carry.Moment.SYNC,
            still_running=True,
        )
    except (TUError, OSError) as exc:
        log.warning("the hidden old /etc was not merged yet (the next sync-etc tries): %s", exc)
        return
    if merged is not None and not merged.empty:
        record(ctx, merged)


def record(ctx: Context, merged: carry.Carried) -> None:
    """Into the receiving snapshot's changelog entry, and each conflict and failure as a warning."""
    data = merged.record()
    for c in data["conflicts"]:
        log.warning(
            "/etc conflict: %s changed in snapshot %d's live /etc and in snapshot %d (%s); "
            "snapshot %d keeps its version, the live one is %s",
            c["path"],
            merged.live,
            merged.into,
            c["reason"],
            merged.into,
            c["live"],
        )
    for f in data["failed"]:
        log.warning("/etc: %s not carried into snapshot %d: %s", f["path"], merged.into, f["error"])
    try:
        conflicts.note(ctx.root, merged.into, merged.at, data["conflicts"])
        if not changelog.add_live_etc(ctx.root, merged.into, data):
            log.info("snapshot %d has no changelog entry to record its live /etc in", merged.into)
    except OSError as exc:
        log.warning("cannot record the live /etc merge of snapshot %d: %s", merged.into, exc)
