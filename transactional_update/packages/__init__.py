"""Package operations in a snapshot: detect the manager, guard its database, build its commands.

Each backend module (:mod:`.apt`, :mod:`.zypper`, :mod:`.dnf`) is pure: it turns an
:class:`Action` into argument lists and tells which exit codes mean success.  The package database
must live inside the snapshot (a rollback must take it along); :func:`check_database` refuses to
work on a system where it lies on another subvolume, e.g. a dpkg database left in a shared ``/var``.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Plan:
    """Commands to run in the snapshot, in order, and the environment they need.

    *prepare* runs first (refreshing repository metadata), then the dry run *probe*: when its
    output says there is nothing to do, the transaction ends without a snapshot.
    """

    commands: tuple[tuple[str, ...], ...]
    env: tuple[tuple[str, str], ...] = ()
    prepare: tuple[tuple[str, ...], ...] = ()
    probe: tuple[str, ...] | None = None


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


Backend = tuple[
    Callable[[Request], Plan], Callable[[Action, int], bool], Callable[[Action, int, str], bool]
]


def _backend(manager: Manager) -> Backend:
    from transactional_update.packages import apt, dnf, zypper

    if manager is Manager.APT:
        return apt.plan, apt.succeeded, apt.nothing_to_do
    if manager is Manager.ZYPPER:
        return zypper.plan, zypper.succeeded, zypper.nothing_to_do
    return dnf.plan, dnf.succeeded, dnf.nothing_to_do


def plan(manager: Manager, request: Request) -> Plan:
    if request.action in (Action.INSTALL, Action.REMOVE) and not request.packages:
        raise UsageError(
            f"pkg {request.action} needs package names",
            f"transactional-update pkg {request.action} NAME...",
        )
    return _backend(manager)[0](request)


def succeeded(manager: Manager, action: Action, returncode: int) -> bool:
    return _backend(manager)[1](action, returncode)


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


def execute(tx: Transaction, manager: Manager, request: Request) -> None:
    """Run *request* in the transaction; a failure aborts it (the fork is discarded).

    Raises :class:`~transactional_update.transaction.NothingToDo` when the dry run finds nothing
    to change, which ends the transaction without a snapshot and without an error.
    """
    from transactional_update.errors import CommandFailed
    from transactional_update.transaction import NothingToDo

    steps = plan(manager, request)
    env = dict(steps.env)

    def check(argv: tuple[str, ...], rc: int) -> None:
        if not succeeded(manager, request.action, rc):
            words = " ".join(a for a in argv[1:] if not a.startswith("-"))
            raise CommandFailed(
                f"{argv[0]} {words} failed (exit {rc})", "the default snapshot is unchanged"
            )

    for argv in steps.prepare:
        check(argv, tx.run(list(argv), env))
    if steps.probe is not None:
        rc, output = tx.capture(list(steps.probe), env)
        if _backend(manager)[2](request.action, rc, output):
            raise NothingToDo(f"{manager}: {NOTHING[request.action]}")
    for argv in steps.commands:
        check(argv, tx.run(list(argv), env))
