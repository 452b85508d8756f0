"""Package backends: argument lists, exit codes, detection (pure)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from transactional_update.config.settings import Config, Manager
from transactional_update.core.transaction import NothingToDo
from transactional_update.errors import CommandFailed, NotManagedError, UsageError
from transactional_update.packages import forward, operation, refresh
from transactional_update.packages import model as packages
from transactional_update.packages.model import Action, Outcome, Request, Verdict
from transactional_update.record import pkgdb


def test_apt_plans() -> None:
    p = operation.plan(Manager.APT, Request(Action.INSTALL, ("hello", "htop")))
    assert p.prepare == (("apt-get", "update"),)
    assert p.probe == ("apt-get", "-s", "install", "hello", "htop")
    assert p.commands == (("apt-get", "-y", "install", "hello", "htop"),)
    assert dict(p.env) == {"DEBIAN_FRONTEND": "noninteractive"}
    up = operation.plan(Manager.APT, Request(Action.UP))
    assert up.prepare == (("apt-get", "update"),)
    assert up.commands == (("apt-get", "-y", "upgrade"),)
    interactive = operation.plan(Manager.APT, Request(Action.REMOVE, ("x",), interactive=True))
    assert interactive.commands == (("apt-get", "remove", "x"),) and interactive.env == ()
    with pytest.raises(UsageError, match="apt has no patches") as err:
        operation.plan(Manager.APT, Request(Action.PATCH))
    assert err.value.hint == "use `transactional-update up` to install updates"


def test_zypper_and_dnf_plans() -> None:
    assert operation.plan(Manager.ZYPPER, Request(Action.DUP)).commands == (
        ("zypper", "--non-interactive", "dist-upgrade"),
    )
    # patch: zypper includes the patches that ask for a reboot (a snapshot needs one anyway);
    # dnf installs the lowest versions that the advisories name, as zypper patch does.
    z = operation.plan(Manager.ZYPPER, Request(Action.PATCH))
    assert z.commands == (
        ("zypper", "--non-interactive", "--non-interactive-include-reboot-patches", "patch"),
    )
    assert z.probe == (
        "zypper",
        "--non-interactive",
        "--non-interactive-include-reboot-patches",
        "patch",
        "--dry-run",
    )
    assert z.reboot_check == ("zypper", "needs-rebooting")
    d = operation.plan(Manager.DNF, Request(Action.PATCH))
    assert d.commands == (("dnf", "-y", "upgrade-minimal"),)
    assert d.probe == ("dnf", "--assumeno", "upgrade-minimal")
    assert d.reboot_check is None
    with pytest.raises(UsageError, match="pkg install needs package names"):
        operation.plan(Manager.DNF, Request(Action.INSTALL))


R = Outcome
Z, D, A = Manager.ZYPPER, Manager.DNF, Manager.APT
REBOOT = "an installed patch or package requires a reboot"
AGAIN = "the package manager updated itself"
NOT_FOUND = "no package provides a named package or capability"
SKIPPED = "some repositories could not be refreshed and were skipped"
DUP_SKIPPED = (
    "some repositories could not be refreshed; a dist-upgrade without them could remove or "
    "downgrade their packages"
)
SCRIPT = "a package script failed; the package may not work as installed"
LIBZYPP = "problem reported by libzypp (e.g. unresolvable dependencies)"


@pytest.mark.parametrize(
    ("manager", "action", "rc", "outcome", "meaning"),
    [
        (A, Action.UP, 0, R.OK, ""),
        (A, Action.UP, 100, R.FAILED, ""),
        (Z, Action.UP, 0, R.OK, ""),
        (Z, Action.PATCH, 100, R.OK, ""),
        (Z, Action.PATCH, 101, R.OK, ""),
        (Z, Action.PATCH, 102, R.REBOOT, REBOOT),
        (Z, Action.UP, 102, R.REBOOT, REBOOT),
        (Z, Action.PATCH, 103, R.AGAIN, AGAIN),
        (Z, Action.INSTALL, 104, R.FAILED, NOT_FOUND),
        (Z, Action.UPDATE, 104, R.FAILED, NOT_FOUND),
        (Z, Action.REMOVE, 104, R.WARNING, "some of the named packages are not installed"),
        (Z, Action.UP, 106, R.WARNING, SKIPPED),
        (Z, Action.PATCH, 106, R.WARNING, SKIPPED),
        (Z, Action.DUP, 106, R.FAILED, DUP_SKIPPED),
        (Z, Action.INSTALL, 107, R.FAILED, SCRIPT),
        (Z, Action.INSTALL, 4, R.FAILED, LIBZYPP),
        (Z, Action.INSTALL, 7, R.FAILED, "the package manager is locked by another process"),
        (Z, Action.INSTALL, 105, R.FAILED, "interrupted by a signal"),
        (Z, Action.INSTALL, 99, R.FAILED, ""),
        (D, Action.UP, 0, R.OK, ""),
        (D, Action.UP, 1, R.FAILED, ""),
        (D, Action.UP, 100, R.FAILED, ""),  # check-update's "updates available"
        (D, Action.INSTALL, 200, R.FAILED, "another process holds dnf's lock"),
    ],
)  # fmt: skip
def test_exit_codes(
    manager: Manager, action: Action, rc: int, outcome: Outcome, meaning: str
) -> None:
    assert operation.verdict(manager, action, rc) == Verdict(outcome, meaning)
    assert operation.succeeded(manager, action, rc) is (outcome is not R.FAILED)


def test_describe_and_options() -> None:
    assert packages.describe(Request(Action.INSTALL, ("a", "b"))) == "pkg install a b"
    assert packages.describe(Request(Action.DUP)) == "dup"
    with pytest.raises(UsageError, match="option '--force' is not forwarded to apt"):
        forward.translate(Manager.APT, Action.INSTALL, forward.split(["hello", "--force"])[1])


def test_detect_and_database_guard(tmp_path: Path) -> None:
    with pytest.raises(NotManagedError, match="no supported package manager"):
        pkgdb.detect(tmp_path)
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/apt-get").touch()
    assert pkgdb.detect(tmp_path) is Manager.APT
    with pytest.raises(NotManagedError, match="no apt package database"):
        pkgdb.check_database(tmp_path, Manager.APT)
    (tmp_path / "usr/share/dpkg/database").mkdir(parents=True)
    (tmp_path / "var/lib").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg").symlink_to("../../usr/share/dpkg/database")
    assert pkgdb.check_database(tmp_path, Manager.APT) == tmp_path / "usr/share/dpkg/database"


def test_rpm_backends_refresh_and_read_dry_runs() -> None:
    for action in (Action.UP, Action.INSTALL, Action.PATCH):
        pkgs = ("x",) if action is Action.INSTALL else ()
        z = operation.plan(Manager.ZYPPER, Request(action, pkgs))
        assert z.prepare == (("zypper", "--non-interactive", "refresh"),)
        d = operation.plan(Manager.DNF, Request(action, pkgs))
        assert d.prepare == (("dnf", "makecache", "--refresh"),)
    assert operation.plan(Manager.ZYPPER, Request(Action.REMOVE, ("x",))).prepare == ()
    assert operation.plan(Manager.DNF, Request(Action.REMOVE, ("x",))).prepare == ()
    from transactional_update.packages import dnf, zypper

    assert zypper.nothing_to_do(Action.REMOVE, 104, "Nothing to do.") is True
    assert zypper.nothing_to_do(Action.INSTALL, 104, "Nothing to do.") is False
    assert dnf.nothing_to_do(Action.UP, 1, "Nothing to do.") is False
    assert dnf.nothing_to_do(Action.UP, 0, "Dependencies resolved.\nNothing to do.") is True


def test_configured_manager_wins_over_detection(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/apt-get").touch()
    assert pkgdb.manager_for(tmp_path, None) is Manager.APT
    assert pkgdb.manager_for(tmp_path, Manager.DNF) is Manager.DNF


class FakeTx:
    """The two methods execute() uses, answering with scripted exit codes (pure logic only).

    Its root is a plain directory (the refresh stamp's home); the snapshot a directory in it.
    """

    root = Path("/nonexistent")  # each test's tmp_path (the fixture below)

    def __init__(
        self,
        codes: dict[str, list[int]],
        outputs: dict[str, str] | None = None,
        delay: timedelta = timedelta(minutes=10),
    ):
        self.codes = codes
        self.outputs = outputs or {}
        self.ran: list[tuple[list[str], dict[str, str]]] = []
        self.result = SimpleNamespace(reboot=None)
        self.number = 2
        snapshot = self.root / "snapshot"
        self.ctx = SimpleNamespace(
            root=self.root,
            config=Config(refresh_delay=delay),
            managed=SimpleNamespace(snapshot_dir=lambda n: snapshot),
        )

    def commands(self) -> list[str]:
        return [" ".join(a) for a, _ in self.ran]

    def _next(self, argv: list[str], env: dict[str, str] | None) -> int:
        self.ran.append((argv, dict(env or {})))
        key = " ".join(argv)
        queue = self.codes.get(key, [0])
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        return self._next(argv, env)

    def capture(self, argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
        return self._next(argv, env), self.outputs.get(" ".join(argv), "")


@pytest.fixture(autouse=True)
def _fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeTx, "root", tmp_path)


PATCH = "zypper --non-interactive --non-interactive-include-reboot-patches patch"


def _execute(tx: FakeTx, manager: Manager, request: Request) -> None:
    found = operation.execute(tx, manager, request)  # type: ignore[arg-type]
    tx.result.reboot = found.reboot  # as package_step hands it to the transaction


def test_zypper_runs_again_after_restart_needed_and_records_the_reboot() -> None:
    tx = FakeTx({PATCH: [103, 102], "zypper needs-rebooting": [0]})
    _execute(tx, Manager.ZYPPER, Request(Action.PATCH))
    assert [" ".join(a) for a, _ in tx.ran] == [
        "zypper --non-interactive refresh",
        f"{PATCH.replace(' patch', ' patch --dry-run')}",
        PATCH,
        PATCH,
        "zypper needs-rebooting",
    ]
    assert tx.result.reboot == "reboot"
    # Dry run and check are parsed, so they run in the C locale; the real command does not.
    assert tx.ran[1][1]["LC_ALL"] == "C" and "LC_ALL" not in tx.ran[2][1]


def test_zypper_restart_rounds_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    tx = FakeTx({PATCH: [103]})
    _execute(tx, Manager.ZYPPER, Request(Action.PATCH))
    assert [" ".join(a) for a, _ in tx.ran].count(PATCH) == packages.MAX_ROUNDS == 3
    assert tx.result.reboot is None
    assert "zypper still asks to be run again after 3 rounds" in caplog.text


def test_a_reboot_needing_package_is_found_by_the_check() -> None:
    tx = FakeTx({"zypper needs-rebooting": [102]})
    _execute(tx, Manager.ZYPPER, Request(Action.INSTALL, ("kernel",)))
    assert tx.result.reboot == "reboot"
    tx = FakeTx({"zypper needs-rebooting": [2]})  # an old zypper without the command
    _execute(tx, Manager.ZYPPER, Request(Action.INSTALL, ("kernel",)))
    assert tx.result.reboot is None


def test_failures_name_the_meaning_and_warnings_pass(caplog: pytest.LogCaptureFixture) -> None:
    tx = FakeTx({"zypper --non-interactive install tu-post": [107]})
    with pytest.raises(CommandFailed) as err:
        _execute(tx, Manager.ZYPPER, Request(Action.INSTALL, ("tu-post",)))
    assert err.value.message == (
        "zypper install tu-post failed (exit 107: a package script failed; "
        "the package may not work as installed)"
    )
    assert err.value.hint == "the default snapshot is unchanged"
    assert "zypper needs-rebooting" not in [" ".join(a) for a, _ in tx.ran]

    tx = FakeTx({"dnf -y install x": [1]})
    with pytest.raises(CommandFailed, match=r"^dnf install x failed \(exit 1\)$"):
        _execute(tx, Manager.DNF, Request(Action.INSTALL, ("x",)))

    tx = FakeTx({"zypper --non-interactive update": [106]})
    _execute(tx, Manager.ZYPPER, Request(Action.UP))
    assert "zypper: some repositories could not be refreshed and were skipped (exit 106)" in (
        caplog.text
    )
    tx = FakeTx({"zypper --non-interactive dist-upgrade": [106]})
    with pytest.raises(CommandFailed, match="exit 106: some repositories could not be refreshed"):
        _execute(tx, Manager.ZYPPER, Request(Action.DUP))


def test_nothing_to_do_ends_before_the_command() -> None:
    tx = FakeTx(
        {"dnf --assumeno upgrade-minimal": [0]},
        {"dnf --assumeno upgrade-minimal": "Dependencies resolved.\nNothing to do.\nComplete!\n"},
    )
    with pytest.raises(NothingToDo, match=r"^dnf: no patches to install$"):
        _execute(tx, Manager.DNF, Request(Action.PATCH))
    assert [" ".join(a) for a, _ in tx.ran] == [
        "dnf makecache --refresh",
        "dnf --assumeno upgrade-minimal",
    ]


def test_the_reboot_flag_travels_with_the_changelog_entry() -> None:
    from dataclasses import asdict, replace

    from transactional_update.record import changelog

    entry = replace(changelog.new_entry(3, 2, "patch", [], []), reboot="reboot")
    assert changelog.userdata(entry) == {"tu-base": "2", "tu-files": "0", "tu-reboot": "reboot"}
    assert changelog.from_json(asdict(entry)) == entry
    assert changelog.render(entry).splitlines()[-1] == (
        "  needs: a full reboot (the package manager asks for it)"
    )
    plain = changelog.new_entry(3, 2, "up", [], [])
    assert "tu-reboot" not in changelog.userdata(plain)
    assert "needs:" not in changelog.render(plain)
    # Entries written before the flag existed still load.
    old = {k: v for k, v in asdict(plain).items() if k != "reboot"}
    assert changelog.from_json(old).reboot is None


DNF_HISTORY = """\
Transaction ID : 1
Return-Code    : Success
Command Line   : -y install tu-post
Packages Altered:
    Install tu-post-1.0-1.noarch @local
Scriptlet output:
   1 warning: %post(tu-post-1.0-1.noarch) scriptlet failed, exit status 1
"""


def test_a_failed_dnf_scriptlet_fails_although_dnf_exits_0() -> None:
    from transactional_update.packages import dnf

    assert dnf.failed_scripts(DNF_HISTORY) == ["%post(tu-post-1.0-1.noarch)"]
    assert dnf.failed_scripts("Scriptlet output:\n   1 hello from %post\n") == []
    history = "dnf history info last"
    tx = FakeTx({history: [0]}, {history: DNF_HISTORY})
    with pytest.raises(CommandFailed) as err:
        _execute(tx, Manager.DNF, Request(Action.INSTALL, ("tu-post",)))
    assert err.value.message == (
        "dnf install tu-post failed: a package script failed: %post(tu-post-1.0-1.noarch) "
        "(dnf itself exits 0 for it)"
    )
    assert tx.ran[-1] == (["dnf", "history", "info", "last"], tx.ran[-1][1])
    assert tx.ran[-1][1]["LC_ALL"] == "C"
    clean = FakeTx({history: [0]}, {history: DNF_HISTORY.split("Scriptlet", maxsplit=1)[0]})
    _execute(clean, Manager.DNF, Request(Action.INSTALL, ("tu-post",)))


# -- the refresh delay, through execute() with scripted exit codes -------------------------------

APT_INSTALL = Request(Action.INSTALL, ("hello",))


def _sources(text: str) -> None:
    path = FakeTx.root / "snapshot/etc/apt/sources.list"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_fresh_refresh_serves_the_next_command(caplog: pytest.LogCaptureFixture) -> None:
    _sources("deb http://deb.debian.org/debian trixie main\n")
    first = FakeTx({})
    _execute(first, Manager.APT, APT_INSTALL)
    assert first.commands()[0] == "apt-get update"
    stamp = refresh.load_stamp(FakeTx.root, Manager.APT)
    assert stamp is not None
    assert (FakeTx.root / "var/lib/transactional-update/refreshed-apt").is_file()
    caplog.set_level("INFO")
    second = FakeTx({})
    _execute(second, Manager.APT, Request(Action.UP))
    assert second.commands() == ["apt-get -s upgrade", "apt-get -y upgrade"]
    assert re.search(
        r"repository metadata refreshed \d+ s ago; not refreshing \(REFRESH_DELAY=10m\)",
        caplog.text,
    )
    # The skip did not renew the stamp: the delay counts from the refresh itself.
    assert refresh.load_stamp(FakeTx.root, Manager.APT) == stamp
    # --refresh refreshes anyway; another manager has its own stamp.
    forced = FakeTx({})
    _execute(forced, Manager.APT, Request(Action.UP, refresh=True))
    assert forced.commands()[0] == "apt-get update"
    dnf_tx = FakeTx({})
    _execute(dnf_tx, Manager.DNF, Request(Action.UP))
    assert dnf_tx.commands()[0] == "dnf makecache --refresh"


def test_changed_sources_refresh_and_a_failed_refresh_leaves_no_stamp() -> None:
    _sources("deb http://deb.debian.org/debian bookworm main\n")
    _execute(FakeTx({}), Manager.APT, APT_INSTALL)
    _sources("deb http://deb.debian.org/debian trixie main\n")
    failing = FakeTx({"apt-get update": [100]})
    with pytest.raises(CommandFailed, match=r"^apt-get update failed \(exit 100\)$") as err:
        _execute(failing, Manager.APT, APT_INSTALL)
    assert err.value.hint == "the default snapshot is unchanged"
    assert failing.commands() == ["apt-get update"]
    assert not (FakeTx.root / "var/lib/transactional-update/refreshed-apt").exists()
    # Also back at the old sources, the next command refreshes: the failure forgot the stamp.
    _sources("deb http://deb.debian.org/debian bookworm main\n")
    again = FakeTx({})
    _execute(again, Manager.APT, APT_INSTALL)
    assert again.commands()[0] == "apt-get update"


def test_a_refresh_that_skipped_repositories_is_retried() -> None:
    tx = FakeTx({"zypper --non-interactive refresh": [106]})
    _execute(tx, Manager.ZYPPER, Request(Action.UP))  # a warning, not a failure
    assert refresh.load_stamp(FakeTx.root, Manager.ZYPPER) is None
    again = FakeTx({})
    _execute(again, Manager.ZYPPER, Request(Action.UP))
    assert again.commands()[0] == "zypper --non-interactive refresh"


def test_delay_zero_refreshes_every_time_and_remove_never() -> None:
    for _ in range(2):
        tx = FakeTx({}, delay=timedelta(0))
        _execute(tx, Manager.ZYPPER, Request(Action.INSTALL, ("x",)))
        assert tx.commands()[0] == "zypper --non-interactive refresh"
    tx = FakeTx({}, delay=timedelta(0))
    _execute(tx, Manager.APT, Request(Action.REMOVE, ("x",)))
    assert tx.commands() == ["apt-get -s remove x", "apt-get -y remove x"]
    assert refresh.load_stamp(FakeTx.root, Manager.APT) is None


def test_a_failure_after_a_skipped_refresh_says_how_to_refresh() -> None:
    _execute(FakeTx({}), Manager.APT, APT_INSTALL)
    tx = FakeTx({"apt-get -y install nosuch": [100]})
    with pytest.raises(CommandFailed) as err:
        _execute(tx, Manager.APT, Request(Action.INSTALL, ("nosuch",)))
    assert re.fullmatch(
        r"the default snapshot is unchanged; if a package was not found: the repository "
        r"metadata is \d+ s old \(REFRESH_DELAY\), --refresh fetches it anew",
        err.value.hint,
    )
