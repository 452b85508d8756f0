"""dnf: argument lists and exit codes.

dnf (4) exits 0 on success and 1 on any error; 200 means another process holds its lock, and 100
comes only from ``check-update`` (updates available), which a transaction does not run.  A failed
``%pre`` script fails the transaction (exit 1); a failed ``%post`` is only a warning to dnf and rpm
(exit 0).  zypper reports the same case with 107 and apt with 100, and both fail the transaction, so
dnf's history is read after the command (``dnf history info last``: rpm's "%post(NEVRA) scriptlet
failed" lines) and a failed script fails the transaction here too.

``patch`` is ``dnf upgrade-minimal``: every package that an advisory (security, bugfix or
enhancement) names, upgraded to the lowest version that fixes it, nothing else — what
``zypper patch`` does with patches.  ``dnf upgrade --security`` would instead take the newest
version of those packages and skip bugfix advisories.

The metadata is refreshed first (``dnf makecache --refresh``, like ``apt-get update``): dnf
otherwise uses its cache until ``metadata_expire`` (48 hours) and misses new packages.  The dry
run is ``--assumeno``, which resolves the transaction and exits 1 ("Operation aborted.") when
there is something to do, 0 with "Nothing to do." when not.  dnf 4 has no reboot flag.
"""

from __future__ import annotations

import re

from transactional_update.packages.model import Action, Outcome, Plan, Request, Verdict

# rpm's words for a failed scriptlet, as dnf's history keeps them (read in the C locale).
_SCRIPT_FAILED = re.compile(r"(%\w+\([^)\s]+\)) scriptlet failed")

_ERRORS = {
    1: "",
    200: "another process holds dnf's lock",
}


def plan(request: Request) -> Plan:
    base = ("dnf",) if request.interactive else ("dnf", "-y")
    verb = {
        Action.UP: ("upgrade",),
        Action.DUP: ("distro-sync",),
        Action.PATCH: ("upgrade-minimal",),
        Action.INSTALL: ("install",),
        Action.REMOVE: ("remove",),
        Action.UPDATE: ("upgrade",),
    }[request.action]
    refresh = () if request.action is Action.REMOVE else (("dnf", "makecache", "--refresh"),)
    return Plan(
        commands=((*base, *verb, *request.options, *request.packages),),
        prepare=refresh,
        # --assumeno resolves the transaction and stops before changing anything.
        probe=("dnf", "--assumeno", *verb, *request.options, *request.packages),
        script_check=("dnf", "history", "info", "last"),
    )


def verdict(action: Action, returncode: int) -> Verdict:
    if returncode == 0:
        return Verdict(Outcome.OK)
    return Verdict(Outcome.FAILED, _ERRORS.get(returncode, ""))


def nothing_to_do(action: Action, returncode: int, output: str) -> bool:
    return returncode == 0 and "Nothing to do." in output


def failed_scripts(history: str) -> list[str]:
    """The scriptlets (``%post(NEVRA)``) that failed, from ``dnf history info last``."""
    return _SCRIPT_FAILED.findall(history)
