"""apt/dpkg: argument lists, exit codes and dry runs.

apt-get knows two exit codes: 0 and 100 (any error, a failed maintainer script included).  It has
no patches (Debian's security updates are ordinary package versions: ``up`` installs them) and no
reboot flag of its own.
"""

from __future__ import annotations

import re

from transactional_update.errors import UsageError
from transactional_update.packages.model import Action, Outcome, Plan, Request, Verdict

# The summary line of every apt-get run, simulated or not.
_NOTHING = re.compile(r"^0 upgraded, 0 newly installed, 0 to remove", re.MULTILINE)


def plan(request: Request) -> Plan:
    yes = () if request.interactive else ("-y",)
    # Package scripts must never wait for an answer nobody can give in a nightly run.
    env = () if request.interactive else (("DEBIAN_FRONTEND", "noninteractive"),)
    pkgs = (*request.options, *request.packages)
    if request.action is Action.PATCH:
        raise UsageError(
            "apt has no patches (Debian ships security fixes as package updates)",
            "use `transactional-update up` to install updates",
        )
    refresh = (("apt-get", "update"),)
    verb: tuple[str, ...]
    prepare: tuple[tuple[str, ...], ...] = ()
    if request.action is Action.UP or (request.action is Action.UPDATE and not request.packages):
        verb, prepare = ("upgrade", *request.options), refresh
    elif request.action is Action.DUP:
        verb, prepare = ("dist-upgrade",), refresh
    elif request.action is Action.UPDATE:
        verb, prepare = ("install", "--only-upgrade", *pkgs), refresh
    elif request.action is Action.INSTALL:
        # Like zypper's autorefresh: install what the repositories offer today.
        verb, prepare = ("install", *pkgs), refresh
    else:
        verb = ("remove", *pkgs)
    return Plan(
        commands=(("apt-get", *yes, *verb),),
        env=env,
        prepare=prepare,
        probe=("apt-get", "-s", *verb),
    )


def verdict(action: Action, returncode: int) -> Verdict:
    if returncode == 0:
        return Verdict(Outcome.OK)
    return Verdict(Outcome.FAILED)


def nothing_to_do(action: Action, returncode: int, output: str) -> bool:
    return returncode == 0 and _NOTHING.search(output) is not None
