"""Keeping GRUB's menu on the default: refresh it after every change of the default, boot once.

Light on purpose: every commit calls :func:`follow_default`, and a root without GRUB must never
load the modules that write GRUB's menu (:mod:`.grub` is imported only when a grub.cfg exists).
A menu that cannot be refreshed is recorded as stale (:mod:`.menustate`), shown by ``status``,
and retried by every later commit, rollback, cleanup and reboot.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from transactional_update.boot import grubenv
from transactional_update.boot.menustate import (
    cfg_path,
    clear_stale,
    fstab_grub_dir,
    is_mount,
    mark_stale,
)
from transactional_update.boot.menustate import state as menu_state
from transactional_update.core.context import Followup
from transactional_update.core.lock import Lock
from transactional_update.errors import NotManagedError, SnapshotError, SystemError_
from transactional_update.snapshots import btrfs

if TYPE_CHECKING:
    from transactional_update.core.context import Context

log = logging.getLogger(__name__)


def follow_default(ctx: Context) -> Followup:
    """The subscriber the command line registers (:attr:`Context.after_default`)."""
    done, reason = _refresh(ctx)
    notes = {} if reason is None else {"boot_menu": f"stale: {reason}"}
    return Followup("boot_menu", "the boot menu", done, notes)


def refresh_menu(ctx: Context) -> bool | None:
    """Refresh GRUB's menu after the snapshots changed; never raises.

    None when the system has no boot menu to refresh (no grub.cfg, and its fstab mounts no
    GRUB directory); else whether the menu is current now.  When it is not, a warning says why
    and the reason is recorded (:func:`.menustate.read_stale`, shown by ``status``) until a refresh
    succeeds: every later commit, rollback and cleanup tries again.
    """
    return _refresh(ctx)[0]


def _refresh(ctx: Context) -> tuple[bool | None, str | None]:
    """:func:`refresh_menu`'s answer, and why the menu is stale when it is."""
    root = ctx.root
    reason: str | None
    if cfg_path(root) is not None:
        from transactional_update.boot import grub  # here: GRUB's modules cost start-up time

        reason = grub.refresh(ctx)
    else:
        wanted = fstab_grub_dir(root)
        if wanted is None or is_mount(root, wanted):
            return None, None
        reason = (
            f"/{wanted} is not mounted (mount it, or repair it with: "
            "transactional-update setup-boot-fs)"
        )
        log.warning("the boot menu was not refreshed: %s", reason)
    if reason is None:
        clear_stale(root)
        return True, None
    try:
        mark_stale(root, reason)
    except OSError as exc:
        log.warning("cannot record that the boot menu is stale: %s", exc.strerror or exc)
    return False, reason


def ensure_current(ctx: Context) -> None:
    """Refresh GRUB's menu if it does not follow the default (before a reboot relies on it)."""
    found = menu_state(ctx.root, ctx.managed.default())
    if found is None or not found["stale"]:
        return
    with Lock(ctx.managed.snapshots_dir, ctx.config.lock_wait):
        ctx.default_changed()  # the trial too: a cut may have come before either followed


def boot_once(ctx: Context, number: int) -> str:
    """Make snapshot *number* boot at the next boot only (GRUB's ``next_entry``).

    Returns the ``next_entry`` value written.
    """
    from transactional_update.boot import bootmenu, grub

    tools = grub.detect(ctx.root)
    grub.require_grub_dir(ctx.root, tools)
    env = tools.env(ctx.root)
    if btrfs.is_btrfs(env.parent):
        raise NotManagedError(
            f"{env} lies on btrfs, where GRUB cannot clear a one-shot choice",
            f"keep /{tools.grub_dir} on a small ext4 partition (create-system does)",
        )
    ctx.managed.require_snapshot_dir(number)
    with Lock(ctx.managed.snapshots_dir, ctx.config.lock_wait):
        refresh_menu(ctx)
        menu = bootmenu.menu_for(ctx.managed, ctx.config)
        if not any(e.number == number for e in menu.entries):
            why = next((x.reason for x in menu.left_out if x.number == number), None)
            raise SnapshotError(
                f"snapshot {number} is not in the boot menu"
                + (f" ({why})" if why else " (beyond BOOT_MENU_LIMIT)"),
                "see the bootable snapshots with: transactional-update boot-menu",
            )
        cfg = tools.cfg(ctx.root)
        try:
            text = cfg.read_text(encoding="utf-8")
        except OSError:
            text = ""
        body = grub.section(text) or ""
        if f"--id {bootmenu.entry_id(number)} " not in body:
            raise SystemError_(
                f"{cfg} has no entry for snapshot {number}",
                "regenerate the boot configuration: transactional-update grub.cfg",
            )
        value = bootmenu.next_entry_for(number)
        grubenv.update(env, next_entry=value)
    log.info("snapshot %d boots once at the next boot (next_entry=%s)", number, value)
    return value
