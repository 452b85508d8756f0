"""Health checks: executables that say whether the running system works, each with a timeout.

greenboot's contract, in this tool's directories: a check in ``required/`` that fails makes the
system unhealthy, one in ``wanted/`` that fails is a warning.  Packages ship checks in
``/usr/lib/transactional-update/health.d/{required,wanted}/``, the admin's are in
``/etc/transactional-update/health.d/{required,wanted}/``; a file of the same name in ``/etc``
replaces the package's, and a link to ``/dev/null`` there masks it (as systemd's unit
directories do).  Hidden files, editor backups and dpkg's leftovers are no checks.

Each check runs with no input, in a process group of its own that is killed when it exceeds the
timeout (a check that hangs must not hang the boot), with its output (stdout and stderr) kept
for the report.  A check that is not executable fails: a required check that cannot run must not
pass for one that did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

VENDOR_DIR = "usr/lib/transactional-update/health.d"
ADMIN_DIR = "etc/transactional-update/health.d"
OUTPUT_LIMIT = 8192  # bytes of a check's output kept: the end, where the reason usually is
_NOT_CHECKS = ("~", ".dpkg-old", ".dpkg-new", ".dpkg-dist", ".dpkg-tmp", ".ucf-old", ".live")
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class Level(StrEnum):
    REQUIRED = "required"  # a failure: the system is unhealthy
    WANTED = "wanted"  # a failure: a warning


@dataclass(frozen=True)
class Check:
    level: Level
    name: str  # the file name
    path: str  # absolute inside the root it checks

    @property
    def id(self) -> str:
        return f"{self.level}/{self.name}"


@dataclass(frozen=True)
class Outcome:
    check: Check
    passed: bool
    exit: int | None  # None: it did not run to an end (not executable, timed out)
    seconds: float
    output: str
    reason: str = ""  # why it failed, in words ("exit 1", "timed out after 60 s", ...)

    def as_json(self) -> dict[str, object]:
        return {
            "check": self.check.id,
            "level": str(self.check.level),
            "path": self.check.path,
            "passed": self.passed,
            "exit": self.exit,
            "seconds": round(self.seconds, 3),
            "reason": self.reason,
            "output": self.output,
        }


@dataclass(frozen=True)
class Report:
    outcomes: tuple[Outcome, ...]

    @property
    def healthy(self) -> bool:
        return all(o.passed for o in self.outcomes if o.check.level is Level.REQUIRED)

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if not o.passed)


def _is_check_name(name: str) -> bool:
    return not name.startswith(".") and not name.endswith(_NOT_CHECKS)


def discover(root: Path) -> list[Check]:
    """The checks of the system at *root*, by level, in name order."""
    found: list[Check] = []
    for level in Level:
        chosen: dict[str, str | None] = {}
        for base in (VENDOR_DIR, ADMIN_DIR):  # later directories override earlier ones
            directory = root / base / str(level)
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                continue
            for name in names:
                path = directory / name
                if not _is_check_name(name) or path.is_dir():
                    continue
                masked = path.is_symlink() and os.readlink(path) == "/dev/null"
                chosen[name] = None if masked else f"/{base}/{level}/{name}"
        found += [Check(level, n, p) for n, p in sorted(chosen.items()) if p is not None]
    return found


def argv(check: Check, root: Path) -> list[str]:
    """How *check* runs: itself on the running system, in a chroot of another root."""
    if root == Path("/"):
        return [check.path]
    return ["chroot", str(root), check.path]


def run_check(check: Check, root: Path, timeout: float) -> Outcome:
    host = root / check.path.lstrip("/")
    if not os.access(host, os.X_OK):
        why = "missing" if not os.path.lexists(host) else "not executable (chmod +x it)"
        return Outcome(check, False, None, 0.0, "", why)
    started = time.monotonic()
    proc = subprocess.Popen(
        argv(check, root),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=ENV,
        start_new_session=True,  # its own process group: a timeout kills what it started too
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        seconds = time.monotonic() - started
        return Outcome(
            check, False, None, seconds, _tail(out), f"timed out after {timeout:g} s (killed)"
        )
    seconds = time.monotonic() - started
    code = proc.returncode
    reason = "" if code == 0 else f"killed by signal {-code}" if code < 0 else f"exit {code}"
    return Outcome(check, code == 0, code, seconds, _tail(out), reason)


def _tail(data: bytes) -> str:
    text = data[-OUTPUT_LIMIT:].decode("utf-8", "replace")
    return text if len(data) <= OUTPUT_LIMIT else "…" + text


def run_all(root: Path, timeout: float) -> Report:
    """Every check of the system at *root*, one after the other, each within *timeout*."""
    return Report(tuple(run_check(c, root, timeout) for c in discover(root)))


def render(report: Report) -> str:
    """One line per check, then the verdict (what ``health`` prints)."""
    lines = []
    for o in report.outcomes:
        mark = "PASS" if o.passed else "FAIL" if o.check.level is Level.REQUIRED else "WARN"
        line = f"{mark} {o.check.id} ({o.seconds:.1f} s)"
        if not o.passed:
            last = o.output.strip().splitlines()[-1:] if o.output.strip() else []
            line += f": {o.reason}" + (f": {last[0]}" if last else "")
        lines.append(line)
    if not report.outcomes:
        lines.append(f"no health checks (add executables to /{ADMIN_DIR}/required or .../wanted)")
    required = [o for o in report.outcomes if o.check.level is Level.REQUIRED]
    failed = [o for o in required if not o.passed]
    if failed:
        lines.append(
            f"unhealthy: {len(failed)} of {len(required)} required check(s) failed: "
            + ", ".join(o.check.id for o in failed)
        )
    else:
        warned = sum(1 for o in report.outcomes if not o.passed)
        lines.append(
            f"healthy: {len(required)} required check(s) passed"
            + (f", {warned} wanted check(s) failed" if warned else "")
        )
    return "\n".join(lines)
