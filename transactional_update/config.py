"""Configuration: the layered ``KEY=VALUE`` files (read by :mod:`conffile`), validated once into
a frozen :class:`Config`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TypeVar

from transactional_update import conffile
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
    snapper_config: str = conffile.DEFAULT_SNAPPER_CONFIG
    snapper_backend: Backend = Backend.AUTO
    reboot_method: RebootMethod = RebootMethod.AUTO
    update_method: UpdateMethod = UpdateMethod.UP
    package_manager: Manager | None = None  # None: detected in the root
    lock_wait: float = 0.0  # seconds a second invocation waits for the lock before refusing


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
        else:
            log.warning("%s: unknown setting %s ignored", where, key)
    return Config(**kwargs)  # type: ignore[arg-type]


def load(root: Path) -> Config:
    return build(conffile.read(root))
