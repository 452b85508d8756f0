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


@dataclass(frozen=True)
class Findings:
    """What a request's run found that outlives it; the caller hands it to the transaction."""

    reboot: str | None = None  # FULL_REBOOT: the package manager asks for a full reboot


UNCHANGED = "the default snapshot is unchanged"


@dataclass(frozen=True)
class _Job:
    """One request in one transaction: what each step of :func:`execute` needs."""

    tx: Transaction
    manager: Manager
    request: Request
    backend: Backend
    plan: Plan

    def run(self, argv: tuple[str, ...], hint: str) -> Verdict:
        """Run *argv* with the terminal; its verdict, or :class:`CommandFailed` with *hint*."""
        rc = self.tx.run(list(argv), dict(self.plan.env))
        return judge(self.backend.verdict(self.request.action, rc), argv, rc, hint)

    def capture(self, argv: tuple[str, ...]) -> tuple[int, str]:
        # Dry runs and checks are read, not shown: their words must not depend on the admin's
        # locale.
        return self.tx.capture(list(argv), {**dict(self.plan.env), "LC_ALL": "C"})


def _command_words(argv: Sequence[str]) -> str:
    """``zypper install x``: the command and its arguments that are not options."""
    return f"{argv[0]} " + " ".join(a for a in argv[1:] if not a.startswith("-"))


def judge(v: Verdict, argv: Sequence[str], rc: int, hint: str = UNCHANGED) -> Verdict:
    """*v*, the verdict on *argv*'s exit code *rc*, said in the log; a failure raises.

    :class:`CommandFailed` (with *hint*) names the command and what its exit code means.
    """
    from transactional_update.errors import CommandFailed

    if v.outcome is Outcome.FAILED:
        why = f": {v.meaning}" if v.meaning else ""
        raise CommandFailed(f"{_command_words(argv)} failed (exit {rc}{why})", hint)
    if v.outcome is Outcome.WARNING:
        log.warning("%s: %s (exit %d)", argv[0], v.meaning, rc)
    if v.outcome is Outcome.REBOOT:
        log.warning("%s: %s; reboot fully, not only with a soft reboot", argv[0], v.meaning)
    return v


def execute(tx: Transaction, manager: Manager, request: Request) -> Findings:
    """Run *request* in the transaction and return what it found; a failure aborts it.

    Raises :class:`~transactional_update.core.transaction.NothingToDo` when the dry run finds
    nothing to change, which ends the transaction without a snapshot and without an error.  A
    command whose package manager asks to be run again (it updated itself) runs again in the
    same snapshot, up to :data:`MAX_ROUNDS` times.  A reboot the package manager asks for is in
    the :class:`Findings`; the caller hands it to the transaction (``tx.needs_reboot``), which
    records it in the changelog, snapper's userdata and ``status``.
    """
    job = _Job(tx, manager, request, _backend(manager), plan(manager, request))
    refreshed, skipped = _refresh(job)
    _stop_if_nothing_to_do(job)
    ran = _run_commands(job, UNCHANGED + skipped)
    _check_scripts(job)
    asked = _check_reboot(job)
    reboot = asked or any(v.outcome is Outcome.REBOOT for v in (*refreshed, *ran))
    return Findings(reboot=FULL_REBOOT if reboot else None)


def _refresh(job: _Job) -> tuple[list[Verdict], str]:
    """The repository metadata refreshed unless REFRESH_DELAY spares it (see :mod:`.refresh`).

    Returns the verdicts of the refresh commands, and what a failure's hint adds when the
    refresh was skipped ("" when it ran).
    """
    import time

    from transactional_update.packages import refresh

    if not job.plan.prepare:
        return [], ""
    tx, manager = job.tx, job.manager
    assert tx.number is not None
    root = tx.ctx.root
    # The configuration the refresh reads: the fork's, still identical to its base.
    config = refresh.digest(refresh.read_config(tx.ctx.managed.snapshot_dir(tx.number), manager))
    now = time.time()
    decision = (
        refresh.Decision(True, "--refresh")
        if job.request.refresh
        else refresh.decide(
            refresh.load_stamp(root, manager), config, now, tx.ctx.config.refresh_delay
        )
    )
    if not decision.refresh:
        log.info("%s", decision.why)
        return [], (
            f"; if a package was not found: the repository metadata is {decision.age:.0f} s "
            "old (REFRESH_DELAY), --refresh fetches it anew"
        )
    log.debug("refreshing the repository metadata: %s", decision.why)
    refresh.clear_stamp(root, manager)
    verdicts = [job.run(argv, UNCHANGED) for argv in job.plan.prepare]
    # A warning (zypper's 106: a repository was skipped) is retried by the next command.
    if all(v.outcome is Outcome.OK for v in verdicts):
        refresh.save_stamp(root, manager, refresh.Stamp(now, config))
    return verdicts, ""


def _stop_if_nothing_to_do(job: _Job) -> None:
    """Past this step the dry run found something to change (else :class:`NothingToDo`)."""
    from transactional_update.core.transaction import NothingToDo

    if job.plan.probe is None:
        return
    rc, output = job.capture(job.plan.probe)
    if job.backend.nothing_to_do(job.request.action, rc, output):
        raise NothingToDo(f"{job.manager}: {NOTHING[job.request.action]}")


def _run_commands(job: _Job, hint: str) -> list[Verdict]:
    """Every command ran, again while it asked (up to MAX_ROUNDS); the last verdict of each."""
    verdicts = []
    for argv in job.plan.commands:
        for round_ in range(1, MAX_ROUNDS + 1):
            v = job.run(argv, hint)
            if v.outcome is not Outcome.AGAIN:
                break
            if round_ == MAX_ROUNDS:
                log.warning(
                    "%s still asks to be run again after %d rounds; the rest follows in the "
                    "next transaction (transactional-update --continue %s)",
                    argv[0],
                    MAX_ROUNDS,
                    job.request.action,
                )
            else:
                log.info("%s: %s; running it again (round %d)", argv[0], v.meaning, round_ + 1)
        verdicts.append(v)
    return verdicts


def _check_scripts(job: _Job) -> None:
    """No package script failed unnoticed (where the manager exits 0 for it); else it raises."""
    from transactional_update.errors import CommandFailed

    if job.plan.script_check is None:
        return
    rc, output = job.capture(job.plan.script_check)
    failed = job.backend.failed_scripts(output) if rc == 0 else []
    if failed:
        argv = job.plan.commands[-1]
        raise CommandFailed(
            f"{_command_words(argv)} failed: a package script failed: {', '.join(failed)} "
            f"({argv[0]} itself exits 0 for it)",
            UNCHANGED,
        )


def _check_reboot(job: _Job) -> bool:
    """Whether the package manager, asked after the commands, wants a full reboot."""
    if job.plan.reboot_check is None:
        return False
    rc, _ = job.capture(job.plan.reboot_check)
    if job.backend.verdict(job.request.action, rc).outcome is not Outcome.REBOOT:
        return False
    log.warning("%s: a package asks for a full reboot", job.manager)
    return True
