"""The reboot manager: reboots into a pending snapshot, but only inside the maintenance window.

A reboot request (``REBOOT_METHOD=rebootmgr``, or ``auto`` while the manager runs) becomes a *plan*
persisted in ``/var/lib/transactional-update/reboot-manager.json`` of the managed root (shared
``/var``: a daemon restart or a rollback keeps it).  The decisions are pure (:func:`decide`, over
the clock reading, the plan, whether a snapshot is pending and whether a transaction holds the
lock), so they are tested under a controlled clock; :class:`Manager` applies one decision, and
:func:`serve` drives it with apscheduler (imported only there: ``--help`` stays fast).

Rules: never outside the window; never while a transaction runs (retry a little later in the same
window, else at the next one); a refused reboot (the command fails) is retried at the next window;
a plan whose snapshot is no longer pending (booted, rolled back) is dropped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transactional_update.config.settings import Window
from transactional_update.core.lock import is_locked
from transactional_update.errors import LockedError, SystemError_, TUError
from transactional_update.files import write_atomic
from transactional_update.reboot import maintenance, slotstate
from transactional_update.reboot.slots import Postponed

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

STATE_FILE = "var/lib/transactional-update/reboot-manager.json"
LOCK_FILE = "var/lib/transactional-update/reboot-manager.lock"
RETRY = timedelta(minutes=5)  # how soon to look again while a transaction holds the lock


@dataclass(frozen=True)
class Plan:
    snapshot: int | None = None  # the snapshot the reboot is for; None: nothing planned
    requested: datetime | None = None
    planned: datetime | None = None  # not before this moment (always inside a window)
    attempts: int = 0  # reboot commands run for this plan
    last_error: str | None = None  # why the last attempt was refused or postponed

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("requested", "planned"):
            d[k] = d[k].isoformat() if d[k] is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        def when(v: Any) -> datetime | None:
            return datetime.fromisoformat(v) if isinstance(v, str) else None

        snap = d.get("snapshot")
        return cls(
            snapshot=snap if isinstance(snap, int) else None,
            requested=when(d.get("requested")),
            planned=when(d.get("planned")),
            attempts=int(d.get("attempts") or 0),
            last_error=d.get("last_error") if isinstance(d.get("last_error"), str) else None,
        )


def load(root: Path) -> Plan:
    """The persisted plan; a missing or garbled file is no plan (logged)."""
    try:
        data = json.loads((root / STATE_FILE).read_text(encoding="utf-8"))
        return Plan.from_json(data) if isinstance(data, dict) else Plan()
    except FileNotFoundError:
        return Plan()
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring unreadable reboot plan /%s: %s", STATE_FILE, exc)
        return Plan()


def save(root: Path, plan: Plan) -> None:
    """Write atomically (a crash leaves the old plan or the new one)."""
    write_atomic(root / STATE_FILE, json.dumps(plan.to_json(), indent=2) + "\n")


def request(root: Path, snapshot: int, window: Window, now: datetime) -> Plan:
    """Plan a reboot into *snapshot* at the earliest moment the window allows."""
    old = load(root)
    if old.snapshot is not None and old.planned is not None and old.planned > now:
        plan = replace(old, snapshot=snapshot)  # already planned: a newer default rides along
    else:
        plan = Plan(snapshot, now, maintenance.earliest(window, now))
    save(root, plan)
    return plan


def cancel(root: Path) -> Plan:
    """Drop the plan; returns what was planned."""
    old = load(root)
    if old.snapshot is not None:
        save(root, Plan())
    return old


class Decision(StrEnum):
    IDLE = "idle"  # nothing planned
    DROP = "drop"  # the planned snapshot is not pending any more
    WAIT = "wait"  # not yet: outside the window, before the planned moment, or locked
    REBOOT = "reboot"


def decide(
    plan: Plan,
    now: datetime,
    window: Window,
    pending: int | None,
    locked: bool,
    retry: timedelta = RETRY,
) -> tuple[Decision, Plan]:
    """What to do at *now*, and the plan afterwards (before any reboot attempt)."""
    if plan.snapshot is None:
        return Decision.IDLE, plan
    if pending is None:
        return Decision.DROP, Plan()
    plan = replace(plan, snapshot=pending)  # a newer default boots as well
    if plan.planned is not None and now < plan.planned:
        return Decision.WAIT, plan
    opens, closes = maintenance.current_or_next(window, now)
    if now < opens:
        return Decision.WAIT, replace(plan, planned=opens)
    if locked:
        later = now + retry
        planned = later if later < closes else maintenance.following(window, now)
        return Decision.WAIT, replace(plan, planned=planned, last_error="a transaction is running")
    return Decision.REBOOT, plan


def after_attempt(plan: Plan, window: Window, now: datetime, error: str | None) -> Plan:
    """The plan after a reboot command ran: look again at the next window only.

    A successful command normally ends this process with the machine; if the machine is still
    up at the next window (the reboot was refused later, e.g. by an inhibitor), it tries again.
    """
    return replace(
        plan,
        planned=maintenance.following(window, now),
        attempts=plan.attempts + 1,
        last_error=error,
    )


@dataclass
class Manager:
    """One root's reboot manager; every input that depends on the world is injected."""

    root: Path
    window: Window
    pending: Callable[[], int | None]  # the default snapshot when it is not the booted one
    locked: Callable[[], bool]  # whether a transaction runs
    reboot: Callable[[], None]  # reboots (raises TUError when refused, Postponed: not yet)
    retry: timedelta = RETRY
    # Runs first at every tick (a fleet reboot slot that is still to be given back).
    housekeeping: Callable[[datetime], None] | None = None

    def tick(self, now: datetime) -> tuple[Decision, Plan]:
        if self.housekeeping is not None:
            try:
                self.housekeeping(now)
            except TUError as exc:
                log.error("%s", exc.message)
        old = load(self.root)
        decision, plan = decide(old, now, self.window, self.pending(), self.locked(), self.retry)
        if decision is Decision.REBOOT:
            log.info("the reboot into snapshot %s is due (maintenance window)", plan.snapshot)
            # Recorded first: should the reboot end this process, the plan says it was tried.
            save(self.root, after_attempt(plan, self.window, now, "reboot did not happen"))
            error = None
            try:
                self.reboot()
            except Postponed as exc:
                # No slot from the fleet yet: ask again after the back-off (decide keeps it
                # inside the window).
                plan = replace(plan, planned=exc.until, last_error=exc.message)
                save(self.root, plan)
                return Decision.WAIT, plan
            except TUError as exc:
                error = exc.message
                log.error("reboot refused: %s; retrying in the next window", error)
            plan = after_attempt(plan, self.window, now, error)
        elif decision is Decision.DROP:
            log.info("snapshot %s is not pending any more; reboot plan dropped", old.snapshot)
        elif decision is Decision.WAIT and plan != old:
            log.info("reboot into snapshot %s planned for %s", plan.snapshot, plan.planned)
        if plan != old:
            save(self.root, plan)
        return decision, plan


def _open_lock(root: Path) -> int:
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def is_running(root: Path) -> bool:
    """Whether a reboot manager serves *root* now (it holds its lock file for its whole life)."""
    return is_locked(root / LOCK_FILE)


@contextlib.contextmanager
def running(root: Path) -> Iterator[None]:
    """Hold the manager's lock: one manager per root, and :func:`is_running` sees it."""
    try:
        fd = _open_lock(root)
    except OSError as exc:
        raise SystemError_(
            f"cannot open /{LOCK_FILE}: {exc.strerror}", "check that /var/lib is writable"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise LockedError(
                "the reboot manager already runs for this system",
                "see: transactional-update reboot-manager status",
            ) from None
        raise
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def serve(manager: Manager, poll: float, stop: threading.Event) -> None:
    """Run *manager* until *stop* is set: at the planned moment, and every *poll* seconds.

    The poll notices plans made or cancelled by other commands (``reboot``, ``cancel``); the
    date job makes the reboot happen on time rather than on the poll's grid.
    """
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(timezone=UTC)
    serial = threading.Lock()  # the poll and the date job must not decide concurrently

    def run() -> None:
        with serial:
            try:
                _, plan = manager.tick(datetime.now(UTC))
            except Exception:
                log.exception("reboot manager tick failed")
                return
            if plan.snapshot is not None and plan.planned is not None:
                scheduler.add_job(
                    run, "date", run_date=plan.planned, id="planned", replace_existing=True
                )
            elif scheduler.get_job("planned") is not None:
                scheduler.remove_job("planned")

    scheduler.add_job(
        run, "interval", seconds=poll, id="poll", next_run_time=datetime.now(UTC), max_instances=1
    )
    scheduler.start()
    try:
        stop.wait()
    finally:
        scheduler.shutdown(wait=True)


def status(root: Path, window: Window, pending: int | None, now: datetime) -> dict[str, Any]:
    plan = load(root)
    opens, closes = maintenance.current_or_next(window, now)
    return {
        "running": is_running(root),
        "window": {
            "start": window.start.strftime("%H:%M"),
            "duration_minutes": int(window.duration.total_seconds() // 60),
            "weekdays": list(window.weekdays),
            "timezone": window.timezone or None,
            "open": opens <= now < closes,
            "next_opens": opens.isoformat(),
            "next_closes": closes.isoformat(),
        },
        "pending_snapshot": pending,
        "plan": plan.to_json() if plan.snapshot is not None else None,
        "reboot_slot": slotstate.read(root),
    }


def status_text(st: dict[str, Any], window: Window) -> str:
    pending = st["pending_snapshot"]
    lines = [
        f"window:   {maintenance.describe(window)}"
        + (" - open now" if st["window"]["open"] else f"; next opens {st['window']['next_opens']}"),
        f"manager:  {'running' if st['running'] else 'not running'}",
        f"pending:  {'none' if pending is None else f'snapshot {pending}'}",
    ]
    plan = st["plan"]
    if plan is None:
        lines.append("planned:  no reboot planned")
    else:
        lines.append(f"planned:  reboot into snapshot {plan['snapshot']} at {plan['planned']}")
        if plan["attempts"] or plan["last_error"]:
            lines.append(f"attempts: {plan['attempts']}; last: {plan['last_error'] or 'ok'}")
    slot = slotstate.describe(st.get("reboot_slot"))
    if slot is not None:
        lines.append(f"slot:     {slot}")
    return "\n".join(lines)
