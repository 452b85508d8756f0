"""dnf: argument lists and exit codes (0 success; anything else is a failure here)."""

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
    return Plan(
        commands=((*base, *verb, *request.packages),),
        # --assumeno resolves the transaction and stops before changing anything.
        probe=("dnf", "--assumeno", *verb, *request.packages),
    )


def succeeded(action: Action, returncode: int) -> bool:
    return returncode == 0


def nothing_to_do(action: Action, returncode: int, output: str) -> bool:
    return "Nothing to do." in output
