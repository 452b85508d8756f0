"""The shipped systemd units: `systemd-analyze verify` and `calendar` accept them, install works."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from transactional_update import units

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (package systemd)"
)
EXE = Path(sys.executable).parent / "transactional-update"  # the installed entry point


def tu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "transactional_update", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def read(text: str) -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read_string(text)
    return p


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """The units as a packager installs them, starting this checkout's entry point."""
    r = tu("install-units", "--unit-dir", str(tmp_path / "units"), "--exec", str(EXE))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"installed 5 unit(s) in {tmp_path / 'units'}\n"
    return tmp_path / "units"


def test_systemd_analyze_verify_accepts_every_unit(installed: Path) -> None:
    assert EXE.is_file()
    names = sorted(p.name for p in installed.iterdir())
    assert names == sorted(units.UNITS)
    r = subprocess.run(
        ["systemd-analyze", "verify", *(f"./{n}" for n in names)],
        capture_output=True,
        text=True,
        check=False,
        cwd=installed,
    )
    # verify only warns about unknown keys or sections: any output is a finding.
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_verify_would_catch_a_broken_unit(installed: Path) -> None:
    """The check above is not vacuous: a unit whose command does not exist fails it."""
    service = installed / "transactional-update.service"
    service.write_text(service.read_text().replace(str(EXE), "/nonexistent/transactional-update"))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(service)], capture_output=True, text=True, check=False
    )
    assert r.returncode != 0 and "is not executable" in r.stderr


def test_timers_calendars_and_service_properties(installed: Path) -> None:
    for timer in ("transactional-update.timer", "transactional-update-cleanup.timer"):
        spec = read((installed / timer).read_text())["Timer"]
        assert spec["Persistent"] == "true"
        r = subprocess.run(
            ["systemd-analyze", "calendar", spec["OnCalendar"]],
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        assert "Normalized form: *-*-* 00:00:00" in r.stdout
    assert (
        read((installed / "transactional-update.timer").read_text())["Timer"]["RandomizedDelaySec"]
        == "2h"
    )
    nightly = read((installed / "transactional-update.service").read_text())
    assert nightly["Unit"]["ConditionACPower"] == "true"
    assert nightly["Service"]["IOSchedulingClass"] == "best-effort"
    assert nightly["Service"]["IOSchedulingPriority"] == "7"
    assert nightly["Service"]["ExecStart"].split()[1:] == [
        "--non-interactive",
        "cleanup",
        "auto-update",
        "reboot",
    ]


def test_the_shipped_units_start_usr_bin() -> None:
    for name in units.UNITS:
        text = (units.source_dir() / name).read_text()
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                assert line.split("=", 1)[1].split()[0] == units.SHIPPED_EXEC


def test_enabling_links_what_wanted_by_names() -> None:
    got = units.files(units.shipped(), "/opt/tu/bin/transactional-update", units.UNIT_DIR, True)
    links = {f.path: f.link for f in got if f.link is not None}
    assert links == {
        "/etc/systemd/system/timers.target.wants/transactional-update.timer": (
            "/usr/lib/systemd/system/transactional-update.timer"
        ),
        "/etc/systemd/system/timers.target.wants/transactional-update-cleanup.timer": (
            "/usr/lib/systemd/system/transactional-update-cleanup.timer"
        ),
        "/etc/systemd/system/multi-user.target.wants/transactional-update-reboot-manager.service": (
            "/usr/lib/systemd/system/transactional-update-reboot-manager.service"
        ),
    }
    service = next(f for f in got if f.path.endswith("/transactional-update.service"))
    assert service.content is not None
    assert "ExecStart=/opt/tu/bin/transactional-update --non-interactive" in service.content


def test_install_units_refuses_a_relative_exec(tmp_path: Path) -> None:
    r = tu("install-units", "--unit-dir", str(tmp_path), "--exec", "bin/tu")
    assert r.returncode == 2
    assert (
        r.stderr.splitlines()[0]
        == "error: Invalid value for --exec: 'bin/tu' is not an absolute path"
    )
    assert list(tmp_path.iterdir()) == []


def test_install_units_cannot_enable_in_a_unit_dir(tmp_path: Path) -> None:
    r = tu("install-units", "--unit-dir", str(tmp_path), "--enable")
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == (
        "error: Invalid value for --enable: cannot enable units in a --unit-dir"
    )
    assert list(tmp_path.iterdir()) == []
