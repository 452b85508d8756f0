"""``health`` on a real managed system: the checks run chrooted into ``--root``, their results
printed per check, the exit code 9 when a required one fails."""

from __future__ import annotations

import json
from pathlib import Path

from testkit.systems import System

ADMIN = "etc/transactional-update/health.d"
VENDOR = "usr/lib/transactional-update/health.d"


def put(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def test_health_runs_the_checks_in_the_root(managed_system: System) -> None:
    s = managed_system
    r = s.tu("health")
    assert (r.returncode, r.stdout.splitlines()[-1]) == (0, "healthy: 0 required check(s) passed")
    # In the root: the check sees the managed system's own files, not the host's.
    put(s.root / ADMIN / "required/hostname", "#!/bin/sh\ntest -s /etc/hostname\n")
    put(s.root / ADMIN / "wanted/marker", "#!/bin/sh\necho 'no marker'\ntest -e /tu-marker\n")
    r = s.tu("health")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("PASS required/hostname (")
    assert lines[1].startswith("WARN wanted/marker (") and lines[1].endswith(": exit 1: no marker")
    assert lines[2] == "healthy: 1 required check(s) passed, 1 wanted check(s) failed"
    # A package's required check that fails makes the system unhealthy: exit 9.
    with s.booted_writable() as snap:
        put(snap / VENDOR / "required/nginx", "#!/bin/sh\necho 'nginx: not running' >&2\nexit 1\n")
    r = s.tu("--json", "health")
    assert r.returncode == 9
    data = json.loads(r.stdout)
    assert data["healthy"] is False
    assert [(c["check"], c["passed"], c["reason"]) for c in data["checks"]] == [
        ("required/hostname", True, ""),
        ("required/nginx", False, "exit 1"),
        ("wanted/marker", False, "exit 1"),
    ]
    assert data["checks"][1]["output"] == "nginx: not running\n"
    # The admin masks the package's check.
    (s.root / ADMIN / "required/nginx").symlink_to("/dev/null")
    r = s.tu("health")
    assert r.returncode == 0 and "nginx" not in r.stdout


def test_a_bad_timeout_setting_is_one_line(managed_system: System) -> None:
    s = managed_system
    (s.root / "etc/transactional-update.conf").write_text("HEALTH_CHECK_TIMEOUT=never\n")
    r = s.tu("health")
    assert r.returncode == 6 and "Traceback" not in r.stderr
    assert "HEALTH_CHECK_TIMEOUT='never' is not a number of seconds" in r.stderr
