"""The package database a snapshot carries: which manager owns the root, and where its database is.

The database must live inside the snapshot: a rollback has to take it along with the files it
describes.  :func:`check_database` refuses a system where it lies on another subvolume, e.g. a
dpkg database left in a shared ``/var``.
"""

from __future__ import annotations

import os
from pathlib import Path

from transactional_update.config.settings import Manager
from transactional_update.errors import NotManagedError
from transactional_update.paths import resolve_under

# Where a managed Debian keeps dpkg's database: under /usr, inside the root snapshot, with
# /var/lib/dpkg a symlink to it (the image builder moves it there).
DPKG_DB = "usr/share/dpkg/database"

# Where each manager keeps its database, in the order they are looked for.
DATABASES = {
    Manager.APT: ("/var/lib/dpkg",),
    Manager.ZYPPER: ("/usr/lib/sysimage/rpm", "/var/lib/rpm"),
    Manager.DNF: ("/usr/lib/sysimage/rpm", "/var/lib/rpm"),
}
BINARIES = {
    Manager.ZYPPER: "usr/bin/zypper",
    Manager.DNF: "usr/bin/dnf",
    Manager.APT: "usr/bin/apt-get",
}


def detect(root: Path) -> Manager:
    """The package manager installed in the system at *root* (zypper, then dnf, then apt)."""
    for manager, binary in BINARIES.items():
        if (root / binary).exists():
            return manager
    raise NotManagedError(
        f"no supported package manager (zypper, dnf, apt-get) in {root}",
        "install one in the root, or use `run` for other tools",
    )


def manager_for(root: Path, forced: Manager | None) -> Manager:
    """The configured manager (``PACKAGE_MANAGER``) or the one installed in *root*."""
    return forced or detect(root)


def check_database(root: Path, manager: Manager) -> Path:
    """The package database's real path; refuses one outside the root snapshot's subvolume.

    btrfs gives every subvolume its own device number, so a database that resolves (through
    symlinks, read inside the root) to another ``st_dev`` than the root lies on another subvolume
    and would not roll back with the snapshot.
    """
    candidates = DATABASES[manager]
    for candidate in candidates:
        real = resolve_under(root, candidate)
        if not real.is_dir():
            continue
        # The root's own subvolume, or the one apply bound over /usr (the live snapshot's).
        snapshot_devices = {os.stat(root).st_dev, os.stat(root / "usr").st_dev}
        if os.stat(real).st_dev not in snapshot_devices:
            raise NotManagedError(
                f"the {manager} package database {candidate} ({real}) is outside the root "
                "snapshot, on another subvolume; a rollback would leave it describing other files",
                _MOVE_HINT[manager],
            )
        return real
    raise NotManagedError(
        f"no {manager} package database in {root} (looked for {', '.join(candidates)})",
        "check the root; package operations need the database inside the snapshot",
    )


_MOVE_HINT = {
    Manager.APT: "move it into the snapshot: /usr/share/dpkg/database, with /var/lib/dpkg a "
    "symlink to ../../usr/share/dpkg/database",
    Manager.ZYPPER: "move the rpm database to /usr/lib/sysimage/rpm (rpm --rebuilddb --dbpath)",
    Manager.DNF: "move the rpm database to /usr/lib/sysimage/rpm (rpm --rebuilddb --dbpath)",
}
