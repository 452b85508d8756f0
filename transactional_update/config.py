"""Configuration: shell-style ``KEY=VALUE`` files, read once into a frozen :class:`Config`.

Files are read from the managed root, later ones overriding earlier ones key by key, as openSUSE's
tool does: ``/usr/etc/transactional-update.conf`` (distribution defaults), then
``/etc/transactional-update.conf.d/*.conf`` (sorted), then ``/etc/transactional-update.conf``.
"""

from __future__ import annotations

import logging
import math
import shlex
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TypeVar

from transactional_update.errors import ConfigError
from transactional_update.packages import Manager
from transactional_update.snapper import Backend

log = logging.getLogger(__name__)


class RebootMethod(StrEnum):
    AUTO = "auto"
    SYSTEMD = "systemd"
    KEXEC = "kexec"
    KURED = "kured"
    NOTIFY = "notify"
    NONE = "none"


class UpdateMethod(StrEnum):
    UP = "up"
    DUP = "dup"


@dataclass(frozen=True)
class Config:
    bind_dirs: tuple[str, ...] = ("/opt",)
    snapper_config: str = "root"
    snapper_backend: Backend = Backend.AUTO
    reboot_method: RebootMethod = RebootMethod.AUTO
    update_method: UpdateMethod = UpdateMethod.UP
    package_manager: Manager | None = None  # None: detected in the root
    lock_wait: float = 0.0  # seconds a second invocation waits for the lock before refusing
    boot_menu_title: str = "Snapshots"  # the GRUB submenu listing the snapshots
    boot_menu_limit: int = 20  # snapshots in that submenu (the booted and default always)


CONFIG_FILES = (
    "usr/etc/transactional-update.conf",
    "etc/transactional-update.conf.d",
    "etc/transactional-update.conf",
)


def parse(text: str, source: str) -> dict[str, tuple[str, str]]:
    """``{KEY: (value, "file:line")}`` from shell-style assignments; comments and blanks skipped."""
    values: dict[str, tuple[str, str]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        where = f"{source}:{lineno}"
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}", "fix the quoting of that line") from exc
        if not words:
            continue
        key, sep, value = words[0].partition("=")
        if len(words) != 1 or not sep or not key.isidentifier():
            raise ConfigError(
                f"{where}: expected KEY=VALUE, got {raw.strip()!r}",
                'write one assignment per line, quoting values with spaces: KEY="a b"',
            )
        values[key] = (value, where)
    return values


E = TypeVar("E", bound=StrEnum)


def _enum(kind: type[E], value: str, where: str, key: str) -> E:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise ConfigError(
            f"{where}: {key}={value!r} is not one of: {choices}", f"set {key} to one of: {choices}"
        ) from None


def build(values: dict[str, tuple[str, str]]) -> Config:
    """Validate parsed values into a :class:`Config`; unknown keys only warn (newer configs)."""
    kwargs: dict[str, object] = {}
    for key, (value, where) in values.items():
        if key == "BINDDIRS":
            dirs = tuple(value.split())
            for d in dirs:
                p = PurePosixPath(d)
                if not p.is_absolute() or ".." in p.parts or p == PurePosixPath("/"):
                    raise ConfigError(
                        f"{where}: BINDDIRS entry {d!r} is not an absolute directory",
                        'list absolute paths below /, e.g. BINDDIRS="/opt /srv"',
                    )
            kwargs["bind_dirs"] = dirs
        elif key == "SNAPPER_CONFIG":
            if not value or "/" in value:
                raise ConfigError(
                    f"{where}: SNAPPER_CONFIG={value!r} is not a config name",
                    "name a file in /etc/snapper/configs, usually root",
                )
            kwargs["snapper_config"] = value
        elif key == "SNAPPER_BACKEND":
            kwargs["snapper_backend"] = _enum(Backend, value, where, key)
        elif key == "REBOOT_METHOD":
            kwargs["reboot_method"] = _enum(RebootMethod, value, where, key)
        elif key == "UPDATE_METHOD":
            kwargs["update_method"] = _enum(UpdateMethod, value, where, key)
        elif key == "PACKAGE_MANAGER":
            kwargs["package_manager"] = _enum(Manager, value, where, key)
        elif key == "LOCK_WAIT":
            try:
                wait = float(value)
            except ValueError:
                wait = math.nan
            # "nan" would never time out (every comparison with it is false) and "inf" never
            # ends either: a nightly job would hang behind a stuck transaction.
            if not math.isfinite(wait) or wait < 0:
                raise ConfigError(
                    f"{where}: LOCK_WAIT={value!r} is not a number of seconds",
                    "set LOCK_WAIT=0 to refuse at once",
                )
            kwargs["lock_wait"] = wait
        elif key == "BOOT_MENU_TITLE":
            if not value.strip() or not value.isprintable():
                raise ConfigError(
                    f"{where}: BOOT_MENU_TITLE={value!r} is not a one-line title",
                    'set a printable one-line title, e.g. BOOT_MENU_TITLE="Snapshots"',
                )
            kwargs["boot_menu_title"] = value
        elif key == "BOOT_MENU_LIMIT":
            if not value.isdigit() or not value.isascii():
                raise ConfigError(
                    f"{where}: BOOT_MENU_LIMIT={value!r} is not a number of snapshots",
                    "set BOOT_MENU_LIMIT to a whole number like 20 (0: booted and default only)",
                )
            kwargs["boot_menu_limit"] = int(value)
        else:
            log.warning("%s: unknown setting %s ignored", where, key)
    return Config(**kwargs)  # type: ignore[arg-type]


def load(root: Path) -> Config:
    values: dict[str, tuple[str, str]] = {}
    for rel in CONFIG_FILES:
        path = root / rel
        files = sorted(path.glob("*.conf")) if path.is_dir() else [path]
        for f in files:
            try:
                text = f.read_text(encoding="utf-8")
            except (FileNotFoundError, NotADirectoryError):
                # Missing, or a parent is a file (--root names a file; open_root says so).
                continue
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"cannot read {f}: {exc}", "fix the file's permissions or encoding"
                ) from exc
            values.update(parse(text, "/" + rel if f == path else "/" + str(f.relative_to(root))))
    return build(values)
