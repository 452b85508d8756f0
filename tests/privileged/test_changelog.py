"""The changelog: what each snapshot holds, across generations, rollbacks and cleanups."""

from __future__ import annotations

import json
from pathlib import Path

from testkit.systems import System, sh
from transactional_update.record import summary


def _log(system: System, n: int) -> dict[str, object]:
    r = system.tu("--json", "changelog", str(n))
    assert r.returncode == 0, r.stderr
    data: dict[str, object] = json.loads(r.stdout)
    return data


def test_entry_records_commands_who_and_files(system: System) -> None:
    r = system.tu(
        "run", "--", "sh", "-c", "echo new > /etc/new-file; rm /etc/issue.net; echo x >> /etc/motd"
    )
    assert r.returncode == 0, r.stderr
    entry = _log(system, 2)
    assert entry["snapshot"] == 2 and entry["base"] == 1
    who = entry["who"]
    assert isinstance(who, dict)
    assert (who["uid"], who["user"], who["sudo_user"]) == (0, "root", None)
    assert entry["tool_version"] == "0.1.0"
    commands = entry["commands"]
    assert isinstance(commands, list) and len(commands) == 1
    assert commands[0]["argv"][:2] == ["sh", "-c"] and commands[0]["exit"] == 0
    files = {(f["path"], f["kind"]) for f in entry["files"]}  # type: ignore[attr-defined]
    assert files == {
        ("/etc/new-file", "added"),
        ("/etc/issue.net", "deleted"),
        ("/etc/motd", "modified"),
    }
    text = system.tu("changelog", "2").stdout
    assert text.splitlines()[0] == "snapshot 2 (from 1) · 3 files"
    assert "  A /etc/new-file" in text and "  D /etc/issue.net" in text


def test_sudo_user_is_recorded(managed_system: System) -> None:
    r = managed_system.tu("run", "--", "touch", "/etc/x", env={"SUDO_USER": "alice"})
    assert r.returncode == 0
    who = _log(managed_system, 2)["who"]
    assert isinstance(who, dict) and who["sudo_user"] == "alice"
    assert "who: root (sudo by alice)" in managed_system.tu("changelog", "2").stdout


def test_diff_across_three_generations_and_log(managed_system: System) -> None:
    s = managed_system
    assert s.tu("run", "--", "sh", "-c", "echo 1 > /etc/gen").returncode == 0
    assert s.tu("-c", "run", "--", "sh", "-c", "echo 2 > /etc/gen; touch /etc/two").returncode == 0
    assert s.tu("-c", "run", "--", "sh", "-c", "rm /etc/gen").returncode == 0
    d = json.loads(s.tu("--json", "diff", "1", "4").stdout)
    assert d["from"] == 1 and d["to"] == 4
    assert d["files"] == [{"path": "/etc/two", "kind": "added"}]
    d = json.loads(s.tu("--json", "diff", "2", "3").stdout)
    assert d["files"] == [
        {"path": "/etc/gen", "kind": "modified"},
        {"path": "/etc/two", "kind": "added"},
    ]
    # Without numbers: running (here the booted one) -> default.
    assert json.loads(s.tu("--json", "diff").stdout)["to"] == 4
    # One snapshot against itself: its writable /etc is viewed read-only twice, each view its own.
    r = s.tu("--json", "diff", "1", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files"] == []
    lines = s.tu("log").stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2", "3", "4"]
    assert lines[0].split()[1] == "-"  # the first root filesystem has no changelog
    assert "1 file" in lines[1] and "2 files" in lines[2] and "1 file" in lines[3]


def test_entries_survive_rollback_and_are_pruned_with_their_snapshot(
    managed_system: System,
) -> None:
    s = managed_system
    assert s.tu("run", "--", "touch", "/etc/a").returncode == 0
    assert s.tu("run", "--", "touch", "/etc/b").returncode == 0
    assert s.tu("rollback", "2").returncode == 0
    assert _log(s, 3)["files"] == [{"path": "/etc/b", "kind": "added", "dir": False}]
    store = s.root / summary.STORE
    assert sorted(p.name for p in store.iterdir()) == ["2.json", "3.json"]
    # Deleting snapshot 3 (by snapper itself) and running cleanup prunes its entry.  snapper
    # 0.10.4 cannot delete a snapshot with its own /etc: the admin removes that first (README).
    sh("btrfs", "property", "set", "-ts", str(s.snapshot(3)), "ro", "false")
    sh("btrfs", "subvolume", "delete", str(s.snapshot(3) / "etc"))
    sh("snapper", "--no-dbus", "--root", str(s.root), "delete", "3")
    assert s.tu("cleanup").returncode == 0
    assert sorted(p.name for p in store.iterdir()) == ["2.json"]
    r = s.tu("changelog", "3")
    assert r.returncode == 5 and "snapshot 3 does not exist" in r.stderr


def test_hostile_description_is_stored_and_shown_literally(managed_system: System) -> None:
    text = "q\"uote's $HOME; `rm -rf /` \\ & | < > {}\nsecond line"
    r = managed_system.tu("--description", text, "run", "--", "true")
    assert r.returncode == 0, r.stderr
    assert _log(managed_system, 2)["description"] == text
    listed = json.loads(managed_system.tu("--json", "list").stdout)
    assert listed[-1]["description"] == text  # the admin's text, no summary appended
    assert managed_system.tu("changelog", "2").stdout.splitlines()[1] == (
        "  description: " + text.splitlines()[0]
    )


def test_shell_is_recorded_as_interactive(managed_system: System) -> None:
    from tests.privileged.test_transaction import _drive_shell

    rc, out = _drive_shell(managed_system, b"touch /etc/by-hand\nexit 0\n")
    assert rc == 0, out
    commands = _log(managed_system, 2)["commands"]
    assert isinstance(commands, list) and commands[0]["interactive"] is True
    assert "ran: interactive shell" in managed_system.tu("changelog", "2").stdout


def test_status_shows_the_pending_change(managed_system: System) -> None:
    assert managed_system.tu("run", "--", "touch", "/etc/p1", "/etc/p2").returncode == 0
    st = json.loads(managed_system.tu("--json", "status").stdout)
    assert st["pending_summary"] == "2 files"
    assert "pending:  snapshot 2 boots next (2 files); reboot to use it" in (
        managed_system.tu("status").stdout
    )


def test_shell_session_with_a_manual_deb_install_is_fully_reflected(
    managed_system: System, tmp_path: Path
) -> None:
    from testkit.systems import make_deb
    from tests.privileged.test_packages import _stage
    from tests.privileged.test_transaction import _drive_shell

    deb = _stage(managed_system, make_deb(tmp_path, "tu-manual", "3.1"))
    script = f"dpkg -i {deb} >/dev/null && echo edited > /etc/edited-by-hand\nexit 0\n"
    rc, out = _drive_shell(managed_system, script.encode())
    assert rc == 0, out
    entry = _log(managed_system, 2)
    assert entry["packages"] == [{"name": "tu-manual", "kind": "added", "old": None, "new": "3.1"}]
    paths = {(f["path"], f["kind"]) for f in entry["files"]}  # type: ignore[attr-defined]
    assert ("/etc/edited-by-hand", "added") in paths
    assert ("/usr/share/tu-manual/version", "added") in paths
    assert ("/usr/share/dpkg/database/status", "modified") in paths
    desc = managed_system.snapper_list()[-1]["description"]
    assert desc.startswith("shell · +1 pkg, ") and desc.endswith(" files")


def test_changelog_and_log_are_readable_by_root_only(managed_system: System) -> None:
    """Command lines can carry secrets: neither the entries nor the log may be world-readable,
    also when an older version left them so."""
    system = managed_system
    store = system.root / summary.STORE
    log = system.root / "var/log/transactional-update.log"
    store.mkdir(mode=0o755, parents=True, exist_ok=True)
    store.chmod(0o755)
    log.write_text("")
    log.chmod(0o644)
    r = system.tu("run", "--", "sh", "-c", "echo root:secret >/dev/null")
    assert r.returncode == 0, r.stderr
    assert store.stat().st_mode & 0o777 == 0o700
    assert (store / "2.json").stat().st_mode & 0o777 == 0o600
    assert "root:secret" in (store / "2.json").read_text()
    assert log.stat().st_mode & 0o777 == 0o600
