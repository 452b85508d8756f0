"""Boot counting: a new default snapshot is on trial until a boot check passes on it.

GRUB's environment block (``grubenv``, on the GRUB partition GRUB can write) holds three values:

* ``tu_trial=N``: snapshot N is on trial.  Set when N becomes the default (a commit, a
  rollback to anything but the known-good snapshot), removed when a boot check passes on N or
  the default moves back to the known-good snapshot;
* ``tu_tries=K``: the boots of N left.  GRUB's main entry counts it down itself, before it
  loads the kernel, so a kernel panic or a hang before user space uses a try up (the menu's
  script, :mod:`.bootmenu`); nothing else ever lowers it;
* ``tu_good=M``: the last known-good snapshot, whose submenu entry GRUB boots instead once N's
  tries are spent.

Only the main entry counts, and only while ``tu_trial`` names the snapshot it boots: a
``boot-once`` or a pick from the submenu boots without using a try, and a trial left over for
another snapshot (a rollback since) counts nothing.  The numbers GRUB compares with are written
into the menu as literals, so a garbled block can stop the counting but never boot a snapshot
the menu does not name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transactional_update.boot import grubenv
from transactional_update.boot.menustate import GRUB_DIRS, is_mount
from transactional_update.core.context import Followup
from transactional_update.errors import TUError
from transactional_update.record import bootstate
from transactional_update.snapshots import btrfs

if TYPE_CHECKING:
    from transactional_update.core.context import Context

log = logging.getLogger(__name__)

TRIAL = "tu_trial"
TRIES = "tu_tries"
GOOD = "tu_good"


@dataclass(frozen=True)
class Trial:
    number: int | None  # the snapshot on trial
    tries: int | None  # boots of it left (None: not a number; GRUB reads that as spent)
    good: int | None  # the known-good snapshot GRUB falls back to

    def spent(self) -> bool:
        return self.number is not None and not self.tries


def env_path(root: Path) -> Path | None:
    """The grubenv of the system at *root*: None without a GRUB directory of its own (one inside
    the root snapshot is read-only, and GRUB could not write its count there either)."""
    for rel in GRUB_DIRS:
        # GRUB's save_env writes the file's blocks in place, which it refuses on btrfs.
        if (root / rel).is_dir() and is_mount(root, rel) and not btrfs.is_btrfs(root / rel):
            return root / rel / "grubenv"
    return None


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def parse(values: dict[str, str]) -> Trial:
    return Trial(_int(values.get(TRIAL)), _int(values.get(TRIES)), _int(values.get(GOOD)))


def read(root: Path) -> Trial:
    """The trial as GRUB's environment block has it (nothing on trial without one)."""
    path = env_path(root)
    if path is None:
        return Trial(None, None, None)
    try:
        return parse(grubenv.read(path))
    except TUError:
        return Trial(None, None, None)


def trial_changes(
    default: int | None, good: int | None, current: Trial, tries: int
) -> dict[str, str | None]:
    """The grubenv changes after the default became *default* (pure: unit-tested).

    A default other than the known-good one goes on trial with *tries* boots, unless it already
    is (a commit that stacks onto a pending default puts the new one on trial afresh: it is
    another snapshot).  Back on the known-good snapshot, a trial is not removed but spent
    (``tu_tries=0``): a grub.cfg that still boots the old trial's snapshot (its rewrite failed,
    or a power cut came first) then falls back to the known-good entry at once, while a current
    menu has no count-down for it and ignores the values.  Removing them would let such a stale
    menu boot the failed snapshot on every boot.  No boot counting (``BOOT_TRIES=0``) or no
    default clears them.
    """
    changes: dict[str, str | None] = {GOOD: str(good) if good is not None else None}
    if tries == 0 or default is None:
        return {**changes, TRIAL: None, TRIES: None}
    if default == good:
        return {**changes, TRIES: "0"} if current.number is not None else changes
    if current.number == default:
        return changes
    return {**changes, TRIAL: str(default), TRIES: str(tries)}


def start_trial(ctx: Context) -> Followup:
    """The subscriber of :attr:`Context.after_default` that puts a new default on trial.

    Runs before the menu follows the default: the menu's count-down needs ``tu_trial``, and a
    cut between the two leaves a trial whose menu does not count yet, never the other way round.
    """
    path = env_path(ctx.root)
    if path is None:
        return Followup("boot_trial", "boot counting", None)
    default = ctx.managed.default()
    good = bootstate.known_good(bootstate.load(ctx.root))
    try:
        current = parse(grubenv.read(path))
        changes = trial_changes(default, good, current, ctx.config.boot_tries)
        values = grubenv.update(path, **changes)
    except TUError as exc:
        log.warning("boot counting: %s; the new default boots without a fallback", exc.message)
        return Followup("boot_trial", "boot counting", False, {"boot_trial": exc.message})
    trial = parse(values)
    if trial.number is not None and trial.number != current.number:
        log.info(
            "snapshot %d is on trial: %s boot(s), then known-good snapshot %s",
            trial.number,
            trial.tries,
            trial.good if trial.good is not None else "(none yet: no fallback)",
        )
    return Followup("boot_trial", "boot counting", True)


def end_trial(root: Path, number: int, good: int | None) -> None:
    """Snapshot *number* reached user space: GRUB counts it no more (only a trial of *number*
    ends; one a later commit started stays).  *good*: the fallback from now on."""
    path = env_path(root)
    if path is None:
        return
    changes: dict[str, str | None] = {} if good is None else {GOOD: str(good)}
    if parse(grubenv.read(path)).number == number:
        changes |= {TRIAL: None, TRIES: None}
    if changes:
        grubenv.update(path, **changes)
