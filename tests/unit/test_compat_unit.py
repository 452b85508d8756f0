"""openSUSE's command line as its clients send it: aliases, no command, the quiet rule, the
package manager's options after ``pkg ACTION``, the reboot-needed level.  Pure: nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from transactional_update.cli import app, entry, options
from transactional_update.cli.commands import prints_result
from transactional_update.config.settings import Manager
from transactional_update.core import reboot_needed
from transactional_update.errors import UsageError
from transactional_update.packages import apt, dnf, forward, zypper
from transactional_update.packages.model import Action, Request
from transactional_update.reboot import units
from transactional_update.record.filediff import transient

AGREE = "--auto-agree-with-licenses"
SALT = ["--non-interactive", "--drop-if-no-change", "--no-selfupdate"]


@pytest.mark.parametrize(
    ("argv", "chain"),
    [
        ([*SALT, "cleanup"], ["cleanup"]),
        ([*SALT, "grub.cfg"], ["grub.cfg"]),
        ([*SALT, "--continue", "bootloader"], ["bootloader"]),
        ([*SALT, "--continue", "4", "up"], ["up"]),
        ([*SALT, "dup"], ["dup"]),
        ([*SALT, "patch"], ["patch"]),
        ([*SALT, "reboot"], ["reboot"]),
        ([*SALT, "--continue", "pkg", "install", "--no-recommends", "a", "b"], ["pkg"]),
        ([*SALT, "--continue", "--quiet", "run", "python3", "x", "--out", "json"], ["run"]),
        (["-n", "-d", "pkg", "install", "--auto-agree-with-licenses", "a"], ["pkg"]),
        (["-n", "-d", "up"], ["up"]),
        (["-n", "dup"], ["dup"]),
        (["--no-selfupdate", "-n", "-d", "register", "-r", "CODE"], ["register"]),
        (["update"], ["up"]),
        (["dist-upgrade"], ["dup"]),
        (["package", "in", "a"], ["pkg"]),
        (["cleanup", "update", "reboot"], ["cleanup", "up", "reboot"]),
        ([], ["auto-update"]),
        (["-n"], ["auto-update"]),
        (["shell", "--continue"], ["shell"]),
        (["up", "-n"], ["up"]),
        (["pkg", "in", "-y", "foo"], ["pkg"]),
    ],
)
def test_clients_command_lines_parse(argv: list[str], chain: list[str]) -> None:
    globals_, parsed = app.parse(argv)
    assert [name for name, _ in parsed] == chain
    if "--no-selfupdate" in argv:
        assert globals_["no_selfupdate"] is True
    if "--continue" in argv:
        assert globals_["continue_from"] is not None


def test_aliases_and_no_command_in_arrange() -> None:
    arrange = options.arrange
    assert arrange(["update"]) == ["up"]
    assert arrange(["pkg", "update", "x"]) == ["pkg", "update", "x"]  # an action, not a command
    assert arrange(["package", "rm", "x", "-n"]) == ["-n", "pkg", "rm", "x"]
    assert arrange([]) == ["auto-update"]
    assert arrange(["--root", "/x", "-n"]) == ["--root", "/x", "-n", "auto-update"]
    assert arrange(["--help"]) == ["--help"] and arrange(["--version"]) == ["--version"]
    for argv in (["update"], [], ["package", "in", "x"]):
        assert arrange(arrange(argv)) == arrange(argv)
    assert set(options.ALIASES.values()) <= set(options.COMMANDS)
    assert not set(options.ALIASES) & set(options.COMMANDS)


def test_the_quick_path_takes_package_manager_options() -> None:
    quick = entry.parse_transaction(
        ["-n", "-d", "pkg", "install", "--auto-agree-with-licenses", "a"]
    )
    assert quick is not None
    opts, command, args = quick
    assert (command, args) == ("pkg", ["install", "--auto-agree-with-licenses", "a"])
    assert opts["non_interactive"] and opts["drop_if_no_change"]
    assert entry.parse_transaction(["pkg", "install", "--", "-n"]) is None
    assert entry.parse_transaction(["pkg", "install", "a", "--help"]) is None


def test_quiet_rule() -> None:
    assert prints_result(quiet=False, json_out=False)
    assert not prints_result(quiet=True, json_out=False)
    assert prints_result(quiet=True, json_out=True)  # asked for as data


@pytest.mark.parametrize(
    ("manager", "action", "given", "args"),
    [
        (Manager.ZYPPER, Action.INSTALL, ["--auto-agree-with-licenses"], [AGREE]),
        (Manager.ZYPPER, Action.INSTALL, ["-l", "--no-recommends"], [AGREE, "--no-recommends"]),
        (Manager.ZYPPER, Action.REMOVE, ["-y", "-u"], ["--no-confirm", "--clean-deps"]),
        (Manager.APT, Action.INSTALL, ["--auto-agree-with-licenses"], []),
        (Manager.APT, Action.INSTALL, ["--no-recommends", "-y"], ["--no-install-recommends", "-y"]),
        (Manager.APT, Action.REMOVE, ["--clean-deps", "--purge"], ["--auto-remove", "--purge"]),
        (Manager.DNF, Action.UPDATE, ["--no-recommends"], ["--setopt=install_weak_deps=False"]),
        (Manager.DNF, Action.INSTALL, ["--force-resolution", "--allowerasing"], ["--allowerasing"]),
    ],
)  # fmt: skip
def test_forwarded_options(
    manager: Manager, action: Action, given: list[str], args: list[str]
) -> None:
    assert forward.translate(manager, action, given) == tuple(args)


@pytest.mark.parametrize(
    ("manager", "action", "given"),
    [
        (Manager.ZYPPER, Action.INSTALL, "--from"),  # takes a value: never forwarded
        (Manager.ZYPPER, Action.INSTALL, "--clean-deps"),  # remove's
        (Manager.APT, Action.INSTALL, "--force-resolution"),
        (Manager.DNF, Action.REMOVE, "--no-recommends"),
        (Manager.APT, Action.INSTALL, "-n"),  # after `pkg install --`
    ],
)
def test_other_options_are_refused(manager: Manager, action: Action, given: str) -> None:
    with pytest.raises(UsageError, match=f"option '{given}' is not forwarded to {manager}"):
        forward.translate(manager, action, [given])


def test_every_forwarded_option_is_an_option() -> None:
    for table in forward.FORWARD.values():
        for name, (actions, args) in table.items():
            assert name.startswith("-") and actions, name
            assert all(a.startswith("-") for a in args), name
    assert set(forward.FORWARD) == set(Manager)


def test_options_go_after_the_verb_in_each_backend() -> None:
    req = Request(Action.INSTALL, ("a",), options=("--x",))
    assert zypper.plan(req).commands == (("zypper", "--non-interactive", "install", "--x", "a"),)
    assert apt.plan(req).commands == (("apt-get", "-y", "install", "--x", "a"),)
    assert dnf.plan(req).commands == (("dnf", "-y", "install", "--x", "a"),)
    assert apt.plan(Request(Action.UPDATE, options=("--x",))).commands == (
        ("apt-get", "-y", "upgrade", "--x"),
    )
    assert forward.split(["a", "-y", "b"]) == (("a", "b"), ("-y",))


def test_reboot_needed_levels(tmp_path: Path) -> None:
    assert reboot_needed.merged(None, "reboot") == "reboot"
    assert reboot_needed.merged("soft-reboot", "reboot") == "reboot"
    assert reboot_needed.merged("reboot", "kexec") == "reboot"
    assert reboot_needed.merged("garbage", "soft-reboot") == "soft-reboot"
    # A root whose /run is not a mount (not running): nothing written.
    (tmp_path / "run").mkdir()
    assert reboot_needed.mark(tmp_path) is None
    assert not (tmp_path / "run/reboot-needed").exists()


def test_transient_files() -> None:
    assert transient("/usr/lib/sysimage/rpm/rpmdb.sqlite-shm")
    assert not transient("/usr/lib/sysimage/rpm/rpmdb.sqlite")
    assert not transient("/etc/shm")


def test_sbin_link(tmp_path: Path) -> None:
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/bin").mkdir()
    got = units.sbin_link(tmp_path, "/usr/bin/transactional-update")
    assert [(f.path, f.link) for f in got] == [
        ("/usr/sbin/transactional-update", "/usr/bin/transactional-update")
    ]
    assert units.sbin_link(tmp_path, "/usr/sbin/transactional-update") == []
    (tmp_path / "usr/sbin").rmdir()
    (tmp_path / "usr/sbin").symlink_to("bin")  # a merged /usr/sbin: the tool is there already
    assert units.sbin_link(tmp_path, "/usr/bin/transactional-update") == []
