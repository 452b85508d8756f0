"""dnf: argument lists and exit codes (0 success; anything else is a failure here).

The metadata is refreshed first (``dnf makecache --refresh``, like ``apt-get update``): dnf
otherwise uses its cache until ``metadata_expire`` (48 hours) and misses new packages.  The dry
run is ``--assumeno``, which resolves the transaction and exits 1 ("Operation aborted.") when
there is something to do, 0 with "Nothing to do." when not.
"""

from __future__ import annotations

from transactional_update.packages import Action, Plan, Request


def plan(request: Request) -> Plan:
    base = ("dnf",) if request.interactive else ("dnf", "-y")
    verb = {
        Action.UP: ("upgrade",),
        Action.DUP: ("distro-sync",),
        Action.PATCH: ("upgrade", "--security"),
        Action.INSTALL: ("install",),
        Action.REMOVE: ("remove",),
        Action.UPDATE: ("upgrade",),
    }[request.action]
    refresh = () if request.action is Action.REMOVE else (("dnf", "makecache", "--refresh"),)
    return Plan(
        commands=((*base, *verb, *request.packages),),
        prepare=refresh,
        # --assumeno resolves the transaction and stops before changing anything.
        probe=("dnf", "--assumeno", *verb, *request.packages),
    )


def succeeded(action: Action, returncode: int) -> bool:
    return returncode == 0


def nothing_to_do(action: Action, returncode: int, output: str) -> bool:
    return returncode == 0 and "Nothing to do." in output
