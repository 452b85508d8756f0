"""The boot check's decisions (pure): when GRUB fell back, when an unhealthy boot is rolled back
and why not, the reason given, the recorded state, what ``status`` says, the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from transactional_update.boot.counting import Trial
from transactional_update.cli import status
from transactional_update.config import settings
from transactional_update.errors import ConfigError
from transactional_update.health import bootcheck, builtin
from transactional_update.health.bootcheck import Facts, Result, Verdict
from transactional_update.health.checks import Check, Level, Outcome, Report
from transactional_update.record import bootstate

ON_TRIAL = Trial(3, 2, 2)


def facts(
    booted: int | None = 3,
    default: int | None = 3,
    trial: Trial = ON_TRIAL,
    good: int | None = 2,
    failures: dict[int, dict[str, Any]] | None = None,
) -> Facts:
    return Facts(booted, default, trial, good, failures or {})


def outcome(level: Level, name: str, passed: bool, output: str = "", reason: str = "") -> Outcome:
    return Outcome(
        Check(level, name, f"/x/{name}"), passed, 0 if passed else 1, 0.1, output, reason
    )


def test_fell_back_only_when_the_tries_of_the_default_are_spent_and_the_good_one_booted() -> None:
    spent = Trial(3, 0, 2)
    assert bootcheck.fell_back(facts(booted=2, trial=spent))
    assert not bootcheck.fell_back(facts(booted=2, trial=Trial(3, 1, 2)))  # a menu pick of 2
    assert not bootcheck.fell_back(facts(booted=3, trial=spent))  # the admin picked 3 anyway
    assert not bootcheck.fell_back(facts(booted=1, trial=spent))  # a boot-once of 1
    assert not bootcheck.fell_back(facts(booted=2, default=4, trial=spent))  # a stale trial
    assert not bootcheck.fell_back(facts(booted=2, trial=Trial(None, None, None)))
    # Spent after the default went back to 2 (a rollback): no fallback to settle.
    assert not bootcheck.fell_back(facts(booted=2, default=2, trial=spent))


def test_an_unfinished_rollback_is_finished() -> None:
    """The trial's snapshot runs although 2 is the default and nothing is recorded: a cut came
    before the menu followed the rollback, so the check finishes it instead of only reporting."""
    assert bootcheck.unfinished_rollback(facts(default=2))
    assert not bootcheck.unfinished_rollback(facts(default=2, failures={3: {}}))
    assert not bootcheck.unfinished_rollback(facts())  # the default itself: a plain trial


def test_no_rollback_reasons() -> None:
    assert bootcheck.no_rollback(facts()) is None  # on trial: rolled back
    assert bootcheck.no_rollback(facts(booted=1)) == (
        "a one-time boot of another snapshot than the default is never rolled back"
    )
    assert bootcheck.no_rollback(facts(good=None)) == (
        "no snapshot is known-good yet: there is nothing to roll back to"
    )
    assert bootcheck.no_rollback(facts(good=3)) == (
        "snapshot 3 is the known-good snapshot: nothing older is known to work"
    )
    once = {3: {"automatic_rollbacks": 1}}
    assert "rolled back automatically once already" in str(
        bootcheck.no_rollback(facts(failures=once))
    )


def test_failure_reason_names_the_first_required_check_and_its_last_line() -> None:
    report = Report(
        (
            outcome(Level.WANTED, "disk", False, "90% full\n", "exit 1"),
            outcome(Level.REQUIRED, "web", False, "starting\nnginx: 502\n", "exit 1"),
            outcome(Level.REQUIRED, "db", False, "", "timed out after 60 s (killed)"),
        )
    )
    assert bootcheck.failure_reason(report) == (
        "health check required/web failed: exit 1: nginx: 502 (and 1 more)"
    )
    builtin_units = outcome(
        Level.REQUIRED, "builtin.units", False, "sshd.service is failed", "sshd.service is failed"
    )
    assert bootcheck.failure_reason(Report((builtin_units,))) == (
        "health check required/builtin.units failed: sshd.service is failed"
    )


def test_verdict_lines() -> None:
    report = Report(())
    rolled = Result(report, Verdict.ROLLED_BACK, 3, 2, None, 3, 2, reason="health check x failed")
    assert bootcheck.summary(rolled) == (
        "snapshot 3 failed its boot check (health check x failed); rolled back to 2, rebooting"
    )
    fell = Result(report, Verdict.GOOD, 2, 2, 3, 3, reason="did not reach user space in 3 tries")
    assert bootcheck.verdict_text(fell).splitlines() == [
        "snapshot 3 failed to boot (did not reach user space in 3 tries); snapshot 2 is the "
        "default again",
        "snapshot 2 is known-good",
    ]
    visit = Result(report, Verdict.VISIT, booted=1)
    assert "not the default, so nothing changes" in bootcheck.verdict_text(visit)


def test_state_known_good_failures_and_the_notice(tmp_path: Path) -> None:
    assert bootstate.load(tmp_path) == {} and bootstate.notice({}) is None
    data = bootstate.with_known_good({}, 2, "t1", ended_trial=True)
    failure = {"reason": "r", "at": "t2", "how": "health-check", "rolled_back_to": 2}
    data = bootstate.with_failure(data, 3, failure)
    assert bootstate.failures(data)[3]["automatic_rollbacks"] == 1
    assert bootstate.notice(data) == {"snapshot": 3, **failure, "automatic_rollbacks": 1}
    # The known-good snapshot re-checked at a later boot: the notice stays...
    data = bootstate.with_known_good(data, 2, "t3", ended_trial=False)
    assert bootstate.notice(data) is not None
    assert data["known_good"] == {"number": 2, "at": "t1"}  # known-good since it first was
    # ...until a later snapshot passes its trial.
    data = bootstate.with_known_good(data, 4, "t4", ended_trial=True)
    assert bootstate.notice(data) is None and bootstate.known_good(data) == 4
    assert bootstate.failures(bootstate.forget(data, {3})) == {}
    bootstate.save(tmp_path, data)
    path = tmp_path / bootstate.STATE_FILE
    assert bootstate.load(tmp_path) == data and path.stat().st_mode & 0o777 == 0o600
    path.write_text("{garbled")
    assert bootstate.load(tmp_path) == {}


def test_status_lines() -> None:
    boot = {
        "known_good": 2,
        "known_good_since": "2026-11-30T03:00:00+00:00",
        "trial": {"snapshot": 3, "tries_left": 2},
        "notice": {
            "snapshot": 7,
            "reason": "health check required/nginx failed: exit 1",
            "rolled_back_to": 6,
            "at": "2026-11-30T03:14:05+00:00",
        },
        "last_check": {"snapshot": 3, "at": "2026-11-30T03:14:00+00:00", "healthy": False,
                       "failed": ["required/nginx"]},
    }  # fmt: skip
    assert status.notice_lines(boot) == [
        "snapshot 7 failed to boot (health check required/nginx failed: exit 1); rolled back to "
        "6 at 2026-11-30 03:14"
    ]
    assert status.boot_lines(boot, 3) == [
        "boot:     snapshot 3 is on trial (2 boot(s) left, then known-good snapshot 2 boots)",
        "health:   the check of snapshot 3 at 2026-11-30 03:14 failed: required/nginx "
        "(details: transactional-update health)",
    ]
    assert status.boot_lines({**boot, "trial": None, "last_check": None}, 2) == [
        "boot:     snapshot 2 is known-good (since 2026-11-30 03:00)"
    ]
    assert status.notice_lines({}) == [] and status.boot_lines({}, 1) == []


def test_settings() -> None:
    cfg = settings.build(
        {
            "BOOT_TRIES": ("5", "f:1"),
            "HEALTH_REQUIRED_UNITS": ("sshd nginx.service getty@tty1.service", "f:2"),
            "HEALTH_FAILED_UNITS": ("required", "f:3"),
        }
    )
    assert cfg.boot_tries == 5
    assert cfg.health_required_units == ("sshd.service", "nginx.service", "getty@tty1.service")
    assert cfg.health_failed_units is settings.FailedUnits.REQUIRED
    assert settings.Config().boot_tries == 3
    assert settings.Config().health_failed_units is settings.FailedUnits.WANTED
    for key, value, message in (
        ("BOOT_TRIES", "10", "f:1: BOOT_TRIES='10' is not a number of tries from 0 to 9"),
        ("BOOT_TRIES", "-1", "is not a number of tries"),
        ("HEALTH_REQUIRED_UNITS", "ssh;reboot", "'ssh;reboot' is not a unit name"),
        ("HEALTH_FAILED_UNITS", "yes", "is not one of: required, wanted, ignore"),
    ):
        with pytest.raises(ConfigError) as err:
            settings.build({key: (value, "f:1")})
        assert message in err.value.message


def test_builtin_checks_on_a_root_elsewhere_are_none(tmp_path: Path) -> None:
    assert builtin.run_builtin(tmp_path, None, settings.Config()) == []  # type: ignore[arg-type]
    (tmp_path / "var").mkdir()
    problems, _ = builtin.check_mounts(tmp_path)
    assert problems == [
        "/etc (the configuration) cannot be read: No such file or directory",
        "/var is not mounted: its subvolume is missing from the fstab or failed",
    ]
    (tmp_path / "etc").mkdir()
    assert len(builtin.check_mounts(tmp_path)[0]) == 1


def test_a_hanging_or_missing_notify_command_is_one_error_not_a_hang() -> None:
    """What keeps ``tell()`` from holding the reboot after a rollback: run() bounds the
    command and turns a missing one into an error the check catches."""
    from transactional_update.errors import SystemError_
    from transactional_update.proc import run

    with pytest.raises(SystemError_) as err:
        run(["sleep", "5"], check=False, what="NOTIFY_COMMAND", timeout=0.2)
    assert err.value.message == "NOTIFY_COMMAND did not end within 0.2 s and was killed"
    with pytest.raises(SystemError_) as err:
        run(["tu-no-such-notifier"], check=False, timeout=1)
    assert err.value.message == "tu-no-such-notifier: command not found"
