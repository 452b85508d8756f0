"""The maintenance window as pure functions of a clock reading: when may the machine reboot?

Everything takes the current time as an argument (an aware datetime), so the reboot manager's
decisions are deterministic under a controlled clock.  A window opens at its start time on each
allowed weekday (in its time zone) and lasts its duration, possibly past midnight; a window that
opened on Sunday 23:00 is still Sunday's window at 00:30 on Monday.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, tzinfo

from transactional_update.config.settings import WEEKDAYS, Window


def zone(window: Window) -> tzinfo:
    """The window's time zone; the system's local zone when none is configured."""
    if window.timezone:
        from zoneinfo import ZoneInfo

        return ZoneInfo(window.timezone)
    local = datetime.now().astimezone().tzinfo
    try:
        import tzlocal  # apscheduler's own dependency: the local zone with its DST rules

        return tzlocal.get_localzone()
    except Exception:  # an unreadable /etc/localtime: today's offset will do
        assert local is not None
        return local


def _opening(window: Window, day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, window.start, tzinfo=tz)


def current_or_next(window: Window, now: datetime) -> tuple[datetime, datetime]:
    """``(opens, closes)`` of the window *now* lies in, or else of the next one (both in UTC).

    The duration is elapsed time: a window over a DST change is as long as configured.
    """
    tz = zone(window)
    today = now.astimezone(tz).date()
    for offset in range(-1, 9):  # yesterday's window may still be open; a week covers any days
        day = today + timedelta(days=offset)
        if window.weekdays and day.weekday() not in window.weekdays:
            continue
        opens = _opening(window, day, tz).astimezone(UTC)
        closes = opens + window.duration
        if closes > now:
            return opens, closes
    raise AssertionError("a window with at least one weekday opens within 8 days")


def is_open(window: Window, now: datetime) -> bool:
    opens, closes = current_or_next(window, now)
    return opens <= now < closes


def earliest(window: Window, now: datetime) -> datetime:
    """The first moment from *now* on at which a reboot is allowed."""
    return max(now, current_or_next(window, now)[0])


def following(window: Window, now: datetime) -> datetime:
    """The opening of the next window that is not the one open at *now* (for retries)."""
    opens, closes = current_or_next(window, now)
    while opens <= now:
        # A day's window of 23h or more overlaps the next one where a DST change shortens
        # the night: the next window may have opened already; the one after it has not.
        opens, closes = current_or_next(window, closes)
    return opens


def describe(window: Window) -> str:
    """``03:30 for 1h30m every day (local time)`` - for status output."""
    days = " ".join(WEEKDAYS[d] for d in window.weekdays) if window.weekdays else "every day"
    h, m = divmod(int(window.duration.total_seconds()) // 60, 60)
    length = (f"{h}h" if h else "") + (f"{m}m" if m or not h else "")
    where = window.timezone or "local time"
    return f"{window.start.strftime('%H:%M')} for {length}, {days} ({where})"
