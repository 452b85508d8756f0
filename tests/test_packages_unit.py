"""Package backends: argument lists, exit codes, detection (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from transactional_update import packages
from transactional_update.errors import NotManagedError, UsageError
from transactional_update.packages import Action, Manager, Request


def test_apt_plans() -> None:
    p = packages.plan(Manager.APT, Request(Action.INSTALL, ("hello", "htop")))
    assert p.prepare == (("apt-get", "update"),)
    assert p.probe == ("apt-get", "-s", "install", "hello", "htop")
    assert p.commands == (("apt-get", "-y", "install", "hello", "htop"),)
    assert dict(p.env) == {"DEBIAN_FRONTEND": "noninteractive"}
    up = packages.plan(Manager.APT, Request(Action.UP))
    assert up.prepare == (("apt-get", "update"),)
    assert up.commands == (("apt-get", "-y", "upgrade"),)
    interactive = packages.plan(Manager.APT, Request(Action.REMOVE, ("x",), interactive=True))
    assert interactive.commands == (("apt-get", "remove", "x"),) and interactive.env == ()
    with pytest.raises(UsageError, match="apt has no patches"):
        packages.plan(Manager.APT, Request(Action.PATCH))


def test_zypper_and_dnf_plans() -> None:
    assert packages.plan(Manager.ZYPPER, Request(Action.DUP)).commands == (
        ("zypper", "--non-interactive", "dist-upgrade"),
    )
    assert packages.plan(Manager.DNF, Request(Action.PATCH)).commands == (
        ("dnf", "-y", "upgrade", "--security"),
    )
    with pytest.raises(UsageError, match="pkg install needs package names"):
        packages.plan(Manager.DNF, Request(Action.INSTALL))


@pytest.mark.parametrize(
    ("manager", "action", "rc", "ok"),
    [
        (Manager.APT, Action.UP, 0, True),
        (Manager.APT, Action.UP, 100, False),
        (Manager.ZYPPER, Action.UP, 102, True),
        (Manager.ZYPPER, Action.UP, 106, True),
        (Manager.ZYPPER, Action.DUP, 106, False),
        (Manager.ZYPPER, Action.INSTALL, 104, False),
        (Manager.DNF, Action.UP, 1, False),
    ],
)
def test_exit_codes(manager: Manager, action: Action, rc: int, ok: bool) -> None:
    assert packages.succeeded(manager, action, rc) is ok


def test_describe_and_options() -> None:
    assert packages.describe(Request(Action.INSTALL, ("a", "b"))) == "pkg install a b"
    assert packages.describe(Request(Action.DUP)) == "dup"
    with pytest.raises(UsageError, match="option '--force' is not passed"):
        packages.split_packages(["hello", "--force"])


def test_detect_and_database_guard(tmp_path: Path) -> None:
    with pytest.raises(NotManagedError, match="no supported package manager"):
        packages.detect(tmp_path)
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/apt-get").touch()
    assert packages.detect(tmp_path) is Manager.APT
    with pytest.raises(NotManagedError, match="no apt package database"):
        packages.check_database(tmp_path, Manager.APT)
    (tmp_path / "usr/share/dpkg/database").mkdir(parents=True)
    (tmp_path / "var/lib").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg").symlink_to("../../usr/share/dpkg/database")
    assert packages.check_database(tmp_path, Manager.APT) == tmp_path / "usr/share/dpkg/database"


def test_rpm_backends_refresh_and_read_dry_runs() -> None:
    for action in (Action.UP, Action.INSTALL, Action.PATCH):
        pkgs = ("x",) if action is Action.INSTALL else ()
        z = packages.plan(Manager.ZYPPER, Request(action, pkgs))
        assert z.prepare == (("zypper", "--non-interactive", "refresh"),)
        d = packages.plan(Manager.DNF, Request(action, pkgs))
        assert d.prepare == (("dnf", "makecache", "--refresh"),)
    assert packages.plan(Manager.ZYPPER, Request(Action.REMOVE, ("x",))).prepare == ()
    assert packages.plan(Manager.DNF, Request(Action.REMOVE, ("x",))).prepare == ()
    from transactional_update.packages import dnf, zypper

    assert zypper.nothing_to_do(Action.REMOVE, 104, "Nothing to do.") is True
    assert zypper.nothing_to_do(Action.INSTALL, 104, "Nothing to do.") is False
    assert dnf.nothing_to_do(Action.UP, 1, "Nothing to do.") is False
    assert dnf.nothing_to_do(Action.UP, 0, "Dependencies resolved.\nNothing to do.") is True


def test_configured_manager_wins_over_detection(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/apt-get").touch()
    assert packages.manager_for(tmp_path, None) is Manager.APT
    assert packages.manager_for(tmp_path, Manager.DNF) is Manager.DNF
