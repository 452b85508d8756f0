"""The promise under failure: killed, interrupted, disk full, concurrent.

The booted system and the default subvolume are never left half-changed, nothing is lost, no
process or mount of a dead transaction survives, and the next command works.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testkit.systems import System, managed_system

SLEEP = "4242"  # an unusual duration that identifies the transaction's command among processes


def _start(system: System, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "transactional_update", "--root", str(system.root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _started_fork(system: System) -> int | None:
    for d in (system.root / ".snapshots").iterdir():
        if d.name.isdigit() and (d / "snapshot/etc/started").exists():
            return int(d.name)
    return None


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def _mounts_mentioning(text: str) -> list[str]:
    """Mounts naming *text* in any mount namespace on the machine, not only ours."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            info = Path(f"/proc/{pid}/mountinfo").read_text()
        except OSError:
            continue
        found += [f"{pid}: {line}" for line in info.splitlines() if text in line]
    return found


def _gone(text: str) -> Callable[[], bool]:
    return lambda: not _processes_mentioning(text)


def test_kill_9_mid_command_leaves_default_intact_and_cleanup_recovers(system: System) -> None:
    tool = _start(system, "run", "--", "sh", "-c", f"touch /etc/started; sleep {SLEEP}; true")
    _wait_for(lambda: _started_fork(system) is not None)
    fork = _started_fork(system)
    assert fork is not None
    fork_dir = system.snapshot(fork)
    assert _processes_mentioning(f"sleep {SLEEP}")
    tool.send_signal(signal.SIGKILL)
    tool.wait()
    # Every process of the transaction dies with the tool: the command and the chroot holders.
    _wait_for(_gone(f"sleep {SLEEP}"), timeout=10)
    _wait_for(_gone(str(system.root)), timeout=10)
    # No namespace anywhere still has the fork's chroot mounts.
    assert _mounts_mentioning(str(fork_dir)) == []
    # Booted and default snapshots are untouched.
    assert system.default() == "@/.snapshots/1/snapshot"
    assert not (system.root / "etc/started").exists()
    assert not (system.snapshot(1) / "etc/started").exists()
    # status names the leftover; cleanup removes it and leaks nothing.
    st = json.loads(system.tu("--json", "status").stdout)
    assert st["stale_in_progress"] == fork and st["running"] is None
    r = system.tu("cleanup")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"removed 1 interrupted and 0 old snapshot(s): {fork}"
    assert fork not in system.numbers()
    assert not fork_dir.exists()
    assert system.default_number() == 1
    assert json.loads(system.tu("--json", "status").stdout)["stale_in_progress"] is None
    # And the next transaction works.
    assert system.tu("run", "--", "touch", "/etc/after").returncode == 0
    assert (system.snapshot(system.default_number()) / "etc/after").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_mid_command_discards_at_once(managed_system: System, sig: signal.Signals) -> None:
    tool = _start(managed_system, "run", "--", "sh", "-c", f"touch /etc/started; sleep {SLEEP}")
    _wait_for(lambda: _started_fork(managed_system) is not None)
    fork = _started_fork(managed_system)
    tool.send_signal(sig)
    _out, err = tool.communicate(timeout=60)
    assert tool.returncode == 130
    assert err.splitlines()[-2:] == [
        f"error: interrupted by {sig.name}",
        "hint: the snapshot was discarded; the default is unchanged",
    ]
    assert f"transaction failed (interrupted by {sig.name}); snapshot {fork} discarded" in err
    _wait_for(_gone(f"sleep {SLEEP}"), timeout=10)
    assert managed_system.numbers() == [1]
    assert managed_system.default_number() == 1


def test_keep_keeps_a_failed_snapshot_but_not_as_default(managed_system: System) -> None:
    r = managed_system.tu("--keep", "run", "--", "sh", "-c", "touch /etc/debug-me; exit 4")
    assert r.returncode == 4
    assert managed_system.numbers() == [1, 2]
    assert managed_system.default_number() == 1
    entry = managed_system.snapper_list()[-1]
    assert entry["userdata"] == {"transactional-update-failed": "command exited with 4: sh"}
    assert (managed_system.snapshot(2) / "etc/debug-me").exists()
    # It is never built on: --continue 2 is refused like an unfinished transaction.
    r = managed_system.tu("-c", "2", "run", "--", "true")
    assert r.returncode == 5
    assert r.stderr.splitlines() == [
        "error: snapshot 2 is a failed transaction kept for inspection",
        "hint: continue from a finished snapshot; remove it with: cleanup",
    ]
    assert managed_system.numbers() == [1, 2] and managed_system.default_number() == 1
    # A kept failure is not "in progress": cleanup leaves it to the number limit.
    assert managed_system.tu("cleanup").stdout.startswith("removed 0 interrupted")


def test_disk_full_aborts_cleanly_and_next_transaction_works(tmp_path: Path) -> None:
    with managed_system(tmp_path, size="1200M") as system:
        r = system.tu("run", "--", "sh", "-c", "dd if=/dev/zero of=/fill bs=1M status=none")
        assert r.returncode == 1
        assert "No space left on device" in r.stderr
        assert "error: command exited with 1: sh" in r.stderr
        # The log file is on the full filesystem too: it goes quiet, no "--- Logging error ---".
        assert "Logging error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.splitlines()[-2:] == [
            "error: command exited with 1: sh",
            "hint: the snapshot was discarded; the default is unchanged",
        ]
        assert system.numbers() == [1]
        assert system.default_number() == 1
        assert (system.root / "etc/os-release").read_text().startswith("PRETTY_NAME=")
        # btrfs frees the deleted fork asynchronously; the tool waited, so this works at once.
        r = system.tu("run", "--", "sh", "-c", "echo ok > /etc/after-full")
        assert r.returncode == 0, r.stderr
        assert (system.snapshot(system.default_number()) / "etc/after-full").read_text() == "ok\n"


def test_second_invocation_is_refused_while_one_runs(system: System) -> None:
    tool = _start(system, "run", "--", "sh", "-c", "touch /etc/started; sleep 3")
    try:
        _wait_for(lambda: _started_fork(system) is not None)
        fork = _started_fork(system)
        st = json.loads(system.tu("--json", "status").stdout)
        assert st["running"].startswith(f"pid {tool.pid} since ")
        assert st["running"].endswith(f"snapshot {fork}")
        for args in (["run", "--", "true"], ["rollback", "1"], ["cleanup"], ["shell"]):
            r = system.tu(*args)
            assert r.returncode == 4, (args, r.stderr)
            assert r.stderr.splitlines()[0].startswith(
                f"error: another transaction is running (pid {tool.pid} since "
            )
            assert r.stderr.splitlines()[1] == (
                "hint: wait for it to finish; check with: transactional-update status"
            )
        assert system.default_number() == 1
    finally:
        tool.wait(timeout=60)
    assert tool.returncode == 0
    assert system.default_number() == fork


def test_stale_lock_file_from_a_dead_process_does_not_block(managed_system: System) -> None:
    lock = managed_system.root / ".snapshots/.transactional-update.lock"
    lock.write_text("pid 999999 since 2020-01-01 00:00:00\nsnapshot 77\n")
    r = managed_system.tu("run", "--", "true")
    assert r.returncode == 0, r.stderr
    assert managed_system.default_number() == 2


def test_a_command_that_cannot_be_started_is_127_and_discarded(managed_system: System) -> None:
    r = managed_system.tu("run", "--", "/etc/passwd")  # exists, not executable
    assert r.returncode == 127
    assert "transactional-update: cannot run /etc/passwd: Permission denied" in r.stderr
    assert r.stderr.splitlines()[-2] == "error: command exited with 127: /etc/passwd"
    assert managed_system.numbers() == [1]
    assert managed_system.default_number() == 1


def test_a_chroot_that_cannot_be_prepared_is_undone(managed_system: System) -> None:
    """The holder, started before the snapshot exists, fails a mount: nothing stays behind."""
    import btrfsutil

    from transactional_update.core.chroot import ChrootSession, Kind, Mount, plan_for
    from transactional_update.errors import SystemError_

    fork = managed_system.root / ".snapshots/99/snapshot"
    fork.parent.mkdir()
    btrfsutil.create_snapshot(managed_system.snapshot(1), fork)
    (fork / "etc").rmdir()  # the placeholder of the nested /etc, which a snapshot leaves out
    btrfsutil.create_snapshot(managed_system.snapshot(1) / "etc", fork / "etc")
    plan = [
        *plan_for(managed_system.root, ()),
        Mount(Kind.BIND, "/tu-test-mount", str(managed_system.workdir / "no-such-source")),
    ]
    session = ChrootSession(None, plan)
    session.start()
    with pytest.raises(SystemError_) as err:
        session.open(fork)
    assert err.value.message.startswith(f"cannot prepare the chroot of {fork}: ")
    assert "no-such-source" in err.value.message
    assert session.pid is None and session.sock is None  # the holder is gone and reaped
    mounts = Path("/proc/self/mountinfo").read_text(encoding="utf-8")
    assert str(fork) not in mounts
    # What the holder created as mount points in the snapshot is removed again.
    assert not (fork / "tu-test-mount").exists()
    assert not (fork / "usr/sbin/policy-rc.d").exists()
    btrfsutil.delete_subvolume(fork, recursive=True)
