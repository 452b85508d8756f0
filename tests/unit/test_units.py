"""The shipped systemd units: `systemd-analyze verify` and `calendar` accept them, install works."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from transactional_update.reboot import units

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
    assert r.stdout == f"installed 7 unit(s) and 1 drop-in(s) in {tmp_path / 'units'}\n"
    return tmp_path / "units"


def test_systemd_analyze_verify_accepts_every_unit(installed: Path) -> None:
    assert EXE.is_file()
    names = sorted(p.name for p in installed.iterdir() if p.is_file())
    assert names == sorted(units.UNITS)
    assert sorted(str(p.relative_to(installed)) for p in installed.glob("*.d/*")) == sorted(
        units.DROP_INS
    )
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
    for name in units.UNITS + units.DROP_INS:
        text = (units.source_dir() / name).read_text()
        for line in text.splitlines():
            if line.startswith("Exec"):
                assert line.split("=", 1)[1].lstrip("-").split()[0] == units.SHIPPED_EXEC


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
        "/etc/systemd/system/sysinit.target.wants/transactional-update-etc.service": (
            "/usr/lib/systemd/system/transactional-update-etc.service"
        ),
        "/etc/systemd/system/multi-user.target.wants/transactional-update-health.service": (
            "/usr/lib/systemd/system/transactional-update-health.service"
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


# --- the drop-in for snapper's snapper-cleanup.service ------------------------------------------

SNAPPER_CLEANUP = Path("/usr/lib/systemd/system/snapper-cleanup.service")
DROP_IN = "snapper-cleanup.service.d/transactional-update.conf"


def verify(unit_dir: Path, name: str) -> subprocess.CompletedProcess[str]:
    # A unit given by path is loaded with the drop-ins in NAME.d/ next to it.
    return subprocess.run(
        ["systemd-analyze", "verify", f"./{name}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=unit_dir,
    )


def exec_lines(text: str, key: str) -> list[str]:
    return [x.split("=", 1)[1] for x in text.splitlines() if x.startswith(f"{key}=")]


@pytest.mark.skipif(not SNAPPER_CLEANUP.is_file(), reason="needs snapper's units (package snapper)")
def test_verify_accepts_snapper_cleanup_with_the_drop_in(installed: Path) -> None:
    """Debian's real snapper-cleanup.service with our drop-in loads cleanly; the drop-in is
    really read (a broken command in it is found), and its command exists."""
    shutil.copy(SNAPPER_CLEANUP, installed)
    r = verify(installed, SNAPPER_CLEANUP.name)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    drop_in = installed / DROP_IN
    text = drop_in.read_text()
    # verify skips the executable check of "-"-prefixed commands; without the prefix it checks.
    drop_in.write_text(text.replace("ExecStopPost=-", "ExecStopPost="))
    r = verify(installed, SNAPPER_CLEANUP.name)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    drop_in.write_text(text.replace("ExecStopPost=-" + str(EXE), "ExecStopPost=/nonexistent/tu"))
    r = verify(installed, SNAPPER_CLEANUP.name)
    assert r.returncode != 0 and "Command /nonexistent/tu is not executable" in r.stderr


@pytest.mark.skipif(not SNAPPER_CLEANUP.is_file(), reason="needs snapper's units (package snapper)")
def test_the_drop_in_runs_after_snappers_helper_has_exited() -> None:
    """snapper-cleanup.service is Type=simple: an ExecStartPost= would start while its helper
    still deletes, so the drop-in uses ExecStopPost= (after the helper exited, also on failure)."""
    vendor = read(SNAPPER_CLEANUP.read_text())["Service"]
    assert vendor.get("Type", "simple") == "simple"
    text = (units.source_dir() / DROP_IN).read_text()
    assert exec_lines(text, "ExecStartPost") == []
    assert "Type" not in read(text)["Service"]  # snapper's unit keeps its own semantics
    assert exec_lines(text, "ExecStopPost") == [
        f"-{units.SHIPPED_EXEC} --non-interactive cleanup --prune-only"
    ]
    assert read(text).sections() == ["Service"]  # no [Install]: a drop-in needs no enabling


def test_install_writes_the_drop_in_with_the_exec_and_without_a_link() -> None:
    got = units.files(units.shipped(), "/opt/tu/bin/transactional-update", units.UNIT_DIR, True)
    drop_in = next(f for f in got if f.path == f"{units.UNIT_DIR}/{DROP_IN}")
    assert drop_in.content is not None and drop_in.link is None
    assert exec_lines(drop_in.content, "ExecStopPost") == [
        "-/opt/tu/bin/transactional-update --non-interactive cleanup --prune-only"
    ]
    assert not any(f.link is not None and "snapper" in f.path for f in got)


def test_render_points_every_exec_line_at_the_installation() -> None:
    text = (
        "# /usr/bin/transactional-update in a comment stays\n"
        "[Service]\n"
        "ExecStart=/usr/bin/transactional-update a\n"
        "ExecStopPost=-/usr/bin/transactional-update b /usr/bin/transactional-update\n"
        "Environment=X=/usr/bin/transactional-update\n"
    )
    assert units.render(text, "/x/tu") == (
        "# /usr/bin/transactional-update in a comment stays\n"
        "[Service]\n"
        "ExecStart=/x/tu a\n"
        "ExecStopPost=-/x/tu b /usr/bin/transactional-update\n"
        "Environment=X=/usr/bin/transactional-update\n"
    )
    assert units.render(text, units.SHIPPED_EXEC) == text
