"""Configuration: the layered ``KEY=VALUE`` files (read by :mod:`.conffile`), validated once into
a frozen :class:`Config`.

Every key is described once in :data:`KEYS` (parser, renderer, allowed values), so validation,
``transactional-update config`` and the README cannot disagree.  The :class:`Config` remembers
where each value came from (``file:line``) for ``transactional-update config``.
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import time, timedelta
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from transactional_update.config import conffile
from transactional_update.errors import ConfigError

log = logging.getLogger(__name__)


class Backend(StrEnum):
    """How snapper is driven (SNAPPER_BACKEND)."""

    AUTO = "auto"
    DBUS = "dbus"
    CLI = "cli"


class Manager(StrEnum):
    """The package manager (PACKAGE_MANAGER; by default detected in the root)."""

    APT = "apt"
    ZYPPER = "zypper"
    DNF = "dnf"


class RebootMethod(StrEnum):
    AUTO = "auto"  # the reboot manager when it runs, else systemd
    SYSTEMD = "systemd"
    KEXEC = "kexec"
    NOTIFY = "notify"
    KURED = "kured"
    REBOOTMGR = "rebootmgr"
    # The reboot manager reboots only with a slot of the fleet's: a FleetLock server (Zincati's
    # protocol, e.g. airlock) or a semaphore in etcd.
    FLEETLOCK = "fleetlock"
    ETCD_LOCK = "etcd-lock"
    NONE = "none"


class FailedUnits(StrEnum):
    """What a unit that failed at boot means for the boot check (HEALTH_FAILED_UNITS)."""

    REQUIRED = "required"  # a bad boot
    WANTED = "wanted"  # a warning
    IGNORE = "ignore"


class UpdateMethod(StrEnum):
    UP = "up"
    DUP = "dup"
    PATCH = "patch"


WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class Window:
    """The maintenance window: when the reboot manager may reboot.

    It opens at *start* on each of *weekdays* (0 = Monday; empty: every day) and stays open for
    *duration*, which may run past midnight.  Times are wall-clock times in *timezone* (an IANA
    name; empty: the system's local time).
    """

    start: time = time(3, 30)  # openSUSE rebootmgr's default window: 03:30 for 1h30m
    duration: timedelta = timedelta(minutes=90)
    weekdays: tuple[int, ...] = ()
    timezone: str = ""


@dataclass(frozen=True)
class Config:
    bind_dirs: tuple[str, ...] = ("/opt",)
    snapper_config: str = conffile.DEFAULT_SNAPPER_CONFIG
    snapper_backend: Backend = Backend.AUTO
    reboot_method: RebootMethod = RebootMethod.AUTO
    update_method: UpdateMethod = UpdateMethod.UP
    package_manager: Manager | None = None  # None: detected in the root
    lock_wait: float = 0.0  # seconds a second invocation waits for the lock before refusing
    health_check_timeout: float = 60.0  # seconds one health check may run before it is killed
    # Units that must be active once the system is up; the boot check fails without them.
    health_required_units: tuple[str, ...] = ()
    # Any failed unit is only a warning by default: one flaky unit that fails on every
    # snapshot alike would otherwise turn away every update.
    health_failed_units: FailedUnits = FailedUnits.WANTED
    # Units ``apply --restart-services`` leaves alone (glob patterns), besides those it never
    # restarts (systemd, the bus, sessions, consoles, display managers).
    apply_no_restart: tuple[str, ...] = ()
    # How often GRUB boots a new default before it falls back to the last known-good snapshot
    # (0: no boot counting).
    boot_tries: int = 3
    window: Window = Window()
    # Fleet reboots (REBOOT_METHOD=fleetlock, etcd-lock): where the slots are, and whose.
    fleetlock_url: str = ""
    fleetlock_group: str = "default"  # the group of machines that share the slots (etcd too)
    etcd_endpoints: tuple[str, ...] = ()
    reboot_slots: int = 1  # etcd-lock: machines of a group rebooting at once (FleetLock: server's)
    # The commands that act on the machine, configurable so that a system managed from elsewhere
    # (--root) can name how it is rebooted, and so that tests record instead of rebooting.
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")
    kexec_load_command: tuple[str, ...] = ("kexec",)
    kexec_command: tuple[str, ...] = ("systemctl", "kexec")
    notify_command: tuple[str, ...] = ("wall",)
    boot_menu_title: str = "Snapshots"  # the GRUB submenu listing the snapshots
    boot_menu_limit: int = 20  # snapshots in that submenu (the booted and default always)
    # How long a successful refresh of the repository metadata serves later package commands
    # (packages/refresh.py); zypper's own repo.refresh.delay is 10 minutes too.
    refresh_delay: timedelta = timedelta(minutes=10)
    # KEY -> "file:line" for every key a file set; keys not listed have their default.
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def source(self, key: str) -> str | None:
        return dict(self.sources).get(key)


class _Bad(Exception):
    """A value a key's parser refuses: the message (after ``file:line: ``) and the hint."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


E = TypeVar("E", bound=StrEnum)


def _choices(kind: type[StrEnum]) -> str:
    return ", ".join(m.value for m in kind)


def _enum(kind: type[E]) -> Callable[[str, str], E]:
    def parse_enum(key: str, value: str) -> E:
        try:
            return kind(value)
        except ValueError:
            choices = _choices(kind)
            raise _Bad(
                f"{key}={value!r} is not one of: {choices}", f"set {key} to one of: {choices}"
            ) from None

    return parse_enum


def _bind_dirs(key: str, value: str) -> tuple[str, ...]:
    dirs = tuple(value.split())
    for d in dirs:
        p = PurePosixPath(d)
        if not p.is_absolute() or ".." in p.parts or p == PurePosixPath("/"):
            raise _Bad(
                f"BINDDIRS entry {d!r} is not an absolute directory",
                'list absolute paths below /, e.g. BINDDIRS="/opt /srv"',
            )
    return dirs


def _snapper_config(key: str, value: str) -> str:
    if not value or "/" in value:
        raise _Bad(
            f"SNAPPER_CONFIG={value!r} is not a config name",
            "name a file in /etc/snapper/configs, usually root",
        )
    return value


def _lock_wait(key: str, value: str) -> float:
    try:
        wait = float(value)
    except ValueError:
        wait = math.nan
    # "nan" would never time out (every comparison with it is false) and "inf" never
    # ends either: a nightly job would hang behind a stuck transaction.
    if not math.isfinite(wait) or wait < 0:
        raise _Bad(
            f"LOCK_WAIT={value!r} is not a number of seconds", "set LOCK_WAIT=0 to refuse at once"
        )
    return wait


def _timeout(key: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise _Bad(f"{key}={value!r} is not a number of seconds", f"set {key}=60, for example")
    return seconds


def _unit_words(key: str, value: str, *, patterns: bool) -> tuple[str, ...]:
    import re

    allowed = r"[A-Za-z0-9:_.\\@*?\[\]-]+" if patterns else r"[A-Za-z0-9:_.\\@-]+"
    what, example = (
        ("unit name or pattern", "postgresql* nginx")
        if patterns
        else ("unit name", "sshd.service nginx.service")
    )
    words = tuple(value.split())
    for word in words:
        if not re.fullmatch(allowed, word) or word.startswith("-"):
            raise _Bad(
                f"{key}: {word!r} is not a {what}",
                f"list {what.replace('name', 'names').replace('pattern', 'patterns')} separated "
                f'by spaces, e.g. {key}="{example}"',
            )
    return words


def _units(key: str, value: str) -> tuple[str, ...]:
    units = _unit_words(key, value, patterns=False)
    return tuple(u if "." in u else f"{u}.service" for u in units)


def _unit_patterns(key: str, value: str) -> tuple[str, ...]:
    return _unit_words(key, value, patterns=True)


MAX_BOOT_TRIES = 9  # GRUB counts down with one branch per value (it has no arithmetic)


def _boot_tries(key: str, value: str) -> int:
    if not value.isdigit() or not value.isascii() or int(value) > MAX_BOOT_TRIES:
        raise _Bad(
            f"{key}={value!r} is not a number of tries from 0 to {MAX_BOOT_TRIES}",
            f"set {key}=3, for example (0: no boot counting)",
        )
    return int(value)


def _package_manager(key: str, value: str) -> Manager | None:
    return None if value == "" else _enum(Manager)(key, value)


MANAGERS = ", ".join(Manager)


def _command(key: str, value: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(value))
    except ValueError as exc:
        raise _Bad(f"{key}={value!r} is not a command line ({exc})", "fix the quoting") from None
    if not argv:
        raise _Bad(
            f"{key} is empty", f'name a command, e.g. {key}="{shlex.join(_DEFAULT_COMMANDS[key])}"'
        )
    return argv


def _window_start(key: str, value: str) -> time:
    import re  # here: most systems set no window, and status avoids regex at start-up

    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", value)
    if m is None:
        raise _Bad(f"{key}={value!r} is not a time of day HH:MM", f"set e.g. {key}=03:30")
    return time(int(m.group(1)), int(m.group(2)))


def _window_duration(key: str, value: str) -> timedelta:
    import re

    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?:in)?)?", value)
    minutes = (
        int(m.group(1) or 0) * 60 + int(m.group(2) or 0)
        if m is not None and (m.group(1) or m.group(2))
        else -1
    )
    # 24h is "any time" (each day's window ends as the next opens: fleet reboots want that); more
    # would overlap the next day's window and make "the window after this one" meaningless.
    if not 0 < minutes <= 24 * 60:
        raise _Bad(
            f"{key}={value!r} is not a duration between 1m and 24h",
            f"write hours and minutes, e.g. {key}=1h30m or {key}=45m",
        )
    return timedelta(minutes=minutes)


def _weekday(name: str) -> int | None:
    for i, day in enumerate(WEEKDAYS):
        if name.lower() in (day.lower(), day.lower()[:2]):
            return i
    return None


def _window_days(key: str, value: str) -> tuple[int, ...]:
    days: set[int] = set()
    for part in value.replace(",", " ").split():
        first, sep, last = part.partition("-")
        a, b = _weekday(first), _weekday(last) if sep else _weekday(first)
        if a is None or b is None:
            raise _Bad(
                f"{key}={value!r}: {part!r} is not a weekday or range of weekdays",
                f"use {' '.join(WEEKDAYS)} or ranges like Mon-Fri; empty means every day",
            )
        day = a
        days.add(day)
        while day != b:  # Fri-Mon wraps over the weekend
            day = (day + 1) % 7
            days.add(day)
    return tuple(sorted(days))


def _timezone(key: str, value: str) -> str:
    if value == "":
        return value
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise _Bad(
            f"{key}={value!r} is not a known time zone",
            f"name one from /usr/share/zoneinfo, e.g. {key}=Europe/Berlin or UTC; "
            "empty means the system's local time",
        ) from None
    return value


def _boot_menu_title(key: str, value: str) -> str:
    if not value.strip() or not value.isprintable():
        raise _Bad(
            f"{key}={value!r} is not a one-line title",
            f'set a printable one-line title, e.g. {key}="Snapshots"',
        )
    return value


def _boot_menu_limit(key: str, value: str) -> int:
    if not value.isdigit() or not value.isascii():
        raise _Bad(
            f"{key}={value!r} is not a number of snapshots",
            f"set {key} to a whole number like 20 (0: booted and default only)",
        )
    return int(value)


def _url(key: str, value: str) -> str:
    from urllib.parse import urlsplit

    if value == "":
        return ""  # unset, as `config` prints a default
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
        raise _Bad(
            f"{key}={value!r} is not an http or https URL",
            f"set {key}=http://HOST:PORT (the lock server's base URL, without /v1)",
        )
    return value.rstrip("/")


def _urls(key: str, value: str) -> tuple[str, ...]:
    return tuple(_url(key, v) for v in value.replace(",", " ").split())


def _group(key: str, value: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", value):
        raise _Bad(
            f"{key}={value!r} is not a group name",
            f"use letters, digits, '.', '_' and '-', e.g. {key}=workers",
        )
    return value


def _slots(key: str, value: str) -> int:
    if not value.isdigit() or not value.isascii() or not 1 <= int(value) <= 10000:
        raise _Bad(
            f"{key}={value!r} is not a number of slots",
            f"set {key} to how many machines of a group may reboot at once, e.g. {key}=2",
        )
    return int(value)


# A day or more would let the nightly update run on the previous night's metadata.
MAX_REFRESH_DELAY = timedelta(hours=24)


def _refresh_delay(key: str, value: str) -> timedelta:
    import re

    m = re.fullmatch(r"(?:(\d{1,5})h)?(?:(\d{1,7})m(?:in)?)?(?:(\d{1,9})s)?", value)
    if value == "0":
        return timedelta(0)
    if m is None or not any(m.groups()):
        raise _Bad(
            f"{key}={value!r} is not a duration",
            f"write hours, minutes or seconds, e.g. {key}=10m, {key}=1h or {key}=90s "
            "(0: refresh before every package command)",
        )
    h, mins, s = (int(g or 0) for g in m.groups())
    delay = timedelta(hours=h, minutes=mins, seconds=s)
    if delay > MAX_REFRESH_DELAY:
        raise _Bad(
            f"{key}={value!r} is longer than 24h",
            "the nightly update would use old metadata; set at most 24h (default 10m)",
        )
    return delay


def show_delay(d: timedelta) -> str:
    """``10m``, ``1h30m``, ``45s``, ``0``: a REFRESH_DELAY as its key writes it."""
    total = int(d.total_seconds())
    if total <= 0:
        return "0"
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((h, "h"), (m, "m"), (s, "s")) if n)


def _show_duration(d: timedelta) -> str:
    h, m = divmod(int(d.total_seconds()) // 60, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if m or not h else "")


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return " ".join(value)
    if isinstance(value, time):
        return value.strftime("%H:%M")
    if isinstance(value, timedelta):
        return _show_duration(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Key:
    name: str
    field: str  # Config field, or "window.FIELD"
    parse: Callable[[str, str], Any]
    allowed: str  # for `config` and the README
    show: Callable[[Any], str] = _show


_DEFAULT_COMMANDS = {
    "REBOOT_COMMAND": Config.reboot_command,
    "KEXEC_LOAD_COMMAND": Config.kexec_load_command,
    "KEXEC_COMMAND": Config.kexec_command,
    "NOTIFY_COMMAND": Config.notify_command,
}

KEYS: tuple[Key, ...] = (
    Key("UPDATE_METHOD", "update_method", _enum(UpdateMethod), _choices(UpdateMethod)),
    Key("REBOOT_METHOD", "reboot_method", _enum(RebootMethod), _choices(RebootMethod)),
    Key("MAINTENANCE_WINDOW_START", "window.start", _window_start, "HH:MM"),
    Key("MAINTENANCE_WINDOW_DURATION", "window.duration", _window_duration, "e.g. 1h30m, 45m"),
    Key(
        "MAINTENANCE_WINDOW_DAYS",
        "window.weekdays",
        _window_days,
        "weekdays or ranges (Mon-Fri Sun); empty: every day",
        lambda days: " ".join(WEEKDAYS[d] for d in days),
    ),
    Key("MAINTENANCE_WINDOW_TIMEZONE", "window.timezone", _timezone, "IANA name; empty: local"),
    Key("FLEETLOCK_URL", "fleetlock_url", _url, "http(s) URL of a FleetLock server"),
    Key("FLEETLOCK_GROUP", "fleetlock_group", _group, "a group name (fleetlock, etcd-lock)"),
    Key("ETCD_ENDPOINTS", "etcd_endpoints", _urls, "http(s) URLs of etcd, space-separated"),
    Key("REBOOT_SLOTS", "reboot_slots", _slots, "1 or more (etcd-lock)"),
    Key("BINDDIRS", "bind_dirs", _bind_dirs, "absolute directories"),
    Key(
        "PACKAGE_MANAGER",
        "package_manager",
        _package_manager,
        MANAGERS + "; empty: detect",
    ),
    Key(
        "REFRESH_DELAY",
        "refresh_delay",
        _refresh_delay,
        "a duration (10m, 1h, 90s); 0: always refresh",
        show_delay,
    ),
    Key("SNAPPER_CONFIG", "snapper_config", _snapper_config, "a snapper config name"),
    Key("SNAPPER_BACKEND", "snapper_backend", _enum(Backend), _choices(Backend)),
    Key("LOCK_WAIT", "lock_wait", _lock_wait, "seconds"),
    Key("HEALTH_CHECK_TIMEOUT", "health_check_timeout", _timeout, "seconds"),
    Key("HEALTH_REQUIRED_UNITS", "health_required_units", _units, "unit names"),
    Key(
        "HEALTH_FAILED_UNITS",
        "health_failed_units",
        _enum(FailedUnits),
        _choices(FailedUnits),
    ),
    Key("APPLY_NO_RESTART", "apply_no_restart", _unit_patterns, "unit names or patterns"),
    Key("BOOT_TRIES", "boot_tries", _boot_tries, f"0 to {MAX_BOOT_TRIES}; 0: no boot counting"),
    Key("REBOOT_COMMAND", "reboot_command", _command, "a command line"),
    Key("KEXEC_LOAD_COMMAND", "kexec_load_command", _command, "a command line (kexec)"),
    Key("KEXEC_COMMAND", "kexec_command", _command, "a command line"),
    Key("NOTIFY_COMMAND", "notify_command", _command, "a command line (wall)"),
    Key("BOOT_MENU_TITLE", "boot_menu_title", _boot_menu_title, "a one-line title"),
    Key("BOOT_MENU_LIMIT", "boot_menu_limit", _boot_menu_limit, "snapshots in the GRUB submenu"),
)
KEY_BY_NAME = {k.name: k for k in KEYS}


def build(values: dict[str, tuple[str, str]]) -> Config:
    """Validate parsed values into a :class:`Config`; unknown keys only warn (newer configs)."""
    kwargs: dict[str, Any] = {}
    window: dict[str, Any] = {}
    sources: list[tuple[str, str]] = []
    for name, (value, where) in values.items():
        key = KEY_BY_NAME.get(name)
        if key is None:
            log.warning("%s: unknown setting %s ignored", where, name)
            continue
        try:
            parsed = key.parse(name, value)
        except _Bad as bad:
            raise ConfigError(f"{where}: {bad.message}", bad.hint) from None
        target, _, sub = key.field.partition(".")
        (window if sub else kwargs)[sub or target] = parsed
        sources.append((name, where))
    if window:
        kwargs["window"] = Window(**window)
    return Config(**kwargs, sources=tuple(sources))


def value_of(cfg: Config, key: Key) -> Any:
    target, _, sub = key.field.partition(".")
    value = getattr(cfg, target)
    return getattr(value, sub) if sub else value


def load(root: Path) -> Config:
    return build(conffile.read(root))


def describe(cfg: Config) -> list[dict[str, Any]]:
    """The effective configuration: every key with its value and where it came from."""
    return [
        {
            "key": k.name,
            "value": k.show(value_of(cfg, k)),
            "source": cfg.source(k.name) or "default",
            "allowed": k.allowed,
        }
        for k in KEYS
    ]


def show(cfg: Config, as_json: bool) -> str:
    import json

    rows = describe(cfg)
    if as_json:
        return json.dumps(
            {r["key"]: {"value": r["value"], "source": r["source"]} for r in rows}, indent=2
        )
    lines = [f"{r['key']}={shlex.quote(r['value']) if r['value'] else ''}" for r in rows]
    width = max(len(x) for x in lines)
    return "\n".join(f"{x:<{width}}  # {r['source']}" for x, r in zip(lines, rows, strict=True))


assert {k.field for k in KEYS if "." not in k.field} | {"window", "sources"} == {
    f.name for f in fields(Config)
}, "every Config field has a key"
