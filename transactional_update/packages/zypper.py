"""zypper: argument lists and exit codes.

zypper reports success with information: 100/101 (updates or security patches available),
102 (reboot needed), 103 (restart zypper), and 106 (some repositories could not be refreshed,
accepted except for ``dup``, where stale metadata could downgrade the system).  104 means a named
package was not found: a failure, except for a dry-run ``remove`` that found nothing to do (none of
the names is installed).

Repositories are refreshed first (``zypper refresh``, like ``apt-get update``): a repository
without ``autorefresh=1`` would otherwise never show new packages.  Keys are not imported
automatically; an unsigned local repository needs ``gpgcheck=0`` in its ``.repo`` file.
"""

from __future__ import annotations

from transactional_update.packages import Action, Plan, Request

_OK = {0, 100, 101, 102, 103}
_NOT_FOUND = 104


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
    refresh = (
        () if request.action is Action.REMOVE else (("zypper", "--non-interactive", "refresh"),)
    )
    return Plan(
        commands=((*base, *verb, *request.packages),),
        prepare=refresh,
        probe=("zypper", "--non-interactive", *verb, "--dry-run", *request.packages),
    )


def succeeded(action: Action, returncode: int) -> bool:
    return returncode in _OK or (returncode == 106 and action is not Action.DUP)


def nothing_to_do(action: Action, returncode: int, output: str) -> bool:
    if "Nothing to do." not in output:
        return False
    return succeeded(action, returncode) or (action is Action.REMOVE and returncode == _NOT_FOUND)
