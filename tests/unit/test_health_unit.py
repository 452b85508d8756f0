"""Health checks on plain directories: which files are checks, and running them (real processes:
passing, failing, hanging with a child, not executable, missing)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from transactional_update.health.checks import (
    ADMIN_DIR,
    VENDOR_DIR,
    Check,
    Level,
    Outcome,
    Report,
    argv,
    discover,
    render,
    run_check,
)


def script(root: Path, where: str, name: str, body: str, mode: int = 0o755) -> Path:
    path = root / where / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


def test_discover_orders_overrides_masks_and_skips(tmp_path: Path) -> None:
    script(tmp_path, f"{VENDOR_DIR}/required", "b-pkg", "exit 0")
    script(tmp_path, f"{VENDOR_DIR}/required", "a-replaced", "exit 1")
    script(tmp_path, f"{ADMIN_DIR}/required", "a-replaced", "exit 0")
    script(tmp_path, f"{VENDOR_DIR}/wanted", "masked", "exit 1")
    (tmp_path / ADMIN_DIR / "wanted").mkdir(parents=True)
    os.symlink("/dev/null", tmp_path / ADMIN_DIR / "wanted/masked")
    for junk in (".hidden", "x~", "x.dpkg-old", "x.live"):
        script(tmp_path, f"{ADMIN_DIR}/wanted", junk, "exit 1")
    (tmp_path / ADMIN_DIR / "wanted/subdir").mkdir()
    script(tmp_path, f"{ADMIN_DIR}/wanted", "disk", "exit 0")
    assert discover(tmp_path) == [
        Check(Level.REQUIRED, "a-replaced", f"/{ADMIN_DIR}/required/a-replaced"),
        Check(Level.REQUIRED, "b-pkg", f"/{VENDOR_DIR}/required/b-pkg"),
        Check(Level.WANTED, "disk", f"/{ADMIN_DIR}/wanted/disk"),
    ]
    assert discover(tmp_path / "nothing-here") == []


def test_argv_runs_in_a_chroot_of_another_root() -> None:
    check = Check(Level.REQUIRED, "x", "/etc/transactional-update/health.d/required/x")
    assert argv(check, Path("/")) == [check.path]
    assert argv(check, Path("/mnt/sys")) == ["chroot", "/mnt/sys", check.path]


def _check(tmp_path: Path, level: Level, name: str, body: str, mode: int = 0o755) -> Check:
    path = script(tmp_path, f"{ADMIN_DIR}/{level}", name, body, mode)
    return Check(level, name, str(path))  # an absolute host path: runs as is with root "/"


def test_outcomes_of_passing_failing_and_wanted_checks(tmp_path: Path) -> None:
    ok = run_check(_check(tmp_path, Level.REQUIRED, "ok", "echo fine"), Path("/"), 10)
    assert (ok.passed, ok.exit, ok.output, ok.reason) == (True, 0, "fine\n", "")
    bad = _check(tmp_path, Level.REQUIRED, "bad", "echo one; echo 'nginx is down' >&2; exit 3")
    out = run_check(bad, Path("/"), 10)
    assert (out.passed, out.exit, out.reason) == (False, 3, "exit 3")
    assert out.output == "one\nnginx is down\n"
    assert out.as_json()["check"] == "required/bad"


def test_a_hanging_check_is_killed_with_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "child-pid"
    body = f"sleep 300 & echo $! > {marker}; echo started; wait"
    started = time.monotonic()
    out = run_check(_check(tmp_path, Level.REQUIRED, "hangs", body), Path("/"), 1)
    assert time.monotonic() - started < 30
    assert (out.passed, out.exit, out.reason) == (False, None, "timed out after 1 s (killed)")
    assert out.output == "started\n"
    child = int(marker.read_text())
    for _ in range(50):  # the group was SIGKILLed; the child is gone once reaped by init
        if not Path(f"/proc/{child}").exists() or "Z" in _state(child):
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return "gone"


def test_not_executable_and_missing_checks_fail(tmp_path: Path) -> None:
    plain = _check(tmp_path, Level.REQUIRED, "plain", "exit 0", mode=0o644)
    out = run_check(plain, Path("/"), 10)
    assert (out.passed, out.exit, out.reason) == (False, None, "not executable (chmod +x it)")
    gone = Check(Level.REQUIRED, "gone", str(tmp_path / "no-such-check"))
    assert run_check(gone, Path("/"), 10).reason == "missing"


def test_report_verdict_and_text() -> None:
    def outcome(level: Level, name: str, passed: bool, reason: str = "", out: str = "") -> Outcome:
        check = Check(level, name, f"/x/{name}")
        return Outcome(check, passed, 0 if passed else 1, 0.25, out, reason)

    warned = Report(
        (
            outcome(Level.REQUIRED, "ok", True),
            outcome(Level.WANTED, "warn", False, "exit 1", "checking\ndisk 91% full\n"),
        )
    )
    assert warned.healthy and [o.check.id for o in warned.failed] == ["wanted/warn"]
    assert render(warned).splitlines() == [
        "PASS required/ok (0.2 s)",
        "WARN wanted/warn (0.2 s): exit 1: disk 91% full",
        "healthy: 1 required check(s) passed, 1 wanted check(s) failed",
    ]
    bad = Report((outcome(Level.REQUIRED, "db", False, "timed out after 60 s (killed)"),))
    assert not bad.healthy
    assert render(bad).splitlines() == [
        "FAIL required/db (0.2 s): timed out after 60 s (killed)",
        "unhealthy: 1 of 1 required check(s) failed: required/db",
    ]
    assert render(Report(())).splitlines() == [
        f"no health checks (add executables to /{ADMIN_DIR}/required or .../wanted)",
        "healthy: 0 required check(s) passed",
    ]
