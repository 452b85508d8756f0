"""Which running programs still use files that ``apply`` replaced, and which of them to restart.

As needrestart does, from ``/proc/PID/maps``: every file a process maps (its executable, its
libraries) is listed there with the device and inode it had when it was mapped.  A mapping is
stale when its path now names another file: gone, another inode (package managers unpack to a new
file and rename it over the old one), or, for a path the change replaced in place, another
subvolume (read from ``/proc/PID/map_files``, as ``maps`` shows btrfs's device, not the
subvolume's).  Files a snapshot did not change keep their inode number in it, so an unchanged
library is not stale although it now lies in the applied snapshot's subvolume.

The parsers and the restart policy are pure; :func:`scan` reads ``/proc``.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from transactional_update.snapshots.system import USERSPACE

log = logging.getLogger(__name__)

# Units a restart would take down with more than themselves: systemd is re-executed instead; the
# bus, user managers, consoles and display managers end the sessions that run on them.
NEVER_RESTART = (
    ("init.scope", "systemd itself (re-executed instead)"),
    ("dbus.service", "the D-Bus daemon: every bus client would lose its connection"),
    ("dbus-broker.service", "the D-Bus daemon: every bus client would lose its connection"),
    ("user@*.service", "a user's service manager: the user's session would end"),
    ("getty@*.service", "a login console: its session would end"),
    ("serial-getty@*.service", "a login console: its session would end"),
    ("console-getty.service", "a login console: its session would end"),
    ("gdm*.service", "a display manager: the graphical sessions would end"),
    ("sddm.service", "a display manager: the graphical sessions would end"),
    ("lightdm.service", "a display manager: the graphical sessions would end"),
    ("display-manager.service", "a display manager: the graphical sessions would end"),
    ("xdm.service", "a display manager: the graphical sessions would end"),
    ("lxdm.service", "a display manager: the graphical sessions would end"),
    ("nodm.service", "a display manager: the graphical sessions would end"),
    # As needrestart: their restart can end the sessions or cut the connection apply runs over.
    ("systemd-logind.service", "the login manager: sessions may end (needrestart skips it too)"),
    ("NetworkManager.service", "the network: the connection apply runs over may drop"),
    ("wpa_supplicant*.service", "the network: the connection apply runs over may drop"),
    ("openvpn*.service", "a VPN: the connection apply runs over may drop"),
    ("wg-quick@*.service", "a VPN: the connection apply runs over may drop"),
)


@dataclass(frozen=True)
class Mapping:
    device: tuple[int, int]  # major, minor
    inode: int
    path: str
    deleted: bool
    # Its address ranges as /proc/PID/map_files names them ("7f00-7f80"): maps shows btrfs's one
    # device for every subvolume, so an old and a new file of one path and inode number (a
    # library rewritten in place, loaded before and after) are one entry here, told apart there.
    spans: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stale:
    """A process that still maps files the change replaced."""

    pid: int
    command: str
    unit: str | None  # its systemd unit (``x.service``, ``session-3.scope``), None: not systemd's
    files: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {"pid": self.pid, "command": self.command, "unit": self.unit, "files": [*self.files]}


def parse_maps(text: str) -> list[Mapping]:
    """The file mappings of one ``/proc/PID/maps`` (anonymous and special ones left out)."""
    out: dict[tuple[tuple[int, int], int, str], Mapping] = {}
    spans: dict[tuple[tuple[int, int], int, str], list[str]] = {}
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue
        major, _, minor = fields[3].partition(":")
        inode = int(fields[4])
        if inode == 0:
            continue
        path, deleted = fields[5], False
        if path.endswith(" (deleted)"):
            path, deleted = path[: -len(" (deleted)")], True
        device = (int(major, 16), int(minor, 16))
        # map_files names ranges unpadded; maps pads them to 8 digits.
        start, _, end = fields[0].partition("-")
        key = (device, inode, path)
        out.setdefault(key, Mapping(device, inode, path, deleted))
        spans.setdefault(key, []).append(f"{int(start, 16):x}-{int(end, 16):x}")
    return [replace(m, spans=tuple(spans[key])) for key, m in out.items()]


def unit_of(cgroup: str) -> str | None:
    """The systemd unit of a process from its ``/proc/PID/cgroup`` (v2, or v1's name=systemd)."""
    path = None
    for line in cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, where = rest.partition(":")
        v2 = hierarchy == "0" and controllers == ""
        if v2 or (controllers == "name=systemd" and path is None):
            path = where
    if path is None:
        return None
    for part in path.split("/"):
        if part.endswith((".service", ".scope")):
            return part
    return None


def restart_plan(
    stale: Iterable[Stale], no_restart: Sequence[str], own_unit: str | None
) -> tuple[list[str], list[tuple[str, str]]]:
    """The units to restart, and those left alone with why (each unit once, in PID order)."""
    restart: list[str] = []
    skipped: dict[str, str] = {}
    for s in sorted(stale, key=lambda s: s.pid):
        unit = s.unit
        if unit is None:
            skipped.setdefault(f"{s.command} (PID {s.pid})", "not started by systemd")
            continue
        if unit in restart or unit in skipped:
            continue
        why = _never(unit, no_restart, own_unit)
        if why is None:
            restart.append(unit)
        else:
            skipped[unit] = why
    return restart, list(skipped.items())


def _never(unit: str, no_restart: Sequence[str], own_unit: str | None) -> str | None:
    if unit == own_unit:
        return "this command runs in it"
    for pattern, why in NEVER_RESTART:
        if fnmatch.fnmatchcase(unit, pattern):
            return why
    if unit.endswith(".scope"):
        return "a login session or scope: it cannot be restarted, only left and started again"
    for pattern in no_restart:
        if fnmatch.fnmatchcase(unit, pattern) or fnmatch.fnmatchcase(unit, pattern + ".service"):
            return f"listed in APPLY_NO_RESTART ({pattern})"
    return None


def _userspace(path: str) -> bool:
    return path.lstrip("/").split("/", 1)[0] in USERSPACE


def scan(root: Path, replaced: Iterable[str], proc: Path = Path("/proc")) -> list[Stale]:
    """Every process (but this one, and those in another root) that maps a stale file.

    Paths in ``maps`` are the process's own; under a *root* other than ``/`` only the mappings
    below it count, as that root's paths.
    """
    replaced = frozenset(replaced)
    prefix = "" if root == Path("/") else str(root)
    own_root = os.stat("/")
    current: dict[str, os.stat_result | None] = {}

    def now(path: str) -> os.stat_result | None:
        if path not in current:
            try:
                current[path] = os.stat(prefix + path)
            except OSError:
                current[path] = None
        return current[path]

    found = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            there = os.stat(proc / entry.name / "root")
            if (there.st_dev, there.st_ino) != (own_root.st_dev, own_root.st_ino):
                continue  # a container or chroot: its paths are not ours
            maps = (proc / entry.name / "maps").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        files = []
        for m in parse_maps(maps):
            if prefix and not m.path.startswith(prefix + "/"):
                continue
            path = m.path[len(prefix) :]
            if not _userspace(path):
                continue
            st = now(path)
            if (
                st is None
                or m.deleted
                or st.st_ino != m.inode
                or (path in replaced and not _maps_now(proc / entry.name, m, st))
            ):
                files.append(path)
        if files:
            found.append(Stale(pid, _command(proc, pid), _unit(proc, pid), tuple(sorted(files))))
    return sorted(found, key=lambda s: s.pid)


def working_in(directory: Path, proc: Path = Path("/proc")) -> list[tuple[int, str]]:
    """The processes whose working directory lies in the subvolume of *directory* (PID,
    command): after an apply, a shell that was in ``/etc`` still is in the hidden old one."""
    try:
        where = os.stat(directory).st_dev
    except OSError:
        return []
    found = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.stat(proc / entry.name / "cwd").st_dev != where:
                continue
        except OSError:
            continue
        found.append((int(entry.name), _command(proc, int(entry.name))))
    return sorted(found)


def _maps_now(pid_dir: Path, m: Mapping, st: os.stat_result) -> bool:
    """Whether the mapping is the file now at its path, for a path the change rewrote in place
    (same inode number, another subvolume).  ``maps`` names btrfs's one superblock device for
    every subvolume, so the subvolume's device comes from the mapping itself in ``map_files``;
    where that cannot be read, the mapping counts as the old file."""
    for span in m.spans or ("",):
        try:
            mapped = os.stat(pid_dir / "map_files" / span)
        except (OSError, ValueError):
            return False
        if (mapped.st_dev, mapped.st_ino) != (st.st_dev, st.st_ino):
            return False
    return True


def _command(proc: Path, pid: int) -> str:
    try:
        return (proc / str(pid) / "comm").read_text(encoding="utf-8").strip()
    except OSError:
        return "?"


def _unit(proc: Path, pid: int) -> str | None:
    try:
        return unit_of((proc / str(pid) / "cgroup").read_text(encoding="utf-8"))
    except OSError:
        return None


def own_unit(proc: Path = Path("/proc")) -> str | None:
    return _unit(proc, os.getpid())
