"""The checks every boot gets without a script: the root is a snapshot of this system, ``/etc``
and ``/var`` are mounted and writable, the required units are active, and no unit failed.

They run only on the running system (``--root /``): a root mounted elsewhere has no units and
no mounts of its own to ask about.  Each gives the same :class:`checks.Outcome` a script does,
so the report, the JSON and the reasons look alike.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from transactional_update.config.settings import Config, FailedUnits
from transactional_update.health.checks import ENV, Check, Level, Outcome
from transactional_update.snapshots.system import ManagedRoot

PREFIX = "builtin."
UNIT_POLL = 1.0  # seconds between looks at a unit that is still starting
_SETTLING = ("activating", "reloading")


def _outcome(check: Check, started: float, problems: list[str], notes: list[str]) -> Outcome:
    output = "\n".join([*problems, *notes])
    reason = problems[0] if problems else ""
    return Outcome(
        check, not problems, 0 if not problems else 1, time.monotonic() - started, output, reason
    )


def check_root(managed: ManagedRoot) -> tuple[list[str], list[str]]:
    """The root is one of this system's snapshots (a boot of the top level, or of a copy, is
    not what any update made); booting another one than the default is noted, not failed: a
    boot-once or a pick from the menu chose it."""
    booted = managed.booted()
    if booted is None:
        return ["the root is not a snapper snapshot of this system"], []
    default = managed.default()
    if default is not None and default != booted:
        return [], [f"snapshot {booted} is booted, the default is {default} (a one-time choice)"]
    return [], [f"snapshot {booted} is booted and the default"]


def check_mounts(root: Path) -> tuple[list[str], list[str]]:
    problems = []
    for rel, why in (("etc", "the configuration"), ("var", "the logs and package state")):
        path = root / rel
        try:
            flags = os.statvfs(path).f_flag
            dev, root_dev = path.stat().st_dev, root.stat().st_dev
        except OSError as exc:
            problems.append(f"/{rel} ({why}) cannot be read: {exc.strerror}")
            continue
        if flags & os.ST_RDONLY:
            problems.append(f"/{rel} ({why}) is read-only")
        elif rel == "var" and dev == root_dev:
            problems.append(
                "/var is not mounted: its subvolume is missing from the fstab or failed"
            )
    return problems, ([] if problems else ["/etc and /var are mounted read-write"])


def systemctl(*args: str) -> tuple[int, str]:
    proc = subprocess.run(
        ["systemctl", *args], capture_output=True, text=True, env=ENV, check=False
    )
    return proc.returncode, proc.stdout.strip()


def check_units(units: tuple[str, ...], timeout: float) -> tuple[list[str], list[str]]:
    """Each unit is active; one still starting is waited for, up to *timeout*."""
    problems, notes = [], []
    deadline = time.monotonic() + timeout
    for unit in units:
        while True:
            _, state = systemctl("is-active", unit)
            if state not in _SETTLING or time.monotonic() > deadline:
                break
            time.sleep(UNIT_POLL)
        if state == "active":
            notes.append(f"{unit} is active")
        else:
            problems.append(f"{unit} is {state or 'unknown'} (HEALTH_REQUIRED_UNITS)")
    return problems, notes


def check_failed_units() -> tuple[list[str], list[str]]:
    rc, out = systemctl("list-units", "--state=failed", "--plain", "--no-legend", "--no-pager")
    if rc != 0:
        return [f"systemctl list-units failed (exit {rc})"], []
    failed = [line.split()[0] for line in out.splitlines() if line.split()]
    if failed:
        return [f"failed unit(s): {' '.join(failed)}"], []
    return [], ["no unit failed"]


def run_builtin(root: Path, managed: ManagedRoot, config: Config) -> list[Outcome]:
    """The built-in checks of the running system (none for a root mounted elsewhere)."""
    if root != Path("/"):
        return []
    plan: list[tuple[Level, str, Callable[[], tuple[list[str], list[str]]]]] = [
        (Level.REQUIRED, "root", lambda: check_root(managed)),
        (Level.REQUIRED, "mounts", lambda: check_mounts(root)),
    ]
    if Path("/run/systemd/system").is_dir():  # systemd is PID 1: units exist
        if config.health_required_units:
            units = config.health_required_units
            timeout = config.health_check_timeout
            plan.append((Level.REQUIRED, "units", lambda: check_units(units, timeout)))
        if config.health_failed_units is not FailedUnits.IGNORE:
            level = Level(str(config.health_failed_units))
            plan.append((level, "failed-units", check_failed_units))
    outcomes = []
    for level, name, run in plan:
        started = time.monotonic()
        problems, notes = run()
        outcomes.append(_outcome(Check(level, PREFIX + name, "builtin"), started, problems, notes))
    return outcomes
