"""``setup-etc``: give a system made before the writable ``/etc`` its own ``/etc`` subvolume.

In the new snapshot (the system keeps booting the old layout until the reboot): ``/etc`` becomes
a subvolume of its own with the same contents (:func:`own_etc`), and the fstab mounts ``/``
read-write (:func:`root_read_write`), which the snapshot's read-only flag leaves to ``/etc``
alone; snapper's own number cleanup of the root config is turned off (:func:`no_number_cleanup`),
since snapper 0.10.4 cannot delete a snapshot holding its own ``/etc`` and
``transactional-update cleanup`` applies the same limits.  Older snapshots keep their layout and
still boot as they did.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from transactional_update.errors import NotManagedError
from transactional_update.proc import run
from transactional_update.snapshots import btrfs


def own_etc(snap: Path) -> bool:
    """Make the root's ``/etc`` a subvolume of its own, same contents; False: it was one."""
    etc = snap / "etc"
    if btrfs.is_subvolume(etc):
        return False
    old = snap / "etc.tu-old"
    if not old.exists():  # else a cut migration: the old contents are there, whole
        etc.mkdir(exist_ok=True)
        etc.rename(old)
    if etc.exists() and not btrfs.is_subvolume(etc):
        shutil.rmtree(etc)
    if not etc.exists():
        btrfs.create_subvolume(etc)
    st = old.stat()
    run(
        ["cp", "-a", "--reflink=auto", "--no-target-directory", f"{old}/.", str(etc)],
        what="copy /etc into its subvolume",
    )
    os.chown(etc, st.st_uid, st.st_gid)
    etc.chmod(st.st_mode & 0o7777)
    shutil.rmtree(old)
    return True


def root_read_write(fstab: str) -> str:
    """The fstab with ``/`` mounted read-write (``ro`` dropped from its options)."""
    out = []
    for line in fstab.splitlines(keepends=True):
        fields = line.split()
        if len(fields) >= 4 and not fields[0].startswith("#") and fields[1] == "/":
            opts = [o for o in fields[3].split(",") if o not in ("ro", "rw", "defaults")]
            fields[3] = ",".join(["rw", *opts])
            end = "\n" if line.endswith("\n") else ""
            out.append(" ".join(fields) + end)
        else:
            out.append(line)
    return "".join(out)


def no_number_cleanup(config: str) -> str:
    """A snapper config with ``NUMBER_CLEANUP="no"`` (the NUMBER_ limits stay for ours)."""
    lines = [
        'NUMBER_CLEANUP="no"' if line.split("=", 1)[0].strip() == "NUMBER_CLEANUP" else line
        for line in config.splitlines()
    ]
    if 'NUMBER_CLEANUP="no"' not in lines:
        lines.append('NUMBER_CLEANUP="no"')
    return "\n".join(lines) + "\n"


def edit(path: Path, change: Callable[[str], str]) -> None:
    """Rewrite the text file *path* of the new snapshot with *change*."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NotManagedError(
            f"cannot read {path}: {exc.strerror or exc}",
            "setup-etc needs the system's fstab and snapper config in /etc",
        ) from exc
    path.write_text(change(text), encoding="utf-8")
