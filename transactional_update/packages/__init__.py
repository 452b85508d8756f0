"""Package operations in a snapshot: detect the manager, guard its database, build its commands.

Each backend module (:mod:`.apt`, :mod:`.zypper`, :mod:`.dnf`) is pure: it turns an
:class:`Action` into argument lists and maps each exit code to a :class:`Verdict` (success, success
that needs a full reboot, run again, success with a warning, failure).  The package database
must live inside the snapshot (a rollback must take it along); :func:`check_database` refuses to
work on a system where it lies on another subvolume, e.g. a dpkg database left in a shared ``/var``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from transactional_update.errors import NotManagedError, UsageError
from transactional_update.paths import resolve_under

if TYPE_CHECKING:
    from transactional_update.transaction import Transaction

log = logging.getLogger(__name__)


class Manager(StrEnum):
    APT = "apt"
    ZYPPER = "zypper"
    DNF = "dnf"


class Action(StrEnum):
    UP = "up"  # update all packages
    DUP = "dup"  # distribution upgrade
    PATCH = "patch"  # security/bugfix patches only
    INSTALL = "install"
    REMOVE = "remove"
    UPDATE = "update"  # update the named packages


NOTHING = {
    Action.UP: "nothing to update",
    Action.DUP: "nothing to upgrade",
    Action.PATCH: "no patches to install",
    Action.INSTALL: "already installed",
    Action.REMOVE: "not installed",
    Action.UPDATE: "nothing to update",
}


@dataclass(frozen=True)
class Request:
    action: Action
    packages: tuple[str, ...] = ()
    interactive: bool = False
    refresh: bool = False  # refresh the metadata even within REFRESH_DELAY (--refresh)


@dataclass(frozen=True)
class Plan:
    """Commands to run in the snapshot, in order, and the environment they need.

    *prepare* runs first (refreshing repository metadata, unless an earlier transaction did so
    less than ``REFRESH_DELAY`` ago: :mod:`.refresh`), then the dry run *probe*: when its
    output says there is nothing to do, the transaction ends without a snapshot.  *reboot_check*
    runs after the commands and asks the package manager whether they need a full reboot;
    *script_check* reports package scripts that failed where the exit code does not tell.
    """

    commands: tuple[tuple[str, ...], ...]
    env: tuple[tuple[str, str], ...] = ()
    prepare: tuple[tuple[str, ...], ...] = ()
    probe: tuple[str, ...] | None = None
    reboot_check: tuple[str, ...] | None = None
    script_check: tuple[str, ...] | None = None  # reports package scripts that failed


class Outcome(StrEnum):
    OK = "ok"
    REBOOT = "reboot"  # success; the change needs a full reboot (a kernel, a core library)
    AGAIN = "again"  # success so far; the package stack updated itself: run the command again
    WARNING = "warning"  # success, with something the admin should know (e.g. skipped repos)
    FAILED = "failed"


@dataclass(frozen=True)
class Verdict:
    """What an exit code means, and the package manager's own words for it."""

    outcome: Outcome
    meaning: str = ""


# How often a command runs while the package manager asks to be run again (zypper's 103: it
# updated itself and installs the remaining patches on the next run).  Two rounds are what
# happens in practice; the bound stops a package manager that never settles.
MAX_ROUNDS = 3

# The level of reboot recorded when a package manager asks for one: zypp-boot-plugin's levels
# are reboot, kexec and soft-reboot; a package manager's own flag always means a full reboot.
FULL_REBOOT = "reboot"


# Where each manager keeps its database, in the order they are looked for.
DATABASES = {
    Manager.APT: ("/var/lib/dpkg",),
    Manager.ZYPPER: ("/usr/lib/sysimage/rpm", "/var/lib/rpm"),
    Manager.DNF: ("/usr/lib/sysimage/rpm", "/var/lib/rpm"),
}
BINARIES = {
    Manager.ZYPPER: "usr/bin/zypper",
    Manager.DNF: "usr/bin/dnf",
    Manager.APT: "usr/bin/apt-get",
}


def detect(root: Path) -> Manager:
    """The package manager installed in the system at *root* (zypper, then dnf, then apt)."""
    for manager, binary in BINARIES.items():
        if (root / binary).exists():
            return manager
    raise NotManagedError(
        f"no supported package manager (zypper, dnf, apt-get) in {root}",
        "install one in the root, or use `run` for other tools",
    )


def manager_for(root: Path, forced: Manager | None) -> Manager:
    """The configured manager (``PACKAGE_MANAGER``) or the one installed in *root*."""
    return forced or detect(root)


def check_database(root: Path, manager: Manager) -> Path:
    """The package database's real path; refuses one outside the root snapshot's subvolume.

    btrfs gives every subvolume its own device number, so a database that resolves (through
    symlinks, read inside the root) to another ``st_dev`` than the root lies on another subvolume
    and would not roll back with the snapshot.
    """
    candidates = DATABASES[manager]
    for candidate in candidates:
        real = resolve_under(root, candidate)
        if not real.is_dir():
            continue
        if os.stat(real).st_dev != os.stat(root).st_dev:
            raise NotManagedError(
                f"the {manager} package database {candidate} ({real}) is outside the root "
                "snapshot, on another subvolume; a rollback would leave it describing other files",
                _MOVE_HINT[manager],
            )
        return real
    raise NotManagedError(
        f"no {manager} package database in {root} (looked for {', '.join(candidates)})",
        "check the root; package operations need the database inside the snapshot",
    )


_MOVE_HINT = {
    Manager.APT: "move it into the snapshot: /usr/share/dpkg/database, with /var/lib/dpkg a "
    "symlink to ../../usr/share/dpkg/database",
    Manager.ZYPPER: "move the rpm database to /usr/lib/sysimage/rpm (rpm --rebuilddb --dbpath)",
    Manager.DNF: "move the rpm database to /usr/lib/sysimage/rpm (rpm --rebuilddb --dbpath)",
}


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


def describe(request: Request) -> str:
    """The snapshot description for a package request (``pkg install hello``, ``up``)."""
    if request.action in (Action.UP, Action.DUP, Action.PATCH):
        return str(request.action)
    return " ".join(["pkg", str(request.action), *request.packages])


def split_packages(words: Sequence[str]) -> tuple[str, ...]:
    for w in words:
        if w.startswith("-"):
            raise UsageError(
                f"option {w!r} is not passed to the package manager",
                "name packages only; use `run -- apt-get ...` for special options",
            )
    return tuple(words)


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
    from transactional_update.errors import CommandFailed
    from transactional_update.transaction import NothingToDo

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
