"""Configuration: precedence of the files, sources, `config` output and every refused value."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from datetime import time, timedelta
from pathlib import Path

import pytest

from transactional_update.config import conffile
from transactional_update.config import settings as config
from transactional_update.config.settings import RebootMethod, UpdateMethod, Window
from transactional_update.errors import ConfigError


def tu(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "transactional_update", "--root", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def layered(root: Path) -> None:
    """Each of the four places sets a key that a later one overrides, plus one of its own."""
    files = {
        "usr/etc/transactional-update.conf": "UPDATE_METHOD=up\nREBOOT_METHOD=systemd\n"
        "MAINTENANCE_WINDOW_START=01:00\nLOCK_WAIT=5\n",
        "usr/etc/transactional-update.conf.d/50-vendor.conf": "REBOOT_METHOD=kured\n"
        "MAINTENANCE_WINDOW_DURATION=2h\n",
        "usr/etc/transactional-update.conf.d/10-early.conf": "REBOOT_METHOD=notify\n",
        "etc/transactional-update.conf.d/20-site.conf": "UPDATE_METHOD=patch\n"
        "MAINTENANCE_WINDOW_DAYS=Mon-Wed,Sat\n",
        "etc/transactional-update.conf": "# the admin's word\n"
        "UPDATE_METHOD=dup\nMAINTENANCE_WINDOW_TIMEZONE=Europe/Berlin\n",
        "etc/transactional-update.conf.d/ignored.txt": "UPDATE_METHOD=up\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_later_files_win_and_sources_are_recorded(tmp_path: Path) -> None:
    layered(tmp_path)
    cfg = config.load(tmp_path)
    assert cfg.update_method is UpdateMethod.DUP
    assert cfg.reboot_method is RebootMethod.KURED  # 50-vendor.conf after 10-early.conf
    assert cfg.lock_wait == 5.0
    assert cfg.window == Window(time(1, 0), timedelta(hours=2), (0, 1, 2, 5), "Europe/Berlin")
    assert cfg.source("UPDATE_METHOD") == "/etc/transactional-update.conf:2"
    assert cfg.source("REBOOT_METHOD") == "/usr/etc/transactional-update.conf.d/50-vendor.conf:1"
    assert cfg.source("MAINTENANCE_WINDOW_DAYS") == (
        "/etc/transactional-update.conf.d/20-site.conf:2"
    )
    assert cfg.source("BINDDIRS") is None
    assert config.load(tmp_path / "nothing") == config.Config()


def test_config_command_prints_values_and_sources(tmp_path: Path) -> None:
    layered(tmp_path)
    r = tu(tmp_path, "config")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["UPDATE_METHOD=dup", "#", "/etc/transactional-update.conf:2"]
    assert "MAINTENANCE_WINDOW_DAYS='Mon Tue Wed Sat'" in lines[4]
    assert lines[4].endswith("# /etc/transactional-update.conf.d/20-site.conf:2")
    assert "REBOOT_COMMAND='systemctl reboot' # default" in [" ".join(x.split()) for x in lines]
    data = json.loads(tu(tmp_path, "--json", "config").stdout)
    assert data["REBOOT_METHOD"] == {
        "value": "kured",
        "source": "/usr/etc/transactional-update.conf.d/50-vendor.conf:1",
    }
    assert data["MAINTENANCE_WINDOW_DURATION"]["value"] == "2h"
    assert data["PACKAGE_MANAGER"] == {"value": "", "source": "default"}
    assert list(data) == [k.name for k in config.KEYS]
    # What `config` prints is itself a valid configuration with the same values.
    (tmp_path / "copy/etc").mkdir(parents=True)
    (tmp_path / "copy/etc/transactional-update.conf").write_text(r.stdout)
    assert config.load(tmp_path / "copy") == config.load(tmp_path)


def test_unknown_keys_warn_and_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/transactional-update.conf").write_text("REBOOT_METHOD=none\nZYPPER_AUTO=1\n")
    r = tu(tmp_path, "config")
    assert r.returncode == 0
    assert r.stderr == "/etc/transactional-update.conf:2: unknown setting ZYPPER_AUTO ignored\n"
    assert r.stdout.splitlines()[1].startswith("REBOOT_METHOD=none")


def test_a_bad_value_names_file_line_and_allowed_values(tmp_path: Path) -> None:
    (tmp_path / "etc/transactional-update.conf.d").mkdir(parents=True)
    (tmp_path / "etc/transactional-update.conf.d/60-x.conf").write_text("\nUPDATE_METHOD=upgrade\n")
    r = tu(tmp_path, "config")
    assert r.returncode == 6
    assert r.stderr.splitlines() == [
        "error: /etc/transactional-update.conf.d/60-x.conf:2: UPDATE_METHOD='upgrade' is not "
        "one of: up, dup, patch",
        "hint: set UPDATE_METHOD to one of: up, dup, patch",
    ]
    (tmp_path / "etc/transactional-update.conf").mkdir()
    (tmp_path / "etc/transactional-update.conf.d/60-x.conf").unlink()
    r = tu(tmp_path, "config")
    assert (r.returncode, r.stderr.splitlines()[0]) == (
        6,
        "error: /etc/transactional-update.conf is a directory",
    )


@pytest.mark.parametrize(
    ("line", "message", "hint"),
    [
        (
            "UPDATE_METHOD=upgrade",
            "UPDATE_METHOD='upgrade' is not one of: up, dup, patch",
            "set UPDATE_METHOD to one of: up, dup, patch",
        ),
        (
            "REBOOT_METHOD=later",
            "REBOOT_METHOD='later' is not one of: auto, systemd, kexec, notify, kured, rebootmgr, "
            "fleetlock, etcd-lock, none",
            "set REBOOT_METHOD to one of: auto, systemd, kexec, notify, kured, rebootmgr, "
            "fleetlock, etcd-lock, none",
        ),
        (
            "MAINTENANCE_WINDOW_START=3am",
            "MAINTENANCE_WINDOW_START='3am' is not a time of day HH:MM",
            "set e.g. MAINTENANCE_WINDOW_START=03:30",
        ),
        (
            "MAINTENANCE_WINDOW_START=24:00",
            "MAINTENANCE_WINDOW_START='24:00' is not a time of day HH:MM",
            "set e.g. MAINTENANCE_WINDOW_START=03:30",
        ),
        *[
            (
                f"MAINTENANCE_WINDOW_DURATION={shlex.quote(v)}",
                f"MAINTENANCE_WINDOW_DURATION='{v}' is not a duration between 1m and 24h",
                "write hours and minutes, e.g. MAINTENANCE_WINDOW_DURATION=1h30m or "
                "MAINTENANCE_WINDOW_DURATION=45m",
            )
            for v in ("", "0m", "24h1m", "25h", "90", "1h 30m", "-1h")
        ],
        (
            "MAINTENANCE_WINDOW_DAYS='Mon Funday'",
            "MAINTENANCE_WINDOW_DAYS='Mon Funday': 'Funday' is not a weekday or range of weekdays",
            "use Mon Tue Wed Thu Fri Sat Sun or ranges like Mon-Fri; empty means every day",
        ),
        (
            "MAINTENANCE_WINDOW_DAYS=Mon-",
            "MAINTENANCE_WINDOW_DAYS='Mon-': 'Mon-' is not a weekday or range of weekdays",
            "use Mon Tue Wed Thu Fri Sat Sun or ranges like Mon-Fri; empty means every day",
        ),
        (
            "MAINTENANCE_WINDOW_TIMEZONE=Mars/Olympus",
            "MAINTENANCE_WINDOW_TIMEZONE='Mars/Olympus' is not a known time zone",
            "name one from /usr/share/zoneinfo, e.g. MAINTENANCE_WINDOW_TIMEZONE=Europe/Berlin or "
            "UTC; empty means the system's local time",
        ),
        (
            "MAINTENANCE_WINDOW_TIMEZONE=../../etc/passwd",
            "MAINTENANCE_WINDOW_TIMEZONE='../../etc/passwd' is not a known time zone",
            "name one from /usr/share/zoneinfo, e.g. MAINTENANCE_WINDOW_TIMEZONE=Europe/Berlin or "
            "UTC; empty means the system's local time",
        ),
        (
            "BINDDIRS='/opt srv'",
            "BINDDIRS entry 'srv' is not an absolute directory",
            'list absolute paths below /, e.g. BINDDIRS="/opt /srv"',
        ),
        (
            "PACKAGE_MANAGER=pacman",
            "PACKAGE_MANAGER='pacman' is not one of: apt, zypper, dnf",
            "set PACKAGE_MANAGER to one of: apt, zypper, dnf",
        ),
        (
            "SNAPPER_CONFIG=a/b",
            "SNAPPER_CONFIG='a/b' is not a config name",
            "name a file in /etc/snapper/configs, usually root",
        ),
        (
            "SNAPPER_BACKEND=rest",
            "SNAPPER_BACKEND='rest' is not one of: auto, dbus, cli",
            "set SNAPPER_BACKEND to one of: auto, dbus, cli",
        ),
        *[
            (
                f"LOCK_WAIT={v}",
                f"LOCK_WAIT='{v}' is not a number of seconds",
                "set LOCK_WAIT=0 to refuse at once",
            )
            for v in ("soon", "-1", "nan", "inf")
        ],
        *[
            (f"{key}=", f"{key} is empty", f'name a command, e.g. {key}="{default}"')
            for key, default in (
                ("REBOOT_COMMAND", "systemctl reboot"),
                ("KEXEC_LOAD_COMMAND", "kexec"),
                ("KEXEC_COMMAND", "systemctl kexec"),
                ("NOTIFY_COMMAND", "wall"),
            )
        ],
        *[
            (
                f"REFRESH_DELAY={shlex.quote(v)}",
                f"REFRESH_DELAY='{v}' is not a duration",
                "write hours, minutes or seconds, e.g. REFRESH_DELAY=10m, REFRESH_DELAY=1h or "
                "REFRESH_DELAY=90s (0: refresh before every package command)",
            )
            for v in ("", "10", "-5m", "10 m", "1d", "m", "1m1h", "99999999h")
        ],
        (
            "REFRESH_DELAY=24h1s",
            "REFRESH_DELAY='24h1s' is longer than 24h",
            "the nightly update would use old metadata; set at most 24h (default 10m)",
        ),
        (
            """REBOOT_COMMAND="ssh 'host reboot\"""",
            'REBOOT_COMMAND="ssh \'host reboot" is not a command line (No closing quotation)',
            "fix the quoting",
        ),
    ],
)
def test_every_bad_value_is_refused(line: str, message: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.build(conffile.parse(f"# x\n{line}\n", "/etc/transactional-update.conf"))
    assert err.value.message == f"/etc/transactional-update.conf:2: {message}"
    assert err.value.hint == hint
    assert err.value.exit_code == 6


def test_good_values_of_the_new_keys() -> None:
    cfg = config.build(
        conffile.parse(
            "UPDATE_METHOD=patch\nREBOOT_METHOD=rebootmgr\nMAINTENANCE_WINDOW_START=3:05\n"
            "MAINTENANCE_WINDOW_DURATION=45min\nMAINTENANCE_WINDOW_DAYS='fr-mo'\n"
            "MAINTENANCE_WINDOW_TIMEZONE=UTC\nREBOOT_COMMAND=\"ssh 'node 1' reboot\"\n"
            "PACKAGE_MANAGER=\n",
            "f",
        )
    )
    assert cfg.update_method is UpdateMethod.PATCH
    assert cfg.reboot_method is RebootMethod.REBOOTMGR
    assert cfg.window == Window(time(3, 5), timedelta(minutes=45), (0, 4, 5, 6), "UTC")
    assert cfg.reboot_command == ("ssh", "node 1", "reboot")
    assert cfg.package_manager is None


@pytest.mark.parametrize(
    ("value", "delay", "shown"),
    [
        ("0", timedelta(0), "0"),
        ("0m", timedelta(0), "0"),
        ("10m", timedelta(minutes=10), "10m"),
        ("10min", timedelta(minutes=10), "10m"),
        ("90s", timedelta(seconds=90), "1m30s"),
        ("1h", timedelta(hours=1), "1h"),
        ("1h30m15s", timedelta(hours=1, minutes=30, seconds=15), "1h30m15s"),
        ("24h", timedelta(hours=24), "24h"),
    ],
)
def test_refresh_delay_values_and_how_config_shows_them(
    value: str, delay: timedelta, shown: str
) -> None:
    cfg = config.build({"REFRESH_DELAY": (value, "f:1")})
    assert cfg.refresh_delay == delay
    assert config.show_delay(delay) == shown
    # What `config` prints reads back as the same value.
    assert config.build({"REFRESH_DELAY": (shown, "f:1")}).refresh_delay == delay


def test_refresh_delay_default_is_ten_minutes(tmp_path: Path) -> None:
    assert config.Config().refresh_delay == timedelta(minutes=10)
    r = tu(tmp_path, "--json", "config")
    assert json.loads(r.stdout)["REFRESH_DELAY"] == {"value": "10m", "source": "default"}
