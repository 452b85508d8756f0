"""The transaction on real btrfs images: commit, discard, continue, drop, shell, describe."""

from __future__ import annotations

import json
import os
import pty
import select
import sys
import time
from pathlib import Path

from testkit.systems import System, sh
from transactional_update.snapshots import btrfs


def test_run_commits_and_moves_the_default(system: System) -> None:
    before = system.numbers()
    r = system.tu("run", "--", "sh", "-c", "echo hello > /etc/hello")
    assert r.returncode == 0, r.stderr
    new = system.default_number()
    assert new not in before and new == max(system.numbers())
    assert r.stdout.strip() == f"snapshot {new} is the new default; reboot to use it"
    assert (system.snapshot(new) / "etc/hello").read_text() == "hello\n"
    # The booted snapshot is untouched and still the one mounted at the root.
    assert not (system.snapshot(1) / "etc/hello").exists()
    assert not (system.root / "etc/hello").exists()
    assert btrfs.subvolume_path(system.root) == "@/.snapshots/1/snapshot"
    # snapper sees it, with our description, and without the in-progress mark.
    entry = next(s for s in system.snapper_list() if s["number"] == new)
    assert entry["description"] == "run: sh -c 'echo hello > /etc/hello' · 1 file"
    assert entry["userdata"] == {"tu-base": "1", "tu-files": "1"}
    assert entry["cleanup"] == "number"
    assert not (entry["userdata"] or {}).get("transactional-update-in-progress")
    # The booted root is read-only, so the new one is too.
    assert btrfs.is_read_only(system.snapshot(new))
    # The managed root's log records it.
    log = (system.root / "var/log/transactional-update.log").read_text()
    assert f"snapshot {new} is the new default; reboot to use it" in log
    assert "Traceback" not in r.stderr


def test_run_json_reports_the_transaction(system: System) -> None:
    r = system.tu("--json", "run", "--", "sh", "-c", "echo hi > /etc/hi")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    new = system.default_number()
    assert {k: v for k, v in out.items() if k != "commands"} == {
        "snapshot": new,
        "base": 1,
        "dropped": False,
        "previous_default": 1,
        "shadowed_writes": [],
        "summary": "1 file",
        "reboot": None,
        "live_etc": [],  # no live /etc edit to carry
    }
    assert [(c["argv"], c["exit"]) for c in out["commands"]] == [
        (["sh", "-c", "echo hi > /etc/hi"], 0)
    ]


def test_failing_command_discards_and_passes_exit_code(system: System) -> None:
    before = system.numbers()
    # Without "--": the command's own -c stays its own, on the quick path and through click
    # (which -c selects; -c 1 on a system whose default is 1 is the plain run).
    for args in (("run",), ("-c", "1", "run")):
        r = system.tu(*args, "sh", "-c", "touch /etc/partial; exit 3")
        assert r.returncode == 3, r.stderr
        assert r.stderr.splitlines()[-2:] == [
            "error: command exited with 3: sh",
            "hint: the snapshot was discarded; the default is unchanged",
        ]
    assert system.default_number() == 1
    assert sorted(p.name for p in (system.root / ".snapshots").iterdir() if p.name.isdigit()) == [
        str(n) for n in before
    ]


def test_missing_command_is_127_and_discarded(managed_system: System) -> None:
    r = managed_system.tu("run", "--", "no-such-command")
    assert r.returncode == 127
    assert "cannot run no-such-command: No such file or directory" in r.stderr
    assert managed_system.numbers() == [1]


def test_changes_stack_on_the_default_and_continue_n_chooses(system: System) -> None:
    # Changed deliberately (issue 13): a plain run used to start from the booted snapshot and
    # supersede the pending default; now every transaction builds on the default.
    assert system.tu("run", "--", "touch", "/etc/first").returncode == 0
    first = system.default_number()
    r = system.tu("-v", "run", "--", "touch", "/etc/second")  # -v: the info line
    assert r.returncode == 0, r.stderr
    second = system.default_number()
    assert (system.snapshot(second) / "etc/first").exists()
    assert (system.snapshot(second) / "etc/second").exists()
    assert f"building on the pending default snapshot {first} (not booted yet)" in r.stderr
    assert json.loads(system.tu("--json", "changelog", str(second)).stdout)["base"] == first
    # --continue without N is the same as nothing.
    r = system.tu("--continue", "run", "--", "touch", "/etc/third")
    assert r.returncode == 0, r.stderr
    third = system.default_number()
    assert all((system.snapshot(third) / f"etc/{n}").exists() for n in ("first", "second"))
    # -c N bases on N explicitly.
    r = system.tu("-c", str(first), "run", "--", "touch", "/etc/fourth")
    assert r.returncode == 0, r.stderr
    fourth = system.default_number()
    assert (system.snapshot(fourth) / "etc/first").exists()
    assert not (system.snapshot(fourth) / "etc/second").exists()
    assert json.loads(system.tu("--json", "changelog", str(fourth)).stdout)["base"] == first
    # status and log name the bases.
    st = system.status_json()
    assert st["pending"] == fourth and st["pending_base"] == first
    assert st["default"]["userdata"]["tu-base"] == str(first)
    text = system.tu("status").stdout.splitlines()
    assert text[0].startswith("booted:   1  ")
    assert text[1].startswith(f"default:  {fourth} (from {first})  ")
    log = {line.split()[0]: line.split()[1:3] for line in system.tu("log").stdout.splitlines()}
    assert log[str(second)] == ["from", str(first)] and log[str(fourth)] == ["from", str(first)]


def test_from_booted_starts_from_the_booted_snapshot(system: System) -> None:
    assert system.tu("run", "--", "touch", "/etc/first").returncode == 0
    pending = system.default_number()
    r = system.tu("--from-booted", "run", "--", "touch", "/etc/other")
    assert r.returncode == 0, r.stderr
    assert (
        f"snapshot {pending} (not booted yet) is the pending default; this transaction starts "
        "from the booted snapshot 1 (--from-booted) and supersedes it"
    ) in r.stderr
    new = system.default_number()
    assert (system.snapshot(new) / "etc/other").exists()
    assert not (system.snapshot(new) / "etc/first").exists()
    assert json.loads(system.tu("--json", "changelog", str(new)).stdout)["base"] == 1
    # Both ways of choosing the base at once are refused before anything runs.
    before = system.numbers()
    r = system.tu("--from-booted", "-c", "1", "run", "--", "true")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "error: --from-booted and --continue both choose the base snapshot",
        "hint: give one of them: --from-booted, or --continue N",
    ]
    assert system.numbers() == before


def test_after_a_rollback_the_next_transaction_builds_on_it(system: System) -> None:
    assert system.tu("run", "--", "touch", "/etc/two").returncode == 0
    assert system.tu("run", "--", "touch", "/etc/three").returncode == 0
    assert system.default_number() == 3
    assert system.tu("rollback", "2").returncode == 0
    r = system.tu("run", "--", "touch", "/etc/four")
    assert r.returncode == 0, r.stderr
    assert system.default_number() == 4
    assert (system.snapshot(4) / "etc/two").exists() and (system.snapshot(4) / "etc/four").exists()
    assert not (system.snapshot(4) / "etc/three").exists()
    assert json.loads(system.tu("--json", "changelog", "4").stdout)["base"] == 2


def test_a_default_that_is_no_snapshot_builds_on_the_booted_one(system: System) -> None:
    sh("btrfs", "subvolume", "set-default", "5", str(system.root))  # the top level
    r = system.tu("run", "--", "touch", "/etc/x")
    assert r.returncode == 0, r.stderr
    assert (
        "the default subvolume is not a snapper snapshot; "
        "this transaction starts from the booted snapshot 1"
    ) in r.stderr
    assert system.default_number() == 2
    assert json.loads(system.tu("--json", "changelog", "2").stdout)["base"] == 1
    # --continue without N needs a snapshot to continue.
    sh("btrfs", "subvolume", "set-default", "5", str(system.root))
    r = system.tu("--continue", "run", "--", "true")
    assert r.returncode != 0
    assert "error: the default subvolume is not a snapper snapshot" in r.stderr


def test_drop_if_no_change(system: System) -> None:
    r = system.tu("--drop-if-no-change", "run", "--", "cat", "/etc/os-release")
    assert r.returncode == 0, r.stderr
    assert "nothing changed; no snapshot was kept" in r.stdout
    assert system.numbers() == [1] and system.default_number() == 1
    r = system.tu("-d", "run", "--", "touch", "/etc/changed")
    assert r.returncode == 0
    assert system.default_number() == 2 and system.numbers() == [1, 2]


def test_description_is_stored_literally(system: System) -> None:
    text = 'it\'s "quoted" $HOME; rm -rf / `x` \\ & | < >'
    r = system.tu("--description", text, "run", "--", "true")
    assert r.returncode == 0, r.stderr
    new = system.default_number()
    entry = next(s for s in system.snapper_list() if s["number"] == new)
    assert entry["description"] == text
    listed = system.tu("list").stdout
    assert text in listed


def test_writes_to_shadowed_locations_are_reported(managed_system: System) -> None:
    r = managed_system.tu("run", "--", "sh", "-c", "touch /srv/lost /var/lib/lost /etc/kept")
    assert r.returncode == 0
    assert "written outside the snapshot, discarded: /srv/lost" in r.stderr
    assert "written outside the snapshot, discarded: /var/lib/lost" in r.stderr
    new = managed_system.snapshot(managed_system.default_number())
    assert list((new / "srv").iterdir()) == [] and list((new / "var").iterdir()) == []
    assert not (managed_system.root / "srv/lost").exists()
    assert (new / "etc/kept").exists()


def test_chroot_sees_shared_state_and_no_services_start(managed_system: System) -> None:
    (managed_system.root / "opt/marker").write_text("opt\n")
    r = managed_system.tu(
        "run",
        "--",
        "sh",
        "-c",
        "cat /opt/marker; readlink /var/lib/dpkg; dpkg-query -W dpkg >/dev/null "
        "&& echo dpkg-ok; /usr/sbin/policy-rc.d; echo policy=$?; "
        "echo TU=$TRANSACTIONAL_UPDATE; echo >> /var/log/from-chroot",
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[:5] == ["opt", "../../usr/share/dpkg/database", "dpkg-ok", "policy=101", "TU=true"]
    # /var/log is shared with the running system (logs of package scripts survive).
    assert (managed_system.root / "var/log/from-chroot").exists()
    # policy-rc.d existed only during the transaction.
    assert not (managed_system.snapshot(2) / "usr/sbin/policy-rc.d").exists()


def test_nested_invocation_is_refused(managed_system: System) -> None:
    r = managed_system.tu("run", "--", "true", env={"TRANSACTIONAL_UPDATE": "true"})
    assert r.returncode == 2
    assert "error: transactional-update cannot run inside a transaction" in r.stderr


def _drive_shell(system: System, script: bytes) -> tuple[int, str]:
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - child
        os.execv(
            sys.executable,
            [sys.executable, "-m", "transactional_update", "--root", str(system.root), "shell"],
        )
    out = b""
    sent = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not sent and b"transactional update" in out:
            os.write(fd, script)
            sent = True
    else:
        os.kill(pid, 9)  # never hang the suite; the assertion below shows the output
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_shell_exit_0_commits(system: System) -> None:
    rc, out = _drive_shell(system, b"echo from-shell > /etc/shell-file\nexit 0\n")
    assert rc == 0, out
    assert "`exit 0` keeps the changes; `exit 1` (any non-zero) discards them." in out
    new = system.default_number()
    assert new == 2
    assert (system.snapshot(new) / "etc/shell-file").read_text() == "from-shell\n"
    entry = next(s for s in system.snapper_list() if s["number"] == new)
    assert entry["description"] == "shell · 1 file"


def test_shell_exit_1_discards(managed_system: System) -> None:
    rc, out = _drive_shell(managed_system, b"touch /etc/shell-file\nexit 1\n")
    assert rc == 1, out
    assert managed_system.numbers() == [1]
    assert managed_system.default_number() == 1


def test_status_and_list_json(system: System) -> None:
    import json

    assert system.tu("run", "--", "true").returncode == 0
    st = json.loads(system.tu("--json", "status").stdout)
    assert st["booted"]["number"] == 1
    assert st["default"]["number"] == 2
    assert st["pending"] == 2 and st["reboot_needed"] is True
    assert st["running"] is None and st["stale_in_progress"] is None
    listed = json.loads(system.tu("--json", "list").stdout)
    assert [(s["number"], s["booted"], s["default"]) for s in listed] == [
        (1, True, False),
        (2, False, True),
    ]
    text = system.tu("status").stdout
    assert "pending:  snapshot 2 boots next (no changes); reboot to use it" in text


def test_lock_file_symlink_is_refused(managed_system: System, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("precious\n")
    (managed_system.root / ".snapshots/.transactional-update.lock").symlink_to(target)
    r = managed_system.tu("run", "--", "true")
    assert r.returncode == 4
    assert "is a symbolic link; refusing to follow it" in r.stderr
    assert target.read_text() == "precious\n"
    assert managed_system.numbers() == [1]


def test_no_leaked_mounts_after_transactions(managed_system: System) -> None:
    before = Path("/proc/self/mountinfo").read_text().count(str(managed_system.root))
    assert managed_system.tu("run", "--", "true").returncode == 0
    assert managed_system.tu("run", "--", "false").returncode == 1
    after = Path("/proc/self/mountinfo").read_text().count(str(managed_system.root))
    assert before == after
    assert sh("findmnt", "-rn", "-o", "TARGET").stdout.count(".snapshots/2/snapshot") == 0


def test_quick_and_full_paths_agree_with_snapper(system: System) -> None:
    import json

    assert system.tu("--description", 'a "b" & c', "run", "--", "true").returncode == 0
    for args in (["status"], ["--json", "status"], ["list"], ["--json", "list"]):
        quick = system.tu(*args)
        full = system.tu("-v", *args)  # any other option takes the click path
        assert quick.returncode == full.returncode == 0
        assert quick.stdout == full.stdout, args
    ours = json.loads(system.tu("--json", "list").stdout)
    theirs = system.snapper_list()
    assert [(s["number"], s["description"], s["cleanup"]) for s in ours] == [
        (s["number"], s["description"], s["cleanup"]) for s in theirs
    ]
