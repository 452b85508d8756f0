"""rollback, cleanup and the stale-fork report of status, on real btrfs images.

Every test checks what the next boot would mount (the btrfs default subvolume), what snapper
lists and what is left in ``/.snapshots``; refusals must leave the default exactly as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import btrfsutil
import pytest

from testkit.systems import System, sh
from transactional_update.snapshots import btrfs
from transactional_update.snapshots.snapper import CliSnapper, DBusSnapper, Snapper
from transactional_update.snapshots.system import IN_PROGRESS

STATE = "var/lib/misc/transactional-update.state"
LOCK = ".snapshots/.transactional-update.lock"
PICK_HINT = "hint: pick a number from: transactional-update list"


@contextmanager
def _snapper(system: System) -> Iterator[Snapper]:
    """A client of the backend the test runs with, so snapperd's cache stays truthful."""
    client: CliSnapper | DBusSnapper
    if os.environ.get("TU_SNAPPER_BACKEND") == "dbus":
        client = DBusSnapper(system.root)
    else:
        client = CliSnapper(system.root)
    with client:
        yield client


def _interrupted_fork(system: System) -> int:
    """A fork as a transaction that died leaves it: read-write, marked in progress."""
    with _snapper(system) as client:
        return client.create_snapshot(
            1,
            read_only=False,
            description="run: interrupted",
            cleanup="number",
            userdata={IN_PROGRESS: "yes"},
        )


def _set_snapper_config(system: System, **values: str) -> None:
    path = system.root / "etc/snapper/configs/root"
    lines = path.read_text(encoding="utf-8").splitlines()
    for key, value in values.items():
        lines = [line for line in lines if not line.startswith(f"{key}=")] + [f'{key}="{value}"']
    with system.booted_writable():
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _commit(system: System, *cmd: str) -> int:
    r = system.tu("run", "--", *(cmd or ("true",)))
    assert r.returncode == 0, r.stderr
    return system.default_number()


def _snapshot_dirs(system: System) -> list[int]:
    return sorted(int(p.name) for p in (system.root / ".snapshots").iterdir() if p.name.isdigit())


def _booted(system: System) -> str:
    return btrfs.subvolume_path(system.root)


# -- rollback ----------------------------------------------------------------------------------


def test_rollback_to_a_number(system: System) -> None:
    assert _commit(system, "touch", "/etc/two") == 2
    assert _commit(system, "touch", "/etc/three") == 3
    r = system.tu("rollback", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "snapshot 2 is the default now (was 3); reboot to use it\n"
    assert system.default() == "@/.snapshots/2/snapshot"
    # Nothing is deleted or changed: the superseded 3 stays, the booted system stays mounted.
    assert system.numbers() == [1, 2, 3] and _snapshot_dirs(system) == [1, 2, 3]
    assert (system.snapshot(3) / "etc/three").exists()
    assert _booted(system) == "@/.snapshots/1/snapshot"
    # Back again, machine-readable.
    r = system.tu("--json", "rollback", "3")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "default": 3,
        "previous_default": 2,
        # The booted /etc is unchanged since the image was made (its etc-booted reference).
        "etc_left_behind": [],
        "etc_left_in": str(system.snapshot(1) / "etc"),
        "boot_failed": None,  # it never failed a boot
    }
    assert system.default_number() == 3
    st = json.loads(system.tu("--json", "status").stdout)
    assert (st["booted"]["number"], st["default"]["number"], st["pending"]) == (1, 3, 3)


def test_rollback_last_picks_the_recorded_working_snapshot(system: System) -> None:
    _commit(system)
    _commit(system)
    # Each transaction recorded the snapshot it started on, in /var (shared by all snapshots).
    state = system.root / STATE
    assert state.read_text() == "LAST_WORKING_SNAPSHOTS=1\n"
    assert not (system.snapshot(3) / STATE).exists()
    r = system.tu("rollback", "last")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "snapshot 1 is the default now (was 3); reboot to use it\n"
    assert system.default() == "@/.snapshots/1/snapshot"
    assert system.numbers() == [1, 2, 3]
    # Now the default is the last working snapshot: nothing else to go back to.
    r = system.tu("rollback", "last")
    assert r.returncode == 5
    assert r.stderr.splitlines() == [
        "error: no last working snapshot is recorded that differs from the default",
        "hint: name the snapshot: transactional-update rollback N",
    ]
    assert system.default_number() == 1


def test_rollback_last_skips_recorded_snapshots_that_are_gone(managed_system: System) -> None:
    system = managed_system
    _commit(system)
    _commit(system)
    system.tu("rollback", "2")
    # 9 was recorded once but has been deleted since; 3 is the newest that still exists.
    (system.root / STATE).write_text("LAST_WORKING_SNAPSHOTS='9 3 1'\n")
    r = system.tu("rollback", "last")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "snapshot 3 is the default now (was 2); reboot to use it\n"
    assert system.default_number() == 3


def test_rollback_last_without_a_record_is_refused(managed_system: System) -> None:
    system = managed_system
    _commit(system)
    (system.root / STATE).unlink()
    r = system.tu("rollback", "last")
    assert r.returncode == 5
    assert r.stderr.splitlines() == [
        "error: no last working snapshot is recorded that differs from the default",
        "hint: name the snapshot: transactional-update rollback N",
    ]
    assert system.default_number() == 2


def test_garbled_state_file_does_not_break_transactions_or_rollback(
    managed_system: System,
) -> None:
    system = managed_system
    state = system.root / STATE
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_bytes(b"LAST_WORKING_SNAPSHOTS=\xff\xfe 7\n")
    r = system.tu("run", "--", "true")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "snapshot 2 is the new default; reboot to use it\n"
    assert state.read_text() == "LAST_WORKING_SNAPSHOTS=1\n"
    r = system.tu("rollback", "last")
    assert r.returncode == 0, r.stderr
    assert system.default_number() == 1


def test_unwritable_state_file_does_not_undo_a_committed_transaction(
    managed_system: System,
) -> None:
    system = managed_system
    # Recording happens after the commit point; a /var that cannot take it (full, or here a
    # directory in the file's place) must not make the tool report a failure it did not have.
    (system.root / STATE).mkdir(parents=True)
    r = system.tu("run", "--", "touch", "/etc/committed")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "snapshot 2 is the new default; reboot to use it\n"
    assert f"cannot record snapshot 1 as working in /{STATE}" in r.stderr
    assert "discarded" not in r.stderr
    assert system.default() == "@/.snapshots/2/snapshot"
    assert system.numbers() == [1, 2]
    assert [p.name for p in (system.root / STATE).parent.iterdir()] == [
        "transactional-update.state"
    ]
    r = system.tu("rollback", "last")
    assert r.returncode == 5
    assert r.stderr.splitlines()[0] == (
        "error: no last working snapshot is recorded that differs from the default"
    )
    assert system.default_number() == 2


def test_rollback_without_argument_makes_the_booted_snapshot_default(system: System) -> None:
    pending = _commit(system, "touch", "/etc/pending")
    assert pending == 2
    r = system.tu("rollback")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "snapshot 1 is the default now (was 2); reboot to use it\n"
    assert system.default() == "@/.snapshots/1/snapshot"
    # The dropped change is still there to go back to.
    assert system.numbers() == [1, 2]
    assert (system.snapshot(2) / "etc/pending").exists()
    st = json.loads(system.tu("--json", "status").stdout)
    assert st["pending"] is None and st["reboot_needed"] is False
    assert "pending:  none" in system.tu("status").stdout


@pytest.mark.parametrize(
    ("target", "code", "error", "hint"),
    [
        ("99", 5, "error: snapshot 99 does not exist", PICK_HINT),
        ("4294967296", 5, "error: snapshot 4294967296 does not exist", PICK_HINT),
        ("0", 5, "error: snapshot 0 is not a root snapshot", PICK_HINT),
        (
            "abc",
            2,
            "error: rollback target 'abc' is not a snapshot number or 'last'",
            "hint: pass a number from `transactional-update list`, or 'last'",
        ),
        (
            "2x",
            2,
            "error: rollback target '2x' is not a snapshot number or 'last'",
            "hint: pass a number from `transactional-update list`, or 'last'",
        ),
    ],
)
def test_rollback_refuses_bad_numbers(
    managed_system: System, target: str, code: int, error: str, hint: str
) -> None:
    system = managed_system
    _commit(system)  # default 2 differs from booted 1, so a wrong fallback would show
    r = system.tu("rollback", target)
    assert r.returncode == code, r.stderr
    assert r.stderr.splitlines() == [error, hint]
    assert r.stdout == ""
    assert system.default() == "@/.snapshots/2/snapshot"
    assert system.numbers() == [1, 2]


def test_rollback_refusals_on_both_backends(system: System) -> None:
    _commit(system)
    for target, code in (("99", 5), ("0", 5), ("abc", 2), ("-1", 2)):
        r = system.tu("rollback", target)
        assert r.returncode == code, (target, r.stderr)
        assert "Traceback" not in r.stderr
        assert system.default_number() == 2, target


def test_rollback_refuses_an_unfinished_transaction(system: System) -> None:
    _commit(system)
    fork = _interrupted_fork(system)
    assert fork == 3
    r = system.tu("rollback", str(fork))
    assert r.returncode == 5
    assert r.stderr.splitlines() == [
        f"error: snapshot {fork} is an unfinished transaction",
        "hint: it may be half-changed; pick a finished snapshot",
    ]
    assert system.default() == "@/.snapshots/2/snapshot"
    assert system.numbers() == [1, 2, 3]


def test_rollback_refuses_a_foreign_subvolume(managed_system: System) -> None:
    system = managed_system
    _commit(system)
    # A subvolume where snapper keeps snapshots, but made behind snapper's back (no info.xml).
    (system.root / ".snapshots/7").mkdir()
    sh("btrfs", "subvolume", "snapshot", str(system.snapshot(1)), str(system.snapshot(7)))
    assert btrfs.is_subvolume(system.snapshot(7))
    r = system.tu("rollback", "7")
    assert r.returncode == 5
    assert r.stderr.splitlines() == [
        "error: snapshot 7 is not managed by snapper (no info.xml)",
        "hint: only snapper's snapshots can be used; see: transactional-update list",
    ]
    assert system.default() == "@/.snapshots/2/snapshot"
    # A plain directory (not a subvolume) with an info.xml is no snapshot either.
    (system.root / ".snapshots/8/snapshot").mkdir(parents=True)
    (system.root / ".snapshots/8/info.xml").write_text(
        (system.root / ".snapshots/1/info.xml").read_text().replace("<num>1<", "<num>8<")
    )
    r = system.tu("rollback", "8")
    assert r.returncode == 5
    assert r.stderr.splitlines() == ["error: snapshot 8 does not exist", PICK_HINT]
    assert system.default() == "@/.snapshots/2/snapshot"


def test_rollback_refuses_a_kept_failed_snapshot(managed_system: System) -> None:
    system = managed_system
    _commit(system)
    r = system.tu("--keep", "run", "--", "sh", "-c", "touch /etc/half; exit 1")
    assert r.returncode == 1
    assert system.numbers() == [1, 2, 3]
    # --keep promises the failed snapshot is never the default; rollback must keep that promise.
    r = system.tu("rollback", "3")
    assert r.returncode == 5
    assert r.stderr.splitlines() == [
        "error: snapshot 3 is a failed transaction kept for inspection",
        "hint: it may be half-changed; pick a finished snapshot",
    ]
    assert system.default() == "@/.snapshots/2/snapshot"


# -- cleanup -----------------------------------------------------------------------------------


def test_cleanup_removes_interrupted_forks_only(system: System) -> None:
    _commit(system)
    _commit(system)
    system.tu("rollback", "2")  # booted 1, default (pending) 2, superseded 3
    stale = [_interrupted_fork(system), _interrupted_fork(system)]
    assert stale == [4, 5]
    r = system.tu("cleanup")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "removed 2 interrupted and 0 old snapshot(s): 4 5\n"
    assert system.numbers() == [1, 2, 3]
    assert _snapshot_dirs(system) == [1, 2, 3]
    assert system.default() == "@/.snapshots/2/snapshot"
    assert _booted(system) == "@/.snapshots/1/snapshot"
    # Nothing left to do.
    r = system.tu("--json", "cleanup")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"stale": [], "number": [], "orphans": [], "lost": []}
    assert system.numbers() == [1, 2, 3]


def test_cleanup_applies_the_number_limit(system: System) -> None:
    _set_snapper_config(system, NUMBER_LIMIT="2", NUMBER_MIN_AGE="3600")
    assert [_commit(system) for _ in range(5)] == [2, 3, 4, 5, 6]
    assert system.tu("rollback", "3").returncode == 0
    stale = _interrupted_fork(system)
    assert stale == 7
    # Younger than NUMBER_MIN_AGE: only the interrupted fork goes (and takes no place in the
    # limit).
    r = system.tu("--json", "cleanup")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"stale": [7], "number": [], "orphans": [], "lost": []}
    assert system.numbers() == [1, 2, 3, 4, 5, 6]
    # Old enough: the newest two (6, 5), the default (3) and the booted 1 (not a number
    # snapshot) stay.
    _set_snapper_config(system, NUMBER_MIN_AGE="0")
    r = system.tu("--json", "cleanup")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"stale": [], "number": [2, 4], "orphans": [], "lost": []}
    assert system.numbers() == [1, 3, 5, 6]
    assert _snapshot_dirs(system) == [1, 3, 5, 6]
    assert system.default() == "@/.snapshots/3/snapshot"
    assert _booted(system) == "@/.snapshots/1/snapshot"
    r = system.tu("cleanup")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "removed 0 interrupted and 0 old snapshot(s)\n"
    assert system.numbers() == [1, 3, 5, 6]


def test_cleanup_then_run_in_one_chain(system: System) -> None:
    stale = _interrupted_fork(system)
    assert stale == 2
    r = system.tu("cleanup", "run", "--", "touch", "/etc/x")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "removed 1 interrupted and 0 old snapshot(s): 2",
        "snapshot 2 is the new default; reboot to use it",  # snapper reuses the freed number
    ]
    assert system.numbers() == [1, 2]
    assert system.default() == "@/.snapshots/2/snapshot"
    assert (system.snapshot(2) / "etc/x").exists()
    entry = system.snapper_list()[-1]
    assert entry["description"] == "run: touch /etc/x · 1 file"
    assert not (entry["userdata"] or {}).get(IN_PROGRESS)


def test_status_reports_a_stale_fork_until_cleanup(system: System) -> None:
    fork = _interrupted_fork(system)
    # What a transaction killed with SIGKILL leaves in the (now free) lock file.
    (system.root / LOCK).write_text(f"pid 999999 since 2026-01-01 00:00:00\nsnapshot {fork}\n")
    st = json.loads(system.tu("--json", "status").stdout)
    assert st["stale_in_progress"] == fork and st["running"] is None
    assert (
        f"stale:    snapshot {fork} was left by an interrupted transaction; "
        "remove it with: transactional-update cleanup"
    ) in system.tu("status").stdout
    r = system.tu("cleanup")
    assert r.returncode == 0, r.stderr
    assert fork not in system.numbers()
    st = json.loads(system.tu("--json", "status").stdout)
    assert st["stale_in_progress"] is None and st["running"] is None
    assert "stale:" not in system.tu("status").stdout
    # A note naming a finished snapshot is not a stale fork.
    done = _commit(system)
    (system.root / LOCK).write_text(f"pid 999999 since 2026-01-01 00:00:00\nsnapshot {done}\n")
    assert json.loads(system.tu("--json", "status").stdout)["stale_in_progress"] is None


def test_status_keeps_reporting_a_stale_fork_after_other_commands(
    managed_system: System,
) -> None:
    system = managed_system
    fork = _interrupted_fork(system)
    (system.root / LOCK).write_text(f"pid 999999 since 2026-01-01 00:00:00\nsnapshot {fork}\n")
    assert json.loads(system.tu("--json", "status").stdout)["stale_in_progress"] == fork
    # A rollback (or a new transaction) takes and frees the lock; the fork is still there.
    assert system.tu("rollback").returncode == 0
    assert fork in system.numbers()
    assert json.loads(system.tu("--json", "status").stdout)["stale_in_progress"] == fork


def test_status_and_rollback_with_a_default_that_is_no_snapshot(managed_system: System) -> None:
    system = managed_system
    # Someone ran `btrfs subvolume set-default`: the next boot mounts "@", not a snapshot.
    at = btrfsutil.subvolume_info(system.root / ".snapshots").parent_id  # "@" holds the store
    sh("btrfs", "subvolume", "set-default", str(at), str(system.root))
    assert system.default() == "@"
    st = json.loads(system.tu("--json", "status").stdout)
    assert (st["default"], st["pending"], st["foreign_default"]) == (None, None, "@")
    text = system.tu("status").stdout.splitlines()
    assert text[1:3] == [
        "default:  -",
        "pending:  the next boot mounts @, which is not a snapper snapshot; make the booted "
        "snapshot the default with: transactional-update rollback",
    ]
    sh("btrfs", "subvolume", "set-default", "5", str(system.root))
    assert json.loads(system.tu("--json", "status").stdout)["foreign_default"] == "<FS_TREE>"
    r = system.tu("rollback")
    assert r.returncode == 0, r.stderr
    assert system.default() == "@/.snapshots/1/snapshot"
    st = json.loads(system.tu("--json", "status").stdout)
    assert (st["default"]["number"], st["foreign_default"]) == (1, None)
    assert "pending:  none" in system.tu("status").stdout
