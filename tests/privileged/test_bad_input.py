"""Bad input: every mistake gets ``error:`` + ``hint:``, a documented exit code and no traceback.

Exit codes (errors.py): 2 usage, 3 not a managed system, 5 bad snapshot, 6 bad configuration.  A
refused command changes nothing: the default subvolume and snapper's list stay as they were.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from testkit.systems import System, sh
from tests.unit.test_bad_input import COMMANDS, _refused, _tu
from transactional_update.snapshots import btrfs

CONF = "etc/transactional-update.conf"
LAYOUT_HINT = "hint: create the snapper layout first (snapper create-config, or create-system)"
REBOOT_CHOICES = "auto, systemd, kexec, notify, kured, rebootmgr, fleetlock, etcd-lock, none"


def _write(system: System, rel: str, text: str) -> None:
    """Write a file of the booted snapshot (read-only, so made writable for the moment)."""
    with system.booted_writable():
        path = system.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@contextmanager
def _mounted(system: System, option: str, name: str) -> Iterator[Path]:
    """Another mount of the test image (under the test's directory, so teardown unmounts it)."""
    where = system.workdir / name
    where.mkdir()
    sh("mount", "-o", option, system.device, str(where))
    try:
        yield where
    finally:
        sh("umount", str(where), check=False)


# -- --root that is not a managed system: 3 -------------------------------------------------------


def test_btrfs_root_without_snapshots(managed_system: System) -> None:
    # The top level of the image holds only "@": btrfs, but no snapshot store.
    with _mounted(managed_system, "subvolid=5", "top-level") as top:
        assert sorted(p.name for p in top.iterdir()) == ["@"]
        for args in COMMANDS:
            _refused(
                _tu(top, *args), 3, f"error: {top}/.snapshots is not a btrfs subvolume", LAYOUT_HINT
            )
        assert sorted(p.name for p in top.iterdir()) == ["@"]
    # A plain directory called .snapshots is not a snapshot store either.
    home = managed_system.root / "home"
    (home / ".snapshots").mkdir()
    _refused(
        _tu(home, "status"), 3, f"error: {home}/.snapshots is not a btrfs subvolume", LAYOUT_HINT
    )
    assert managed_system.default_number() == 1


def test_snapshot_store_without_snapper_config(managed_system: System) -> None:
    # "@" has the .snapshots subvolume, but no /etc/snapper/configs/root.
    with _mounted(managed_system, "subvol=@", "at") as at:
        assert btrfs.is_subvolume(at / ".snapshots")
        for args in COMMANDS:
            _refused(
                _tu(at, *args),
                3,
                f"error: no snapper config 'root' in {at}/etc/snapper/configs",
                "hint: create it with: snapper -c root create-config /",
            )
        # With a config, but "@" is not a snapshot: still nothing this tool may change.
        (at / "etc/snapper/configs").mkdir(parents=True)
        (at / "etc/snapper/configs/root").write_text('SUBVOLUME="/"\n')
        _refused(
            _tu(at, "run", "--", "true"),
            3,
            f"error: {at} is not a snapper snapshot (mounted subvolume: @)",
            "hint: boot (or mount at --root) a snapshot .snapshots/N/snapshot",
        )
    assert managed_system.numbers() == [1]
    assert managed_system.default_number() == 1


def test_snapper_config_named_in_the_config_file_is_missing(managed_system: System) -> None:
    _write(managed_system, CONF, "SNAPPER_CONFIG=home\n")
    _refused(
        managed_system.tu("run", "--", "true"),
        3,
        f"error: no snapper config 'home' in {managed_system.root}/etc/snapper/configs",
        "hint: create it with: snapper -c home create-config /",
    )
    assert managed_system.numbers() == [1]


# -- configuration files: 6 ------------------------------------------------------------------


def test_bad_config_value_names_file_and_line(managed_system: System) -> None:
    system = managed_system
    _write(system, CONF, "REBOOT_METHOD=sometimes\n")
    for args in COMMANDS:
        _refused(
            system.tu(*args),
            6,
            f"error: /{CONF}:1: REBOOT_METHOD='sometimes' is not one of: {REBOOT_CHOICES}",
            f"hint: set REBOOT_METHOD to one of: {REBOOT_CHOICES}",
        )
    assert system.numbers() == [1] and system.default_number() == 1
    # The line number counts comments and blank lines.
    _write(system, CONF, "# settings\n\nREBOOT_METHOD=systemd\nUPDATE_METHOD=sideways\n")
    r = system.tu("status")
    assert r.returncode == 6
    assert r.stderr.splitlines()[0] == (
        f"error: /{CONF}:4: UPDATE_METHOD='sideways' is not one of: up, dup, patch"
    )
    # Drop-in files are named the same way.
    _write(system, CONF, "")
    _write(system, "etc/transactional-update.conf.d/50-local.conf", "\nSNAPPER_BACKEND=carrier\n")
    r = system.tu("status")
    assert r.returncode == 6
    assert r.stderr.splitlines() == [
        "error: /etc/transactional-update.conf.d/50-local.conf:2: "
        "SNAPPER_BACKEND='carrier' is not one of: auto, dbus, cli",
        "hint: set SNAPPER_BACKEND to one of: auto, dbus, cli",
    ]


@pytest.mark.parametrize(
    ("text", "error", "hint"),
    [
        (
            "REBOOT_METHOD='auto\n",
            f"/{CONF}:1: No closing quotation",
            "fix the quoting of that line",
        ),
        (
            "reboot method = auto\n",
            f"/{CONF}:1: expected KEY=VALUE, got 'reboot method = auto'",
            'write one assignment per line, quoting values with spaces: KEY="a b"',
        ),
        (
            "BINDDIRS=opt\n",
            f"/{CONF}:1: BINDDIRS entry 'opt' is not an absolute directory",
            'list absolute paths below /, e.g. BINDDIRS="/opt /srv"',
        ),
        (
            "LOCK_WAIT=soon\n",
            f"/{CONF}:1: LOCK_WAIT='soon' is not a number of seconds",
            "set LOCK_WAIT=0 to refuse at once",
        ),
        # float() takes these, but "nan" never times out and a negative wait is no wait.
        (
            "LOCK_WAIT=nan\n",
            f"/{CONF}:1: LOCK_WAIT='nan' is not a number of seconds",
            "set LOCK_WAIT=0 to refuse at once",
        ),
        (
            "LOCK_WAIT=-5\n",
            f"/{CONF}:1: LOCK_WAIT='-5' is not a number of seconds",
            "set LOCK_WAIT=0 to refuse at once",
        ),
    ],
)
def test_bad_config_syntax(managed_system: System, text: str, error: str, hint: str) -> None:
    _write(managed_system, CONF, text)
    _refused(managed_system.tu("rollback", "1"), 6, f"error: {error}", f"hint: {hint}")


def test_unknown_config_keys_only_warn(managed_system: System) -> None:
    system = managed_system
    _write(system, CONF, "# newer release\nFUTURE_SETTING=1\nREBOOT_METHOD=none\n")
    r = system.tu("run", "--", "touch", "/etc/x")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"/{CONF}:2: unknown setting FUTURE_SETTING ignored"]
    assert system.default_number() == 2


def test_bad_snapper_config_in_cleanup(managed_system: System) -> None:
    system = managed_system
    path = "etc/snapper/configs/root"
    original = (system.root / path).read_text()
    _write(system, path, original.replace('NUMBER_LIMIT="10"', 'NUMBER_LIMIT="ten"'))
    _refused(
        system.tu("cleanup"),
        6,
        "error: /etc/snapper/configs/root: NUMBER_LIMIT='ten' is not a number or range",
        'hint: set NUMBER_LIMIT to a number like "10" or a range like "2-10"',
    )
    lines = original.count("\n")
    _write(system, path, original + 'DESCRIPTION="unbalanced\n')
    _refused(
        system.tu("cleanup"),
        6,
        f"error: /etc/snapper/configs/root:{lines + 1}: No closing quotation",
        "hint: fix the quoting of that line",
    )
    assert system.numbers() == [1]


# -- the command line: 2, and 5 for snapshot numbers -----------------------------------------


def _usage(r: subprocess.CompletedProcess[str], message: str) -> None:
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_usage_errors_exit_2(managed_system: System) -> None:
    system = managed_system
    _usage(system.tu("run"), "Missing argument 'COMMAND...'")
    _usage(system.tu("run", "--"), "Missing argument 'COMMAND...'")
    _usage(system.tu("frobnicate"), "No such command 'frobnicate'")
    _usage(system.tu("--frobnicate", "status"), "No such option '--frobnicate'")
    # "--continue abc": a number did not follow, so "abc" is read as the (unknown) command.
    _usage(system.tu("--continue", "abc", "run", "--", "true"), "No such command 'abc'")
    _usage(system.tu("--continue=abc", "run", "--", "true"), "'abc' is not a snapshot number")
    _usage(system.tu("--continue=0", "run", "--", "true"), "'0' is not a snapshot number")
    # A command in the chain that does not exist stops the chain before anything runs.
    _usage(system.tu("cleanup", "frobnicate"), "No such command 'frobnicate'")
    assert system.numbers() == [1] and system.default_number() == 1


def test_continue_from_a_snapshot_that_cannot_be_used(managed_system: System) -> None:
    system = managed_system
    assert system.tu("run", "--", "true").returncode == 0
    _refused(
        system.tu("--continue", "99", "run", "--", "touch", "/etc/x"),
        5,
        "error: snapshot 99 does not exist",
        "hint: pick a number from: transactional-update list",
    )
    fork = str(system.in_progress_fork_cli())
    _refused(
        system.tu("-c", fork, "run", "--", "touch", "/etc/x"),
        5,
        f"error: snapshot {fork} is an unfinished transaction",
        "hint: continue from a finished snapshot; remove it with: cleanup",
    )
    assert system.numbers() == [1, 2, int(fork)]
    assert system.default() == "@/.snapshots/2/snapshot"


def test_description_that_snapper_cannot_store(managed_system: System) -> None:
    r = managed_system.tu("--description", "bell\x07", "run", "--", "true")
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[0] == (
        "error: the snapshot description contains the control character '\\x07'"
    )
    assert "Traceback" not in r.stderr
    assert managed_system.numbers() == [1] and managed_system.default_number() == 1


# -- tracebacks only with --debug --------------------------------------------------------------


def test_traceback_only_with_debug(managed_system: System) -> None:
    system = managed_system
    plain = system.tu("rollback", "99")
    _refused(
        plain,
        5,
        "error: snapshot 99 does not exist",
        "hint: pick a number from: transactional-update list",
    )
    debug = system.tu("--debug", "rollback", "99")
    assert debug.returncode != 0
    assert "Traceback (most recent call last):" in debug.stderr
    assert "SnapshotError: snapshot 99 does not exist" in debug.stderr
    assert system.default_number() == 1
    # An argument after "--" is the command's, not ours.
    r = system.tu("run", "--", "sh", "-c", "exit 3", "--debug")
    assert r.returncode == 3
    assert "Traceback" not in r.stderr


def test_debug_keeps_the_exit_code_and_the_error_line(managed_system: System) -> None:
    r = managed_system.tu("--debug", "rollback", "99")
    assert "Traceback (most recent call last):" in r.stderr
    assert r.returncode == 5
    assert r.stderr.splitlines()[-2:] == [
        "error: snapshot 99 does not exist",
        "hint: pick a number from: transactional-update list",
    ]


def test_usage_errors_are_one_error_and_one_hint_line(managed_system: System) -> None:
    for args in (["run"], ["frobnicate"], ["--continue=abc", "run", "--", "true"]):
        lines = managed_system.tu(*args).stderr.splitlines()
        assert len(lines) == 2, (args, lines)
        assert lines[0].startswith("error: ") and lines[1].startswith("hint: "), (args, lines)


def test_bad_rollback_target_stops_the_chain_before_anything_runs(managed_system: System) -> None:
    system = managed_system
    stale = str(system.in_progress_fork_cli())
    r = system.tu("cleanup", "rollback", "abc")
    assert r.returncode == 2, r.stderr
    # Like an unknown command, a bad argument must be refused before the chain starts.
    assert int(stale) in system.numbers()
    assert json.loads(system.tu("--json", "cleanup").stdout)["stale"] == [int(stale)]
