"""The reboot manager's service: plan, wait for the maintenance window, reboot, until stopped.

The decisions are :mod:`.manager`'s (pure functions of the plan and the clock); this module wires
them to the system: the transaction lock, the configured reboot command, signals, and apscheduler.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from transactional_update.config.settings import RebootMethod
from transactional_update.core.lock import Lock
from transactional_update.errors import SystemError_, TUError
from transactional_update.proc import run
from transactional_update.reboot import maintenance, slots
from transactional_update.reboot import methods as reboot
from transactional_update.reboot.manager import Manager, running, serve

if TYPE_CHECKING:
    from transactional_update.config.settings import Config
    from transactional_update.snapshots.system import ManagedRoot

log = logging.getLogger(__name__)


def daemon(
    root: Path,
    cfg: Config,
    managed: ManagedRoot,
    poll: float,
    prepare: Callable[[], None] | None = None,
) -> None:
    """``transactional-update reboot-manager``: serve until SIGTERM/SIGINT.

    *prepare* runs right before each reboot (the CLI brings a stale boot menu up to date: GRUB
    boots what its menu names); if it raises, the attempt fails and is retried.
    """
    # Checked at start: a manager that could never reboot should fail where the admin sees it.
    reboot.check_target(cfg, RebootMethod.SYSTEMD, root)
    transaction_lock = Lock(managed.snapshots_dir)

    coordinated = cfg.reboot_method in slots.COORDINATED
    if coordinated:
        slots.slots_for(cfg, cfg.reboot_method)  # a missing server setting stops it here

    def do_reboot() -> None:
        if coordinated:
            now = datetime.now(UTC)
            held = slots.take(root, cfg, cfg.reboot_method, reboot.pending_snapshot(managed), now)
            if held.state != "holding":
                assert held.next_try is not None
                raise slots.Postponed(
                    f"no reboot slot: {held.last_error}", datetime.fromisoformat(held.next_try)
                )
        try:
            if prepare is not None:
                prepare()
            # Said only now: a fleet machine refused a slot does not reboot, and must not say so.
            log.warning("rebooting into snapshot %s", reboot.pending_snapshot(managed))
            run(cfg.reboot_command, what="reboot")
        except TUError:
            if coordinated:  # not rebooting after all: the slot is for machines that do
                slots.release(root, cfg, datetime.now(UTC))
            raise

    manager = Manager(
        root,
        cfg.window,
        pending=lambda: reboot.pending_snapshot(managed),
        locked=transaction_lock.is_held,
        reboot=do_reboot,
        housekeeping=(
            (
                lambda now: slots.retry_release(
                    root, cfg, now, reboot_due=reboot.pending_snapshot(managed) is not None
                )
            )
            if coordinated
            else None
        ),
    )
    stop = threading.Event()
    # The handler only records the signal: setting the event from it could deadlock, when the
    # signal lands while this thread holds the event's lock (inside stop.wait()).  This thread
    # sleeps in short steps instead, which a signal interrupts.
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)

    with running(root):
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info("reboot manager started; window %s", maintenance.describe(cfg.window))
            worker = threading.Thread(target=serve, args=(manager, poll, stop), daemon=True)
            worker.start()
            while not received and worker.is_alive():
                time.sleep(0.5)
            stop.set()
            worker.join()
            if not received:
                raise SystemError_(
                    "the reboot manager's scheduler stopped unexpectedly",
                    "see /var/log/transactional-update.log; the service restarts it",
                )
            log.info("reboot manager stopped by signal %d", received[0])
        finally:
            for s, h in old.items():
                signal.signal(s, h)
