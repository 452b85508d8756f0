"""zypper: argument lists and exit codes.

zypper's exit codes (``man zypper``, EXIT CODES) and what a transaction makes of them:

===  ==============================  =============================================================
  0  OK                              success
100  INF_UPDATE_NEEDED               success (only ``patch-check`` returns it)
101  INF_SEC_UPDATE_NEEDED           success (only ``patch-check`` returns it)
102  INF_REBOOT_NEEDED               success; an installed patch asks for a reboot: the snapshot is
                                     recorded as needing a full reboot
103  INF_RESTART_NEEDED              success so far; a patch updated the package stack (zypper,
                                     libzypp) and zypper installs the other patches only when run
                                     again: the same command runs again in the same snapshot
104  INF_CAP_NOT_FOUND               a named package does not exist: a failure, except for
                                     ``remove`` (the package is absent, as asked; a warning)
106  INF_REPOS_SKIPPED               some repositories could not be refreshed: success with a
                                     warning, except for ``dup``, where missing metadata would
                                     remove or downgrade the packages those repositories provide
107  INF_RPM_SCRIPT_FAILED           a failure: the packages are in the rpm database but a %post
                                     script failed, so they may not work; a snapshot is cheap to
                                     discard, so it never becomes the default (as with apt)
  *  errors (1-8, 105 signal)        a failure
===  ==============================  =============================================================

openSUSE's transactional-update accepts 0, 102, 103 and (except for ``dup``) 106; it does not run
zypper again after 103, so the remaining patches wait for the next day's run.  Here they land in
the same snapshot.

Patches whose advisory suggests a reboot are "interactive" to zypper and skipped by
``--non-interactive``; every snapshot needs a reboot anyway, so ``patch`` installs them
(``--non-interactive-include-reboot-patches``, as openSUSE does).  A package that needs a reboot
(``installhint(reboot-needed)``, or listed in ``/etc/zypp/needreboot``) does not change the exit
code; libzypp flags it in ``/run/reboot-needed``, which ``zypper needs-rebooting`` reports with 102
(our ``/run`` is a fresh tmpfs, so the flag is this transaction's own).

Repositories are refreshed first (``zypper refresh``, like ``apt-get update``): a repository
without ``autorefresh=1`` would otherwise never show new packages.  Keys are not imported
automatically; an unsigned local repository needs ``gpgcheck=0`` in its ``.repo`` file.
"""

from __future__ import annotations

from transactional_update.packages.model import Action, Outcome, Plan, Request, Verdict

REBOOT_NEEDED = 102
RESTART_NEEDED = 103
NOT_FOUND = 104
REPOS_SKIPPED = 106
SCRIPT_FAILED = 107

_ERRORS = {
    1: "unexpected situation (a zypper bug)",
    2: "invalid command line",
    3: "invalid arguments",
    4: "problem reported by libzypp (e.g. unresolvable dependencies)",
    5: "insufficient privileges",
    6: "no repositories are defined",
    7: "the package manager is locked by another process",
    8: "error installing or removing packages",
    105: "interrupted by a signal",
}


def plan(request: Request) -> Plan:
    base = ("zypper",) if request.interactive else ("zypper", "--non-interactive")
    verb = {
        Action.UP: ("update",),
        Action.DUP: ("dist-upgrade",),
        Action.PATCH: ("--non-interactive-include-reboot-patches", "patch"),
        Action.INSTALL: ("install",),
        Action.REMOVE: ("remove",),
        Action.UPDATE: ("update",),
    }[request.action]
    refresh = (
        () if request.action is Action.REMOVE else (("zypper", "--non-interactive", "refresh"),)
    )
    return Plan(
        commands=((*base, *verb, *request.options, *request.packages),),
        prepare=refresh,
        probe=(
            "zypper",
            "--non-interactive",
            *verb,
            "--dry-run",
            *request.options,
            *request.packages,
        ),
        reboot_check=("zypper", "needs-rebooting"),
    )


def verdict(action: Action, returncode: int) -> Verdict:
    if returncode in (0, 100, 101):
        return Verdict(Outcome.OK)
    if returncode == REBOOT_NEEDED:
        return Verdict(Outcome.REBOOT, "an installed patch or package requires a reboot")
    if returncode == RESTART_NEEDED:
        return Verdict(Outcome.AGAIN, "the package manager updated itself")
    if returncode == NOT_FOUND:
        if action is Action.REMOVE:
            return Verdict(Outcome.WARNING, "some of the named packages are not installed")
        return Verdict(Outcome.FAILED, "no package provides a named package or capability")
    if returncode == REPOS_SKIPPED:
        if action is Action.DUP:
            return Verdict(
                Outcome.FAILED,
                "some repositories could not be refreshed; a dist-upgrade without them could "
                "remove or downgrade their packages",
            )
        return Verdict(Outcome.WARNING, "some repositories could not be refreshed and were skipped")
    if returncode == SCRIPT_FAILED:
        return Verdict(
            Outcome.FAILED, "a package script failed; the package may not work as installed"
        )
    return Verdict(Outcome.FAILED, _ERRORS.get(returncode, ""))


def succeeded(action: Action, returncode: int) -> bool:
    return verdict(action, returncode).outcome is not Outcome.FAILED


def nothing_to_do(action: Action, returncode: int, output: str) -> bool:
    if "Nothing to do." not in output:
        return False
    return succeeded(action, returncode) or (action is Action.REMOVE and returncode == NOT_FOUND)
