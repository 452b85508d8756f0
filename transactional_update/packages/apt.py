"""apt/dpkg: argument lists and exit codes (apt-get exits 100 on any error)."""

from __future__ import annotations

from transactional_update.errors import UsageError
from transactional_update.packages import Action, Plan, Request


def plan(request: Request) -> Plan:
    yes = () if request.interactive else ("-y",)
    # Package scripts must never wait for an answer nobody can give in a nightly run.
    env = () if request.interactive else (("DEBIAN_FRONTEND", "noninteractive"),)
    get = ("apt-get", *yes)
    pkgs = request.packages
    if request.action is Action.PATCH:
        raise UsageError("apt has no patches", "use `transactional-update up` to install updates")
    commands = {
        Action.UP: (("apt-get", "update"), (*get, "upgrade")),
        Action.DUP: (("apt-get", "update"), (*get, "dist-upgrade")),
        Action.INSTALL: ((*get, "install", *pkgs),),
        Action.REMOVE: ((*get, "remove", *pkgs),),
        Action.UPDATE: ((*get, "install", "--only-upgrade", *pkgs),)
        if pkgs
        else (("apt-get", "update"), (*get, "upgrade")),
    }[request.action]
    return Plan(commands, env)


def succeeded(action: Action, returncode: int) -> bool:
    return returncode == 0
