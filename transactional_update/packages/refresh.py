"""When to refresh repository metadata: a stamp of the last successful refresh, and the decision.

Every package command but ``remove`` starts with a refresh (``apt-get update``, ``zypper refresh``,
``dnf makecache --refresh``): tens to hundreds of milliseconds, or a network round trip, on every
command.  The metadata lives in the shared ``/var`` (the chroot binds ``/var/lib/apt``,
``/var/cache``, ``/var/lib/zypp``), so one refresh serves the next transaction too.  After a
successful refresh a stamp ``/var/lib/transactional-update/refreshed-MANAGER`` (shared ``/var``:
it survives rollbacks, like the metadata it describes) records when it started and a digest of
the repository configuration it read.  The next refresh is skipped while the stamp is younger
than ``REFRESH_DELAY`` and the configuration of the snapshot being changed has the same digest
(zypper's ``repo.refresh.delay`` works alike, per repository).

The decision (:func:`decide`), the stamp's text and the digest are pure; reading the
configuration and the stamp, and writing it, are the functions below them.  The stamp is removed
before a refresh runs and written only when it succeeded, so a failed or interrupted refresh is
retried by the next command.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from transactional_update.config.settings import Manager, show_delay
from transactional_update.files import write_atomic
from transactional_update.paths import resolve_under

log = logging.getLogger(__name__)

STAMP_DIR = "var/lib/transactional-update"

# What decides which metadata a refresh fetches, per manager: files, and directories whose
# every regular file counts (a file added, removed or renamed changes the digest too).
# apt: the sources, apt's configuration (proxies, Acquire:: settings, APT::Architectures) and
# dpkg's foreign architectures (`dpkg --add-architecture` makes apt fetch more indexes).  A package
# that drops a file into apt.conf.d costs one extra refresh; missing a proxy change would cost more.
# zypper and dnf: the repositories, services and variables, the main configuration, and
# os-release (a release upgrade changes $releasever in the repositories' URLs).
CONFIG_FILES: dict[Manager, tuple[str, ...]] = {
    Manager.APT: (
        "etc/apt/sources.list",
        "etc/apt/sources.list.d/",
        "etc/apt/apt.conf",
        "etc/apt/apt.conf.d/",
        "var/lib/dpkg/arch",
    ),
    Manager.ZYPPER: (
        "etc/zypp/repos.d/",
        "etc/zypp/services.d/",
        "etc/zypp/vars.d/",
        "etc/zypp/zypp.conf",
        "etc/os-release",
    ),
    Manager.DNF: (
        "etc/yum.repos.d/",
        "etc/dnf/dnf.conf",
        "etc/dnf/vars/",
        "etc/os-release",
    ),
}


@dataclass(frozen=True)
class Stamp:
    """The last successful refresh: when it started (seconds since the epoch) and what it read."""

    time: float
    config: str  # digest of the repository configuration


@dataclass(frozen=True)
class Decision:
    refresh: bool
    why: str  # for the log: why the refresh runs or is skipped
    age: float | None = None  # seconds since the last refresh, when a valid stamp says so


# -- pure ----------------------------------------------------------------------------------------


def digest(files: Iterable[tuple[str, bytes]]) -> str:
    """A digest of ``(path, content)`` pairs, independent of their order.

    Each file is framed by its path and length, so no two different sets collide by
    concatenation (``a``+``bc`` and ``ab``+``c``).
    """
    h = hashlib.sha256()
    for path, data in sorted(files):
        h.update(f"{path}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def format_stamp(stamp: Stamp) -> str:
    return json.dumps({"time": stamp.time, "config": stamp.config}) + "\n"


def parse_stamp(text: str) -> Stamp | None:
    """The stamp in *text*, or None when it is not one (a garbled stamp means: refresh)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    when, config = data.get("time"), data.get("config")
    if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
        return None
    if not isinstance(config, str) or not config:
        return None
    return Stamp(float(when), config)


def decide(stamp: Stamp | None, config: str, now: float, delay: timedelta) -> Decision:
    """Whether to refresh, given the last refresh's *stamp*, the configuration's digest *config*,
    the time *now* (seconds since the epoch) and ``REFRESH_DELAY`` (*delay*; 0: always)."""
    if delay <= timedelta(0):
        return Decision(True, "REFRESH_DELAY=0")
    if stamp is None:
        return Decision(True, "no record of an earlier refresh")
    age = now - stamp.time
    if age < 0:
        # The clock went back (or the stamp came from a machine ahead of this one): how old the
        # metadata is cannot be known, so it counts as old.
        return Decision(True, "the last refresh is dated in the future")
    if stamp.config != config:
        return Decision(True, "the repository configuration changed since the last refresh", age)
    if age >= delay.total_seconds():
        return Decision(True, f"the last refresh is {age:.0f} s old", age)
    return Decision(
        False,
        f"repository metadata refreshed {age:.0f} s ago; not refreshing "
        f"(REFRESH_DELAY={show_delay(delay)})",
        age,
    )


# -- I/O -----------------------------------------------------------------------------------------


def stamp_path(root: Path, manager: Manager) -> Path:
    """The stamp in the managed root's shared ``/var``."""
    return resolve_under(root, f"{STAMP_DIR}/refreshed-{manager}")


def read_config(snapshot: Path, manager: Manager) -> list[tuple[str, bytes]]:
    """The repository configuration of the system at *snapshot*: ``(path, content)`` pairs."""
    found: list[tuple[str, bytes]] = []
    for rel in CONFIG_FILES[manager]:
        if rel.endswith("/"):
            directory = resolve_under(snapshot, rel)
            try:
                names = sorted(p.name for p in directory.iterdir())
            except OSError:  # missing, or not a directory
                continue
            paths = [rel + name for name in names]
        else:
            paths = [rel]
        for path in paths:
            try:
                data = resolve_under(snapshot, path).read_bytes()
            except OSError:  # missing, a directory, a dangling link: not configuration
                continue
            found.append((path, data))
    return found


def load_stamp(root: Path, manager: Manager) -> Stamp | None:
    try:
        text = stamp_path(root, manager).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return parse_stamp(text)


def clear_stamp(root: Path, manager: Manager) -> None:
    """Forget the last refresh before the next one runs: if that fails, the next command retries."""
    try:
        stamp_path(root, manager).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove the record of the last refresh: %s", exc)


def save_stamp(root: Path, manager: Manager, stamp: Stamp) -> None:
    """Record a successful refresh; a stamp that cannot be written only costs a refresh."""
    try:
        write_atomic(stamp_path(root, manager), format_stamp(stamp))
    except OSError as exc:
        log.warning("cannot record the refresh of the repository metadata: %s", exc)
