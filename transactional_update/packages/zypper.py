"""zypper: argument lists and exit codes.

zypper reports success with information: 100/101 (updates or security patches available),
102 (reboot needed), 103 (restart zypper), and 106 (some repositories could not be refreshed,
accepted except for ``dup``, where stale metadata could downgrade the system).
"""

from __future__ import annotations

from transactional_update.packages import Action, Plan, Request

_OK = {0, 100, 101, 102, 103}


def plan(request: Request) -> Plan:
    base = ("zypper",) if request.interactive else ("zypper", "--non-interactive")
    verb = {
        Action.UP: ("update",),
        Action.DUP: ("dist-upgrade",),
        Action.PATCH: ("patch",),
        Action.INSTALL: ("install",),
        Action.REMOVE: ("remove",),
        Action.UPDATE: ("update",),
    }[request.action]
    return Plan(
        commands=((*base, *verb, *request.packages),),
        probe=("zypper", "--non-interactive", *verb, "--dry-run", *request.packages),
    )


def succeeded(action: Action, returncode: int) -> bool:
    return returncode in _OK or (returncode == 106 and action is not Action.DUP)


def nothing_to_do(action: Action, returncode: int, output: str) -> bool:
    return succeeded(action, returncode) and "Nothing to do." in output
