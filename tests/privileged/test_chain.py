"""One invocation, one snapshot: the commands of a chain share one transaction (issue 13).

As openSUSE's tool: ``cleanup`` and ``rollback`` run before the snapshot is made, the package
command first in it, ``reboot`` last; a failure anywhere discards the whole snapshot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from testkit.systems import System, local_repo, make_deb, sh

CONF = "etc/transactional-update.conf"


def _stage(system: System, deb: Path) -> str:
    """Put *deb* where the chroot sees it (/var/cache is shared); returns its chroot path."""
    target = system.root / "var/cache/tu-test"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(deb, target)
    return f"/var/cache/tu-test/{deb.name}"


def _installed(system: System, n: int, package: str) -> bool:
    db = system.snapshot(n) / "usr/share/dpkg/database"
    r = sh("dpkg-query", f"--admindir={db}", "-W", "-f=${Status}", package, check=False)
    return r.returncode == 0 and r.stdout.startswith("install ok installed")


def test_pkg_then_run_is_one_snapshot(system: System, tmp_path: Path) -> None:
    deb = _stage(system, make_deb(tmp_path, "tu-hello", "1.0"))
    # The run sees the package: it runs after it, in the same snapshot.
    check = "test -e /usr/share/tu-hello/version && touch /etc/after-install"
    r = system.tu("pkg", "install", deb, "run", "sh", "-c", check)
    assert r.returncode == 0, r.stderr
    assert system.numbers() == [1, 2] and system.default_number() == 2
    assert _installed(system, 2, "tu-hello")
    assert (system.snapshot(2) / "etc/after-install").exists()
    # One result line, after what apt printed.
    assert r.stdout.splitlines()[-1] == "snapshot 2 is the new default; reboot to use it"
    assert r.stdout.count("new default") == 1
    log = json.loads(system.tu("--json", "changelog", "2").stdout)
    assert log["base"] == 1
    assert [c["argv"] for c in log["commands"]][-2:] == [
        ["apt-get", "-y", "install", deb],
        ["sh", "-c", check],
    ]
    assert log["description"] == f"pkg install {deb}; run: sh -c '{check}'"


def test_a_failure_anywhere_discards_the_whole_chain(system: System, tmp_path: Path) -> None:
    deb = _stage(system, make_deb(tmp_path, "tu-hello", "1.0"))
    # The package is installed, then the command fails: nothing of it stays.
    r = system.tu("pkg", "install", deb, "run", "sh", "-c", "touch /etc/partial; exit 4")
    assert r.returncode == 4, r.stderr
    assert r.stderr.splitlines()[-2:] == [
        "error: command exited with 4: sh",
        "hint: the snapshot was discarded; the default is unchanged",
    ]
    assert system.numbers() == [1] and system.default_number() == 1
    # The package command fails: the command never runs.
    r = system.tu("pkg", "install", "/var/cache/tu-test/missing.deb", "run", "touch", "/etc/ran")
    assert r.returncode != 0
    assert system.numbers() == [1] and system.default_number() == 1
    assert not any(p.name == "ran" for p in (system.root / ".snapshots").glob("*/snapshot/etc/*"))
    # Through click (a chain of general and changing commands), --json: one object or none.
    r = system.tu("--json", "status", "install-units", "run", "false")
    assert r.returncode == 1
    assert system.numbers() == [1] and system.default_number() == 1


def test_changes_chain_with_one_result_and_json(system: System) -> None:
    r = system.tu("--json", "install-units", "--no-enable", "run", "touch", "/etc/x")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # one JSON object for the transaction
    assert out["snapshot"] == 2 and out["base"] == 1
    assert system.numbers() == [1, 2]
    snap = system.snapshot(2)
    assert (snap / "etc/x").exists()
    assert (snap / "usr/lib/systemd/system/transactional-update.timer").exists()


def test_cleanup_first_reboot_last(system: System) -> None:
    with system.booted_writable():
        (system.root / CONF).write_text("REBOOT_METHOD=none\n", encoding="utf-8")
    # Written in the opposite order: cleanup still runs before the snapshot, reboot after it.
    r = system.tu("reboot", "cleanup", "run", "touch", "/etc/x")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "removed 0 interrupted and 0 old snapshot(s)",
        "snapshot 2 is the new default; reboot to use it",
        "not rebooting (REBOOT_METHOD=none): snapshot 2 is the new default; reboot to use it",
    ]
    assert system.numbers() == [1, 2] and system.default_number() == 2
    # A failed transaction reboots nothing.
    r = system.tu("reboot", "run", "false")
    assert r.returncode == 1
    assert "rebooting" not in r.stdout
    assert system.numbers() == [1, 2] and system.default_number() == 2
    # A status before the change sees the old default, one after it the new one.
    r = system.tu("status", "install-units", "--no-enable", "status")
    assert r.returncode == 0, r.stderr
    defaults = [line.split()[1:4] for line in r.stdout.splitlines() if line.startswith("default:")]
    assert defaults == [["2", "(from", "1)"], ["3", "(from", "2)"]]
    assert "snapshot 3 is the new default; reboot to use it" in r.stdout.splitlines()


def test_two_package_commands_are_refused(system: System) -> None:
    for args, named in (
        (("up", "dup"), "up and dup"),
        (("up", "pkg", "install", "x"), "up and pkg"),
        (("cleanup", "patch", "auto-update"), "patch and auto-update"),
    ):
        r = system.tu(*args)
        assert r.returncode == 2, r.stderr
        assert r.stderr.splitlines() == [
            f"error: one package command per invocation: {named} given",
            "hint: run them one after the other; each builds on the snapshot the last one made",
        ]
        assert r.stdout == ""  # nothing ran, not even cleanup
    assert system.numbers() == [1] and system.default_number() == 1


def test_a_package_command_with_nothing_to_do_keeps_the_rest(
    system: System, tmp_path: Path
) -> None:
    deb = _stage(system, make_deb(tmp_path, "tu-hello", "1.0"))
    assert system.tu("pkg", "install", deb).returncode == 0
    # apt has nothing to do, the command still changes the snapshot.
    r = system.tu("pkg", "install", deb, "run", "touch", "/etc/y")
    assert r.returncode == 0, r.stderr
    assert system.numbers() == [1, 2, 3] and (system.snapshot(3) / "etc/y").exists()
    assert _installed(system, 3, "tu-hello")  # stacked on 2
    # --drop-if-no-change applies to the whole: nothing changed, nothing kept.
    r = system.tu("-d", "pkg", "install", deb, "run", "true")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "nothing changed; no snapshot was kept\n"
    assert system.numbers() == [1, 2, 3] and system.default_number() == 3


def test_up_shell_is_one_snapshot_and_the_shell_sees_the_update(
    managed_system: System, tmp_path: Path
) -> None:
    """openSUSE's `up shell`: the shell opens in the snapshot the update made (stdin: a pipe)."""
    s = managed_system
    local_repo(s, [make_deb(tmp_path, "tu-hello", "1.0")])
    r = s.tu("pkg", "install", "tu-hello")
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2]
    local_repo(s, [make_deb(tmp_path, "tu-hello", "2.0")])
    saw = "grep -qx 2.0 /usr/share/tu-hello/version && touch /etc/shell-saw-2.0\nexit 0\n"
    r = s.tu("up", "shell", input_text=saw)
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2, 3] and s.default_number() == 3
    assert (s.snapshot(3) / "usr/share/tu-hello/version").read_text() == "2.0\n"
    assert (s.snapshot(3) / "etc/shell-saw-2.0").exists()
    assert r.stdout.splitlines()[-1] == "snapshot 3 is the new default; reboot to use it"
    log = json.loads(s.tu("--json", "changelog", "3").stdout)
    assert log["base"] == 2 and log["description"] == "up; shell"
    assert log["commands"][-1]["argv"][0] in ("/bin/bash", "/bin/sh")
    # A shell that exits non-zero discards the update with it.
    local_repo(s, [make_deb(tmp_path, "tu-hello", "3.0")])
    r = s.tu("up", "shell", input_text="exit 1\n")
    assert r.returncode == 1
    assert s.numbers() == [1, 2, 3] and s.default_number() == 3
