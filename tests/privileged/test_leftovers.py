"""Leftovers of interrupted runs (power cuts, kill -9) in status and cleanup, on real btrfs images.

A power cut cannot be staged on a loop device, but what it leaves on disk can be, exactly: a
subvolume whose ``info.xml`` never reached the disk (cut while snapper created the fork), a fork
still marked in progress whose lock-file note was lost (cut at the end of the command), and a
complete snapshot whose commit intent reached the disk while the new default did not (cut before
the btrfs commit).  The VM scenario ``powercut`` cuts real power at those points.
"""

from __future__ import annotations

import json
import os
import time

import btrfsutil

from testkit.systems import System
from transactional_update.snapshots import leftovers
from transactional_update.snapshots.system import IN_PROGRESS

LOCK = ".snapshots/.transactional-update.lock"
STALE_HINT = "remove it with: transactional-update cleanup"


def _orphan(system: System, number: int, *, subvolume: bool = True, age: float = 120) -> None:
    """What a cut while snapper creates a fork leaves: the subvolume, no info.xml."""
    d = system.root / ".snapshots" / str(number)
    d.mkdir()
    if subvolume:
        btrfsutil.create_snapshot(system.snapshot(1), d / "snapshot")
    then = time.time() - age
    os.utime(d, (then, then))


def _lost_commit(system: System) -> int:
    """A committed transaction whose new default a power cut took back: the fsynced intent
    and the complete snapshot are on disk, the default is the old one."""
    r = system.tu("run", "--", "touch", "/etc/lost")
    assert r.returncode == 0, r.stderr
    number = system.default_number()
    btrfsutil.set_default_subvolume(system.snapshot(1))
    leftovers.write_intent(system.root, number, 1, btrfsutil.subvolume_id(system.snapshot(number)))
    return number


def test_an_orphan_subvolume_is_shown_and_removed_and_its_number_reused(system: System) -> None:
    _orphan(system, 2)
    _orphan(system, 3, subvolume=False)  # cut after snapper's mkdir, before the snapshot
    assert system.numbers() == [1]  # snapper does not know them
    st = system.status_json()
    assert st["orphans"] == [2, 3]
    assert st["stale"] == [] and st["lost_commits"] == []
    text = system.tu("status").stdout
    assert (
        "orphan:   snapshots 2 3 without snapper's metadata (cut while being created); "
        "remove with: transactional-update cleanup"
    ) in text
    assert "2" not in [line.split()[0] for line in system.tu("list").stdout.splitlines()[1:]]
    r = system.tu("--json", "cleanup")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"stale": [], "number": [], "orphans": [2, 3], "lost": []}
    assert sorted(p.name for p in (system.root / ".snapshots").iterdir() if p.name.isdigit()) == [
        "1"
    ]
    assert system.status_json()["orphans"] == []
    assert "orphan:" not in system.tu("status").stdout
    # The numbers are free again: snapper takes 2 for the next transaction.
    r = system.tu("run", "--", "touch", "/etc/after")
    assert r.returncode == 0, r.stderr
    assert system.default_number() == 2
    assert (system.snapshot(2) / "etc/after").exists()


def test_a_young_directory_without_metadata_is_left_to_snapper(system: System) -> None:
    """snapper writes info.xml right after the subvolume: a fresh directory is one being made
    (by a transaction or snapper's own timeline), never removed from under it."""
    _orphan(system, 2, age=0)
    assert system.status_json()["orphans"] == []
    r = system.tu("--json", "cleanup")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["orphans"] == []
    assert system.snapshot(2).exists()


def test_a_stale_fork_is_found_without_the_lock_note(system: System) -> None:
    """A cut right at the end of the command loses the lock file's note (page cache); the
    in-progress mark in info.xml is what tells."""
    fork = system.in_progress_fork_cli()
    (system.root / LOCK).write_text("")
    st = system.status_json()
    assert st["stale"] == [fork] and st["stale_in_progress"] == fork
    assert (
        f"stale:    snapshot {fork} was left by an interrupted transaction; {STALE_HINT}"
        in system.tu("status").stdout
    )
    r = system.tu("--json", "cleanup")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stale"] == [fork]
    assert system.status_json()["stale"] == []


def test_a_lost_commit_is_named_and_rollback_keeps_it(system: System) -> None:
    lost = _lost_commit(system)
    st = system.status_json()
    assert st["lost_commits"] == [lost] and st["pending"] is None
    assert (
        f"lost:     snapshot {lost} is complete, but its commit did not reach the disk; keep it "
        f"with: transactional-update rollback {lost}; drop it with: transactional-update cleanup"
    ) in system.tu("status").stdout
    r = system.tu("rollback", str(lost))
    assert r.returncode == 0, r.stderr
    assert system.default_number() == lost
    assert (system.snapshot(lost) / "etc/lost").exists()
    st = system.status_json()
    assert st["lost_commits"] == [] and st["pending"] == lost
    assert not (system.root / leftovers.INTENT).exists()


def test_an_intent_naming_a_reused_number_is_no_lost_commit(system: System) -> None:
    """snapper reuses the number of a deleted snapshot: the intent's subvolume id tells the
    later snapshot (here: any other subvolume) from the fork, which cleanup must never drop."""
    lost = _lost_commit(system)
    other = btrfsutil.subvolume_id(system.snapshot(1))
    leftovers.write_intent(system.root, lost, 1, other)
    assert system.status_json()["lost_commits"] == []
    r = system.tu("--json", "cleanup")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["lost"] == [] and lost in system.numbers()


def test_a_lost_commit_is_dropped_by_cleanup(system: System) -> None:
    lost = _lost_commit(system)
    assert (system.root / f"var/lib/transactional-update/changelog/{lost}.json").exists()
    r = system.tu("cleanup")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"removed 1 interrupted and 0 old snapshot(s): {lost}\n"
    assert system.numbers() == [1]
    assert system.default_number() == 1
    assert not (system.root / leftovers.INTENT).exists()
    assert not (system.root / f"var/lib/transactional-update/changelog/{lost}.json").exists()
    assert system.status_json()["lost_commits"] == []


def test_the_next_transaction_supersedes_a_lost_commits_intent(system: System) -> None:
    lost = _lost_commit(system)
    r = system.tu("run", "--", "touch", "/etc/next")
    assert r.returncode == 0, r.stderr
    st = system.status_json()
    # The lost one is just an older snapshot now, kept as a rollback target.
    assert st["lost_commits"] == [] and lost in system.numbers()
    assert not (system.root / leftovers.INTENT).exists()


def test_a_committed_transaction_leaves_no_intent_and_no_leftover(system: System) -> None:
    r = system.tu("run", "--", "touch", "/etc/x")
    assert r.returncode == 0, r.stderr
    assert not (system.root / leftovers.INTENT).exists()
    st = system.status_json()
    assert (st["orphans"], st["stale"], st["lost_commits"]) == ([], [], [])
    assert st["boot_menu"] is None  # a system without GRUB has no menu to be stale


def test_a_running_transactions_fork_is_no_leftover(managed_system: System) -> None:
    system = managed_system
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "transactional_update", "--root", str(system.root),
         "run", "--", "sh", "-c", "touch /etc/started; sleep 30"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (system.snapshot(2) / "etc/started").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        st = system.status_json()
        assert st["running"] is not None
        assert (st["orphans"], st["stale"], st["lost_commits"]) == ([], [], [])
        info = system.root / ".snapshots/2/info.xml"
        assert IN_PROGRESS in info.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
