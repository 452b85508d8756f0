"""Package operations in a snapshot: requests, plans and verdicts.

Each backend module (:mod:`.apt`, :mod:`.zypper`, :mod:`.dnf`) is pure: it turns an
:class:`Action` into argument lists and maps each exit code to a :class:`Verdict` (success, success
that needs a full reboot, run again, success with a warning, failure).  Which manager a root uses
and where its database lives is :mod:`transactional_update.record.pkgdb`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)


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
    # The package manager's own arguments, after its verb (from ``pkg ACTION`` options, already
    # translated for the manager by :func:`packages.forward.translate`).
    options: tuple[str, ...] = ()


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


def describe(request: Request) -> str:
    """The snapshot description for a package request (``pkg install hello``, ``up``)."""
    if request.action in (Action.UP, Action.DUP, Action.PATCH):
        return str(request.action)
    return " ".join(["pkg", str(request.action), *request.packages])
