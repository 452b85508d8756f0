"""Plan a package request with its manager's backend and run it in a transaction.

The backends (:mod:`.apt`, :mod:`.zypper`, :mod:`.dnf`) are pure; this module runs what they plan:
refresh the metadata unless REFRESH_DELAY spares it (:mod:`.refresh`), ask the dry run whether
there is anything to do, run the commands (again while the manager asks for it), and check for
failed package scripts and needed reboots.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from transactional_update.config.settings import Manager
from transactional_update.errors import UsageError
from transactional_update.packages.model import (
    FULL_REBOOT,
    MAX_ROUNDS,
    NOTHING,
    Action,
    Outcome,
    Plan,
    Request,
    Verdict,
)

if TYPE_CHECKING:
    from transactional_update.core.transaction import Transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    plan: Callable[[Request], Plan]
    verdict: Callable[[Action, int], Verdict]
    nothing_to_do: Callable[[Action, int, str], bool]
    failed_scripts: Callable[[str], list[str]]


def _no_script_check(output: str) -> list[str]:
    return []


def _backend(manager: Manager) -> Backend:
    from transactional_update.packages import apt, dnf, zypper

    module = {Manager.APT: apt, Manager.ZYPPER: zypper, Manager.DNF: dnf}[manager]
    failed = getattr(module, "failed_scripts", _no_script_check)
    return Backend(module.plan, module.verdict, module.nothing_to_do, failed)


def plan(manager: Manager, request: Request) -> Plan:
    if request.action in (Action.INSTALL, Action.REMOVE) and not request.packages:
        raise UsageError(
            f"pkg {request.action} needs package names",
            f"transactional-update pkg {request.action} NAME...",
        )
    return _backend(manager).plan(request)


def verdict(manager: Manager, action: Action, returncode: int) -> Verdict:
    return _backend(manager).verdict(action, returncode)


def succeeded(manager: Manager, action: Action, returncode: int) -> bool:
    return verdict(manager, action, returncode).outcome is not Outcome.FAILED


def _refresh(
    tx: Transaction,
    manager: Manager,
    request: Request,
    prepare: Sequence[tuple[str, ...]],
    run_judged: Callable[[tuple[str, ...]], Verdict],
) -> str:
    """Refresh the repository metadata unless REFRESH_DELAY spares it (see :mod:`.refresh`).

    Returns what a failure's hint adds when the refresh was skipped ("" when it ran).
    """
    import time

    from transactional_update.packages import refresh

    assert tx.number is not None
    root = tx.ctx.root
    # The configuration the refresh reads: the fork's, still identical to its base.
    config = refresh.digest(refresh.read_config(tx.ctx.managed.snapshot_dir(tx.number), manager))
    now = time.time()
    decision = (
        refresh.Decision(True, "--refresh")
        if request.refresh
        else refresh.decide(
            refresh.load_stamp(root, manager), config, now, tx.ctx.config.refresh_delay
        )
    )
    if not decision.refresh:
        log.info("%s", decision.why)
        return (
            f"; if a package was not found: the repository metadata is {decision.age:.0f} s "
            "old (REFRESH_DELAY), --refresh fetches it anew"
        )
    log.debug("refreshing the repository metadata: %s", decision.why)
    refresh.clear_stamp(root, manager)
    verdicts = [run_judged(argv) for argv in prepare]
    # A warning (zypper's 106: a repository was skipped) is retried by the next command.
    if all(v.outcome is Outcome.OK for v in verdicts):
        refresh.save_stamp(root, manager, refresh.Stamp(now, config))
    return ""


def execute(tx: Transaction, manager: Manager, request: Request) -> None:
    """Run *request* in the transaction; a failure aborts it (the fork is discarded).

    Raises :class:`~transactional_update.transaction.NothingToDo` when the dry run finds nothing
    to change, which ends the transaction without a snapshot and without an error.  A command
    whose package manager asks to be run again (it updated itself) runs again in the same
    snapshot, up to :data:`MAX_ROUNDS` times; a reboot the package manager asks for is recorded
    in ``tx.result.reboot`` and from there in the changelog, snapper's userdata and ``status``.
    """
    from transactional_update.core.transaction import NothingToDo
    from transactional_update.errors import CommandFailed

    backend = _backend(manager)
    steps = plan(manager, request)
    env = dict(steps.env)
    # Dry runs and checks are read, not shown: their words must not depend on the admin's locale.
    quiet_env = {**env, "LC_ALL": "C"}
    unchanged = "the default snapshot is unchanged"

    def judge(argv: tuple[str, ...], rc: int) -> Verdict:
        v = backend.verdict(request.action, rc)
        if v.outcome is Outcome.FAILED:
            words = " ".join(a for a in argv[1:] if not a.startswith("-"))
            why = f": {v.meaning}" if v.meaning else ""
            raise CommandFailed(f"{argv[0]} {words} failed (exit {rc}{why})", unchanged)
        if v.outcome is Outcome.WARNING:
            log.warning("%s: %s (exit %d)", argv[0], v.meaning, rc)
        if v.outcome is Outcome.REBOOT:
            log.warning("%s: %s; reboot fully, not only with a soft reboot", argv[0], v.meaning)
            tx.result.reboot = FULL_REBOOT
        return v

    if steps.prepare:
        unchanged += _refresh(
            tx, manager, request, steps.prepare, lambda a: judge(a, tx.run(list(a), env))
        )
    if steps.probe is not None:
        rc, output = tx.capture(list(steps.probe), quiet_env)
        if backend.nothing_to_do(request.action, rc, output):
            raise NothingToDo(f"{manager}: {NOTHING[request.action]}")
    for argv in steps.commands:
        for round_ in range(1, MAX_ROUNDS + 1):
            v = judge(argv, tx.run(list(argv), env))
            if v.outcome is not Outcome.AGAIN:
                break
            if round_ == MAX_ROUNDS:
                log.warning(
                    "%s still asks to be run again after %d rounds; the rest follows in the "
                    "next transaction (transactional-update --continue %s)",
                    argv[0],
                    MAX_ROUNDS,
                    request.action,
                )
            else:
                log.info("%s: %s; running it again (round %d)", argv[0], v.meaning, round_ + 1)
    if steps.script_check is not None:
        rc, output = tx.capture(list(steps.script_check), quiet_env)
        failed = backend.failed_scripts(output) if rc == 0 else []
        if failed:
            argv = steps.commands[-1]
            words = " ".join(a for a in argv[1:] if not a.startswith("-"))
            raise CommandFailed(
                f"{argv[0]} {words} failed: a package script failed: {', '.join(failed)} "
                f"({argv[0]} itself exits 0 for it)",
                "the default snapshot is unchanged",
            )
    if steps.reboot_check is not None:
        rc, _ = tx.capture(list(steps.reboot_check), quiet_env)
        if backend.verdict(request.action, rc).outcome is Outcome.REBOOT:
            log.warning("%s: a package asks for a full reboot", manager)
            tx.result.reboot = FULL_REBOOT
