"""The maintenance window and the reboot manager under a controlled clock, and once for real."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time as systime
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from transactional_update.config.settings import Window
from transactional_update.core.lock import Lock
from transactional_update.errors import LockedError, SystemError_
from transactional_update.reboot import maintenance
from transactional_update.reboot import manager as reboot_manager
from transactional_update.reboot.manager import Decision, Manager, Plan, decide

WINDOW = Window(start=time(3, 0), duration=timedelta(minutes=90), timezone="UTC")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_window_opens_and_closes_including_over_midnight_and_weekdays() -> None:
    assert maintenance.current_or_next(WINDOW, at("2026-11-26 14:00")) == (
        at("2026-11-27 03:00"),
        at("2026-11-27 04:30"),
    )
    assert maintenance.is_open(WINDOW, at("2026-11-27 03:00"))
    assert maintenance.is_open(WINDOW, at("2026-11-27 04:29:59"))
    assert not maintenance.is_open(WINDOW, at("2026-11-27 04:30"))
    assert not maintenance.is_open(WINDOW, at("2026-11-27 02:59:59"))
    assert maintenance.earliest(WINDOW, at("2026-11-27 03:10")) == at("2026-11-27 03:10")
    assert maintenance.following(WINDOW, at("2026-11-27 03:10")) == at("2026-11-28 03:00")
    late = Window(start=time(23, 0), duration=timedelta(hours=2), timezone="UTC")
    assert maintenance.is_open(late, at("2026-11-27 00:30"))  # Thursday's window, on Friday
    # 2026-11-27 is a Friday: a Mon-Fri window next opens on Monday 30th.
    weekdays = Window(start=time(3, 0), duration=timedelta(hours=1), weekdays=(0, 1, 2, 3, 4))
    weekdays = Window(weekdays.start, weekdays.duration, weekdays.weekdays, "UTC")
    assert maintenance.earliest(weekdays, at("2026-11-27 14:00")) == at("2026-11-30 03:00")
    # Wall-clock time in the window's zone: 03:00 in Berlin is 02:00 UTC in winter, 01:00 in summer.
    berlin = Window(start=time(3, 0), duration=timedelta(hours=1), timezone="Europe/Berlin")
    assert maintenance.earliest(berlin, at("2026-11-26 14:00")) == at("2026-11-27 02:00")
    assert maintenance.earliest(berlin, at("2026-07-01 14:00")) == at("2026-07-02 01:00")
    assert maintenance.describe(WINDOW) == "03:00 for 1h30m, every day (UTC)"
    # A whole day: open at every moment, the window after this one opens as this one closes.
    always = Window(start=time(0, 0), duration=timedelta(hours=24), timezone="UTC")
    for moment in ("2026-11-27 00:00", "2026-11-27 13:37", "2026-11-27 23:59:59"):
        assert maintenance.is_open(always, at(moment)), moment
        assert maintenance.earliest(always, at(moment)) == at(moment)
    assert maintenance.following(always, at("2026-11-27 13:37")) == at("2026-11-28 00:00")
    assert maintenance.describe(always) == "00:00 for 24h, every day (UTC)"
    # Spring forward in Berlin (2026-03-29): the day is 23 h, so Saturday's 24h window still
    # runs when Sunday's opens; a retry waits for Monday's, it is not planned in the past.
    berlin_always = Window(
        start=time(3, 30), duration=timedelta(hours=24), timezone="Europe/Berlin"
    )
    retry = maintenance.following(berlin_always, at("2026-03-29 02:00"))
    assert retry == at("2026-03-30 01:30"), retry


def test_decisions_are_pure_functions_of_the_clock() -> None:
    plan = Plan(snapshot=5, requested=at("2026-11-26 14:00"), planned=at("2026-11-27 03:00"))
    assert decide(Plan(), at("2026-11-27 03:00"), WINDOW, 5, False)[0] is Decision.IDLE
    assert decide(plan, at("2026-11-27 03:00"), WINDOW, None, False) == (Decision.DROP, Plan())
    assert decide(plan, at("2026-11-27 02:59"), WINDOW, 5, False) == (Decision.WAIT, plan)
    assert decide(plan, at("2026-11-27 03:00"), WINDOW, 5, False) == (Decision.REBOOT, plan)
    # A newer default pending by then is what the reboot starts.
    assert decide(plan, at("2026-11-27 03:00"), WINDOW, 6, False)[1].snapshot == 6
    # Locked: five minutes later while the window stays open, else the next window.
    d, p = decide(plan, at("2026-11-27 03:00"), WINDOW, 5, True)
    assert (d, p.planned, p.last_error) == (
        Decision.WAIT,
        at("2026-11-27 03:05"),
        "a transaction is running",
    )
    d, p = decide(plan, at("2026-11-27 04:27"), WINDOW, 5, True)
    assert (d, p.planned) == (Decision.WAIT, at("2026-11-28 03:00"))
    # A plan overdue after downtime: outside the window it waits for the next one.
    d, p = decide(plan, at("2026-11-27 09:00"), WINDOW, 5, False)
    assert (d, p.planned) == (Decision.WAIT, at("2026-11-28 03:00"))


class World:
    """The manager's inputs, under the test's control; reboots are recorded, not done."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pending: int | None = 5
        self.locked = False
        self.refuse: str | None = None
        self.reboots: list[int | None] = []
        self.when: list[datetime] = []  # the real clock at each reboot (for the apscheduler test)

    def reboot(self) -> None:
        self.reboots.append(self.pending)
        self.when.append(datetime.now(UTC))
        if self.refuse:
            raise SystemError_(self.refuse, "")

    def manager(self, locked: object = None) -> Manager:
        return Manager(
            self.root,
            WINDOW,
            pending=lambda: self.pending,
            locked=(lambda: self.locked) if locked is None else locked,  # type: ignore[arg-type]
            reboot=self.reboot,
        )


def _persisted(root: Path) -> dict[str, object]:
    data = json.loads((root / reboot_manager.STATE_FILE).read_text())
    assert isinstance(data, dict)
    return data


def test_pending_reboot_at_14_fires_at_03_next_day_not_before(tmp_path: Path) -> None:
    world = World(tmp_path)
    plan = reboot_manager.request(tmp_path, 5, WINDOW, at("2026-11-26 14:00"))
    assert plan.planned == at("2026-11-27 03:00")
    mgr = world.manager()
    for t in ("2026-11-26 14:00", "2026-11-26 23:59", "2026-11-27 02:59:59"):
        assert mgr.tick(at(t))[0] is Decision.WAIT
    assert world.reboots == []
    decision, after = mgr.tick(at("2026-11-27 03:00"))
    assert decision is Decision.REBOOT and world.reboots == [5]
    # After the attempt the plan looks again only at the next window, in case it was refused.
    assert after.planned == at("2026-11-28 03:00") and after.attempts == 1
    assert mgr.tick(at("2026-11-27 03:01"))[0] is Decision.WAIT and world.reboots == [5]
    # The machine came back in snapshot 5: nothing pending, the plan is dropped.
    world.pending = None
    assert mgr.tick(at("2026-11-27 03:10"))[0] is Decision.DROP
    assert reboot_manager.load(tmp_path) == Plan()


def test_a_running_transaction_postpones_the_reboot(tmp_path: Path) -> None:
    world = World(tmp_path)
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    held = Lock(snapshots)
    mgr = world.manager(locked=Lock(snapshots).is_held)  # the real lock file, as the daemon does
    reboot_manager.request(tmp_path, 5, WINDOW, at("2026-11-26 14:00"))
    held.acquire()
    try:
        decision, plan = mgr.tick(at("2026-11-27 03:00"))
        assert decision is Decision.WAIT and plan.planned == at("2026-11-27 03:05")
        assert mgr.tick(at("2026-11-27 03:05"))[0] is Decision.WAIT
        assert world.reboots == []
    finally:
        held.release()
    assert mgr.tick(at("2026-11-27 03:10"))[0] is Decision.REBOOT
    assert world.reboots == [5]


def test_a_refused_reboot_is_retried_in_the_next_window(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.refuse = "reboot failed: Operation inhibited"
    reboot_manager.request(tmp_path, 5, WINDOW, at("2026-11-26 14:00"))
    mgr = world.manager()
    decision, plan = mgr.tick(at("2026-11-27 03:00"))
    assert decision is Decision.REBOOT and world.reboots == [5]
    assert plan.planned == at("2026-11-28 03:00")
    assert (plan.attempts, plan.last_error) == (1, "reboot failed: Operation inhibited")
    assert mgr.tick(at("2026-11-27 04:00"))[0] is Decision.WAIT
    world.refuse = None
    assert mgr.tick(at("2026-11-28 03:00"))[0] is Decision.REBOOT
    assert world.reboots == [5, 5]


def test_a_restart_keeps_the_plan_and_cancel_drops_it(tmp_path: Path) -> None:
    world = World(tmp_path)
    reboot_manager.request(tmp_path, 5, WINDOW, at("2026-11-26 14:00"))
    world.manager().tick(at("2026-11-26 15:00"))
    # A new process: only the file carries the plan over.
    assert _persisted(tmp_path)["planned"] == "2026-11-27T03:00:00+00:00"
    fresh = world.manager()
    assert fresh.tick(at("2026-11-27 02:00"))[0] is Decision.WAIT
    assert fresh.tick(at("2026-11-27 03:00"))[0] is Decision.REBOOT
    # A second request while one is planned keeps the earlier moment.
    reboot_manager.save(tmp_path, Plan())
    reboot_manager.request(tmp_path, 5, WINDOW, at("2026-11-26 14:00"))
    again = reboot_manager.request(tmp_path, 6, WINDOW, at("2026-11-26 20:00"))
    assert (again.snapshot, again.planned) == (6, at("2026-11-27 03:00"))
    assert reboot_manager.cancel(tmp_path).snapshot == 6
    assert world.manager().tick(at("2026-11-27 03:00"))[0] is Decision.IDLE
    assert world.reboots == [5]


def test_a_garbled_state_file_is_no_plan(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / reboot_manager.STATE_FILE
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert reboot_manager.load(tmp_path) == Plan()
    assert "ignoring unreadable reboot plan" in caplog.text


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[World, Window]]:
    """A real apscheduler-driven manager with a window opening in 2 s for 3 s."""
    start = datetime.now(UTC) + timedelta(seconds=2)
    window = Window(start.time(), timedelta(seconds=3), timezone="UTC")
    world = World(tmp_path)
    mgr = Manager(tmp_path, window, lambda: world.pending, lambda: False, world.reboot)
    stop = threading.Event()
    with reboot_manager.running(tmp_path):
        thread = threading.Thread(target=reboot_manager.serve, args=(mgr, 0.2, stop))
        thread.start()
        try:
            yield world, window
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()


def test_apscheduler_reboots_when_the_window_opens(
    serving: tuple[World, Window], tmp_path: Path
) -> None:
    world, window = serving
    assert reboot_manager.is_running(tmp_path)
    with pytest.raises(LockedError, match="already runs"), reboot_manager.running(tmp_path):
        pass
    now = datetime.now(UTC)
    opens = datetime.combine(now.date(), window.start, tzinfo=UTC)
    reboot_manager.request(tmp_path, 5, window, now)  # noticed by the next poll
    deadline = systime.monotonic() + 10
    while not world.reboots and systime.monotonic() < deadline:
        systime.sleep(0.05)
    assert world.reboots == [5]
    fired = world.when[0]
    # Not before the window opens; on time within scheduling slack (the machine is shared).
    assert opens <= fired < opens + timedelta(seconds=3), (opens, fired)
    plan = reboot_manager.load(tmp_path)
    assert plan.attempts == 1 and plan.planned is not None and plan.planned > fired
    systime.sleep(0.6)  # more polls inside the window: no second reboot
    assert world.reboots == [5]


def test_apscheduler_is_imported_only_by_the_daemon(tmp_path: Path) -> None:
    """`--help`, `config`, `reboot-manager status` stay fast: no apscheduler, no tzlocal."""
    code = (
        "import sys\n"
        "from transactional_update.cli import app as cli\n"
        "for argv in (['--help'], ['--root', sys.argv[1], 'config']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "from transactional_update.reboot import manager as reboot_manager\n"
        "assert not [m for m in sys.modules if m.startswith(('apscheduler', 'tzlocal'))]\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
